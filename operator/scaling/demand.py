"""The demand's statistics: its level and trend from the session samples, the learned figures,
and the replicas a stage's demand plans for. Pure arithmetic on what ``History`` remembers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from livetranslate.operator.scaling.config import DEFAULT_CONFIG, PolicyConfig
from livetranslate.operator.scaling.state import History

Trend = tuple[tuple[float, float], ...]  # (time, active sessions), oldest first


def fit(points: Trend, cfg: PolicyConfig, significance: float) -> tuple[float, float] | None:
    """Least-squares (slope, fitted value at the last point) of a rise noise cannot explain.

    None unless there are ``min_trend_points`` samples and the slope is positive by more than
    ``significance`` standard errors.
    """
    n = len(points)
    if n < cfg.min_trend_points:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    residual = sum((v - (mv + slope * (t - mt))) ** 2 for t, v in points) / max(1, n - 2)
    if slope <= 0 or slope <= significance * math.sqrt(residual / var):
        return None
    return slope, mv + slope * (points[-1][0] - mt)


def since_step(trend: Trend, cfg: PolicyConfig) -> Trend:
    """The samples after the last jump no noise explains (demand stepped there): all, if none.

    A jump is a change between consecutive samples more than ``step_sigmas`` times the typical
    (median) change and more than ``step_fraction`` of the level.
    """
    values = [v for _, v in trend]
    jumps = [abs(b - a) for a, b in itertools.pairwise(values)]
    if len(jumps) < 3:
        return trend
    typical = sorted(jumps)[len(jumps) // 2]
    for i in range(len(jumps) - 1, -1, -1):
        if jumps[i] > max(cfg.step_sigmas * typical, cfg.step_fraction * max(values[i], values[i + 1], 1.0)):
            return trend[i + 1 :]
    return trend


def growth(trend: Trend, sessions: float, lookahead_s: float, cfg: PolicyConfig = DEFAULT_CONFIG) -> float:
    """Factor by which demand grows over ``lookahead_s`` at the least-squares slope of the trend.

    Only growth counts (a falling trend never hastens a scale-down), it needs ``min_trend_points``
    samples so one noisy scrape makes no slope, and it is capped at ``max_growth``. The recent
    half of the window must rise at least ``recent_slope_share`` as steeply: a step in demand
    that already happened fits a slope over the whole window, but it is not going to continue.
    """
    if sessions <= 0 or len(since_step(trend, cfg)) < len(trend):
        return 1.0
    whole = fit(trend, cfg, cfg.trend_significance)
    recent = fit(trend[len(trend) // 2 :], cfg, significance=0.0)
    if whole is None or recent is None or recent[0] < cfg.recent_slope_share * whole[0]:
        return 1.0
    slope, level = whole
    return min(cfg.max_growth, max(1.0, (level + slope * lookahead_s) / max(level, 1e-9)))


def level(trend: Trend, cfg: PolicyConfig = DEFAULT_CONFIG) -> float:
    """The session count now, with the scrape noise averaged out but no lag on a step.

    The mean of the samples of the last ``level_window_s`` since demand last stepped (the fitted
    value now where they rise significantly): a step in demand is followed at once.
    """
    now_t = trend[-1][0]
    recent = tuple(p for p in since_step(trend, cfg) if now_t - p[0] <= cfg.level_window_s)
    fitted = fit(recent, cfg, cfg.trend_significance)
    if fitted is not None:
        return fitted[1]
    return sum(v for _, v in recent) / len(recent)


def learn(old: float | None, n: int, sample: float, cfg: PolicyConfig) -> tuple[float, int]:
    """A running mean of the first samples, then a moving average over the last 1/``learn_rate``.

    Each sample is noisy (two scraped gauges divided); averaging many keeps the demand model's
    error small, and the moving average still follows a real change (another model, a slower node).
    """
    if old is None or n <= 0:
        return sample, 1
    n += 1
    return old + max(cfg.learn_rate, 1.0 / n) * (sample - old), n


def until_ready(history: History, stage: str, now: float, cfg: PolicyConfig) -> float:
    """Seconds until replicas asked for now (or still starting) serve: the measured start-up."""
    startup = history.startup.get(stage, cfg.startup_prior(stage))
    batches = [t for t, _ in history.pending_up.get(stage, ())]
    return max(0.0, startup - (now - min(batches))) if batches else startup


def queue_rate(history: History, stage: str, depth: float, now: float) -> float | None:
    """Items per second the stage's queue grew since the last interval (None: not known)."""
    prev = history.queues.get(stage)
    if prev is None or history.queues_time is None or now <= history.queues_time:
        return None
    return (depth - prev) / (now - history.queues_time)


