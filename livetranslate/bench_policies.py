"""The autoscaling policies ``livetranslate bench autoscaling`` compares, each deciding replicas
from what Prometheus would hold (``Observed``): ours (the operator's own ``decide()``), Kubernetes
HPA's algorithm, and a KEDA-style Prometheus scaler. The simulator is in bench.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from livetranslate.api import TranslationPipelineSpec

if TYPE_CHECKING:
    from livetranslate.bench_model import ModelParams

STAGES = ("audio", "translation", "gateway")


@dataclass
class Observed:
    """What Prometheus holds at a scrape: 30 s averages with the trace's noise applied."""

    time: float
    caption_p95: float
    translation_p95: float
    queue: dict[str, float]
    util: dict[str, float]  # uncapped (real-time factor, request-rate demand)
    cpu: dict[str, float]  # CPU utilisation of ready pods: saturates at 1.0
    demand: dict[str, float]  # offered work in replica units (for a KEDA rate query)
    sessions: float
    throughput: dict[str, float] = field(default_factory=dict)  # completions/s, a rate query


# ---------------------------------------------------------------------------------- the policies


class Policy:
    name = "policy"

    def decide(
        self, t: float, obs: Observed | None, replicas: dict[str, int], ready: dict[str, int]
    ) -> dict[str, int]:
        raise NotImplementedError


class HpaPolicy(Policy):
    """Kubernetes HPA (autoscaling/v2 defaults) on a per-stage metric against a target."""

    name = "hpa"
    sync_s = 15
    tolerance = 0.1
    down_window_s = 300.0
    up_period_s = 15.0

    def __init__(self, spec: TranslationPipelineSpec, target: float = 0.7, metric: str = "cpu") -> None:
        self.spec = spec
        self.target = target
        self.metric = metric
        self.recs: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}
        self.ups: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}  # (time, replicas before)
        self.next_t = 0.0

    def _metric(self, obs: Observed, stage: str) -> float:
        return obs.cpu[stage] if self.metric == "cpu" else obs.demand[stage]

    def decide(
        self, t: float, obs: Observed | None, replicas: dict[str, int], ready: dict[str, int]
    ) -> dict[str, int]:
        if t < self.next_t or obs is None:
            return replicas
        self.next_t = t + self.sync_s
        out = dict(replicas)
        for s in STAGES:
            lo, hi = bounds(self.spec, s)
            cur = replicas[s]
            rdy = max(1, ready[s])
            if self.metric == "cpu":
                value = self._metric(obs, s)  # average over ready pods
                ratio = value / self.target
                if ratio > 1.0 and ready[s] < cur:  # unready pods count as 0% for scale-up
                    ratio = value * ready[s] / cur / self.target
                raw = cur * ratio if abs(ratio - 1.0) > self.tolerance else cur
            else:  # AverageValue over the demand total
                total = self._metric(obs, s)
                ratio = total / (self.target * max(1, cur))
                raw = total / self.target if abs(ratio - 1.0) > self.tolerance else cur
            del rdy
            rec = clamp(math.ceil(raw - 1e-9), lo, hi)
            self.recs[s] = [(ts, r) for ts, r in self.recs[s] if t - ts < self.down_window_s] + [(t, rec)]
            desired = rec
            if desired < cur:
                desired = min(cur, max(r for _, r in self.recs[s]))
            if desired > cur:
                self.ups[s] = [(ts, r) for ts, r in self.ups[s] if t - ts < self.up_period_s]
                base = min([r for _, r in self.ups[s]] + [cur])
                limit = max(base + 4, 2 * base)
                desired = min(desired, limit)
                if desired > cur:
                    self.ups[s].append((t, cur))
            out[s] = clamp(desired, lo, hi)
        return out


class KedaPolicy(HpaPolicy):
    """KEDA's Prometheus scaler: a demand query polled every 30 s, 300 s cooldown, fed to an HPA
    (AverageValue target) with its default scale-up limits."""

    name = "keda"
    sync_s = 30

    def __init__(self, spec: TranslationPipelineSpec, target: float = 0.7) -> None:
        super().__init__(spec, target=target, metric="demand")


