"""The engine's own load, read from its server's /metrics: vLLM's names and llama-server's
(``--metrics``), mirrored under one set of stats; servers that publish neither are asked once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from livetranslate.workloads.translate.engine_metrics import (
    LLAMACPP_STATS,
    STAT_KV_CACHE,
    STAT_RUNNING,
    STAT_WAITING,
    VLLM_STATS,
    engine_stats,
)
from livetranslate.workloads.translate.engines import OpenAIEngine
from livetranslate.workloads.translate.quality import Job
from livetranslate.workloads.translate.settings import OpenAISettings

from .conftest import GEMMA_MAIN, FakeLlamaServer, LlamaServer, engine_with

# The shape llama-server's /metrics has (HELP/TYPE lines, one sample per metric, no labels).
LLAMACPP_TEXT = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1234
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 5
"""


def test_server_names_map_to_one_set_of_stats() -> None:
    assert engine_stats(LLAMACPP_TEXT, LLAMACPP_STATS) == {STAT_RUNNING: 3.0, STAT_WAITING: 5.0}
    # Older vLLM releases called the KV-cache gauge gpu_cache_usage_perc; the current name wins.
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
    assert engine_stats(old, VLLM_STATS) == {STAT_KV_CACHE: 0.25}
    both = old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    assert engine_stats(both, VLLM_STATS) == {STAT_KV_CACHE: 0.5}


async def test_llama_server_load_is_read_at_every_check() -> None:
    server = FakeLlamaServer(metrics=LLAMACPP_TEXT)
    engine = engine_with(server)
    state = await engine.check()
    assert state.ready and state.stats == {STAT_RUNNING: 3.0, STAT_WAITING: 5.0}
    server.metrics = LLAMACPP_TEXT.replace("deferred 5", "deferred 0")
    assert (await engine.check()).stats[STAT_WAITING] == 0.0
    assert server.metrics_asked == 2


async def test_a_server_without_llama_metrics_is_asked_once_until_it_goes_away() -> None:
    server = FakeLlamaServer(metrics=None)  # a hosted API, llama-cpp-python's server
    engine = engine_with(server)
    for _ in range(3):
        state = await engine.check()
        assert state.ready and state.stats == {}
    assert server.metrics_asked == 1
    # Prometheus text without llama.cpp's names counts the same as no /metrics.
    other = FakeLlamaServer(metrics="process_cpu_seconds_total 1.5\n")
    engine = engine_with(other)
    await engine.check()
    await engine.check()
    assert other.metrics_asked == 1 and engine.state.stats == {}
    # What answers after an outage may be another server (llama-server started with --metrics).
    engine = engine_with(server)
    await engine.check()
    server.up = False
    assert not (await engine.check()).ready
    server.up, server.metrics = True, LLAMACPP_TEXT
    assert (await engine.check()).stats == {STAT_RUNNING: 3.0, STAT_WAITING: 5.0}


async def test_a_busy_or_failing_metrics_endpoint_is_asked_again() -> None:
    server = FakeLlamaServer(metrics=LLAMACPP_TEXT)
    engine = engine_with(server)
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path == "/metrics":
            calls += 1
            if calls == 1:
                raise httpx.ReadTimeout("busy", request=request)
            if calls == 2:
                return httpx.Response(503)
        return server(request)

    engine.client = httpx.AsyncClient(transport=httpx.MockTransport(flaky), base_url=engine.base)
    for _ in range(3):
        await engine.check()
    assert calls == 3 and engine.state.stats == {STAT_RUNNING: 3.0, STAT_WAITING: 5.0}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_real_llama_server_reports_slots_busy_and_requests_deferred(llama: LlamaServer) -> None:
    """Twice as many prompts as slots in one list: while it decodes, llama-server reports its slots
    processing and the rest deferred, and the engine's stats say so."""

    async def run() -> list[dict[str, float]]:
        engine = OpenAIEngine(
            OpenAISettings(url=llama.url, model=GEMMA_MAIN, timeout_s=120.0, batch_mode="list"), 0
        )
        try:
            idle = await engine.check()
            assert idle.ready and idle.stats == {STAT_RUNNING: 0.0, STAT_WAITING: 0.0}, idle
            jobs = [
                Job(
                    f"Sentence number {i} is about the weather in the mountains.",
                    "en",
                    "es",
                    session_id=f"m{i}",
                )
                for i in range(2 * llama.slots)
            ]
            batch = asyncio.create_task(engine.translate(jobs, GEMMA_MAIN))
            seen = []
            while not batch.done():
                seen.append(dict((await engine.check()).stats))
                await asyncio.sleep(0.05)
            outputs = await batch
            assert not [o for o in outputs if isinstance(o, BaseException)], outputs
            seen.append(dict((await engine.check()).stats))
            return seen
        finally:
            await engine.close()

    seen = asyncio.run(run())
    assert max(s[STAT_RUNNING] for s in seen) >= 2, seen
    assert max(s[STAT_WAITING] for s in seen) >= 1, seen
    assert seen[-1] == {STAT_RUNNING: 0.0, STAT_WAITING: 0.0}, seen