@dataclass(frozen=True)
class Learned:
    """The figures learned from this interval on top of those remembered."""

    startup: Mapping[str, float]  # seconds from a scale-up to its replicas being ready
    pending_up: Mapping[str, tuple[tuple[float, int], ...]]  # scale-ups still being timed
    per_session: Mapping[str, float]  # replica-utilisation per active session
    per_replica: Mapping[str, float]  # items per second one replica completes at full utilisation
    learned: Mapping[str, int]  # samples behind each figure
    # The load the sessions explain (sessions x cost per session / target, on the source replicas).
    demand_load: Mapping[str, float]


@dataclass(frozen=True)
class Plan:
    """A stage's replicas planned from its demand: what the sessions need, and catch-up."""

    demand: float  # replicas' worth of work the sessions offer (at 100% utilisation)
    need: float  # replicas at the target utilisation
    catch_up: float  # extra replicas to drain the backlog within plan_drain_s
    backlog: float  # the backlog expected when new replicas are ready, in items
    drain_s: float  # seconds the backlog would take to drain with ``need`` replicas


def plans(
    history: History,
    now: float,
    sessions: float,
    depths: Mapping[str, float],
    learned: Learned,
    cfg: PolicyConfig,
) -> dict[str, Plan]:
    """Replicas planned from the demand, for stages whose cost per session and throughput are known.

    Sessions arrive before latency rises, so the need (sessions x learned cost / target) leads.
    A backlog is drained on purpose: the queue keeps growing at its current rate until new
    replicas are ready (one measured start-up), and catch-up replicas are added so that, served
    at the stage's measured throughput per replica, it drains while the sessions keep arriving.
    Captions are late until every stage has drained, so each stage drains by when the slowest
    backlogged stage can have drained (its start-up plus ``plan_drain_s``): catching up faster
    than that costs replicas and shortens no breach. Catch-up replicas go once the backlog has
    drained.
    """
    work: dict[str, tuple[float, float, float]] = {}  # stage: (backlog, replica-seconds, until ready)
    per_session, per_replica = learned.per_session, learned.per_replica
    for stage in cfg.targets:
        if stage not in per_session or stage not in per_replica or sessions <= 0:
            continue
        depth = depths.get(stage, 0.0)
        rate = queue_rate(history, stage, depth, now)
        wait = until_ready(history, stage, now, cfg)
        backlog = depth + (max(0.0, rate) if rate is not None else 0.0) * wait
        work[stage] = (backlog, backlog / per_replica[stage], wait)
    backlogged = [w[2] for w in work.values() if w[1] > 0]
    deadline = max(backlogged, default=0.0) + cfg.plan_drain_s
    out: dict[str, Plan] = {}
    for stage, (backlog, replica_s, wait) in work.items():
        demand = sessions * per_session[stage]
        need = demand / cfg.targets[stage]
        spare = need - demand
        drain_s = replica_s / spare if spare > 0 else math.inf
        catch_up = max(0.0, demand + replica_s / max(cfg.plan_drain_s, deadline - wait) - need)
        out[stage] = Plan(demand, need, catch_up, backlog, drain_s)
    return out
