"""The autoscaler end to end: a real Prometheus scrapes stand-in pods whose metrics the test drives,
and the real operator (Kopf, with the scaling timer) runs against the Kubernetes emulator.

What a user would notice: a latency breach scales the stage that causes it within two intervals;
noisy metrics make nothing move; scale-down waits for the stabilization window; GPU-memory pressure
switches the translation model and relief restores it; no data means no scaling, with a reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from livetranslate.operator.kube import KubeClient
from livetranslate_testing.kube_operator import NS, Cluster, OperatorProcess, eventually, pipeline

from .conftest import PIPELINE, Prometheus, Workloads

pytestmark = pytest.mark.slow

INTERVAL_S = 1.0
STABILIZATION_S = 6.0
ACTIVE_MODEL = "livetranslate.io/active-model"


def spec(prometheus_url: str) -> dict[str, Any]:
    return {
        "sourceLanguage": "en",
        "targetLanguages": ["es"],
        "audio": {"devices": ["cpu"], "replicas": {"min": 1, "max": 4}},
        "translation": {
            "backend": "vllm",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "fallbackModels": ["Qwen/Qwen2.5-3B-Instruct-AWQ"],
            "replicas": {"min": 1, "max": 4},
        },
        "gateway": {"replicas": {"min": 1, "max": 3}, "maxSessionsPerReplica": 500},
        "scaling": {
            "prometheusUrl": prometheus_url,
            "interval": f"{INTERVAL_S:g}s",
            "scaleDownStabilization": f"{STABILIZATION_S:g}s",
            "latencySLO": {"p95Seconds": 1.5},
            "gpuMemory": {"highWatermark": 0.9, "lowWatermark": 0.6},
        },
    }


def replicas(cluster: Cluster) -> dict[str, int]:
    out = {}
    for stage in ("audio", "translation", "gateway"):
        dep = cluster.api.read("apps/v1/deployments", NS, f"{PIPELINE}-{stage}") or {}
        out[stage] = int((dep.get("spec") or {}).get("replicas") or 0)
    return out


def scaling_condition(cluster: Cluster) -> dict[str, Any]:
    tp = cluster.tp(PIPELINE) or {}
    return next(
        (c for c in (tp.get("status") or {}).get("conditions") or [] if c["type"] == "ScalingActive"), {}
    )


def last_decision(cluster: Cluster) -> dict[str, Any] | None:
    decision: dict[str, Any] | None = ((cluster.tp(PIPELINE) or {}).get("status") or {}).get(
        "lastScalingDecision"
    )
    return decision


def scaling_events(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.events(PIPELINE)
        if e["reason"] in ("ScaledUp", "ScaledDown", "ModelChanged", "ScalingHeld")
    ]


def scaling_messages(cluster: Cluster, reason: str) -> list[str]:
    return [e["message"] for e in cluster.events(PIPELINE) if e["reason"] == reason]


def scaler_state(cluster: Cluster) -> str:
    """What the autoscaler has done so far, for a failure message."""
    return (
        f"replicas {replicas(cluster)}, last decision {last_decision(cluster)}, "
        f"condition {scaling_condition(cluster).get('message')!r}, "
        f"events {[(e['reason'], e['message']) for e in scaling_events(cluster)]}"
    )


async def p95(prom: Prometheus, metric: str) -> float:
    result = await prom.query(
        f'histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{{pipeline="{PIPELINE}"}}[3s])))'
    )
    return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture
async def running(
    cluster: Cluster, operator: OperatorProcess, prometheus: Prometheus, workloads: Workloads
) -> AsyncIterator[tuple[Cluster, Prometheus, Workloads]]:
    """The pipeline applied on a cluster with a GPU node, healthy and under active scaling."""
    cluster.api.add_node(
        "gpu-node", allocatable={"nvidia.com/gpu": "4"}, labels={"nvidia.com/gpu.present": "true"}
    )
    kube = await KubeClient.connect()
    try:
        await kube.create(pipeline(PIPELINE, spec(prometheus.url)))
        await eventually(
            lambda: scaling_condition(cluster).get("status") == "True",
            timeout=30,
            message="ScalingActive=True",
        )
        yield cluster, prometheus, workloads
    finally:
        await kube.close()


async def test_latency_breach_scales_the_bottleneck_stage_within_two_intervals(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    cluster, prom, w = running
    assert replicas(cluster) == {"audio": 1, "translation": 1, "gateway": 1}
    # Translation is the bottleneck: its latency is most of the caption latency and its queue grows.
    w.load.caption_s, w.load.translation_s = 2.4, 1.8
    w.load.queue_translation, w.load.vllm_waiting, w.load.kv_cache = 24, 8, 0.85
    # From the moment Prometheus holds the breach, the scaler has two intervals (plus one tick).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and await p95(prom, "livetranslate_caption_latency_seconds") <= 1.5:
        await asyncio.sleep(0.1)
    assert await p95(prom, "livetranslate_caption_latency_seconds") > 1.5, "Prometheus never held the breach"
    breach_seen = time.monotonic()
    await eventually(
        lambda: replicas(cluster)["translation"] > 1,
        timeout=2 * INTERVAL_S + 2.0,
        message="translation scaled up within two intervals",
    )
    took = time.monotonic() - breach_seen
    assert replicas(cluster)["audio"] == 1 and replicas(cluster)["gateway"] == 1, "only the bottleneck scales"
    record = await eventually(lambda: last_decision(cluster), timeout=5, message="status.lastScalingDecision")
    assert record["stage"] == "translation" and record["from"] == 1 and record["to"] > 1
    assert record["reason"]
    await eventually(lambda: any(e["reason"] == "ScaledUp" for e in cluster.events(PIPELINE)), timeout=5)
    assert scaling_condition(cluster)["status"] == "True"
    print(f"breach visible in Prometheus -> translation scaled in {took:.2f}s (interval {INTERVAL_S}s)")


async def test_noisy_metrics_cause_no_flapping(running: tuple[Cluster, Prometheus, Workloads]) -> None:
    cluster, _, w = running
    rng = random.Random(11)
    before = replicas(cluster)
    # Noise around the operating point the pipeline already runs at (the fixture's 50 sessions,
    # RTF and KV cache 0.5: load 0.64 of target), not a shift of it. A shift (sessions 50 -> 60,
    # RTF 0.5 -> 0.65, as this test once did) read as a rise and scaled audio 1 -> 4 and back in a
    # CI run; and at a load near a replica boundary (0.83 of target) the policy's false trends
    # (2.5 standard errors: about 2% of intervals) move it now and then, which the boundary test
    # in test_plan.py bounds over 30 seeds (rare moves, never back within a window).
    end = time.monotonic() + 12 * INTERVAL_S
    while time.monotonic() < end:
        w.load.caption_s = 1.2 * rng.uniform(0.9, 1.1)
        w.load.audio_rtf = 0.5 * rng.uniform(0.92, 1.08)
        w.load.kv_cache = 0.5 * rng.uniform(0.92, 1.08)
        w.load.sessions = 50 * rng.uniform(0.85, 1.15)
        w.load.queue_audio = rng.choice([0, 1, 2])
        await asyncio.sleep(0.3)
    assert replicas(cluster) == before
    moves = [e["message"] for e in scaling_events(cluster) if e["reason"] in ("ScaledUp", "ScaledDown")]
    assert not moves
    assert scaling_condition(cluster)["status"] == "True"


async def test_scale_down_waits_for_the_stabilization_window(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    cluster, _, w = running
    # Scale up first through a real breach, so the replicas are the autoscaler's own.
    w.load.audio_rtf, w.load.caption_s, w.load.queue_audio = 1.6, 2.5, 30
    await eventually(lambda: replicas(cluster)["audio"] >= 3, timeout=15, message="audio scaled up")
    scaled = replicas(cluster)["audio"]
    # The load goes away: nothing may shrink before the stabilization window has passed.
    w.load.audio_rtf, w.load.caption_s, w.load.queue_audio = 0.1, 0.5, 0
    calm_from = time.monotonic()
    await eventually(
        lambda: replicas(cluster)["audio"] < scaled,
        timeout=STABILIZATION_S + 15,
        message="audio scaled down after the window",
    )
    waited = time.monotonic() - calm_from
    assert waited >= STABILIZATION_S - INTERVAL_S, (
        f"scaled down after {waited:.1f}s, window {STABILIZATION_S}s"
    )
    await eventually(
        lambda: replicas(cluster)["audio"] == 1, timeout=STABILIZATION_S + 10, message="down to min"
    )
    downs = await eventually(
        lambda: [e for e in scaling_events(cluster) if e["reason"] == "ScaledDown"],
        timeout=5,
        message="a ScaledDown Event",
    )
    assert all("audio" in e["message"] for e in downs)


async def test_gpu_memory_pressure_switches_the_model_and_relief_restores_it(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    cluster, _, w = running
    primary, fallback = "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-3B-Instruct-AWQ"
    await eventually(
        lambda: (
            ((cluster.tp(PIPELINE) or {}).get("status") or {}).get("translation", {}).get("model") == primary
        ),
        message="serving the primary model",
    )
    w.load.gpu_used_fraction, w.load.kv_cache, w.load.vllm_waiting = 0.96, 0.97, 6
    w.load.translation_s, w.load.caption_s = 1.4, 2.0

    def annotation() -> str | None:
        return ((cluster.tp(PIPELINE) or {}).get("metadata", {}).get("annotations") or {}).get(ACTIVE_MODEL)

    await eventually(lambda: annotation() == fallback, timeout=15, message="switched to the fallback")
    assert replicas(cluster)["translation"] == 1, "no replicas added while a smaller model was available"
    # The smaller model fits: memory and queues come back to normal.
    w.load.gpu_used_fraction, w.load.kv_cache, w.load.vllm_waiting = 0.75, 0.5, 0
    w.load.translation_s, w.load.caption_s = 0.3, 0.8
    # The operator re-places translation on the annotation: the pods now serve the smaller model.
    await eventually(
        lambda: (
            ((cluster.tp(PIPELINE) or {}).get("status") or {}).get("translation", {}).get("model") == fallback
        ),
        timeout=15,
        message="status shows the fallback model",
    )
    await eventually(lambda: any(e["reason"] == "ModelChanged" for e in cluster.events(PIPELINE)), timeout=5)

    w.load.gpu_used_fraction, w.load.kv_cache = 0.4, 0.3
    relief_from = time.monotonic()
    await eventually(
        lambda: annotation() == primary, timeout=STABILIZATION_S + 15, message="primary restored"
    )
    assert time.monotonic() - relief_from >= STABILIZATION_S - INTERVAL_S
    record = await eventually(
        lambda: (last_decision(cluster) or {}).get("to") == primary and last_decision(cluster),
        timeout=5,
        message="the restore recorded in status",
    )
    assert record["stage"] == "translation" and record["from"] == fallback


async def test_missing_metrics_hold_replicas_with_a_reason(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    cluster, _, w = running
    before = replicas(cluster)
    # The gateway pod's metrics disappear (scrapes fail -> stale markers) while audio is overloaded.
    w.gateway.stop()
    w.load.audio_rtf, w.load.queue_audio = 2.0, 50
    await eventually(
        lambda: scaling_condition(cluster).get("status") == "False", timeout=15, message="ScalingActive=False"
    )
    cond = scaling_condition(cluster)
    assert cond["reason"] == "MetricsUnavailable"
    assert "caption_p95" in cond["message"] or "sessions_active" in cond["message"]
    await asyncio.sleep(3 * INTERVAL_S)
    assert replicas(cluster) == before, "scaled on missing data"
    await eventually(lambda: any(e["reason"] == "ScalingHeld" for e in cluster.events(PIPELINE)), timeout=5)


async def test_a_hand_set_active_model_is_placed_and_conditions_survive_both_writers(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    """Kopf ignores changes of annotations under its storage prefix (livetranslate.io/): an
    operator pinning the smaller model with kubectl annotate still gets it placed, by the
    autoscaler's next interval. Meanwhile the reconcile and the autoscaler both write conditions."""
    cluster, _, _ = running
    fallback = "Qwen/Qwen2.5-3B-Instruct-AWQ"
    cluster.api.patch_object(
        "livetranslate.io/v1alpha1/translationpipelines",
        NS,
        PIPELINE,
        {"metadata": {"annotations": {ACTIVE_MODEL: fallback}}},
    )
    await eventually(
        lambda: (
            ((cluster.tp(PIPELINE) or {}).get("status") or {}).get("translation", {}).get("model") == fallback
        ),
        timeout=10 * INTERVAL_S,
        message="the pinned model placed",
    )
    types = {c["type"] for c in ((cluster.tp(PIPELINE) or {}).get("status") or {}).get("conditions") or []}
    assert {"Ready", "AudioReady", "TranslationReady", "GatewayReady", "ScalingActive"} <= types


