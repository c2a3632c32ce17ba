"""Gateway and audio replicas as real processes behind a Service, for the drain tests and benchmark.

* ``ServiceProxy``: what a Kubernetes Service does for the gateway's clients, on loopback: each
  new TCP connection goes to a backend whose ``/readyz`` answered 200 at the last probe (the
  endpoints controller takes a pod that is not ready, or terminating, out of the Service), the
  one with the fewest open connections; open connections are left alone.
* ``Fleet``: a real redis-server, the stand-in stages (standins.py) or given stage URLs, and
  gateway replicas started as users start them (``livetranslate serve gateway``), each on a port
  of its own that it keeps across restarts (a new pod behind the same Service).
* ``AudioReplicas``: audio services started as users start them (``livetranslate serve audio``,
  the speech model from the package index), each on a port it keeps across restarts.
* ``TimedPrinter``: ``livetranslate stream``'s printer, noting when each event arrived.
* ``account``: finals received against the finals expected: lost, duplicated, out of order.

Every process is started with :func:`livetranslate.procs.start` and ended by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from livetranslate.procs import free_port, start, stop, wait_http
from livetranslate.stream import Printer

ADMIN_TOKEN = "drain-admin-token"


def json_log(path: Path) -> list[dict[str, Any]]:
    """A process's log lines that are JSON (``LT_LOG_FORMAT=json``), across its restarts."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The process's exit status once it has exited by itself, None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


