"""`livetranslate up` started as a user starts it (a child process, default pipeline en -> es, real
models on CPU), shared by the system tests; stopped with SIGINT (Ctrl-C) at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from livetranslate_testing.speech import Utterance, compose, require_tools, write_wav

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    page_url: str = ""

    @property
    def ws_url(self) -> str:
        return self.page_url.replace("http://", "ws://") + "v1/stream"

    def pid_of(self, stage: str) -> int:
        """The newest pid `up` reported for a stage (it restarts children that die)."""
        pids = [
            int(m.group(1))
            for line in self.lines
            if (m := re.match(rf"{stage}: starting on \S+ \(pid (\d+)\)", line))
        ]
        return pids[-1]

    def wait_for_line(self, pattern: str, timeout: float, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines))


def livetranslate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "livetranslate.cli", *args]


@contextlib.contextmanager
def running_up(*args: str) -> Iterator[Up]:
    """`livetranslate up` with ``args`` as a user runs it, until it says it is ready; Ctrl-C after."""
    require_tools()
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        livetranslate_cmd("up", "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    handle = Up(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = handle.wait_for_line(r"LiveTranslate is ready: open http://127\.0\.0\.1:\d+/", 300)
        handle.page_url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)  # type: ignore[union-attr]
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def up() -> Iterator[Up]:
    with running_up() as handle:
        yield handle


REFERENCE = (
    "The meeting will start in five minutes.",
    "Please open the quarterly report on your screen.",
    "We need to finish the project before the end of the month.",
    "Thank you all for coming to the town hall this evening.",
)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    samples, _ = compose([Utterance(t, pause_after=1.0) for t in REFERENCE])
    path = write_wav(tmp_path_factory.mktemp("speech") / "speech.wav", samples)
    return path, " ".join(REFERENCE)
