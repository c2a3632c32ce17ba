"""Fixtures of the model-cache tests: small model folders, a real HTTP server on loopback, the CLI."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from livetranslate.cli import main as livetranslate


@pytest.fixture(autouse=True)
def no_model_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach a model hub: the hub's client is offline and its endpoint a loopback
    port nothing listens on, in this process and in every subprocess a test starts. The fake-hub
    tests replace the client's calls themselves."""
    from livetranslate.procs import free_port

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", os.environ["HF_ENDPOINT"])


def make_model(folder: Path, weights: bytes = b"\x01\x02" * 50_000) -> Path:
    """A small ct2-shaped model folder: model.bin and two text files, one in a subfolder."""
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(weights)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "extra").mkdir()
    (folder / "extra" / "vocabulary.txt").write_text("a\nb\n")
    return folder


@dataclass
class Cli:
    code: int
    out: str
    err: str

    @property
    def line(self) -> dict[str, object]:
        lines = self.out.splitlines()
        assert len(lines) == 1, self.out
        return json.loads(lines[0])

    @property
    def error(self) -> str:
        lines = [line for line in self.err.splitlines() if line.startswith("livetranslate model-cache: ")]
        assert len(lines) == 1, self.err
        return lines[0]


CliRunner = Callable[..., Cli]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """``livetranslate model-cache ...`` in this process, its stdout and stderr captured.

    The command configures the root logger for its stderr: the handlers are put back after.
    """
    monkeypatch.setenv("LT_LOG_FORMAT", "text")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def run(*args: str | Path) -> Cli:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = livetranslate(["model-cache", *map(str, args)])
        return Cli(code, out.getvalue(), err.getvalue())

    yield run
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


class _Handler(http.server.SimpleHTTPRequestHandler):
    stall: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/stall/"):
            # Half the promised bytes, then nothing until the test ends: a download a Job dies in.
            self.send_response(200)
            self.send_header("Content-Length", "3000000")
            self.end_headers()
            self.wfile.write(b"x" * 1_500_000)
            self.wfile.flush()
            self.stall.wait(30)
            return
        super().do_GET()


@dataclass
class Served:
    url: str
    root: Path


@pytest.fixture
def http_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A real http.server on 127.0.0.1 serving ``tmp_path/www`` from a thread."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    stall = threading.Event()
    handler = type("Handler", (_Handler,), {"stall": stall})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_address[1]}", root)
    finally:
        stall.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def partial_dirs(cache: Path) -> list[str]:
    """Scratch folders left in the cache (lock files do not count)."""
    partial = cache / ".partial"
    return sorted(p.name for p in partial.iterdir() if p.is_dir()) if partial.exists() else []


def file_bytes(path: Path) -> int:
    return os.stat(path).st_size
