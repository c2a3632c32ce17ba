"""The openai backend against a real OpenAI-compatible server with a real model: llama.cpp's
llama-server running Gemma-3-270M, micro-batches sent as prompt lists and decoded together in its
parallel slots. Also the fallback chain (local engine, then external) and its breaker."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from livetranslate.workloads.translate.app import create_app
from livetranslate.workloads.translate.quality import check
from livetranslate.workloads.translate.settings import (
    BatchSettings,
    BreakerSettings,
    OpenAISettings,
    TranslateSettings,
    VllmSettings,
)

from .conftest import (
    GEMMA_MAIN,
    GEMMA_SMALL,
    FakeVllm,
    LlamaServer,
    free_port,
    metric_value,
    read_ndjson,
    tr_request,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SENTENCES = [
    "Thank you all for coming today.",
    "The meeting will start in five minutes.",
    "Where is the train station?",
    "I would like a cup of coffee, please.",
]


def openai_settings(url: str, **over: Any) -> TranslateSettings:
    return TranslateSettings(
        pipeline="llama",
        backend="openai",
        model=over.pop("model", GEMMA_MAIN),
        fallback_models=[GEMMA_SMALL],
        context_segments=2,
        openai=OpenAISettings(
            url=url, timeout_s=over.pop("timeout_s", 120.0), batch_mode=over.pop("batch_mode", "list")
        ),
        batch=over.pop("batch", BatchSettings(window_ms=10.0, max_batch=8)),
        request_timeout_s=240.0,
        **over,
    )


@pytest.fixture(scope="module")
def client(llama_server: str) -> Iterator[TestClient]:
    with TestClient(create_app(openai_settings(llama_server))) as c:
        assert c.get("/readyz").status_code == 200
        yield c


def test_translates_each_target_with_the_real_model(client: TestClient) -> None:
    ctx = [
        {
            "source": "We opened a new office in Madrid.",
            "translations": {
                "es": "Abrimos una nueva oficina en Madrid.",
                "de": "Wir haben ein neues Büro in Madrid eröffnet.",
            },
        }
    ]
    lines = read_ndjson(
        client.post("/v1/translate", json=tr_request(SENTENCES[2], ["es", "de"], context=ctx))
    )
    assert sorted(line["language"] for line in lines) == ["de", "es"]
    for line in lines:
        assert line["type"] == "translation", line
        assert line["quality"] in ("ok", "retried"), line
        assert check(SENTENCES[2], line["text"], "en", line["language"]).ok
        assert line["latencySeconds"] > 0
    text = client.get("/metrics").text
    assert metric_value(text, "livetranslate_translation_latency_seconds_count", backend="openai") >= 2


def test_concurrent_sessions_each_get_every_target(client: TestClient) -> None:
    def one(i: int) -> list[dict[str, Any]]:
        return read_ndjson(
            client.post(
                "/v1/translate",
                json=tr_request(
                    SENTENCES[i % len(SENTENCES)], ["es", "de"], session=f"s{i}", segment=100 + i
                ),
            )
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, lines in enumerate(results):
        assert {(line["segmentId"], line["language"]) for line in lines} == {(100 + i, "es"), (100 + i, "de")}
        # every line is a translation (possibly flagged) or a clear error: never silence
        assert all(line["type"] == "translation" and line["text"] or line.get("code") for line in lines)
    good = sum(
        line["type"] == "translation" and line["quality"] in ("ok", "retried")
        for lines in results
        for line in lines
    )
    assert good >= 12, results


def test_a_micro_batch_is_decoded_together_and_each_segment_gets_its_own_translation(
    llama: LlamaServer,
) -> None:
    """The batcher's prompt list fills several of the engine's slots, which advance in the same
    decode steps; every prompt of the list gets its own answer (llama-cpp-python's server kept only
    the first prompt of a list, so a batch there came back with one translation)."""
    window = BatchSettings(window_ms=500.0, max_batch=llama.slots)
    with TestClient(create_app(openai_settings(llama.url, batch=window))) as c:
        before = llama.metrics()
        with ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(
                    lambda i: read_ndjson(
                        c.post(
                            "/v1/translate", json=tr_request(SENTENCES[i], ["es"], session=f"b{i}", segment=i)
                        )
                    ),
                    range(4),
                )
            )
        after = llama.metrics()
        text = c.get("/metrics").text
    # the four segments travelled as one request holding four prompts (a retry would be another)
    batches = metric_value(text, "livetranslate_translation_batch_size_count")
    assert batches - metric_value(text, "livetranslate_translation_batch_size_bucket", le="2.0") == 1
    decodes = after["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
    busy = (
        after["llamacpp:n_busy_slots_per_decode"] * after["llamacpp:n_decode_total"]
        - before["llamacpp:n_busy_slots_per_decode"] * before["llamacpp:n_decode_total"]
    )
    assert decodes > 0 and busy / decodes > 2.0, (busy, decodes)  # sequences shared decode steps
    texts = []
    for i, [line] in enumerate(results):
        assert line["type"] == "translation" and line["segmentId"] == i, line
        texts.append(line["text"])
    assert len(set(texts)) == 4, texts  # its own translation each, not one answer copied
    assert sum(check(SENTENCES[i], t, "en", "es").ok for i, t in enumerate(texts)) >= 3, texts


def test_model_switch_on_a_live_server_keeps_segments_in_flight(client: TestClient) -> None:
    with ThreadPoolExecutor(4) as pool:
        inflight = [
            pool.submit(client.post, "/v1/translate", json=tr_request(s, ["es"], session=f"m{i}"))
            for i, s in enumerate(SENTENCES)
        ]
        time.sleep(0.2)
        switched = client.post("/v1/admin/model", json={"model": GEMMA_SMALL})
        assert switched.status_code == 200, switched.text
        results = [read_ndjson(f.result()) for f in inflight]
    assert all(r[0]["type"] == "translation" for r in results)
    after = read_ndjson(client.post("/v1/translate", json=tr_request(SENTENCES[0], ["es"], session="after")))
    assert after[0]["type"] == "translation"
    assert client.get("/v1/admin/model").json()["model"] == GEMMA_SMALL
    assert client.post("/v1/admin/model", json={"model": "not-served"}).status_code == 409
    assert client.post("/v1/admin/model", json={"model": GEMMA_MAIN}).status_code == 200


def test_local_engine_failing_falls_back_to_the_external_endpoint(
    fake_vllm: FakeVllm, llama_server: str
) -> None:
    """vLLM in the pod answers 500 (out of memory): segments go to the external OpenAI endpoint."""
    fake_vllm.mode = "error"
    settings = TranslateSettings(
        pipeline="chain",
        backend="vllm",
        model=fake_vllm.model,
        fallback=["openai"],
        context_segments=2,
        vllm=VllmSettings(url=fake_vllm.url, metrics_interval_s=30.0),
        openai=OpenAISettings(url=llama_server, model=GEMMA_MAIN, timeout_s=120.0),
        breaker=BreakerSettings(failures=2, reset_s=60.0),
        request_timeout_s=240.0,
    )
    with TestClient(create_app(settings)) as c:
        for i in range(3):
            [line] = read_ndjson(c.post("/v1/translate", json=tr_request(SENTENCES[i], ["es"], segment=i)))
            assert line["type"] == "translation" and line["quality"] == "fallback", line
            assert line["backend"] == "openai"
        text = c.get("/metrics").text
        assert (
            metric_value(
                text, "livetranslate_translation_fallbacks_total", from_backend="vllm", to_backend="openai"
            )
            == 3
        )
        # after two failed calls (the first segment's try and retry) the breaker stops sending work
        # to the broken engine: later segments go straight to the external endpoint
        assert metric_value(text, "livetranslate_translation_circuit_open", backend="vllm") == 1
        assert len(fake_vllm.completions) == 2


@pytest.mark.skipif(shutil.which("apertium-apy") is None, reason="apertium-apy not installed")
def test_unreachable_endpoint_falls_back_to_offline_apertium() -> None:
    settings = openai_settings(
        f"http://127.0.0.1:{free_port()}",
        timeout_s=2.0,
        fallback=["apertium"],
        source_language="en",
        target_languages=["es"],
    )
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["engines"][0]["detail"]
        deadline = time.monotonic() + 30
        while not ready.json()["engines"][1]["ready"] and time.monotonic() < deadline:
            time.sleep(0.1)
            ready = c.get("/readyz")
        # A preview of a sentence still being spoken is not worth the fallback: the primary's
        # error comes back at once, and the gateway shows the sentence's own translation later.
        [preview] = read_ndjson(
            c.post("/v1/translate", json={**tr_request("The house", ["es"]), "partial": True})
        )
        assert preview["type"] == "error", preview
        [line] = read_ndjson(c.post("/v1/translate", json=tr_request("The house is big.", ["es"])))
        assert line["type"] == "translation" and line["quality"] == "fallback"
        assert line["text"].startswith("La casa es")
