"""The autoscaler's periodic loop: gather signals, call the pure policy, act. Nothing else.

One loop per TranslationPipeline, at its own ``spec.scaling.interval``. It is a Kopf daemon that
sleeps the interval between decisions rather than a ``@kopf.timer``: a timer's interval is fixed
when the handler is registered (every pipeline would share one tick, and Kopf logs every tick),
while a daemon re-reads the live spec each time and is cancelled with its pipeline.

Acting:
- Deployment ``spec.replicas`` (merge patch): the operator is the single writer of replicas after
  creation; no HPA or KEDA may target these Deployments (docs/scaling.md);
- the annotation ``livetranslate.io/active-model`` on the TranslationPipeline (the reconcile
  handler re-places translation on it), and ``livetranslate.io/audio-device`` when an NPU pool is
  exhausted;
- ``status.lastScalingDecision`` and the ``ScalingActive`` condition, an Event per action (and one
  when scaling is held), and ``livetranslate_scaling_decisions_total{stage,direction,reason}``.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic
from prometheus_client import Counter

from livetranslate.api import API_VERSION, GROUP, KIND, PLURAL, VERSION, Device, parse_spec
from livetranslate.logs import log_context
from livetranslate.operator import builders, placement
from livetranslate.operator import status as status_writer
from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate.operator.scaling.policy import Current, Decision, History, decide
from livetranslate.operator.scaling.signals import STAGES, PrometheusSignals
from livetranslate.operator.state import OperatorState

log = logging.getLogger(__name__)

TICK_S = 1.0
DEFAULT_INTERVAL_S = 15.0
AUDIO_DEVICE_ANNOTATION = builders.AUDIO_DEVICE_ANNOTATION
CONDITION = "ScalingActive"
# Read by the ReplicaSet controller on scale-down: the pods with the lowest cost go first.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# Stages whose pods hold live sessions that a removal would move (gateway sockets, audio streams).
SESSION_STAGES = ("gateway", "audio")


def _now_iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def read_deployments(kube: KubeClient, namespace: str, name: str) -> dict[str, dict[str, int]] | None:
    """{stage: {replicas, ready}} of the pipeline's Deployments; None until all three exist."""
    out: dict[str, dict[str, int]] = {}
    for stage in STAGES:
        dep = await kube.get("apps/v1", "Deployment", namespace, builders.deployment_name(name, stage))
        if dep is None:
            return None
        replicas = int((dep.get("spec") or {}).get("replicas") or 0)
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
        out[stage] = {"replicas": replicas, "ready": ready}
    return out


async def npu_free(kube: KubeClient) -> int | None:
    """Allocatable NPUs in the cluster not requested by any running or pending pod.

    None when no node offers an NPU (no NPU pool to exhaust) or the API did not answer.
    """
    try:
        nodes = await kube.list("v1", "Node")
        allocatable = sum(
            placement.parse_quantity(
                ((n.get("status") or {}).get("allocatable") or {}).get(placement.NPU_RESOURCE, 0)
            )
            for n in nodes
            if not (n.get("spec") or {}).get("unschedulable")
        )
        if allocatable <= 0:
            return None
        pods = await kube.list("v1", "Pod")
    except ApiError as e:
        log.warning("cannot count NPUs: %s", e)
        return None
    requested = 0.0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            requested += placement.parse_quantity(
                ((c.get("resources") or {}).get("requests") or {}).get(placement.NPU_RESOURCE, 0)
            )
    return max(0, int(allocatable - requested))


def scaling_condition(
    decision: Decision, previous: Mapping[str, Any] | None, generation: int
) -> dict[str, Any]:
    status = "True" if decision.active else "False"
    since = None
    if previous and previous.get("status") == status:
        since = previous.get("lastTransitionTime")
    return {
        "type": CONDITION,
        "status": status,
        "reason": decision.condition_reason,
        "message": decision.message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": since or _now_iso(decision.time),
    }


