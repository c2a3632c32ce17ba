"""Replicas from capacity: the forecast (level, trend, scatter), the headroom the SLO's percentile
asks of the scatter, the need over each stage's measured warm-up, and scale-down on a forecast
that stays below. Pure steps on hand-made sessions, and ``decide()`` on hand-made signals."""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Any

from livetranslate.operator.scaling import capacity, demand
from livetranslate.operator.scaling.config import DEFAULT_CONFIG
from livetranslate.operator.scaling.demand import Forecast, Learned
from livetranslate.operator.scaling.policy import AUDIO_TARGET_RTF, Current, Decision, History, decide

from .test_plan import AUDIO_COST, AUDIO_RATE, learned, step, world
from .test_policy import INTERVAL, make_spec

P95 = NormalDist().inv_cdf(0.95)


def samples(values: list[float], t0: float = 0.0) -> demand.Trend:
    return tuple((t0 + i * INTERVAL, v) for i, v in enumerate(values))


def spec_40(**scaling: Any) -> Any:
    spec = make_spec(audio={"replicas": {"min": 1, "max": 40}, "devices": ["cpu"]})
    if scaling:
        spec = make_spec(
            audio={"replicas": {"min": 1, "max": 40}, "devices": ["cpu"]},
            scaling={"interval": "15s", "scaleDownStabilization": "300s", **scaling},
        )
    return spec


def drive(spec: Any, history: History, current: Current, t: float, sessions: list[float]) -> list[Decision]:
    """One decision per interval at these session counts, applied like the timer does."""
    out = []
    for value in sessions:
        t += INTERVAL
        d = decide(spec, world(t, value, current.replicas["audio"]), current, history, t)
        history, current = d.history, step(d, current)
        out.append(d)
    return out


# ----------------------------------------------------------------------------- the forecast


def test_a_rise_and_a_fall_are_trends_noise_is_not() -> None:
    rng = random.Random(1)
    rise = samples([100 + 0.5 * 15 * i + rng.gauss(0, 2) for i in range(13)])
    fall = samples([200 - 0.5 * 15 * i + rng.gauss(0, 2) for i in range(13)])
    flat = samples([100 + rng.gauss(0, 8) for _ in range(13)])
    assert math.isclose(demand.slope(rise), 0.5, rel_tol=0.15)
    assert math.isclose(demand.slope(fall), -0.5, rel_tol=0.15)
    assert demand.slope(flat) == 0.0


def test_scatter_is_the_sample_noise_not_the_trend_or_a_step() -> None:
    rng = random.Random(2)
    noisy = samples([100 + rng.gauss(0, 10) for _ in range(40)])
    assert 6 < demand.scatter(noisy) < 14
    # A steady climb moves every sample alike; a step is one jump: neither is scatter.
    assert demand.scatter(samples([100 + 3.0 * i for i in range(20)])) < 1e-9
    assert demand.scatter(samples([60.0] * 10 + [300.0] * 10)) < 1e-9


def test_the_forecast_sizes_for_the_rise_over_the_horizon_plus_p95_headroom() -> None:
    f = Forecast(level=100.0, slope=0.2, scatter=10.0, z=P95, kept=100.0)
    assert math.isclose(f.headroom, 16.45, rel_tol=1e-3)
    assert math.isclose(f.sized(60.0), 100 + 12 + 16.45, rel_tol=1e-3)
    assert math.isclose(f.steady, 116.45, rel_tol=1e-3), "what is kept holds no rise"
    # A fall never hastens anything: the sessions ahead are the level.
    assert Forecast(100.0, -0.5, 0.0, P95, 100.0).at(120.0) == 100.0


def test_a_rise_is_carried_no_further_ahead_than_the_samples_it_was_fitted_on() -> None:
    """A young pipeline's trend rests on a few samples: 30 s of them do not support a course over
    a two-minute translation warm-up (an integration run scaled translation 1 -> 2 on a false
    rise of 25 s of noisy samples carried 121 s ahead, x4.7)."""
    rising = [(float(t), 50.0 + 0.5 * t + (1.0 if t % 2 else -1.0)) for t in range(0, 31, 5)]
    f = demand.forecast(rising, rising, P95)
    assert f.slope > 0 and f.span == 30.0
    assert math.isclose(f.at(120.0), f.level + f.slope * 30.0)
    assert math.isclose(f.at(20.0), f.level + f.slope * 20.0)
    assert demand.growth(rising, 65.0, 120.0) == demand.growth(rising, 65.0, 30.0) > 1.0


def test_a_step_seen_in_one_sample_is_followed_but_not_kept_until_confirmed() -> None:
    spike = samples([20.0] * 8 + [200.0])
    f = demand.forecast(spike, spike, P95)
    assert f.level == 200.0 and f.kept == 20.0
    confirmed = samples([20.0] * 8 + [200.0, 200.0])
    assert demand.forecast(confirmed, confirmed, P95).kept == 200.0


