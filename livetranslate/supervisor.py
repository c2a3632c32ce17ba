"""The three services of ``livetranslate up`` as child processes: started in order, watched, restarted
when one dies, stopped gateway first, and whatever they leave behind ended.

Each child is watched: one that dies is reported with the end of its log and restarted after a
growing pause (a few times, then ``UpError`` says why everything stops). ``up`` is also the
children's subreaper (Linux): a helper a child started in a session of its own (the translation
service's apertium-apy and its pipeline processes) is re-parented to ``up`` when that child dies
uncleanly, and is ended and reaped here, so a crash-and-restart leaks no process tree. On a cluster
the container runtime does that when a pod's main process dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from livetranslate.config import CONFIG_ENV, ResolvedPipeline

STAGES = ("audio", "translation", "gateway")
SERVE_NAME = {"audio": "audio", "translation": "translate", "gateway": "gateway"}
MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 120.0
ORPHAN_KILL_AFTER_SECONDS = 5.0  # SIGTERM first; SIGKILL an adopted orphan still alive after this


class UpError(Exception):
    """A problem the user must fix; the message says which field or command."""


@dataclass
class Child:
    stage: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Runner:
    def __init__(
        self,
        resolved: ResolvedPipeline,
        config_path: Path,
        log_dir: Path,
        host: str,
        out: IO[str],
        extra_env: dict[str, str],
    ) -> None:
        self.resolved = resolved
        self.config_path = config_path
        self.log_dir = log_dir
        self.host = host
        self.out = out
        self.extra_env = extra_env
        self.children = {
            stage: Child(
                stage, int(getattr(resolved.endpoints, stage).rsplit(":", 1)[1]), log_dir / f"{stage}.log"
            )
            for stage in STAGES
        }
        self.stopping = False
        self.orphans: dict[int, float] = {}  # adopted orphan pid -> when we first asked it to end

    def say(self, message: str) -> None:
        self.out.write(message + "\n")
        self.out.flush()

    def start(self, child: Child) -> None:
        env = {**os.environ, CONFIG_ENV: str(self.config_path), "PYTHONSAFEPATH": "1", **self.extra_env}
        env.setdefault("LT_LOG_FORMAT", "json")
        bind = self.host if child.stage == "gateway" else "127.0.0.1"
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "livetranslate.cli",
            "serve",
            SERVE_NAME[child.stage],
            "--host",
            bind,
            "--port",
            str(child.port),
        ]
        child.log_file = open(child.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A session of its own: Ctrl-C reaches only us, and we stop the children in order.
        child.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=child.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
        )
        child.started_at = time.monotonic()
        child.ready_at = None

    def ready(self, child: Child) -> bool:
        import httpx

        try:
            r = httpx.get(f"http://127.0.0.1:{child.port}/readyz", timeout=1.0)
        except httpx.HTTPError:
            return False
        if r.status_code == 503:
            # A model that failed to load will not load by waiting: stop now, with its reason.
            with contextlib.suppress(ValueError, AttributeError):
                checks = r.json().get("checks") or {}
                if checks.get("model") == "failed":
                    raise UpError(
                        f"{child.stage}: the model {checks.get('modelName') or ''} did not load: "
                        f"{checks.get('reason')} (log: {child.log_path})"
                    )
        return r.status_code == 200

    def check_children(self) -> None:
        """Restart a child that died (after a growing pause), or raise UpError once it keeps dying."""
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            now = time.monotonic()
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self.start(child)
                    self.say(
                        f"{child.stage}: starting on 127.0.0.1:{child.port} "
                        f"(pid {child.proc.pid if child.proc else '?'}) after a restart"
                    )
                continue
            code = child.proc.returncode
            while child.restarts and now - child.restarts[0] > RESTART_WINDOW_SECONDS:
                child.restarts.popleft()
            tail = child.tail()
            if len(child.restarts) >= MAX_RESTARTS:
                raise UpError(
                    f"{child.stage} exited with code {code} {MAX_RESTARTS + 1} times in "
                    f"{RESTART_WINDOW_SECONDS:.0f} s; giving up. Its log ({child.log_path}) "
                    f"ends:\n{_indent(tail)}"
                )
            child.restarts.append(now)
            pause = 2.0 ** (len(child.restarts) - 1)
            child.restart_at = now + pause
            self.say(
                f"{child.stage}: exited with code {code}; restarting in {pause:.0f} s "
                f"({len(child.restarts)}/{MAX_RESTARTS}). Its log ends:\n{_indent(tail)}"
            )
        self.end_orphans()

    def end_orphans(self) -> None:
        """End and reap processes re-parented to us because the child that started them died.

        Only pids that are not our own children are waited on: reaping a child's status here
        would hide its exit code from ``Popen.poll()``.
        """
        ours = {c.proc.pid for c in self.children.values() if c.proc is not None}
        now = time.monotonic()
        for pid, pgid, state, name in _adopted(os.getpid()):
            if pid in ours:
                continue
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                self.orphans.pop(pid, None)
                continue
            asked = self.orphans.get(pid)
            sig = (
                signal.SIGTERM
                if asked is None
                else (signal.SIGKILL if now - asked > ORPHAN_KILL_AFTER_SECONDS else None)
            )
            if sig is None:
                continue
            if asked is None:
                self.orphans[pid] = now
                self.say(f"ending orphaned process {pid} ({name}) left by a child that died")
            # Its own process group when it leads one (APy and its pipeline), else just itself.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid == pid and pgid != os.getpgrp():
                    os.killpg(pgid, sig)
                else:
                    os.kill(pid, sig)
        for pid in [p for p in self.orphans if not Path(f"/proc/{p}").exists()]:
            del self.orphans[pid]

    def wait_ready(self, timeout: float) -> None:
        began = time.monotonic()
        last_note = 0.0
        while True:
            self.check_children()
            waiting = []
            for child in self.children.values():
                if child.ready_at is None and self.ready(child):
                    child.ready_at = time.monotonic()
                    self.say(f"{child.stage}: ready in {child.ready_at - child.started_at:.1f} s")
                if child.ready_at is None:
                    waiting.append(child.stage)
            if not waiting:
                return
            now = time.monotonic()
            if now - began > timeout:
                raise UpError(
                    f"not ready after {timeout:.0f} s: {', '.join(waiting)} (logs in {self.log_dir})"
                )
            if now - last_note > 5:
                last_note = now
                self.say(
                    f"waiting for {', '.join(waiting)} ({now - began:.0f} s; models load on first start)"
                )
            time.sleep(0.3)

    def note_recovered(self) -> None:
        """Say when a restarted child is serving again."""
        for child in self.children.values():
            if (
                child.ready_at is None
                and child.restart_at is None
                and child.proc is not None
                and child.proc.poll() is None
                and self.ready(child)
            ):
                child.ready_at = time.monotonic()
                self.say(f"{child.stage}: ready in {child.ready_at - child.started_at:.1f} s (restarted)")

    def stop(self) -> None:
        """Gateway first (it flushes open sessions through the upstreams), then the others."""
        self.stopping = True
        for group in (("gateway",), ("audio", "translation")):
            procs = [self.children[s].proc for s in group]
            live = [p for p in procs if p is not None and p.poll() is None]
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 25
            for p in live:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    p.wait()
        # Whatever the children left behind (a helper that outlived its parent's shutdown).
        deadline = time.monotonic() + ORPHAN_KILL_AFTER_SECONDS + 2
        while True:
            self.end_orphans()
            if not self.orphans or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for child in self.children.values():
            if child.log_file is not None:
                child.log_file.close()


def _die_with_parent() -> None:
    """In the child: a SIGTERM when `up` itself dies (even by SIGKILL), so no service is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _become_subreaper() -> None:
    """Orphans of our children's children come to us instead of to init, so we can end them."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_child_subreaper = 36
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_child_subreaper, 1)


def _adopted(parent: int) -> list[tuple[int, int, str, str]]:
    """(pid, process group, state, name) of every process whose parent is ``parent`` (/proc)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        if len(fields) < 3 or int(fields[1]) != parent:
            continue
        found.append((int(entry.name), int(fields[2]), fields[0], head.partition("(")[2]))
    return found


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
