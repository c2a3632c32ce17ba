"""The translation service's own Prometheus metrics: per-target results, the fallback chain's
hand-overs and refusals, batching, admission (capacity in sessions, refusals), and each engine's
health and usage mirrored from its server.

Names come from ``livetranslate.metrics`` (shared with the autoscaler and the dashboards); every
series carries the pipeline, and those about one engine its backend.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from livetranslate import metrics as m

_PER_BACKEND = ["pipeline", "backend"]


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry, pipeline: str) -> None:
        self.pipeline = pipeline

        def per_backend(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, _PER_BACKEND, registry=registry)

        def counter(name: str, documentation: str, labels: list[str]) -> Counter:
            # prometheus_client appends the _total the shared names already carry.
            return Counter(name.removesuffix("_total"), documentation, labels, registry=registry)

        self.latency = m.translation_latency(registry, ("backend",))
        self.queue = m.queue_depth(registry)
        self.batch = Histogram(
            m.TRANSLATION_BATCH_SIZE,
            "Segments per engine call",
            _PER_BACKEND,
            buckets=m.BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            m.TRANSLATION_BATCH_SECONDS,
            "Wall time of one engine call",
            _PER_BACKEND,
            buckets=m.PROCESSING_BUCKETS,
            registry=registry,
        )
        self.results = counter(
            m.TRANSLATION_RESULTS,
            "Per-target results sent to the gateway",
            ["pipeline", "outcome", "quality"],
        )
        self.fallbacks = counter(
            m.TRANSLATION_FALLBACKS,
            "Segments handed to the next engine of the chain",
            ["pipeline", "from_backend", "to_backend", "reason"],
        )
        self.rejections = counter(
            m.TRANSLATION_QUALITY_REJECTIONS,
            "Engine outputs refused by a quality check",
            ["pipeline", "backend", "check"],
        )
        self.refused = counter(
            m.TRANSLATION_REFUSED,
            "Requests refused before any work (backpressure, bad input)",
            ["pipeline", "reason"],
        )
        # Admission, in the series every stage publishes (stage="translation"): the sessions this
        # replica sustains (capacity.py), and each request refused for want of room.
        self.capacity = m.stage_capacity_sessions(registry)
        self.admission_refusals = m.admission_refusals(registry)
        self.engine_up = per_backend(m.TRANSLATION_ENGINE_UP, "1 when the engine answers its health check")
        self.engine_sleeping = per_backend(
            m.TRANSLATION_ENGINE_SLEEPING, "1 while vLLM sleeps (GPU memory freed)"
        )
        self.kv_cache = per_backend(
            m.TRANSLATION_ENGINE_KV_CACHE, "Engine KV-cache use, 0..1 (vllm:kv_cache_usage_perc)"
        )
        self.waiting = per_backend(m.TRANSLATION_ENGINE_WAITING, "Requests waiting inside the engine")
        self.running = per_backend(m.TRANSLATION_ENGINE_RUNNING, "Requests running inside the engine")
        self.memory = Gauge(
            m.TRANSLATION_ENGINE_MEMORY,
            "Engine memory: GPU share reserved, host RSS",
            ["pipeline", "backend", "kind"],
            registry=registry,
        )
        self.restarts = per_backend(m.TRANSLATION_ENGINE_RESTARTS, "Engine child-process restarts")
        self.breaker_open = per_backend(m.TRANSLATION_BREAKER_OPEN, "1 while an engine's circuit is open")
        self.model_info = Gauge(
            m.TRANSLATION_MODEL_INFO,
            "The model the primary engine is asked for",
            ["pipeline", "backend", "model"],
            registry=registry,
        )
