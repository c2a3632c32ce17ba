"""PromQL the autoscaler sends, and how it reads Prometheus' answers (no data is never a zero)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from livetranslate.operator.scaling.signals import PrometheusSignals, build_queries, rate_window_seconds
from livetranslate_testing.promql import unknown_metrics


def test_queries_name_only_known_metrics_and_select_this_pipelines_pods() -> None:
    q = build_queries("town-hall", "demo", 15.0)
    exprs = [
        q.caption_p95,
        q.caption_count,
        q.translation_p95,
        q.translation_count,
        q.queue_depth,
        q.sessions_active,
        q.audio_rtf,
        q.gpu_memory_fraction,
        q.vllm_requests_waiting,
        q.kv_cache_usage,
        *q.freshness.values(),
    ]
    for expr in exprs:
        assert not unknown_metrics(expr), expr
    assert "histogram_quantile(0.95" in q.caption_p95 and "[60s]" in q.caption_p95
    assert 'pipeline="town-hall"' in q.caption_p95 and 'namespace="demo"' in q.caption_p95
    # GPU memory and vLLM series belong to the translation pods, joined on dcgm-exporter's labels.
    for expr in (q.gpu_memory_fraction, q.vllm_requests_waiting, q.kv_cache_usage):
        assert 'pod=~"town-hall-translation-.*"' in expr
    assert "DCGM_FI_DEV_FB_USED" in q.gpu_memory_fraction and "DCGM_FI_DEV_FB_FREE" in q.gpu_memory_fraction
    assert 'pod=~"town-hall-gateway-.*"' in q.sessions_active


def test_rate_window_covers_four_intervals_and_never_less_than_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LT_SCALING_MIN_RATE_WINDOW_SECONDS", raising=False)
    assert rate_window_seconds(15) == 60
    assert rate_window_seconds(1) == 30
    monkeypatch.setenv("LT_SCALING_MIN_RATE_WINDOW_SECONDS", "3")
    assert rate_window_seconds(1) == 4


def _prometheus(answers: dict[str, Any]) -> httpx.MockTransport:
    """A fake Prometheus: each query answered by the first key it contains; others get no series."""

    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        for key, value in answers.items():
            if key in query:
                if isinstance(value, Exception):
                    raise value
                result = value if isinstance(value, list) else [{"metric": {}, "value": [0, str(value)]}]
                return httpx.Response(
                    200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
                )
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    return httpx.MockTransport(handler)


async def gather(answers: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(transport=_prometheus(answers)) as client:
        return await PrometheusSignals("http://prom:9090", client=client).gather("town-hall", "demo", 15.0)


async def test_fresh_values_are_read_and_missing_series_are_marked_missing() -> None:
    s = await gather(
        {
            "time() - max(timestamp(": 2.0,  # every family scraped 2 s ago
            "histogram_quantile(0.95, sum by (le) (rate(livetranslate_caption": 1.8,
            "sum(rate(livetranslate_caption": 4.0,
            "livetranslate_sessions_active": 120,
            "livetranslate_queue_depth": [
                {"metric": {"stage": "audio"}, "value": [0, "3"]},
                {"metric": {"stage": "translation"}, "value": [0, "7"]},
            ],
        }
    )
    assert s.caption_p95.ok and s.caption_p95.value == pytest.approx(1.8)
    assert s.sessions_active.value == 120
    assert s.queue("audio").value == 3 and s.queue("translation").value == 7
    assert s.queue("gateway").status == "missing"
    assert s.gpu_memory_fraction.status == "missing" and s.gpu_memory_fraction.value is None
    assert not s.error


async def test_no_observations_is_idle_not_missing_and_old_samples_are_stale() -> None:
    s = await gather(
        {
            "time() - max(timestamp(livetranslate_caption": 1.0,
            "time() - max(timestamp(livetranslate_sessions": 900.0,
            "histogram_quantile(0.95, sum by (le) (rate(livetranslate_caption": "NaN",
            "sum(rate(livetranslate_caption": 0,
            "livetranslate_sessions_active": 3,
        }
    )
    assert s.caption_p95.status == "idle" and s.caption_p95.usable and s.caption_p95.or_zero_if_idle() == 0.0
    assert s.sessions_active.status == "stale" and s.sessions_active.value is None
    assert s.sessions_active.age_seconds == 900.0


async def test_unreachable_prometheus_marks_every_signal() -> None:
    s = await gather({"": httpx.ConnectError("connection refused")})
    assert s.error and "connection refused" in s.error
    assert s.caption_p95.status == "unreachable" and s.queue("audio").status == "unreachable"


async def test_prometheus_error_answer_is_unreachable_not_zero() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, content=json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        s = await PrometheusSignals("http://prom:9090", client=client).gather("p", "ns", 15.0)
    assert s.error.startswith("HTTP 400")
    assert not s.sessions_active.usable


async def test_throughput_per_stage_is_read_from_the_stages_own_series() -> None:
    q = build_queries("town-hall", "demo", 15.0)
    for expr in (q.audio_throughput, q.translation_throughput):
        assert not unknown_metrics(expr), expr
    assert "livetranslate_audio_processing_seconds_count" in q.audio_throughput
    # The gateway records the same translation-latency histogram: only the translation
    # service's series (with its backend label) count completed translations.
    assert 'backend=~".+"' in q.translation_throughput
    s = await gather(
        {
            "time() - max(timestamp(": 2.0,
            "sum(rate(livetranslate_audio_processing_seconds_count": 40.0,
            'sum(rate(livetranslate_translation_latency_seconds_count{pipeline="town-hall",namespace="demo",'
            'backend=~".+"}': 12.5,
        }
    )
    assert s.rate("audio").value == 40.0 and s.rate("translation").value == 12.5
    assert (await gather({})).rate("audio").status == "missing"


def test_translation_latency_is_the_listeners_series_only() -> None:
    """The gateway (what listeners see) and the translation service record the same histogram;
    a p95 over both would mix two measurements. The SLO reads the gateway's, which has no backend."""
    q = build_queries("town-hall", "demo", 15.0)
    for expr in (q.translation_p95, q.translation_count):
        assert 'backend=""' in expr, expr
    assert "backend" not in q.caption_p95