async def act(
    kube: KubeClient, body: Mapping[str, Any], decision: Decision, *, counter: Counter | None = None
) -> dict[str, Any]:
    """Apply a decision: replicas, annotations, status, Events, the counter. Returns the status patch."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta}
    record: dict[str, Any] | None = None
    for change in decision.changes:
        await kube.patch(
            "apps/v1",
            "Deployment",
            namespace,
            builders.deployment_name(name, change.stage),
            {"spec": {"replicas": change.desired}},
        )
        record = {
            "time": _now_iso(decision.time),
            "stage": change.stage,
            "from": change.current,
            "to": change.desired,
            "reason": change.message,
        }
        if counter is not None:
            counter.labels(
                pipeline=name, stage=change.stage, direction=change.direction, reason=change.reason
            ).inc()
        await kube.post_event(owner, "ScaledUp" if change.direction == "up" else "ScaledDown", change.message)
        log.info(
            "scaled %s %d -> %d: %s",
            change.stage,
            change.current,
            change.desired,
            change.message,
            extra={"pipeline": name, "namespace": namespace, "stage": change.stage},
        )
    annotations: dict[str, str] = {}
    current_model = (meta.get("annotations") or {}).get(builders.ACTIVE_MODEL_ANNOTATION)
    if decision.model is not None:
        annotations[builders.ACTIVE_MODEL_ANNOTATION] = decision.model
        record = {
            "time": _now_iso(decision.time),
            "stage": "translation",
            "from": current_model or "",
            "to": decision.model,
            "reason": decision.model_message,
        }
        if counter is not None:
            counter.labels(
                pipeline=name, stage="translation", direction="model", reason=decision.model_reason
            ).inc()
        await kube.post_event(owner, "ModelChanged", decision.model_message)
        log.info("%s", decision.model_message, extra={"pipeline": name, "namespace": namespace})
    if decision.audio_device is not None:
        annotations[AUDIO_DEVICE_ANNOTATION] = decision.audio_device
        if counter is not None:
            counter.labels(pipeline=name, stage="audio", direction="device", reason="npu_exhausted").inc()
        await kube.post_event(owner, "AudioDeviceChanged", decision.audio_device_message, type_="Warning")
    if annotations:
        await kube.patch(API_VERSION, KIND, namespace, name, {"metadata": {"annotations": annotations}})

    status = dict(body.get("status") or {})
    conditions = [dict(c) for c in status.get("conditions") or []]
    previous = next((c for c in conditions if c.get("type") == CONDITION), None)
    generation = int(meta.get("generation") or 0)
    condition = scaling_condition(decision, previous, generation)
    patch: dict[str, Any] = {}
    if previous is None or any(previous.get(k) != condition[k] for k in ("status", "reason", "message")):
        patch["conditions"] = [c for c in conditions if c.get("type") != CONDITION] + [condition]
        if not decision.active and (
            previous is None
            or previous.get("status") != "False"
            or previous.get("reason") != decision.condition_reason
        ):
            await kube.post_event(owner, "ScalingHeld", decision.message, type_="Warning")
    if record is not None:
        patch["lastScalingDecision"] = record
    if patch:
        # Read-modify-write with a resourceVersion precondition: the reconcile writes the other
        # conditions concurrently, and a plain merge patch of the list would drop its entries.
        await status_writer.write_status(kube, namespace, name, patch, owned={CONDITION})
    return patch


async def mark_deletion_costs(
    kube: KubeClient, namespace: str, name: str, stage: str, sessions: Mapping[str, float]
) -> int:
    """Before a scale-down: each pod's deletion cost is its live sessions, so the pod the
    ReplicaSet controller removes is the emptiest one (fewest sessions to hand over). Pods the
    metrics do not know yet (just started) cost 0. Returns the pods whose cost changed."""
    pods = await kube.list(
        "v1",
        "Pod",
        namespace,
        label_selector=f"{builders.PIPELINE_LABEL}={name},{builders.STAGE_LABEL}={stage}",
    )
    changed = 0
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        cost = str(round(sessions.get(pod_name, 0.0)))
        if (pod["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION) == cost:
            continue
        patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}}
        try:
            await kube.patch("v1", "Pod", namespace, pod_name, patch)
        except ApiError as e:
            if e.status != 404:  # gone meanwhile: nothing to weigh
                raise
        changed += 1
    return changed


async def scale_once(
    kube: KubeClient,
    body: Mapping[str, Any],
    history: History,
    *,
    now: float | None = None,
    counter: Counter | None = None,
    signals_source: PrometheusSignals | None = None,
) -> Decision | None:
    """One full autoscaling step for one pipeline. None when there is nothing to scale yet."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    try:
        spec = parse_spec(body.get("spec"))
    except pydantic.ValidationError:
        return None  # the reconcile handler reports invalid specs
    if not spec.scaling.enabled:
        return None
    deployments = await read_deployments(kube, namespace, name)
    if deployments is None:
        return None  # not reconciled yet
    status = body.get("status") or {}
    annotations = meta.get("annotations") or {}
    model = placement.active_model(spec, annotations.get(builders.ACTIVE_MODEL_ANNOTATION))
    audio_device: Device = (status.get("audio") or {}).get("device") or spec.audio.devices[0]
    backend = (status.get("translation") or {}).get("backend") or "vllm"
    npus = await npu_free(kube) if audio_device == "npu" else None
    # A query slower than the interval is as good as none: the next interval asks again.
    source = signals_source or PrometheusSignals(
        spec.scaling.prometheusUrl, timeout_s=max(1.0, min(5.0, spec.scaling.interval_seconds))
    )
    taken = time.time() if now is None else now
    signals = await source.gather(name, namespace, spec.scaling.interval_seconds, now=taken, npu_free=npus)
    current = Current(
        replicas={s: d["replicas"] for s, d in deployments.items()},
        ready={s: d["ready"] for s, d in deployments.items()},
        model=model,
        audio_device=audio_device,
        translation_backend=backend,
    )
    decision = decide(spec, signals, current, history, taken)
    for change in decision.changes:
        if change.direction == "down" and change.stage in SESSION_STAGES:
            sessions = await source.pod_sessions(name, namespace, change.stage)
            await mark_deletion_costs(kube, namespace, name, change.stage, sessions)
    await act(kube, body, decision, counter=counter)
    return decision


