"""The vllm backend against vLLM's documented interface (served by an in-test stand-in, since vLLM
cannot run without a GPU): prompt lists as batches, context in prompts, engine metrics mirrored,
sleep after idle and wake on demand, model switching, and faults (garbage, timeout, death)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from livetranslate.workloads.translate.app import create_app
from livetranslate.workloads.translate.settings import (
    BatchSettings,
    BreakerSettings,
    TranslateSettings,
    VllmSettings,
)

from .conftest import SPANISH, FakeVllm, metric_value, read_ndjson, tr_request


def vllm_settings(fake: FakeVllm, **over: Any) -> TranslateSettings:
    vllm = VllmSettings(
        url=fake.url,
        timeout_s=over.pop("timeout_s", 5.0),
        sleep_after_idle_s=over.pop("sleep_after_idle_s", 0.0),
        metrics_interval_s=over.pop("metrics_interval_s", 0.1),
    )
    return TranslateSettings(
        pipeline="town-hall",
        backend="vllm",
        model=fake.model,
        fallback_models=["Qwen/Qwen2.5-3B-Instruct-AWQ"],
        context_segments=2,
        vllm=vllm,
        batch=BatchSettings(
            window_ms=over.pop("window_ms", 30.0),
            max_batch=over.pop("max_batch", 16),
            max_queue=over.pop("max_queue", 512),
        ),
        breaker=BreakerSettings(failures=3, reset_s=30.0),
        **over,
    )


def prompts(body: dict[str, Any]) -> list[str]:
    return body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]


@pytest.fixture
def client(fake_vllm: FakeVllm) -> Iterator[TestClient]:
    with TestClient(create_app(vllm_settings(fake_vllm))) as c:
        yield c


def test_segment_translated_with_context_in_the_prompt(client: TestClient, fake_vllm: FakeVllm) -> None:
    ctx = [
        {
            "source": "We built a robot called Max.",
            "translations": {"es": "Construimos un robot llamado Max."},
        }
    ]
    resp = client.post(
        "/v1/translate", json=tr_request("It is faster than the old one.", ["es"], context=ctx)
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
    [line] = read_ndjson(resp)
    assert line == {
        **line,
        "type": "translation",
        "segmentId": 1,
        "language": "es",
        "text": SPANISH["It is faster than the old one."],
        "quality": "ok",
    }
    prompt = prompts(fake_vllm.completions[-1])[0]
    assert "English: We built a robot called Max.\nSpanish: Construimos un robot llamado Max." in prompt
    assert fake_vllm.completions[-1]["model"] == fake_vllm.model


def test_concurrent_sessions_are_micro_batched_into_prompt_lists(
    client: TestClient, fake_vllm: FakeVllm
) -> None:
    texts = list(SPANISH)

    def one(i: int) -> list[dict[str, Any]]:
        return read_ndjson(
            client.post(
                "/v1/translate", json=tr_request(texts[i % len(texts)], ["es"], session=f"s{i}", segment=i)
            )
        )

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    assert all(
        r[0]["type"] == "translation" and r[0]["text"] == SPANISH[texts[i % len(texts)]]
        for i, r in enumerate(results)
    )
    sizes = [len(prompts(c)) for c in fake_vllm.completions]
    assert sum(sizes) == 24
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    text = client.get("/metrics").text
    assert metric_value(text, "livetranslate_translation_batch_size_count", backend="vllm") == len(sizes)


def test_engine_metrics_are_mirrored(client: TestClient, fake_vllm: FakeVllm) -> None:
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    assert (
        metric_value(text, "livetranslate_translation_engine_kv_cache_usage_ratio", pipeline="town-hall")
        == 0.42
    )
    assert metric_value(text, "livetranslate_translation_engine_requests_waiting") == 3
    assert metric_value(text, "livetranslate_translation_engine_memory", kind="gpu_reserved_fraction") == 0.85
    assert metric_value(text, "livetranslate_queue_depth", stage="translation") == 0


def test_engine_sleeps_when_idle_and_wakes_for_the_next_segment(fake_vllm: FakeVllm) -> None:
    settings = vllm_settings(fake_vllm, sleep_after_idle_s=0.3, metrics_interval_s=0.1)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 10
        while not fake_vllm.sleeping and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_vllm.sleep_calls == ["1"]
        assert metric_value(c.get("/metrics").text, "livetranslate_translation_engine_sleeping") == 1
        assert c.get("/readyz").status_code == 200  # asleep is not unready: it wakes on demand
        [line] = read_ndjson(
            c.post("/v1/translate", json=tr_request("Thank you for your questions.", ["es"]))
        )
        assert line["type"] == "translation" and line["text"] == SPANISH["Thank you for your questions."]
        assert fake_vllm.wake_calls == 1


def test_switch_to_a_fallback_model_without_dropping_segments(fake_vllm: FakeVllm) -> None:
    fake_vllm.served = [fake_vllm.model, "Qwen/Qwen2.5-3B-Instruct-AWQ"]
    fake_vllm.delay_s = 0.3
    with TestClient(create_app(vllm_settings(fake_vllm))) as c, ThreadPoolExecutor(8) as pool:
        inflight = [
            pool.submit(
                c.post,
                "/v1/translate",
                json=tr_request("Where is the train station?", ["es"], session=f"s{i}"),
            )
            for i in range(6)
        ]
        time.sleep(0.1)
        switched = c.post("/v1/admin/model", json={"model": "Qwen/Qwen2.5-3B-Instruct-AWQ"})
        assert switched.status_code == 200 and switched.json()["previous"] == fake_vllm.model
        after = c.post(
            "/v1/translate", json=tr_request("Where is the train station?", ["es"], session="late")
        )
        assert all(read_ndjson(f.result())[0]["type"] == "translation" for f in inflight)
        assert read_ndjson(after)[0]["type"] == "translation"
        models = [body["model"] for body in fake_vllm.completions]
        assert models[0] == fake_vllm.model and models[-1] == "Qwen/Qwen2.5-3B-Instruct-AWQ"
        assert c.get("/v1/admin/model").json()["model"] == "Qwen/Qwen2.5-3B-Instruct-AWQ"
        # a model outside spec.translation.model/fallbackModels is refused
        refused = c.post("/v1/admin/model", json={"model": "meta-llama/Llama-3-70B"})
        assert refused.status_code == 409 and "fallbackModels" in refused.json()["detail"]


def test_garbage_reply_is_a_clear_error(fake_vllm: FakeVllm, client: TestClient) -> None:
    fake_vllm.mode = "garbage"
    [line] = read_ndjson(client.post("/v1/translate", json=tr_request("Where is the train station?", ["es"])))
    assert line["type"] == "error" and line["code"] == "translation_failed" and "not JSON" in line["message"]
    fake_vllm.mode = "ok"
    [line] = read_ndjson(client.post("/v1/translate", json=tr_request("Where is the train station?", ["es"])))
    assert line["type"] == "translation"


def test_untranslated_output_is_retried_then_flagged(fake_vllm: FakeVllm, client: TestClient) -> None:
    fake_vllm.mode = "english"
    [line] = read_ndjson(
        client.post("/v1/translate", json=tr_request("The new product ships next week.", ["es"]))
    )
    assert line["type"] == "translation" and line["quality"] == "degraded:echo"
    assert len(fake_vllm.completions) == 2 and fake_vllm.completions[1]["temperature"] > 0  # one retry
    text = client.get("/metrics").text
    assert metric_value(text, "livetranslate_translation_quality_rejections_total", check="echo") == 2


def test_engine_timeout_and_death(fake_vllm: FakeVllm) -> None:
    settings = vllm_settings(fake_vllm, timeout_s=0.5)
    with TestClient(create_app(settings)) as c:
        fake_vllm.mode = "slow"
        started = time.monotonic()
        [line] = read_ndjson(c.post("/v1/translate", json=tr_request("Where is the train station?", ["es"])))
        assert (
            line["type"] == "error" and line["code"] == "upstream_unavailable" and "0.5 s" in line["message"]
        )
        assert time.monotonic() - started < 5
        assert fake_vllm.server is not None
        fake_vllm.server.stop()
        ready = c.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["engines"][0]["ready"]
        resp = c.post("/v1/translate", json=tr_request("Where is the train station?", ["es"]))
        assert resp.status_code == 503 and "Retry-After" in resp.headers


def test_bad_input(client: TestClient, fake_vllm: FakeVllm) -> None:
    assert (
        client.post("/v1/translate", json=tr_request("word " * 900, ["es"])).status_code == 422
    )  # protocol cap
    with TestClient(create_app(vllm_settings(fake_vllm, max_chars=1000))) as short:
        too_long = short.post("/v1/translate", json=tr_request("word " * 300, ["es"]))
        assert too_long.status_code == 422 and "at most 1000" in too_long.json()["detail"]
    assert client.post("/v1/translate", json=tr_request("Hi there.", ["not a language"])).status_code == 422
    [line] = read_ndjson(client.post("/v1/translate", json=tr_request("Hi there.", ["qq"])))
    assert line["type"] == "error" and line["code"] == "unsupported_language"


def test_full_queue_answers_429_with_retry_after(fake_vllm: FakeVllm) -> None:
    fake_vllm.delay_s = 0.5
    with (
        TestClient(create_app(vllm_settings(fake_vllm, max_queue=4, max_batch=2))) as c,
        ThreadPoolExecutor(4) as pool,
    ):
        busy = [
            pool.submit(
                c.post,
                "/v1/translate",
                json=tr_request("Where is the train station?", ["es"], session=f"s{i}"),
            )
            for i in range(4)
        ]
        time.sleep(0.15)
        refused = c.post("/v1/translate", json=tr_request("Where is the train station?", ["es"], session="x"))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert all(f.result().status_code == 200 for f in busy)
        assert (
            metric_value(
                c.get("/metrics").text, "livetranslate_translation_refused_total", reason="queue_full"
            )
            == 1
        )


def test_a_pod_serves_the_model_its_pipeline_file_names(
    fake_vllm: FakeVllm, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's model choice (the autoscaler's fallback) reaches the pods one way: the
    pipeline file, whose change rolls them through the config hash. A pod reads it at start; it
    does not watch a subPath mount the kubelet never updates."""
    from livetranslate.api import TranslationPipelineSpec
    from livetranslate.config import Endpoints, Placement, ResolvedPipeline

    small = "Qwen/Qwen2.5-3B-Instruct-AWQ"
    fake_vllm.served = [fake_vllm.model, small]
    resolved = ResolvedPipeline(
        name="town-hall",
        spec=TranslationPipelineSpec.model_validate(
            {"targetLanguages": ["es"], "translation": {"model": fake_vllm.model, "fallbackModels": [small]}}
        ),
        placement=Placement(translationBackend="vllm", translationModel=small),
        endpoints=Endpoints(audio="http://a", translation="http://t", gateway="http://g"),
    )
    path = tmp_path / "pipeline.json"
    path.write_text(resolved.to_json())
    monkeypatch.setenv("LT_PIPELINE_CONFIG", str(path))
    monkeypatch.setenv("LT_TRANSLATE_VLLM__URL", fake_vllm.url)
    with TestClient(create_app()) as c:
        assert c.get("/v1/admin/model").json()["model"] == small
        [line] = read_ndjson(c.post("/v1/translate", json=tr_request("Where is the train station?", ["es"])))
        assert line["type"] == "translation" and fake_vllm.completions[-1]["model"] == small


