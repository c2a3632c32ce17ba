"""The decision function on hand-made signal histories: what a user would see the autoscaler do."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from livetranslate.api import TranslationPipelineSpec, parse_spec
from livetranslate.operator.scaling.policy import (
    AUDIO_TARGET_RTF,
    KV_CACHE_TARGET,
    Current,
    Decision,
    History,
    decide,
)
from livetranslate.operator.scaling.signals import Sample, Signals

INTERVAL = 15.0


def make_spec(**overrides: Any) -> TranslationPipelineSpec:
    spec: dict[str, Any] = {
        "targetLanguages": ["es"],
        "audio": {"replicas": {"min": 1, "max": 8}, "devices": ["npu", "gpu", "cpu"]},
        "translation": {
            "replicas": {"min": 1, "max": 6},
            "model": "big",
            "fallbackModels": ["medium", "small"],
        },
        "gateway": {"replicas": {"min": 1, "max": 3}, "maxSessionsPerReplica": 100},
        "scaling": {
            "interval": "15s",
            "scaleDownStabilization": "300s",
            "latencySLO": {"p95Seconds": 1.5},
            "gpuMemory": {"highWatermark": 0.9, "lowWatermark": 0.6},
        },
    }
    spec.update(overrides)
    return parse_spec(spec)


def healthy(t: float, **kw: Any) -> Signals:
    """A pipeline comfortably within target: 0.9 s captions, RTF 0.5, nothing queued."""
    values: dict[str, Any] = {
        "caption_p95": Sample.of(0.9),
        "translation_p95": Sample.of(0.3),
        "queue_depth": {"audio": Sample.of(0), "translation": Sample.of(0), "gateway": Sample.of(0)},
        "sessions_active": Sample.of(50),
        "audio_rtf": Sample.of(0.5),
        "gpu_memory_fraction": Sample.of(0.75),
        "vllm_requests_waiting": Sample.of(0),
        "kv_cache_usage": Sample.of(0.5),
    }
    values.update(kw)
    return Signals(time=t, **values)


def run(
    spec: TranslationPipelineSpec,
    current: Current,
    signals_at: Callable[[float], Signals],
    intervals: int,
    history: History | None = None,
    start: float = 1000.0,
) -> tuple[list[Decision], Current]:
    """Feed the policy one snapshot per interval, applying its decisions like the timer does."""
    history = history or History()
    out = []
    for i in range(intervals):
        now = start + i * INTERVAL
        d = decide(spec, signals_at(now), current, history, now)
        history = d.history
        replicas = {s: d.stages[s].desired for s in ("audio", "translation", "gateway")}
        current = Current(
            replicas=replicas,
            ready=replicas,
            model=d.model or current.model,
            audio_device=d.audio_device or current.audio_device,
            translation_backend=current.translation_backend,
        )
        out.append(d)
    return out, current


def cur(
    audio: int = 2, translation: int = 2, gateway: int = 1, model: str = "big", device: str = "gpu"
) -> Current:
    reps = {"audio": audio, "translation": translation, "gateway": gateway}
    return Current(replicas=reps, ready=reps, model=model, audio_device=device)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- latency breach


def test_sustained_translation_breach_scales_translation_only_within_two_intervals() -> None:
    spec = make_spec()
    # Over target, but not so far that one sample would be trusted (translation 1.0s / 0.75s).
    breach = healthy(
        0,
        caption_p95=Sample.of(1.9),
        translation_p95=Sample.of(1.0),
        queue_depth={"audio": Sample.of(0), "translation": Sample.of(6), "gateway": Sample.of(0)},
        vllm_requests_waiting=Sample.of(3),
        kv_cache_usage=Sample.of(0.8),
    )
    decisions, final = run(spec, cur(), lambda t: breach, 2)
    assert not decisions[0].changes, "one interval over target is not yet sustained"
    second = decisions[1]
    assert [c.stage for c in second.changes] == ["translation"]
    assert second.stages["translation"].desired > 2
    assert final.replicas["audio"] == 2 and final.replicas["gateway"] == 1
    assert "translation" in second.stages["translation"].message


def test_audio_bottleneck_scales_audio_not_translation() -> None:
    spec = make_spec()
    breach = healthy(
        0,
        caption_p95=Sample.of(2.2),
        translation_p95=Sample.of(0.3),
        audio_rtf=Sample.of(0.95),
        queue_depth={"audio": Sample.of(12), "translation": Sample.of(0), "gateway": Sample.of(0)},
    )
    decisions, final = run(spec, cur(), lambda t: breach, 2)
    assert [c.stage for d in decisions for c in d.changes] == ["audio"]
    assert final.replicas["audio"] > 2 and final.replicas["translation"] == 2


def test_severe_overload_acts_in_the_first_interval_and_stays_within_max() -> None:
    spec = make_spec()
    overload = healthy(
        0,
        caption_p95=Sample.of(9.0),
        audio_rtf=Sample.of(3.0),
        queue_depth={"audio": Sample.of(400), "translation": Sample.of(0), "gateway": Sample.of(0)},
    )
    decisions, final = run(spec, cur(audio=4), lambda t: overload, 3)
    assert decisions[0].stages["audio"].direction == "up"
    assert final.replicas["audio"] == 8  # spec.audio.replicas.max
    assert decisions[-1].stages["audio"].reason == "at_max"


def test_does_not_add_again_while_new_replicas_start() -> None:
    spec = make_spec()
    over = healthy(0, audio_rtf=Sample.of(1.2), caption_p95=Sample.of(1.6))
    history = History()
    current = cur(audio=2)
    d1 = decide(spec, over, current, history, 0.0)
    d2 = decide(spec, over, current, d1.history, 15.0)
    assert d2.stages["audio"].desired == 4
    starting = Current(
        replicas={"audio": 4, "translation": 2, "gateway": 1},
        ready={"audio": 2, "translation": 2, "gateway": 1},
        model="big",
        audio_device="gpu",
    )
    d3 = decide(spec, over, starting, d2.history, 30.0)
    d4 = decide(spec, over, starting, d3.history, 45.0)
    assert not d3.changes and not d4.changes
    assert d4.stages["audio"].reason == "starting"


def test_gateway_scales_before_sessions_are_refused() -> None:
    spec = make_spec()
    busy = healthy(0, sessions_active=Sample.of(95))  # 95 of 100 slots, target 80%
    _, final = run(spec, cur(), lambda t: busy, 2)
    assert final.replicas["gateway"] == 2
    assert final.replicas["audio"] == 2 and final.replicas["translation"] == 2


# ------------------------------------------------------------------------------------- noise


def test_noise_around_target_never_flaps() -> None:
    spec = make_spec()
    rng = random.Random(3)

    def noisy(t: float) -> Signals:
        return healthy(
            t,
            caption_p95=Sample.of(1.2 * rng.uniform(0.9, 1.1)),
            audio_rtf=Sample.of(AUDIO_TARGET_RTF * rng.uniform(0.93, 1.07)),
            kv_cache_usage=Sample.of(KV_CACHE_TARGET * rng.uniform(0.93, 1.07)),
            sessions_active=Sample.of(70 * rng.uniform(0.9, 1.1)),
        )

    decisions, final = run(spec, cur(audio=3, translation=2), noisy, 120)
    assert not [c for d in decisions for c in d.changes], "noise inside the tolerance band moved replicas"
    assert final.replicas == {"audio": 3, "translation": 2, "gateway": 1}


def test_isolated_spikes_do_not_scale() -> None:
    spec = make_spec()

    def spiky(t: float) -> Signals:
        k = int((t - 1000) / INTERVAL)
        return healthy(
            t,
            caption_p95=Sample.of(2.5 if k % 3 == 0 else 1.0),
            audio_rtf=Sample.of(1.0 if k % 3 == 0 else 0.6),
        )

    decisions, _ = run(spec, cur(), spiky, 30)
    assert not [c for d in decisions for c in d.changes]


# ------------------------------------------------------------------------------- scale-down


def test_scale_down_waits_for_the_stabilization_window() -> None:
    spec = make_spec()
    quiet = healthy(
        0,
        audio_rtf=Sample.of(0.2),
        kv_cache_usage=Sample.of(0.2),
        caption_p95=Sample.of(0.6),
        sessions_active=Sample.of(10),
    )
    decisions, final = run(spec, cur(audio=6, translation=4, gateway=2), lambda t: quiet, 30)
    first_down = next(i for i, d in enumerate(decisions) if d.changes)
    assert first_down * INTERVAL >= 300.0
    assert all(c.direction == "down" and c.reason == "stabilized" for c in decisions[first_down].changes)
    assert final.replicas["audio"] < 6 and final.replicas["translation"] < 4
    assert final.replicas["gateway"] == 1


def test_scale_down_keeps_the_largest_need_seen_in_the_window() -> None:
    spec = make_spec()

    def load(t: float) -> Signals:
        busy = t < 1000 + 200
        return healthy(t, audio_rtf=Sample.of(0.55 if busy else 0.1), caption_p95=Sample.of(0.8))

    decisions, _ = run(spec, cur(audio=8), load, 40)
    downs = [(d.time, c.desired) for d in decisions for c in d.changes if c.stage == "audio"]
    assert downs, "never scaled down"
    # No scale-down may go below what the busy period needed while a busy sample is still in the
    # 300 s window; there must be such a scale-down (the window is full before the busy samples
    # leave it), and the one after them may go lower.
    busy_need = math.ceil(8 * 0.55 / AUDIO_TARGET_RTF)  # 8 replicas at RTF 0.55
    last_busy = max(t for t in (1000 + i * INTERVAL for i in range(40)) if t < 1000 + 200)
    in_window = [n for t, n in downs if t < last_busy + 300]
    assert in_window, downs
    assert all(n >= busy_need for n in in_window), downs
    assert downs[-1][1] < busy_need, downs


def test_never_below_min() -> None:
    spec = make_spec(audio={"replicas": {"min": 2, "max": 8}})
    idle = healthy(
        0,
        audio_rtf=Sample.of(0.0),
        caption_p95=Sample.absent("idle"),
        translation_p95=Sample.absent("idle"),
        sessions_active=Sample.of(0),
        kv_cache_usage=Sample.of(0.0),
    )
    decisions, final = run(spec, cur(audio=5, translation=3), lambda t: idle, 40)
    assert final.replicas["audio"] == 2 and final.replicas["translation"] == 1
    assert all(d.active for d in decisions), "an idle pipeline (no traffic) is data, not missing data"


# ------------------------------------------------------------------------------- missing data


def test_missing_stale_or_unreachable_metrics_hold_still() -> None:
    spec = make_spec()
    overload = {"caption_p95": Sample.of(5.0), "audio_rtf": Sample.of(2.0)}
    cases = {
        "MetricsUnavailable": healthy(
            0, **{**overload, "caption_p95": Sample.absent("missing", "no series")}
        ),
        "stale": healthy(
            0, **{**overload, "sessions_active": Sample(value=None, status="stale", age_seconds=400)}
        ),
        "PrometheusUnreachable": Signals(time=0, error="ConnectError: connection refused"),
    }
    for label, sig in cases.items():
        decisions, final = run(spec, cur(), lambda t, sig=sig: sig, 4)
        assert final.replicas == {"audio": 2, "translation": 2, "gateway": 1}, label
        d = decisions[-1]
        assert not d.active
        assert d.condition_reason in ("MetricsUnavailable", "PrometheusUnreachable")
        assert d.message.startswith("holding replicas")
    held = run(spec, cur(), lambda t: cases["stale"], 1)[0][0]
    assert "sessions_active stale (400s old)" in held.message


def test_a_data_gap_resets_the_breach_streak() -> None:
    spec = make_spec()
    over = healthy(0, audio_rtf=Sample.of(0.95), caption_p95=Sample.of(1.6))
    gap = Signals(time=0, error="timeout")
    seq = [over, gap, over, gap, over]
    _decisions, final = run(spec, cur(), lambda t: seq[int((t - 1000) / INTERVAL)], len(seq))
    assert final.replicas["audio"] == 2, "over-target samples separated by gaps are not 'sustained'"


# ---------------------------------------------------------------------------- model placement


def test_gpu_memory_pressure_switches_model_before_adding_replicas_and_relief_restores_it() -> None:
    spec = make_spec()
    pressure = healthy(
        0,
        gpu_memory_fraction=Sample.of(0.95),
        caption_p95=Sample.of(2.0),
        translation_p95=Sample.of(1.5),
        kv_cache_usage=Sample.of(0.95),
        vllm_requests_waiting=Sample.of(5),
        queue_depth={"audio": Sample.of(0), "translation": Sample.of(9), "gateway": Sample.of(0)},
    )
    decisions, current = run(spec, cur(), lambda t: pressure, 2)
    assert decisions[0].model is None
    assert decisions[1].model == "medium"
    assert decisions[1].model_reason == "gpu_memory"
    assert decisions[1].stages["translation"].desired == 2, "no replicas added in the interval of the switch"

    relief = healthy(0, gpu_memory_fraction=Sample.of(0.4))
    decisions, current = run(spec, current, lambda t: relief, 25, history=decisions[-1].history, start=2000.0)
    restored = [(d.time, d.model) for d in decisions if d.model]
    assert restored and restored[0][1] == "big"
    assert restored[0][0] - 2000.0 >= 300.0, "the primary model came back before the stabilization window"
    assert decisions[-1].stages["translation"].desired >= 1


def test_kv_cache_saturation_with_waiting_requests_steps_down_the_fallback_chain() -> None:
    spec = make_spec()
    kv = healthy(0, kv_cache_usage=Sample.of(0.98), vllm_requests_waiting=Sample.of(12))
    decisions, _current = run(spec, cur(model="medium"), lambda t: kv, 2)
    assert decisions[1].model == "small" and decisions[1].model_reason == "kv_cache"


def test_no_fallback_left_adds_replicas_instead() -> None:
    spec = make_spec()
    pressure = healthy(
        0,
        gpu_memory_fraction=Sample.of(0.95),
        kv_cache_usage=Sample.of(0.97),
        vllm_requests_waiting=Sample.of(20),
        queue_depth={"audio": Sample.of(0), "translation": Sample.of(20), "gateway": Sample.of(0)},
    )
    decisions, final = run(spec, cur(model="small"), lambda t: pressure, 2)
    assert all(d.model is None for d in decisions)
    assert final.replicas["translation"] > 2


def test_model_placement_only_for_the_gpu_backend() -> None:
    spec = make_spec()
    pressure = healthy(0, gpu_memory_fraction=Sample.of(0.97))
    c = Current(
        replicas={"audio": 2, "translation": 2, "gateway": 1}, model="big", translation_backend="apertium"
    )
    decisions, _ = run(spec, c, lambda t: pressure, 3)
    assert all(d.model is None for d in decisions)


# ------------------------------------------------------------------------------ NPU exhaustion


def test_npu_exhaustion_moves_new_audio_replicas_along_devices() -> None:
    spec = make_spec()
    over = healthy(0, audio_rtf=Sample.of(1.0), caption_p95=Sample.of(1.7))
    exhausted = Signals(**{**over.__dict__, "npu_free": 0})
    decisions, final = run(spec, cur(device="npu"), lambda t: exhausted, 2)
    assert decisions[1].audio_device == "gpu"
    assert "no allocatable NPU" in decisions[1].audio_device_message
    assert final.replicas["audio"] > 2

    free = Signals(**{**over.__dict__, "npu_free": 3})
    decisions, _ = run(spec, cur(device="npu"), lambda t: free, 2)
    assert all(d.audio_device is None for d in decisions)


def test_npu_exhaustion_without_another_device_holds_audio() -> None:
    spec = make_spec(audio={"replicas": {"min": 1, "max": 8}, "devices": ["npu"]})
    over = healthy(0, audio_rtf=Sample.of(1.0), caption_p95=Sample.of(1.7))
    exhausted = Signals(**{**over.__dict__, "npu_free": 0})
    decisions, final = run(spec, cur(device="npu"), lambda t: exhausted, 3)
    assert final.replicas["audio"] == 2
    assert decisions[-1].stages["audio"].reason == "npu_exhausted"


def test_a_draining_backlog_does_not_inflate_the_step_beyond_the_learned_demand() -> None:
    spec = make_spec(audio={"replicas": {"min": 1, "max": 40}, "devices": ["cpu"]})
    # Steady: 20 sessions on 2 replicas at RTF 0.5 teaches 0.05 replica-utilisation per session.
    steady = healthy(0, sessions_active=Sample.of(20), audio_rtf=Sample.of(0.5))
    decisions, current = run(spec, cur(audio=2), lambda t: steady, 4)
    # A step to 60 sessions with a huge audio backlog: the need is 60 x 0.05 / 0.7 = 4.3 replicas.
    step = healthy(
        0,
        sessions_active=Sample.of(60),
        audio_rtf=Sample.of(1.5),
        caption_p95=Sample.of(4.0),
        queue_depth={"audio": Sample.of(5000), "translation": Sample.of(0), "gateway": Sample.of(0)},
    )
    decisions, final = run(spec, current, lambda t: step, 2, history=decisions[-1].history, start=2000.0)
    assert 5 <= final.replicas["audio"] <= 6, final.replicas
