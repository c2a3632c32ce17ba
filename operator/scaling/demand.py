"""The demand's statistics: where the sessions are, where they are going and how far one sample
strays (the forecast every stage's capacity is sized for), and the figures learned from the
stages' own signals. Pure arithmetic on what ``History`` remembers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from livetranslate.operator.scaling.config import DEFAULT_CONFIG, PolicyConfig
from livetranslate.operator.scaling.state import History

Trend = tuple[tuple[float, float], ...]  # (time, active sessions), oldest first


def _ols(points: Trend) -> tuple[float, float, float] | None:
    """Least-squares (slope, fitted value at the last point, standard error of the slope)."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    residual = sum((v - (mv + slope * (t - mt))) ** 2 for t, v in points) / max(1, n - 2)
    return slope, mv + slope * (points[-1][0] - mt), math.sqrt(residual / var)


def fit(points: Trend, cfg: PolicyConfig, significance: float) -> tuple[float, float] | None:
    """Least-squares (slope, fitted value at the last point) of a rise noise cannot explain.

    None unless there are ``min_trend_points`` samples and the slope is positive by more than
    ``significance`` standard errors.
    """
    if len(points) < cfg.min_trend_points:
        return None
    ols = _ols(points)
    if ols is None:
        return None
    slope, last, se = ols
    if slope <= 0 or slope <= significance * se:
        return None
    return slope, last


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


def slope(trend: Trend, cfg: PolicyConfig = DEFAULT_CONFIG) -> float:
    """Sessions per second the demand keeps rising (> 0) or falling (< 0) at; 0 when noise explains it.

    A trend is a least-squares slope over the window clearing ``trend_significance`` standard
    errors, with the recent half moving at least ``recent_slope_share`` as steeply the same way
    (a step in demand that already happened fits a slope over the whole window, but it is not
    going to continue), and no step in the window.
    """
    if len(trend) < cfg.min_trend_points or len(since_step(trend, cfg)) < len(trend):
        return 0.0
    whole, recent = _ols(trend), _ols(trend[len(trend) // 2 :])
    if whole is None or recent is None:
        return 0.0
    b, _, se = whole
    if abs(b) <= cfg.trend_significance * se or recent[0] * b <= 0:
        return 0.0
    if abs(recent[0]) < cfg.recent_slope_share * abs(b):
        return 0.0
    return b


def scatter(trend: Trend) -> float:
    """How far one session sample strays from the demand's course: a robust standard deviation.

    From the changes between consecutive samples (each holds two samples' scatter, hence the
    square root of 2), centred on their median (a trend moves every change alike) and measured by
    their median absolute deviation (a step is one change, and does not count): 1.4826 x MAD is
    the standard deviation of normally distributed changes.
    """
    values = [v for _, v in trend]
    changes = sorted(b - a for a, b in itertools.pairwise(values))
    if len(changes) < 3:
        return 0.0
    mid = changes[len(changes) // 2]
    mad = sorted(abs(c - mid) for c in changes)[len(changes) // 2]
    return 1.4826 * mad / math.sqrt(2.0)


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


@dataclass(frozen=True)
class Forecast:
    """Where the sessions are, where they are going, and how far one sample strays: what every
    planned stage's capacity is sized for."""

    level: float  # sessions now, the scrape noise averaged out (a step followed at once)
    slope: float  # sessions per second of a rise (> 0) or fall (< 0) noise cannot explain; else 0
    scatter: float  # sessions one sample strays from the course (a robust standard deviation)
    z: float  # standard normal deviates of headroom: the SLO's percentile
    # The level to keep (record for the stabilization window): ``level``, except right after a
    # step seen in one sample only, which is followed at once but kept only once confirmed.
    kept: float
    # Seconds of samples the trend was fitted on: a rise is never carried further ahead than that
    # (a young pipeline's few samples do not support a course over a two-minute warm-up).
    span: float = math.inf

    @property
    def headroom(self) -> float:
        """Sessions above the course that capacity covers: the SLO's percentile of the scatter."""
        return self.z * self.scatter

    def at(self, horizon_s: float) -> float:
        """Sessions expected ``horizon_s`` from now (a rise only: a fall never hastens a shrink)."""
        return self.level + max(0.0, self.slope) * min(horizon_s, self.span)

    def sized(self, horizon_s: float) -> float:
        """Sessions to provide for until replicas asked for now serve: the rise, plus headroom."""
        return self.at(horizon_s) + self.headroom

    @property
    def steady(self) -> float:
        """Sessions to keep providing for as demand stands (the stabilization window holds it)."""
        return self.kept + self.headroom


def forecast(trend: Trend, samples: Trend, z: float, cfg: PolicyConfig = DEFAULT_CONFIG) -> Forecast:
    """The demand's level and trend over the trend window, its scatter over ``samples`` (a longer
    memory: the stabilization window), and ``z`` standard deviations of it as headroom."""
    if not trend:
        return Forecast(0.0, 0.0, 0.0, z, 0.0)
    now = level(trend, cfg)
    kept = now
    if len(trend) > 2 and len(since_step(trend, cfg)) == 1:
        # A step up seen once may be a one-sample spike; a step down is kept as it is (the
        # window holds what came before it anyway).
        kept = min(now, level(trend[:-1], cfg))
    return Forecast(now, slope(trend, cfg), scatter(samples), z, kept, trend[-1][0] - trend[0][0])


def growth(trend: Trend, sessions: float, lookahead_s: float, cfg: PolicyConfig = DEFAULT_CONFIG) -> float:
    """Factor by which demand grows over ``lookahead_s`` at its trend (1.0: no rise noise cannot
    explain), for stages sized from a load ratio rather than from a plan."""
    rise = slope(trend, cfg)
    if sessions <= 0 or rise <= 0:
        return 1.0
    now = level(trend, cfg)
    ahead = min(lookahead_s, trend[-1][0] - trend[0][0])  # no further than the samples reach
    return max(1.0, (now + rise * ahead) / max(now, 1e-9))


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