def _pipeline_file(tmp_path: Any, translation: dict[str, Any], model: str) -> str:
    from livetranslate.api import TranslationPipelineSpec
    from livetranslate.config import Endpoints, Placement, ResolvedPipeline

    resolved = ResolvedPipeline(
        name="town-hall",
        spec=TranslationPipelineSpec.model_validate(
            {"targetLanguages": ["es"], "translation": {"backend": "vllm", "model": model, **translation}}
        ),
        placement=Placement(translationBackend="vllm", translationModel=model),
        endpoints=Endpoints(audio="http://a", translation="http://t", gateway="http://g"),
    )
    path = tmp_path / "pipeline.json"
    path.write_text(resolved.to_json())
    return str(path)


def test_spec_sleep_after_idle_puts_vllm_to_sleep_and_a_request_wakes_it(
    fake_vllm: FakeVllm, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spec.translation.sleepAfterIdle reaches the pod through its pipeline file: GPU memory freed
    while nobody speaks, the next segment wakes the engine and is translated."""
    monkeypatch.setenv(
        "LT_PIPELINE_CONFIG", _pipeline_file(tmp_path, {"sleepAfterIdle": "300ms"}, fake_vllm.model)
    )
    monkeypatch.setenv("LT_TRANSLATE_VLLM__URL", fake_vllm.url)
    monkeypatch.setenv("LT_TRANSLATE_VLLM__METRICS_INTERVAL_S", "0.1")
    with TestClient(create_app()) as c:
        deadline = time.monotonic() + 10
        while not fake_vllm.sleeping and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_vllm.sleep_calls == ["1"]
        [line] = read_ndjson(c.post("/v1/translate", json=tr_request("Where is the train station?", ["es"])))
        assert line["type"] == "translation" and fake_vllm.wake_calls == 1 and not fake_vllm.sleeping


def test_spec_fallback_endpoint_takes_over_when_vllm_fails(
    fake_vllm: FakeVllm, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spec.translation.fallback: the segments vLLM cannot translate (500s) go to the endpoint
    behind its circuit breaker, with the key from the Secret the operator mounts."""
    from .conftest import ThreadServer

    hosted = FakeVllm(model="hosted-model")
    hosted.server = ThreadServer(hosted.app()).start()
    try:
        fake_vllm.mode = "error"
        key_file = tmp_path / "key"
        key_file.write_text("sk-test\n")
        monkeypatch.setenv(
            "LT_PIPELINE_CONFIG",
            _pipeline_file(
                tmp_path,
                {
                    "fallback": [
                        {
                            "endpoint": hosted.url,
                            "model": "hosted-model",
                            "promptStyle": "completion",
                            "apiKeySecretRef": {"name": "llm-key"},
                        }
                    ]
                },
                fake_vllm.model,
            ),
        )
        monkeypatch.setenv("LT_TRANSLATE_VLLM__URL", fake_vllm.url)
        from livetranslate.workloads.translate import settings as translate_settings

        settings = translate_settings.load_settings()
        assert str(settings.fallback_endpoints[0].api_key_file) == "/etc/livetranslate/fallback-keys/0/apiKey"
        settings.fallback_endpoints[0].api_key_file = key_file  # where the pod has it mounted
        with TestClient(create_app(settings)) as c:
            for i in range(3):
                [line] = read_ndjson(
                    c.post("/v1/translate", json=tr_request(f"Where is station {i}?", ["es"], segment=i))
                )
                assert line["type"] == "translation" and line["quality"] == "fallback", line
                assert line["backend"] == "fallback-1"
            assert (
                metric_value(
                    c.get("/metrics").text,
                    "livetranslate_translation_fallbacks_total",
                    from_backend="vllm",
                    to_backend="fallback-1",
                )
                == 3
            )
        assert [r["model"] for r in hosted.completions] == ["hosted-model"] * 3
        assert hosted.authorizations == ["Bearer sk-test"] * 3
    finally:
        hosted.server.stop()
