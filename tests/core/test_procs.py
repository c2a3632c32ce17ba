"""The shared child-process steps: a stop ends the grandchildren too, a wait notices a child that
died before answering, and a busy preferred port is not handed out; and the figures a benchmark
reads of a running child (CPU seconds, RSS) are that child's."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from livetranslate.procs import cpu_seconds, free_port, rss_mib, start, stop, wait_http

# A server that forks a grandchild first: the grandchild must end with it.
SERVER = """
import http.server, os, sys, time
if os.fork() == 0:
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(600)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by init) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_stop_ends_the_child_and_what_it_forked(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "grandchild.pid"
    proc = start([sys.executable, "-c", SERVER, str(port), str(pid_file)], log=tmp_path / "server.log")
    wait_http(f"http://127.0.0.1:{port}/", timeout=30, proc=proc)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    assert stop(proc, timeout=5) != 0
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_wait_notices_a_child_that_exits_before_answering() -> None:
    proc = start([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=30, proc=proc)


def test_wait_gives_up_after_its_timeout() -> None:
    with pytest.raises(TimeoutError):
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=0.5)


def test_a_busy_preferred_port_is_not_handed_out() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(taken) != taken
    assert free_port(taken) == taken


def test_a_port_whose_connections_wait_in_time_wait_is_free_again() -> None:
    """What a quick restart of `livetranslate up` meets: the server closed its end of a connection
    first, so the port's last connection waits in TIME_WAIT for a minute. Servers bind it with
    SO_REUSEADDR, so the probe must not move the page off the port the user asked for."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        time.sleep(0.1)
        client.close()
    time.sleep(0.1)
    # without SO_REUSEADDR the port is refused: the case is real
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert free_port(port) == port


def test_cpu_seconds_and_rss_are_the_childs_own(tmp_path: Path) -> None:
    # The child touches 128 MiB and frees it (peak), keeps 64 MiB (current), burns about half a
    # second of CPU, then waits to be read.
    child = (
        "import time\n"
        "big = bytearray(128 << 20); big[::4096] = b'x' * len(big[::4096]); del big\n"
        "kept = bytearray(64 << 20); kept[::4096] = b'x' * len(kept[::4096])\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.5: pass\n"
        "print('done', flush=True); time.sleep(60)"
    )
    log = tmp_path / "child.log"
    proc = start([sys.executable, "-c", child], log=log)
    try:
        deadline = time.monotonic() + 30
        while "done" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.45 <= cpu_seconds(proc.pid) < 5.0
        now, peak = rss_mib(proc.pid), rss_mib(proc.pid, peak=True)
        assert 64 <= now < 64 + 40, now
        assert peak >= 128 and peak > now + 50, (peak, now)
        assert cpu_seconds(os.getpid()) > 0
    finally:
        stop(proc)


def test_up_moves_the_page_off_a_held_port_only_with_a_warning() -> None:
    from livetranslate.local import page_port

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        port, warning = page_port(taken, "127.0.0.1")
        assert port != taken and warning is not None
        assert f"port {taken} is held by another program" in warning and f"port {port}" in warning
    assert page_port(taken, "127.0.0.1") == (taken, None)  # free again: it stays
    port, warning = page_port(0, "127.0.0.1")  # any free port was asked for: nothing to say
    assert port > 0 and warning is None
