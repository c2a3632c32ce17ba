"""What the autoscaler observes, read from Prometheus' HTTP API with PromQL.

Every signal carries its own freshness: a value Prometheus could not give (unreachable, no series,
a series whose last sample is too old) is marked as such and never turned into a zero, because a
zero would read as "no load" and make the policy scale down on missing data. A latency histogram
whose series exist but saw no observations in the window (nobody talking) is ``idle``: that is
real information (no latency to speak of), distinct from ``missing``.

Label conventions (what PodMonitors / ServiceMonitors give us): our workloads' series carry
``pipeline`` (set by the workload) and ``namespace``/``pod`` (target labels added by the scrape
config); dcgm-exporter with pod mapping on and vLLM's engine carry the ``namespace``/``pod`` of the
translation pod they measure (scrape dcgm-exporter with ``honorLabels: true`` so its pod label is
not renamed ``exported_pod``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from livetranslate import metrics as m
from livetranslate.api import Stage

log = logging.getLogger(__name__)

SignalStatus = Literal["ok", "idle", "missing", "stale", "unreachable"]
STAGES: tuple[Stage, ...] = ("audio", "translation", "gateway")

# Label names under which the exporters' pod/namespace land in Prometheus (see module docstring).
POD_LABEL = "pod"
NAMESPACE_LABEL = "namespace"
# PromQL range of the rate() under histogram_quantile: long enough for a stable p95 at a few
# captions per second, short enough to see a breach within two 15 s intervals. It must cover at
# least two scrapes: set LT_SCALING_MIN_RATE_WINDOW_SECONDS lower only with a faster scrape.
MIN_RATE_WINDOW_S = 30.0
MIN_RATE_WINDOW_ENV = "LT_SCALING_MIN_RATE_WINDOW_SECONDS"


def rate_window_seconds(interval_seconds: float) -> int:
    """The rate() window for a pipeline: four scaling intervals, never below the minimum."""
    floor = float(os.environ.get(MIN_RATE_WINDOW_ENV) or MIN_RATE_WINDOW_S)
    return int(max(floor, 4 * interval_seconds))


@dataclass(frozen=True)
class Sample:
    """One observed value with its freshness; ``value`` is None unless status is ok."""

    value: float | None
    status: SignalStatus = "ok"
    age_seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.value is not None

    @property
    def usable(self) -> bool:
        """True when the policy may act on it: a value, or a known absence of traffic."""
        return self.ok or self.status == "idle"

    def or_zero_if_idle(self) -> float | None:
        """The value, 0 for an idle histogram (no observations = no latency), None otherwise."""
        if self.ok:
            return self.value
        return 0.0 if self.status == "idle" else None

    @staticmethod
    def of(value: float, age_seconds: float = 0.0) -> Sample:
        return Sample(value=value, status="ok", age_seconds=age_seconds)

    @staticmethod
    def absent(status: SignalStatus, detail: str = "") -> Sample:
        return Sample(value=None, status=status, detail=detail)


MISSING = Sample.absent("missing")


@dataclass(frozen=True)
class Signals:
    """A snapshot of everything the policy looks at, taken at ``time`` (Unix seconds)."""

    time: float
    caption_p95: Sample = MISSING
    translation_p95: Sample = MISSING
    queue_depth: Mapping[str, Sample] = field(default_factory=dict)
    sessions_active: Sample = MISSING
    audio_rtf: Sample = MISSING
    # Highest used / (used + free) over the translation pods' GPUs (dcgm-exporter, MiB).
    gpu_memory_fraction: Sample = MISSING
    vllm_requests_waiting: Sample = MISSING
    kv_cache_usage: Sample = MISSING
    # Items each stage completes per second (audio decode passes, translations), in the units of
    # its queue depth: it turns a backlog into the replica-seconds needed to drain it. Optional:
    # without it the policy sizes backlogs by the demand model only.
    throughput: Mapping[str, Sample] = field(default_factory=dict)
    # Sessions each stage refused per second at its measured capacity (admission), and the sessions
    # all its replicas together sustain: a refused session is demand the replicas did not carry.
    refusals: Mapping[str, Sample] = field(default_factory=dict)
    capacity: Mapping[str, Sample] = field(default_factory=dict)
    # Allocatable NPUs not yet requested in the cluster; None = unknown or no NPU pool.
    npu_free: int | None = None
    # Set when Prometheus itself could not be asked (every sample is then ``unreachable``).
    error: str = ""

    def queue(self, stage: str) -> Sample:
        return self.queue_depth.get(stage, MISSING)

    def rate(self, stage: str) -> Sample:
        """Items per second the stage completes (``throughput``), MISSING when not known."""
        return self.throughput.get(stage, MISSING)

    def describe_problems(self, names: tuple[str, ...]) -> list[str]:
        """'caption_p95: stale (412s old)'-style lines for the named signals that are not usable."""
        out = []
        for name in names:
            sample = self.queue(name.split(":", 1)[1]) if name.startswith("queue:") else getattr(self, name)
            if not sample.usable:
                extra = f" ({sample.age_seconds:.0f}s old)" if sample.status == "stale" else ""
                extra += f": {sample.detail}" if sample.detail else ""
                out.append(f"{name} {sample.status}{extra}")
        return out


@dataclass(frozen=True)
class Queries:
    """The PromQL of every signal for one pipeline (exposed so docs and tests can show it)."""

    caption_p95: str
    caption_count: str
    translation_p95: str
    translation_count: str
    queue_depth: str
    sessions_active: str
    audio_rtf: str
    gpu_memory_fraction: str
    vllm_requests_waiting: str
    kv_cache_usage: str
    audio_throughput: str
    translation_throughput: str
    admission_refusals: str
    stage_capacity: str
    freshness: dict[str, str]


def _sel(**labels: str) -> str:
    parts = []
    for key, value in labels.items():
        op = "=~" if key.endswith("__re") else "="
        parts.append(f'{key.removesuffix("__re")}{op}"{value}"')
    return "{" + ",".join(parts) + "}"


def build_queries(name: str, namespace: str, interval_seconds: float) -> Queries:
    """PromQL for one pipeline. Pure, so the exact queries are unit-tested and documented."""
    window = f"{rate_window_seconds(interval_seconds)}s"
    ours = _sel(pipeline=name, **{NAMESPACE_LABEL: namespace})
    gateway_pods = _sel(
        pipeline=name, **{NAMESPACE_LABEL: namespace, f"{POD_LABEL}__re": f"{name}-gateway-.*"}
    )
    translation_pods = _sel(**{NAMESPACE_LABEL: namespace, f"{POD_LABEL}__re": f"{name}-translation-.*"})

    # The translation service records the same histogram as the gateway, with a ``backend``
    # label: the SLO is what listeners see, so latency reads the gateway's series only
    # (``backend=""`` matches series without the label), never a mix of the two.
    listeners = _sel(pipeline=name, **{NAMESPACE_LABEL: namespace, "backend": ""})

    def p95(metric: str, sel: str = ours) -> str:
        return f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{sel}[{window}])))"

    def count(metric: str, sel: str = ours) -> str:
        return f"sum(rate({metric}_count{sel}[{window}]))"

    used = f"DCGM_FI_DEV_FB_USED{translation_pods}"
    free = f"DCGM_FI_DEV_FB_FREE{translation_pods}"
    return Queries(
        caption_p95=p95(m.CAPTION_LATENCY),
        caption_count=count(m.CAPTION_LATENCY),
        translation_p95=p95(m.TRANSLATION_LATENCY, listeners),
        translation_count=count(m.TRANSLATION_LATENCY, listeners),
        queue_depth=f"sum by (stage) ({m.QUEUE_DEPTH}{ours})",
        sessions_active=f"sum({m.SESSIONS_ACTIVE}{gateway_pods})",
        audio_rtf=f"avg({m.AUDIO_REALTIME_FACTOR}{ours})",
        gpu_memory_fraction=f"max({used} / ({used} + {free}))",
        vllm_requests_waiting=f"sum(vllm:num_requests_waiting{translation_pods})",
        kv_cache_usage=f"max(vllm:kv_cache_usage_perc{translation_pods})",
        # Decode passes and translations completed per second: the units of each stage's queue
        # (the scheduler's pending passes, the batcher's pending requests). Translation counts the
        # translation service's own series (they carry ``backend``), not the gateway's copy.
        audio_throughput=f"sum(rate({m.AUDIO_PROCESSING}_count{ours}[{window}]))",
        translation_throughput=(
            f"sum(rate({m.TRANSLATION_LATENCY}_count"
            f"{_sel(pipeline=name, **{NAMESPACE_LABEL: namespace, 'backend__re': '.+'})}"
            f"[{window}]))"
        ),
        admission_refusals=f"sum by (stage) (rate({m.ADMISSION_REFUSALS}{ours}[{window}]))",
        stage_capacity=f"sum by (stage) ({m.STAGE_CAPACITY_SESSIONS}{ours})",
        # time() - timestamp(): how old the newest sample of each family is.
        freshness={
            "caption": f"time() - max(timestamp({m.CAPTION_LATENCY}_count{ours}))",
            "translation": f"time() - max(timestamp({m.TRANSLATION_LATENCY}_count{ours}))",
            "queue": f"time() - max(timestamp({m.QUEUE_DEPTH}{ours}))",
            "sessions": f"time() - max(timestamp({m.SESSIONS_ACTIVE}{gateway_pods}))",
            "rtf": f"time() - max(timestamp({m.AUDIO_REALTIME_FACTOR}{ours}))",
            "gpu": f"time() - max(timestamp({used}))",
            "vllm": f"time() - max(timestamp(vllm:num_requests_waiting{translation_pods}))",
        },
    )


class PrometheusError(RuntimeError):
    """Prometheus did not answer a query with data (unreachable, HTTP error, bad query)."""


async def instant_query(client: httpx.AsyncClient, base_url: str, promql: str) -> list[dict[str, Any]]:
    """Run one instant query; returns the vector's result list (may be empty)."""
    try:
        resp = await client.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": promql})
    except httpx.HTTPError as exc:
        raise PrometheusError(f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise PrometheusError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    body = resp.json()
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
    data = body.get("data", {})
    if data.get("resultType") == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    result = data.get("result", [])
    return result if isinstance(result, list) else []


def _scalar(result: list[dict[str, Any]]) -> float | None:
    """The single value of an aggregated vector; None when there is no series."""
    if not result:
        return None
    return float(result[0]["value"][1])


def _sample(
    value: float | None,
    age: float | None,
    stale_after: float,
    *,
    histogram: bool = False,
    rate: float | None = None,
) -> Sample:
    if value is None or age is None:
        return Sample.absent("missing", "no series")
    if age > stale_after:
        return Sample(value=None, status="stale", age_seconds=age)
    if math.isnan(value) or math.isinf(value):
        if histogram and (rate is None or rate == 0.0):
            return Sample(value=None, status="idle", age_seconds=age)
        return Sample.absent("missing", "not a number")
    return Sample.of(value, age)


class PrometheusSignals:
    """Gathers a ``Signals`` snapshot for one pipeline from one Prometheus."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
    ) -> None:
        self.base_url = base_url
        self._client = client
        self._timeout = timeout_s

    async def gather(
        self,
        name: str,
        namespace: str,
        interval_seconds: float,
        *,
        stale_after_s: float | None = None,
        now: float | None = None,
        npu_free: int | None = None,
    ) -> Signals:
        """Ask every query concurrently; never raises for Prometheus trouble (marks the samples)."""
        q = build_queries(name, namespace, interval_seconds)
        stale_after = stale_after_s if stale_after_s is not None else max(60.0, 4 * interval_seconds)
        taken = time.time() if now is None else now
        names = [
            "caption_p95",
            "caption_count",
            "translation_p95",
            "translation_count",
            "queue_depth",
            "sessions_active",
            "audio_rtf",
            "gpu_memory_fraction",
            "vllm_requests_waiting",
            "kv_cache_usage",
            "audio_throughput",
            "translation_throughput",
            "admission_refusals",
            "stage_capacity",
        ]
        promqls = [getattr(q, n) for n in names] + list(q.freshness.values())
        client = self._client or httpx.AsyncClient(timeout=self._timeout)
        try:
            results = await asyncio.gather(
                *(instant_query(client, self.base_url, p) for p in promqls), return_exceptions=True
            )
        finally:
            if self._client is None:
                await client.aclose()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            reason = str(errors[0])
            log.warning(
                "prometheus query failed",
                extra={"pipeline": name, "namespace": namespace, "fields": {"error": reason}},
            )
            down = Sample.absent("unreachable", reason)
            return Signals(
                time=taken,
                caption_p95=down,
                translation_p95=down,
                queue_depth={s: down for s in STAGES},
                sessions_active=down,
                audio_rtf=down,
                gpu_memory_fraction=down,
                vllm_requests_waiting=down,
                kv_cache_usage=down,
                npu_free=npu_free,
                error=reason,
            )
        ok: list[list[dict[str, Any]]] = [r for r in results if not isinstance(r, BaseException)]
        by = dict(zip(names, ok[: len(names)], strict=True))
        age = {k: _scalar(v) for k, v in zip(q.freshness, ok[len(names) :], strict=True)}

        queue_age = age["queue"]
        queues: dict[str, Sample] = {}
        for series in by["queue_depth"]:
            stage = series.get("metric", {}).get("stage", "")
            queues[stage] = _sample(float(series["value"][1]), queue_age, stale_after)
        for stage in STAGES:
            queues.setdefault(stage, Sample.absent("missing", "no series"))
        return Signals(
            time=taken,
            caption_p95=_sample(
                _scalar(by["caption_p95"]),
                age["caption"],
                stale_after,
                histogram=True,
                rate=_scalar(by["caption_count"]),
            ),
            translation_p95=_sample(
                _scalar(by["translation_p95"]),
                age["translation"],
                stale_after,
                histogram=True,
                rate=_scalar(by["translation_count"]),
            ),
            queue_depth=queues,
            sessions_active=_sample(_scalar(by["sessions_active"]), age["sessions"], stale_after),
            audio_rtf=_sample(_scalar(by["audio_rtf"]), age["rtf"], stale_after),
            gpu_memory_fraction=_sample(_scalar(by["gpu_memory_fraction"]), age["gpu"], stale_after),
            vllm_requests_waiting=_sample(_scalar(by["vllm_requests_waiting"]), age["vllm"], stale_after),
            kv_cache_usage=_sample(_scalar(by["kv_cache_usage"]), age["vllm"], stale_after),
            throughput={
                "audio": _sample(_scalar(by["audio_throughput"]), age["rtf"], stale_after),
                "translation": _sample(
                    _scalar(by["translation_throughput"]), age["translation"], stale_after
                ),
            },
            refusals=_by_stage(by["admission_refusals"], age["sessions"], stale_after),
            capacity=_by_stage(by["stage_capacity"], age["sessions"], stale_after),
            npu_free=npu_free,
        )

    async def pod_sessions(self, name: str, namespace: str, stage: str) -> dict[str, float]:
        """Live sessions per pod of one stage ({} when Prometheus cannot say): what a scale-down
        weighs to remove the emptiest pod."""
        promql = (
            f"sum by (pod) ({m.SESSIONS_ACTIVE}"
            + _sel(pipeline=name, **{NAMESPACE_LABEL: namespace, f"{POD_LABEL}__re": f"{name}-{stage}-.*"})
            + ")"
        )
        client = self._client or httpx.AsyncClient(timeout=self._timeout)
        try:
            result = await instant_query(client, self.base_url, promql)
        except PrometheusError as exc:
            log.warning("per-pod sessions unknown", extra={"pipeline": name, "fields": {"error": str(exc)}})
            return {}
        finally:
            if self._client is None:
                await client.aclose()
        return {
            str(s.get("metric", {}).get(POD_LABEL)): float(s["value"][1])
            for s in result
            if s.get("metric", {}).get(POD_LABEL)
        }


def _by_stage(result: list[dict[str, Any]], age: float | None, stale_after: float) -> dict[str, Sample]:
    """One sample per ``stage`` label of a ``sum by (stage)`` answer."""
    return {
        str(s.get("metric", {}).get("stage", "")): _sample(float(s["value"][1]), age, stale_after)
        for s in result
    }
