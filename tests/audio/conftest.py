"""Fixtures of the audio tests: real speech made with espeak-ng/sox, the service as a real process.

The service runs as users run it (``livetranslate serve audio`` on a loopback port) with the real
tiny.en weights; each server fixture ends its own process by pid.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from livetranslate.procs import free_port, start, stop
from livetranslate_testing import speech

VOICES = ("en-us", "en-gb", "en-us+f4", "en-us+m7")


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/v1/audio"


def start_server(tmp: Path, env: dict[str, str], wait_ready: bool = True, timeout: float = 180.0) -> Server:
    port = free_port()
    log = tmp / f"audio-{port}.log"
    exe = Path(sys.executable).with_name("livetranslate")
    proc = start(
        [str(exe), "serve", "audio", "--host", "127.0.0.1", "--port", str(port)],
        env={
            "PYTHONSAFEPATH": "1",
            "LT_LOG_FORMAT": "text",
            "LT_PIPELINE_CONFIG": str(tmp / "no-pipeline.json"),
            **env,
        },
        log=log,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"audio server exited: {log.read_text()[-3000:]}")
        try:
            r = httpx.get(server.base + "/readyz", timeout=2)
            if r.status_code == 200 or (not wait_ready and r.json()["checks"]["model"] != "loading"):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"audio server not ready in {timeout} s: {log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    stop(server.proc, timeout=20)


@pytest.fixture(scope="session")
def audio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared service with short timeouts, so timeout behaviour is testable in seconds."""
    speech.require_tools()
    server = start_server(
        tmp_path_factory.mktemp("audio"),
        {
            "LT_AUDIO_LIMITS__IDLE_TIMEOUT_SECONDS": "4",
            "LT_AUDIO_LIMITS__SILENCE_TIMEOUT_SECONDS": "6",
            "LT_AUDIO_LIMITS__MAX_BAD_MESSAGES": "3",
        },
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(env: dict[str, str], wait_ready: bool = True) -> Server:
        server = start_server(tmp_path_factory.mktemp("audio-extra"), env, wait_ready)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for s in started:
            stop_server(s)


@pytest.fixture(scope="session")
def meeting() -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    """Four sentences in four voices with pauses between them (about 15 s)."""
    speech.require_tools()
    return speech.compose(
        [speech.Utterance(t, v, pause_after=0.9) for t, v in zip(speech.SENTENCES[:4], VOICES, strict=True)]
    )


@pytest.fixture(scope="session")
def dialogue() -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    """Two voices taking turns, two turns each."""
    speech.require_tools()
    voices = ("en-us", "en-us+f4", "en-us", "en-us+f4")
    return speech.compose(
        [speech.Utterance(t, v, pause_after=0.8) for t, v in zip(speech.SENTENCES[4:8], voices, strict=True)]
    )