class ServiceProxy:
    """A Service in front of gateway replicas (see the module docstring)."""

    def __init__(self, backends: Sequence[int], probe_interval: float = 0.1) -> None:
        self.backends = list(backends)
        self.probe_interval = probe_interval
        self.ready = dict.fromkeys(self.backends, False)
        self.open = dict.fromkeys(self.backends, 0)
        self.routed: list[int] = []  # the backend of each accepted connection, in order
        self.port = 0
        self._server: asyncio.Server | None = None
        self._prober: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    async def start(self) -> None:
        await self._probe_once()
        self._prober = asyncio.create_task(self._probe_loop())
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _probe_once(self, client: httpx.AsyncClient | None = None) -> None:
        async def probe(c: httpx.AsyncClient, port: int) -> None:
            try:
                r = await c.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
                self.ready[port] = r.status_code == 200
            except httpx.HTTPError:
                self.ready[port] = False

        if client is not None:
            await asyncio.gather(*(probe(client, p) for p in self.backends))
            return
        async with httpx.AsyncClient() as c:
            await asyncio.gather(*(probe(c, p) for p in self.backends))

    async def _probe_loop(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                await asyncio.sleep(self.probe_interval)
                await self._probe_once(client)

    def _pick(self) -> int | None:
        ready = [p for p in self.backends if self.ready.get(p)]
        return min(ready, key=lambda p: self.open[p]) if ready else None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._pick()
        for _ in range(20):  # no ready endpoint: a moment for one to come back, then refuse
            if port is not None:
                break
            await asyncio.sleep(0.1)
            port = self._pick()
        try:
            if port is None:
                raise OSError("no ready backend")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        self.routed.append(port)
        self.open[port] += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.open[port] -= 1
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


@dataclass
class Fleet:
    """Redis, the stages and gateway replicas as processes (see the module docstring)."""

    tmp: Path
    replicas: int = 2
    gateway_env: dict[str, str] = field(default_factory=dict)
    audio_url: str | None = None  # None: the stand-ins (standins.py), started here
    translation_url: str | None = None
    translate_delay: float = 0.0
    redis_url: str = ""
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: dict[int, list[int]] = field(default_factory=dict)  # port -> exit codes seen
    _others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _restarts: int = 0

    def start(self) -> None:
        port = free_port()
        redis = start(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
            log=self.tmp / "redis.log",
        )  # fmt: skip
        self._others.append(redis)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        if self.audio_url is None or self.translation_url is None:
            sport = free_port()
            args = ["-m", "livetranslate_testing.standins", "--port", str(sport)]
            args += ["--translate-delay", str(self.translate_delay)]
            proc = start([sys.executable, "-P", *args], log=self.tmp / "standins.log")
            self._others.append(proc)
            standins = f"http://127.0.0.1:{sport}"
            wait_http(standins + "/readyz", 60, proc, require_200=True)
            self.audio_url = self.audio_url or standins
            self.translation_url = self.translation_url or standins
        self.ports = [free_port() for _ in range(self.replicas)]
        for p in self.ports:
            self.start_gateway(p)
        for p in self.ports:
            self.wait_ready(p)

    def start_gateway(self, port: int) -> None:
        assert self.audio_url is not None and self.translation_url is not None
        env = {
            "LT_GATEWAY_AUDIO_URL": self.audio_url,
            "LT_GATEWAY_TRANSLATION_URL": self.translation_url,
            "LT_GATEWAY_REDIS_URL": self.redis_url,
            "LT_GATEWAY_TARGET_LANGUAGES": '["es"]',
            "LT_GATEWAY_PIPELINE": "drain",
            "LT_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "LT_PIPELINE_CONFIG": str(self.tmp / "no-pipeline.json"),
            "LT_LOG_FORMAT": "json",  # log() reads it back
            "PYTHONSAFEPATH": "1",
            **self.gateway_env,
        }
        exe = Path(sys.executable).with_name("livetranslate")
        cmd = [str(exe), "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)]
        self.procs[port] = start(cmd, env=env, log=self.tmp / f"gateway-{port}.log")

    def wait_ready(self, port: int, timeout: float = 60.0) -> None:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout, self.procs[port], require_200=True)

    def log(self, port: int) -> list[dict[str, Any]]:
        """The replica's log lines (JSON), across its restarts."""
        return json_log(self.tmp / f"gateway-{port}.log")

    def sigterm(self, port: int) -> None:
        """What the kubelet does to a pod being removed (its process, not its group: the
        gateway alone decides when to exit)."""
        os.kill(self.procs[port].pid, 15)

    async def wait_exit(self, port: int, timeout: float) -> int | None:
        code = await wait_exit(self.procs[port], timeout)
        if code is not None:
            self.exits.setdefault(port, []).append(code)
        return code

    async def drain_admin(self, port: int) -> dict[str, Any]:
        async with httpx.AsyncClient() as c:
            r = await c.post(
                f"http://127.0.0.1:{port}/v1/admin/drain", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            r.raise_for_status()
            return dict(r.json())

    def stop(self) -> None:
        for proc in [*self.procs.values(), *reversed(self._others)]:
            stop(proc, timeout=10)


class AudioReplicas:
    """Audio services as processes, each on a port of its own (see the module docstring)."""

    def __init__(self, tmp: Path, count: int, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = env or {}
        self.ports = [free_port() for _ in range(count)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for port in self.ports:
            self.start_replica(port)
        for port in self.ports:
            self.wait_ready(port)

    def start_replica(self, port: int) -> None:
        """Start (or start again: a new pod behind the same Service) the replica on ``port``."""
        exe = Path(sys.executable).with_name("livetranslate")
        self.procs[port] = start(
            [str(exe), "serve", "audio", "--host", "127.0.0.1", "--port", str(port)],
            env={
                "PYTHONSAFEPATH": "1",
                "LT_PIPELINE_CONFIG": str(self.tmp / "no-pipeline.json"),
                "LT_LOG_FORMAT": "json",  # log() reads it back
                **self.env,
            },
            log=self.tmp / f"audio-{port}.log",
        )

    def wait_ready(self, port: int, timeout: float = 300.0) -> None:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout, self.procs[port], require_200=True)

    def log(self, port: int) -> list[dict[str, Any]]:
        """The replica's log lines (JSON), across its restarts."""
        return json_log(self.tmp / f"audio-{port}.log")

    def sigterm(self, port: int) -> None:
        """What the kubelet sends the pod's process when the stage scales down."""
        os.kill(self.procs[port].pid, 15)

    async def wait_exit(self, port: int, timeout: float) -> int | None:
        return await wait_exit(self.procs[port], timeout)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc, timeout=20)


class TimedPrinter(Printer):
    """``livetranslate stream``'s printer (quiet), with each event's arrival time in ``_at``."""

    def __init__(self) -> None:
        super().__init__(io.StringIO(), as_json=True, partials=False)
        self.events: list[dict[str, Any]] = []

    def event(self, ev: dict[str, Any]) -> None:
        ev["_at"] = time.monotonic()
        self.events.append(ev)
        super().event(ev)

    @property
    def notes(self) -> str:
        """What the client wrote besides events (reconnects, failures)."""
        assert isinstance(self.out, io.StringIO)
        return "\n".join(line for line in self.out.getvalue().splitlines() if not line.startswith("{"))

    def latencies(self, chunk_seconds: float) -> dict[int, float]:
        """Per final: arrival minus the moment the chunk with its last sample went out from a live
        microphone (``--realtime``: the file's first sample went at the first session.started)."""
        t0 = next(e["_at"] for e in self.events if e["type"] == "session.started")
        return {f["segmentId"]: f["_at"] - (t0 + f["end"] - chunk_seconds) for f in self.finals}


def account(finals: list[dict[str, Any]], expected: list[str]) -> dict[str, int]:
    """Finals received against the texts expected in order: segment ids must run 0, 1, 2, ...
    once each, and the i-th final must be the i-th expected text."""
    ids = [f["segmentId"] for f in finals]
    duplicated = len(ids) - len(set(ids))
    by_id: dict[int, str] = {}
    for f in finals:
        by_id.setdefault(f["segmentId"], f["text"])
    matched = sum(1 for i, text in enumerate(expected) if by_id.get(i) == text)
    return {
        "expected": len(expected),
        "received": len(finals),
        "lost": len(expected) - matched,
        "duplicated": duplicated,
        "unexpected": sum(1 for i in by_id if i >= len(expected) or by_id[i] != expected[i]),
        "out_of_order": sum(1 for a, b in itertools.pairwise(ids) if b <= a),
    }


CHUNK_MS = 100  # a live microphone's frames, as the drain tests and benchmark stream them


def speaker(url: str, samples: Any, printer: TimedPrinter) -> asyncio.Task[bool]:
    """``livetranslate stream`` of ``samples`` (16 kHz float speech) in real time, as a task."""
    from livetranslate.stream import Wav, stream_file
    from livetranslate_testing import speech

    wav = Wav(speech.to_pcm16(samples), speech.SAMPLE_RATE, 1)
    return asyncio.create_task(
        stream_file(wav, url, realtime=True, chunk_ms=CHUNK_MS, token=None, targets=None, printer=printer)
    )


def text_of(printer: TimedPrinter) -> str:
    return " ".join(f["text"] for f in printer.finals)


def assert_listener_unaffected(plain: TimedPrinter, drained: TimedPrinter, script: str) -> None:
    """What a listener must get through a drain, beside a run of the same audio without one.
    Whisper's finals depend on when it decodes, so the two need not cut the audio alike: the
    numbering runs on, every final once and in order on the session clock, the words as right,
    each sentence translated once, and no final more than 2 s later than the latest one was."""
    from livetranslate_testing import speech

    assert not [e for e in drained.events if e["type"] == "error"], drained.events
    ids = [f["segmentId"] for f in drained.finals]
    assert ids == list(range(len(ids))), ids
    for one, two in itertools.pairwise(drained.finals):
        assert one["end"] <= two["start"] + 0.05, (one, two)
    wer_plain = speech.word_error_rate(script, text_of(plain))
    wer_drained = speech.word_error_rate(script, text_of(drained))
    assert wer_drained <= wer_plain + 0.05, (text_of(drained), text_of(plain))
    keys = [(t["sentenceId"], t["language"]) for t in drained.translations]
    assert len(keys) == len(set(keys)), keys
    covered = sorted(i for t in drained.translations for i in t["segmentIds"])
    assert covered == ids, (covered, ids)
    late = max(drained.latencies(CHUNK_MS / 1000).values())
    usual = max(plain.latencies(CHUNK_MS / 1000).values())
    assert late < usual + 2.0, (late, usual)


@contextlib.asynccontextmanager
async def gateways_behind_a_service(tmp: Path, **fleet: Any) -> AsyncIterator[tuple[Fleet, ServiceProxy]]:
    """A started ``Fleet`` of gateway replicas (``fleet``: its fields) behind a ``ServiceProxy``."""
    gateways = Fleet(tmp, **fleet)
    try:
        await asyncio.to_thread(gateways.start)
        proxy = ServiceProxy(gateways.ports)
        await proxy.start()
        try:
            yield gateways, proxy
        finally:
            await proxy.close()
    finally:
        gateways.stop()