# ------------------------------------------------------------------------------- the plan


def test_need_is_the_forecast_over_the_measured_warm_up_divided_by_capacity() -> None:
    learned_ = Learned({}, {}, {"audio": AUDIO_COST}, {"audio": AUDIO_RATE}, {}, {})
    outlook = Forecast(level=60.0, slope=0.1, scatter=4.0, z=P95, kept=60.0)
    measured = History(startup={"audio": 30.0})
    plan = capacity.plans(measured, 0.0, outlook, {}, learned_, {"audio": 0.75}, INTERVAL, DEFAULT_CONFIG)
    p = plan["audio"]
    assert p.horizon_s == 30.0 + INTERVAL, "the measured warm-up and one interval"
    assert math.isclose(p.capacity, 0.75 / AUDIO_COST)  # 15 sessions per replica at RTF 0.75
    assert math.isclose(p.need, (60 + 0.1 * 45 + P95 * 4.0) / 15.0)
    assert math.isclose(p.steady, (60 + P95 * 4.0) / 15.0)
    # Until the warm-up is measured, the stage's prior (45 s for audio) stands in for it.
    prior = capacity.plans(History(), 0.0, outlook, {}, learned_, {"audio": 0.75}, INTERVAL, DEFAULT_CONFIG)
    assert prior["audio"].horizon_s == DEFAULT_CONFIG.startup_prior("audio") + INTERVAL


def test_target_utilization_from_the_spec_sizes_the_replicas() -> None:
    def replicas_for(spec: Any) -> int:
        history, current, t = learned(spec)
        return drive(spec, history, current, t, [60.0])[-1].stages["audio"].desired

    default = replicas_for(spec_40())
    assert default == math.ceil(60 * AUDIO_COST / AUDIO_TARGET_RTF)
    cooler = replicas_for(spec_40(targetUtilization={"audio": 0.5}))
    assert cooler == math.ceil(60 * AUDIO_COST / 0.5) > default


# ------------------------------------------------------------------------------ decide()


def test_a_rise_is_planned_a_warm_up_ahead_and_said_so() -> None:
    spec = spec_40()
    history, current, t = learned(spec)
    decisions = drive(spec, history, current, t, [20 + 1.5 * i for i in range(1, 30)])
    ups = [d.stages["audio"] for d in decisions if d.stages["audio"].direction == "up"]
    assert ups and all(u.reason == "demand_trend" for u in ups)
    assert "rising" in ups[0].message and "warm-up" in ups[0].message
    # Ahead of the sessions: at every scale-up the replicas carry more than the sessions now.
    for d, u in ((d, d.stages["audio"]) for d in decisions if d.stages["audio"].direction == "up"):
        sessions = d.history.sessions[-1][1]
        assert u.desired * AUDIO_TARGET_RTF / AUDIO_COST > sessions


def test_a_steady_fall_shrinks_with_the_forecast_not_a_window_later() -> None:
    spec = spec_40()
    history, current, t = learned(spec, audio=6)
    flat = drive(spec, history, current, t, [100.0] * 22)  # a full window at 100 sessions
    history = flat[-1].history
    current = Current(
        replicas={s: flat[-1].stages[s].desired for s in ("audio", "translation", "gateway")},
        model="big",
        audio_device="cpu",
    )
    t += 22 * INTERVAL
    high = current.replicas["audio"]
    falling = drive(spec, history, current, t, [100 - 3.0 * i for i in range(1, 21)])
    downs = [(i, d.stages["audio"]) for i, d in enumerate(falling) if d.stages["audio"].direction == "down"]
    assert downs, "never shrank while the sessions fell"
    first, decision = downs[0]
    assert decision.reason == "demand_falling" and "falling" in decision.message
    assert (first + 1) * INTERVAL < 300.0, "waited a stabilization window on a steady fall"
    assert decision.current == high


def test_a_one_sample_spike_does_not_hold_replicas_for_a_window() -> None:
    spec = spec_40()
    history, current, t = learned(spec)
    settled = drive(spec, history, current, t, [20.0] * 22)
    d0 = settled[-1]
    current = step(d0, Current(replicas={"audio": 2, "translation": 2, "gateway": 1}, model="big"))
    after = drive(spec, d0.history, current, t + 22 * INTERVAL, [120.0] + [20.0] * 3)
    assert after[0].stages["audio"].direction == "up", "a step is followed at once"
    assert [d.stages["audio"].direction for d in after[1:]].count("down") == 1
    assert after[-1].stages["audio"].desired == current.replicas["audio"]