class LiveTranslatePolicy(Policy):
    """The operator's decide(), called every spec.scaling.interval with simulated Signals."""

    name = "livetranslate"

    def __init__(self, spec: TranslationPipelineSpec) -> None:
        from livetranslate.operator.scaling.policy import History

        self.spec = spec
        self.interval = spec.scaling.interval_seconds
        self.history = History()
        self.next_t = 0.0

    def decide(
        self, t: float, obs: Observed | None, replicas: dict[str, int], ready: dict[str, int]
    ) -> dict[str, int]:
        from livetranslate.operator.scaling.policy import Current, decide
        from livetranslate.operator.scaling.signals import Sample, Signals

        if t < self.next_t or obs is None:
            return replicas
        self.next_t = t + self.interval
        sig = Signals(
            time=t,
            caption_p95=Sample.of(obs.caption_p95),
            translation_p95=Sample.of(obs.translation_p95),
            queue_depth={s: Sample.of(obs.queue[s]) for s in STAGES},
            sessions_active=Sample.of(obs.sessions),
            audio_rtf=Sample.of(obs.util["audio"]),
            # GPU memory is not simulated (model placement is tested in the unit and integration
            # tests; the bench spec has no fallback models): that signal is absent, not invented.
            # KV-cache use follows the translation stage's utilisation and saturates at 1.
            gpu_memory_fraction=Sample.absent("missing"),
            # The model has one translation queue, reported as the stage's queue depth; counting
            # it again as vLLM's waiting requests would double it.
            vllm_requests_waiting=Sample.of(0.0),
            kv_cache_usage=Sample.of(min(1.0, obs.util["translation"])),
            throughput={s: Sample.of(v) for s, v in obs.throughput.items()},
        )
        current = Current(
            replicas=replicas,
            ready=ready,
            model=self.spec.translation.model,
            audio_device="cpu",
            translation_backend="vllm",
        )
        decision = decide(self.spec, sig, current, self.history, t)
        self.history = decision.history
        return {s: decision.stages[s].desired for s in STAGES}


class ReactiveOracle(Policy):
    """Not a policy anyone can run: a reference for what perfect measurement buys.

    Every second it knows the demand's course exactly (the sessions without their per-second
    noise: no metric noise, no scrape lag, no estimate) and runs ``ceil(course x work x
    (1 + headroom) / (capacity x target))`` replicas per stage, the spec's target utilisations.
    It cannot foresee the course (no policy can), so replicas asked for now serve after the
    stage's warm-up. Swept over ``headroom`` it traces the cost/SLO frontier of any policy that
    reacts to demand as it stands: a target below that frontier asks for foresight, not a better
    estimator (``bench_traces.frontier``)."""

    name = "oracle"

    def __init__(
        self, spec: TranslationPipelineSpec, params: ModelParams, course: list[float], headroom: float
    ):
        self.spec, self.params, self.course, self.headroom = spec, params, course, headroom
        targets = spec.scaling.targetUtilization
        self.targets = {
            "audio": targets.audio,
            "translation": targets.translation,
            "gateway": targets.gateway,
        }

    def decide(
        self, t: float, obs: Observed | None, replicas: dict[str, int], ready: dict[str, int]
    ) -> dict[str, int]:
        level = self.course[min(len(self.course) - 1, int(t))]
        out = {}
        for s in STAGES:
            m = self.params.stage(s)
            need = (
                level
                * m.work_per_session
                * (1.0 + self.headroom)
                / (m.capacity_per_replica * self.targets[s])
            )
            out[s] = clamp(math.ceil(need - 1e-9), *bounds(self.spec, s))
        return out


def bounds(spec: TranslationPipelineSpec, stage: str) -> tuple[int, int]:
    r = {
        "audio": spec.audio.replicas,
        "translation": spec.translation.replicas,
        "gateway": spec.gateway.replicas,
    }[stage]
    return r.min, r.max


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))
