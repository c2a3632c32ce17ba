"""Child processes on loopback: a free port, a start in a session of its own, a readiness wait and
a stop that ends the whole group; and what a benchmark reads of a running child (CPU seconds, RSS).

`livetranslate up`, the Apertium engine (which runs apertium-apy beside the service), the tests and
the benchmarks all start services as child processes. They share these four steps so that every
one of them binds to loopback, notices a child that died before it answered, and ends only what it
started (by pid, with its process group), never leaving a helper process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"


def free_port(preferred: int = 0, host: str = LOOPBACK) -> int:
    """``preferred`` when it is free, else a port the kernel picks. Another process may still take
    it before the caller binds; callers that can bind port 0 themselves should."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Probe as the servers bind (uvicorn and asyncio set SO_REUSEADDR): a port whose last
            # connections wait in TIME_WAIT after a quick restart is free to them, so free here.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free TCP port on {host}")


def start(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    unset: Sequence[str] = (),
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own (so :func:`stop` can end it and every process it
    forks), with ``env`` added to this process's environment (less the names in ``unset``) and its
    output appended to ``log`` (discarded when None)."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    if log is None:
        return subprocess.Popen(
            list(cmd),
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(cmd),
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )


def wait_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None, require_200: bool = False
) -> None:
    """Until ``url`` answers (any status below 500, or exactly 200 with ``require_200``). Raises
    RuntimeError at once when ``proc`` exits first, TimeoutError after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(url, timeout=1.0).status_code
            if status == 200 or (not require_200 and status < 500):
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code. A child started by
    :func:`start` leads its own process group, and the whole group is signalled, so helpers it
    forked (a model server, a browser's renderers) end with it."""
    own_group = _leads_group(proc)

    def signal_it(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        signal_it(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_it(signal.SIGKILL)
            proc.wait()
    if own_group:  # the leader is gone; end any member it left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


def _leads_group(proc: subprocess.Popen[Any]) -> bool:
    """Whether ``proc`` leads its own process group. Asked only while it is not yet reaped (a
    zombie keeps its group), so the pid cannot belong to some other process by then."""
    if proc.returncode is not None:
        return False
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its reaped children not included)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_mib(pid: int, peak: bool = False) -> float:
    """Resident memory of a running process in MiB (``peak``: its high-water mark). psutil has no
    peak on Linux, so that one is the kernel's VmHWM line."""
    if not peak:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a kernel thread or a zombie has no user memory
