"""Metric names of ../shared/API.md section 4, in one place.

Dashboards, alert rules, the autoscaler's PromQL and the workloads all refer to these constants,
and a test checks that every metric a dashboard names is one of ours or a listed external one.
Each service creates its collectors on its own ``CollectorRegistry`` (so tests can run several
services in one process) through the factories below, which fix names, labels and buckets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CAPTION_LATENCY = "livetranslate_caption_latency_seconds"
TRANSLATION_LATENCY = "livetranslate_translation_latency_seconds"
# End of a sentence's speech to its final translation sent: what a listener waits for.
SENTENCE_LATENCY = "livetranslate_sentence_latency_seconds"
# Translation requests the gateway made for one sentence (its live partials and its final
# translation, retries included): the translation load that sentences and partials cost.
SENTENCE_TRANSLATION_CALLS = "livetranslate_sentence_translation_calls"
AUDIO_PROCESSING = "livetranslate_audio_processing_seconds"
AUDIO_REALTIME_FACTOR = "livetranslate_audio_realtime_factor"
QUEUE_DEPTH = "livetranslate_queue_depth"
SESSIONS_ACTIVE = "livetranslate_sessions_active"
RECONCILE_SECONDS = "livetranslate_reconcile_seconds"
SCALING_DECISIONS = "livetranslate_scaling_decisions_total"
# Operator-side state per pipeline stage, for the alert rules and dashboards (labels namespace,
# pipeline[, stage]; "namespace" is the pipeline's, so the chart scrapes the operator with
# honorLabels). The operator sets them on every reconcile/autoscaler tick.
STAGE_REPLICAS = "livetranslate_stage_replicas"
STAGE_READY_REPLICAS = "livetranslate_stage_ready_replicas"
STAGE_MAX_REPLICAS = "livetranslate_stage_max_replicas"
# 1 while the autoscaler acts, 0 while it is held (condition ScalingActive=False, e.g. no metrics).
SCALING_ACTIVE = "livetranslate_scaling_active"

# Sessions' buffers decoded in one engine call by the audio service (workloads/audio).
AUDIO_BATCH_SIZE = "livetranslate_audio_batch_size"
# Items per engine call, for the audio and the translation stage alike.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Translation service internals (workloads/translate): batching, quality gate, fallback chain and
# the engine's own state, mirrored from vLLM's /metrics so one scrape shows the whole stage.
TRANSLATION_BATCH_SIZE = "livetranslate_translation_batch_size"
TRANSLATION_BATCH_SECONDS = "livetranslate_translation_batch_seconds"
TRANSLATION_RESULTS = "livetranslate_translation_results_total"
TRANSLATION_FALLBACKS = "livetranslate_translation_fallbacks_total"
TRANSLATION_QUALITY_REJECTIONS = "livetranslate_translation_quality_rejections_total"
TRANSLATION_REFUSED = "livetranslate_translation_refused_total"
TRANSLATION_ENGINE_UP = "livetranslate_translation_engine_up"
TRANSLATION_ENGINE_SLEEPING = "livetranslate_translation_engine_sleeping"
TRANSLATION_ENGINE_KV_CACHE = "livetranslate_translation_engine_kv_cache_usage_ratio"
TRANSLATION_ENGINE_WAITING = "livetranslate_translation_engine_requests_waiting"
TRANSLATION_ENGINE_RUNNING = "livetranslate_translation_engine_requests_running"
TRANSLATION_ENGINE_MEMORY = "livetranslate_translation_engine_memory"
TRANSLATION_ENGINE_RESTARTS = "livetranslate_translation_engine_restarts"
TRANSLATION_BREAKER_OPEN = "livetranslate_translation_circuit_open"
TRANSLATION_MODEL_INFO = "livetranslate_translation_model_info"
# Admission: the sessions a replica sustains (measured), and the sessions it refused.
STAGE_CAPACITY_SESSIONS = "livetranslate_stage_capacity_sessions"
ADMISSION_REFUSALS = "livetranslate_admission_refusals_total"
# Safe drain: a gateway replica that refuses new sessions and hands its own over.
GATEWAY_DRAINING = "livetranslate_gateway_draining"
SESSION_HANDOVERS = "livetranslate_session_handovers_total"
# The same for an audio replica: it refuses new streams and hands its live ones back to their
# gateways at a pause, which resume them on another replica.
AUDIO_DRAINING = "livetranslate_audio_draining"
AUDIO_HANDOVERS = "livetranslate_audio_handovers_total"
# The gateway's session store (Redis) away: calls it failed, and the writes waiting for it.
SESSION_STORE_ERRORS = "livetranslate_session_store_errors_total"
SESSION_STORE_DEFERRED = "livetranslate_session_store_deferred_writes"

# Published by others, read by the autoscaler and dashboards (names as their exporters publish them).
EXTERNAL_METRICS = (
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)

# Latency buckets sized around a 1.5 s caption SLO: fine below it, coarse above.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0)
PROCESSING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


def caption_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        CAPTION_LATENCY,
        "End of speech to final caption sent, at the gateway",
        ["pipeline"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


def translation_latency(registry: CollectorRegistry, extra_labels: tuple[str, ...] = ()) -> Histogram:
    return Histogram(
        TRANSLATION_LATENCY,
        "Final transcript to translation sent",
        ["pipeline", *extra_labels],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


def sentence_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        SENTENCE_LATENCY,
        "End of a sentence's speech to its final translation sent",
        ["pipeline"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


# One final translation at least; live partials add one per final heard at most.
CALLS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24)


def sentence_translation_calls(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        SENTENCE_TRANSLATION_CALLS,
        "Translation requests made for one sentence",
        ["pipeline"],
        buckets=CALLS_BUCKETS,
        registry=registry,
    )


def audio_processing(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        AUDIO_PROCESSING,
        "Wall time of one decoder pass over a session's buffer",
        ["pipeline", "device"],
        buckets=PROCESSING_BUCKETS,
        registry=registry,
    )


def audio_batch_size(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        AUDIO_BATCH_SIZE,
        "Sessions' buffers decoded together in one engine call",
        ["pipeline", "device"],
        buckets=BATCH_SIZE_BUCKETS,
        registry=registry,
    )


def audio_realtime_factor(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        AUDIO_REALTIME_FACTOR,
        "Processing seconds per second of audio (below 1 keeps up with real time)",
        ["pipeline", "device"],
        registry=registry,
    )


def stage_capacity_sessions(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        STAGE_CAPACITY_SESSIONS,
        "Sessions one replica of the stage sustains, as measured by it",
        ["pipeline", "stage"],
        registry=registry,
    )


def admission_refusals(registry: CollectorRegistry) -> Counter:
    return Counter(
        ADMISSION_REFUSALS.removesuffix("_total"),
        "Sessions a replica refused, by reason (translation: requests its queue could not take)",
        ["pipeline", "stage", "reason"],
        registry=registry,
    )


def gateway_draining(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        GATEWAY_DRAINING,
        "1 while this gateway replica drains: it refuses new sessions and hands its own over",
        ["pipeline"],
        registry=registry,
    )


def session_handovers(registry: CollectorRegistry) -> Counter:
    # prometheus_client appends _total to counters itself.
    return Counter(
        SESSION_HANDOVERS.removesuffix("_total"),
        "Live sessions a draining gateway replica handed over to another replica",
        ["pipeline", "reason"],
        registry=registry,
    )


def audio_draining(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        AUDIO_DRAINING,
        "1 while this audio replica drains: it refuses new streams and hands its own back",
        ["pipeline"],
        registry=registry,
    )


def audio_handovers(registry: CollectorRegistry) -> Counter:
    return Counter(
        AUDIO_HANDOVERS.removesuffix("_total"),
        "Live streams a draining audio replica handed back to their gateway to resume elsewhere",
        ["pipeline", "reason"],
        registry=registry,
    )


def session_store_errors(registry: CollectorRegistry) -> Counter:
    return Counter(
        SESSION_STORE_ERRORS.removesuffix("_total"),
        "Session store (Redis) calls that failed, by operation; live sessions go on without it",
        ["pipeline", "operation"],
        registry=registry,
    )


def session_store_deferred(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        SESSION_STORE_DEFERRED,
        "Session writes waiting for the session store to come back (0 while it answers)",
        ["pipeline"],
        registry=registry,
    )


def queue_depth(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        QUEUE_DEPTH, "Work items waiting in a stage's queue", ["pipeline", "stage"], registry=registry
    )


def sessions_active(registry: CollectorRegistry, extra_labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(SESSIONS_ACTIVE, "Sessions currently open", ["pipeline", *extra_labels], registry=registry)


def reconcile_seconds(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        RECONCILE_SECONDS,
        "Wall time of one reconcile of a TranslationPipeline",
        ["result"],
        buckets=PROCESSING_BUCKETS,
        registry=registry,
    )


def scaling_decisions(registry: CollectorRegistry) -> Counter:
    # prometheus_client appends _total to counters itself.
    return Counter(
        SCALING_DECISIONS.removesuffix("_total"),
        "Scaling decisions the operator acted on",
        ["pipeline", "stage", "direction", "reason"],
        registry=registry,
    )


def stage_replicas(registry: CollectorRegistry) -> tuple[Gauge, Gauge, Gauge]:
    """Desired, ready and maximum replicas per stage: the alerts "no ready replicas" and
    "pinned at max" and the dashboard's replica panel read them."""
    labels = ["namespace", "pipeline", "stage"]
    return (
        Gauge(STAGE_REPLICAS, "Replicas the operator set for a stage", labels, registry=registry),
        Gauge(STAGE_READY_REPLICAS, "Ready replicas of a stage", labels, registry=registry),
        Gauge(STAGE_MAX_REPLICAS, "spec.<stage>.replicas.max of a stage", labels, registry=registry),
    )


def scaling_active(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        SCALING_ACTIVE,
        "1 while the autoscaler acts on a pipeline, 0 while it is held (condition ScalingActive=False)",
        ["namespace", "pipeline"],
        registry=registry,
    )