async def autoscale_step(body: kopf.Body, memo: kopf.Memo) -> None:
    """One decision for one pipeline, with its failures logged (the next interval retries). The
    pipeline's history lives on its own memo; the client and metrics on the shared state."""
    state: OperatorState | None = memo.get("state")
    if state is None:
        return
    raw = status_writer.pipeline_object(body)
    with log_context(pipeline=body.metadata.name, namespace=body.metadata.namespace, component="autoscaler"):
        try:
            decision = await scale_once(
                state.kube, raw, memo.get("scaling_history") or History(), counter=state.scaling_decisions
            )
        except ApiError as e:
            log.warning("autoscaling step failed, retrying next interval: %s", e)
            return
        if decision is None:
            return
        memo.scaling_history = decision.history
        state.scaling_active_gauge.labels(
            namespace=body.metadata.namespace or "", pipeline=body.metadata.name or ""
        ).set(1 if decision.active else 0)


@kopf.daemon(GROUP, VERSION, PLURAL, initial_delay=TICK_S, cancellation_timeout=10.0)
async def autoscale(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """The pipeline's autoscaling loop: one decision, then sleep spec.scaling.interval (re-read
    from the live body every time, so an edited interval applies at once).

    The first decision waits a random part of one interval: a new pipeline has no metrics yet,
    and after an operator restart hundreds of loops would otherwise all query Prometheus and the
    API server in the same instant, in the middle of the restart's reconciles."""
    try:
        first = parse_spec(dict(body.spec)).scaling.interval_seconds
    except pydantic.ValidationError:
        first = DEFAULT_INTERVAL_S
    await stopped.wait(random.uniform(0.0, first))
    while not stopped:
        try:
            interval = parse_spec(dict(body.spec)).scaling.interval_seconds
        except pydantic.ValidationError:
            interval = DEFAULT_INTERVAL_S  # the reconcile handler reports the invalid spec
        else:
            await autoscale_step(body, memo)
        await stopped.wait(interval)
