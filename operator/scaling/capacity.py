"""Replicas from capacity: what one replica of a stage carries, how far ahead it must already
carry it, and how many replicas the forecast sessions need. Pure arithmetic on the forecast and on
the figures the policy learned from the stages' own signals.

Per stage, with ``cost`` the replica-utilisation one session costs (learned: RTF x ready replicas
/ sessions for audio, KV-cache use likewise for translation) and ``target`` the utilisation the
stage is sized for (``spec.scaling.targetUtilization``):

    capacity  = target / cost                          sessions one replica carries
    horizon   = measured warm-up + one interval        until replicas asked for now serve
    sessions  = level + rise x horizon + z x scatter   the forecast, with headroom at the SLO's
                                                       percentile (z = 1.645 for a p95 SLO)
    need      = sessions / capacity

Scale-down keeps ``steady = (level + z x scatter) / capacity``: the rise is planned for while it
lasts, but the stabilization window holds only what demand as it stands needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from livetranslate.operator.scaling.config import PolicyConfig
from livetranslate.operator.scaling.demand import Forecast, Learned, queue_rate, until_ready
from livetranslate.operator.scaling.state import History


def horizon(history: History, stage: str, interval_s: float, cfg: PolicyConfig) -> float:
    """Seconds ahead a stage's capacity must already cover: replicas asked for now serve after
    the stage's measured warm-up (``startup_priors`` until measured), and the next ones, asked
    for one interval later, a warm-up after that."""
    return history.startup.get(stage, cfg.startup_prior(stage)) + interval_s


@dataclass(frozen=True)
class Plan:
    """A stage's replicas planned from its capacity: what the forecast sessions need, and catch-up."""

    sessions: float  # sessions sized for: the forecast at the horizon, plus headroom
    horizon_s: float  # seconds ahead: the stage's warm-up and one interval
    capacity: float  # sessions one replica carries at the target utilisation
    demand: float  # replicas' worth of work the sessions offer now (at 100% utilisation)
    need: float  # replicas for ``sessions`` at the target utilisation
    steady: float  # replicas for the sessions as they stand, with headroom: what scale-down keeps
    catch_up: float  # extra replicas to drain the backlog within plan_drain_s
    backlog: float  # the backlog expected when new replicas are ready, in items
    drain_s: float  # seconds the backlog would take to drain with ``need`` replicas


def plans(
    history: History,
    now: float,
    outlook: Forecast,
    depths: Mapping[str, float],
    learned: Learned,
    targets: Mapping[str, float],
    interval_s: float,
    cfg: PolicyConfig,
) -> dict[str, Plan]:
    """Replicas planned from capacity, for stages whose cost per session and throughput are known.

    Sessions arrive before latency rises, so the forecast leads. A backlog is drained on purpose:
    the queue keeps growing at its current rate until new replicas are ready (one measured
    start-up), and catch-up replicas are added so that, served at the stage's measured
    throughput per replica, it drains while the sessions keep arriving. Captions are late until
    every stage has drained, so each stage drains by when the slowest backlogged stage can have
    drained (its start-up plus ``plan_drain_s``): catching up faster than that costs replicas and
    shortens no breach. Catch-up replicas go once the backlog has drained.
    """
    work: dict[str, tuple[float, float, float]] = {}  # stage: (backlog, replica-seconds, until ready)
    per_session, per_replica = learned.per_session, learned.per_replica
    for stage in targets:
        if stage not in per_session or stage not in per_replica or outlook.level <= 0:
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
        capacity = targets[stage] / per_session[stage]
        ahead = horizon(history, stage, interval_s, cfg)
        sessions = outlook.sized(ahead)
        demand = outlook.level * per_session[stage]
        need = sessions / capacity
        spare = need - demand
        drain_s = replica_s / spare if spare > 0 else math.inf
        catch_up = max(0.0, demand + replica_s / max(cfg.plan_drain_s, deadline - wait) - need)
        steady = outlook.steady / capacity
        out[stage] = Plan(sessions, ahead, capacity, demand, need, steady, catch_up, backlog, drain_s)
    return out