async def test_a_session_step_is_planned_from_the_learned_cost_with_catch_up_for_the_backlog(
    running: tuple[Cluster, Prometheus, Workloads],
) -> None:
    """Through the real Prometheus: the audio pod's decode throughput and RTF teach the cost of a
    session; four times the sessions with a backlog are met in one step (need plus catch-up, at
    the stage's max), and the catch-up goes once the backlog has drained."""
    cluster, _, w = running
    # Steady: 40 sessions at RTF 0.5 on one audio replica completing 20 passes/s.
    w.load.sessions, w.load.audio_rtf, w.load.audio_passes_per_s = 40, 0.5, 20
    await asyncio.sleep(8 * INTERVAL_S)  # the rate window fills, cost and throughput are learned
    assert replicas(cluster)["audio"] == 1
    # 160 sessions: one replica saturates (40 passes/s) and 4000 passes queue up.
    w.load.sessions, w.load.audio_rtf, w.load.audio_passes_per_s, w.load.queue_audio = 160, 2.0, 40, 4000
    # Twelve intervals, not six: on a loaded machine (CI shares its cores) scrapes and the scaler's
    # ticks slip, and six was once missed. bench_autoscaling measures how fast it really is.
    await eventually(
        lambda: replicas(cluster)["audio"] == 4,
        timeout=12 * INTERVAL_S,
        message=lambda: f"audio planned to its max (need 3 + catch-up); {scaler_state(cluster)}",
    )
    await eventually(
        lambda: (last_decision(cluster) or {}).get("stage") == "audio",
        timeout=5,
        message="the decision recorded",
    )
    # Prometheus scrapes the gateway (sessions) and the audio pod (queue) at different moments, so
    # the step may come as one decision (1 -> 4) or as the need first and the catch-up at the next
    # interval: either way a scale-up names the catch-up, and it was reached within the bound above.
    # The Event follows the Deployment patch, so it is waited for too.
    await eventually(
        lambda: any("catch up" in m for m in scaling_messages(cluster, "ScaledUp")),
        timeout=5,
        message=lambda: f"a ScaledUp Event naming the catch-up; {scaler_state(cluster)}",
    )
    # Four replicas serve: the backlog drains and the catch-up replica goes as such (not through
    # the stabilization window, which holds the need: 160 x 0.0125 / 0.75 = 2.7 -> 3).
    w.load.audio_rtf, w.load.audio_passes_per_s, w.load.queue_audio = 0.5, 80, 0
    await eventually(
        lambda: replicas(cluster)["audio"] == 3,
        timeout=3 * STABILIZATION_S,
        message=lambda: f"catch-up released once the backlog drained; {scaler_state(cluster)}",
    )
    downs = await eventually(
        lambda: scaling_messages(cluster, "ScaledDown"), timeout=5, message="a ScaledDown Event"
    )
    assert all("backlog drained" in m for m in downs), downs
