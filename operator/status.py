"""Status: observed Deployments + placement -> phase, conditions and per-stage figures.

Pure, so the rules users read in ``kubectl get tp`` (when is a pipeline Ready, Degraded, Failed)
are unit-tested without a cluster. Conditions keep their lastTransitionTime while their status
does not change, as Kubernetes conventions require.

The one exception, ``write_status``, is how both writers of the status (the reconcile and the
autoscaler) write it: each owns some condition types, and neither may drop the other's.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from livetranslate.api import API_VERSION, KIND, Stage
from livetranslate.config import ResolvedPipeline
from livetranslate.operator import modelcache
from livetranslate.operator.builders import STAGES, gateway_endpoint
from livetranslate.operator.kube import ApiError, KubeClient

STAGE_CONDITIONS: dict[Stage, str] = {
    "audio": "AudioReady",
    "translation": "TranslationReady",
    "gateway": "GatewayReady",
}
# Condition types each writer owns (the autoscaler owns ScalingActive).
RECONCILE_CONDITIONS = frozenset({"Ready", "ModelsReady", *STAGE_CONDITIONS.values()})
WRITE_ATTEMPTS = 5


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StageObservation:
    """The parts of a Deployment's spec and status that readiness depends on."""

    exists: bool = False
    desired: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    generation: int = 0
    observed_generation: int = 0

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any] | None) -> StageObservation:
        if not deployment:
            return cls()
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        meta = deployment.get("metadata") or {}
        return cls(
            exists=True,
            desired=int(spec.get("replicas", 1) or 0),
            replicas=int(status.get("replicas", 0) or 0),
            ready=int(status.get("readyReplicas", 0) or 0),
            updated=int(status.get("updatedReplicas", 0) or 0),
            available=int(status.get("availableReplicas", 0) or 0),
            generation=int(meta.get("generation", 0) or 0),
            observed_generation=int(status.get("observedGeneration", 0) or 0),
        )

    @property
    def rolled_out(self) -> bool:
        """The controller saw the current template and every desired replica runs it, ready."""
        return (
            self.exists
            and self.observed_generation >= self.generation
            and self.updated >= self.desired
            and self.ready >= self.desired
        )


def _condition(
    previous: Mapping[str, Mapping[str, Any]],
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(type_)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since or now,
    }


def compute_status(
    resolved: ResolvedPipeline,
    observed: Mapping[Stage, StageObservation],
    previous: Mapping[str, Any] | None,
    *,
    models: list[dict[str, Any]] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The status patch for a pipeline whose children were applied from ``resolved``.

    ``models`` (with spec.modelCache) are the cache's entries; ModelsReady sums them up.
    """
    now = now or now_iso()
    prev_conditions = {c.get("type", ""): c for c in (previous or {}).get("conditions") or []}
    gen = resolved.generation
    conditions = []
    ready_stages = 0
    for stage in STAGES:
        obs = observed.get(stage, StageObservation())
        ok = obs.rolled_out
        ready_stages += ok
        if not obs.exists:
            reason, message = "NotCreated", f"Deployment {resolved.name}-{stage} does not exist yet"
        elif ok:
            reason, message = "ReplicasReady", f"{obs.ready}/{obs.desired} replicas ready"
        elif obs.observed_generation < obs.generation or obs.updated < obs.desired:
            reason, message = (
                "RollingOut",
                (f"{obs.updated}/{obs.desired} replicas updated, {obs.ready} ready"),
            )
        else:
            reason, message = "ReplicasNotReady", f"{obs.ready}/{obs.desired} replicas ready"
        conditions.append(_condition(prev_conditions, STAGE_CONDITIONS[stage], ok, reason, message, gen, now))

    all_ready = ready_stages == len(STAGES)
    if all_ready:
        phase = "Ready"
        ready = _condition(
            prev_conditions,
            "Ready",
            True,
            "AllStagesReady",
            "audio, translation and gateway are ready",
            gen,
            now,
        )
    else:
        was_ready = (previous or {}).get("phase") in ("Ready", "Degraded")
        # Short of replicas after having been Ready (mid-rollout, a pod lost, even a whole stage
        # down) is Degraded: users were served and are not fully served now, which on-call must
        # tell apart from a pipeline still coming up for the first time (Progressing).
        phase = "Degraded" if was_ready else "Progressing"
        waiting = [
            STAGE_CONDITIONS[s] for s, c in zip(STAGES, conditions, strict=True) if c["status"] != "True"
        ]
        ready = _condition(
            prev_conditions, "Ready", False, "StagesNotReady", f"waiting for {', '.join(waiting)}", gen, now
        )
    if models is not None:
        ok, reason, message = modelcache.models_condition(models)
        conditions.append(_condition(prev_conditions, "ModelsReady", ok, reason, message, gen, now))
    # Conditions this module does not own (ScalingActive, written by the autoscaler) are kept.
    kept = [c for t, c in prev_conditions.items() if t not in RECONCILE_CONDITIONS and t]
    p = resolved.placement
    return {
        "phase": phase,
        "observedGeneration": gen,
        "conditions": [ready, *conditions, *kept],
        "readyStages": f"{ready_stages}/{len(STAGES)}",
        "invalidField": None,  # (merge patch) clears what a refused spec had set
        "models": models,
        "audio": {
            "replicas": observed.get("audio", StageObservation()).replicas,
            "readyReplicas": observed.get("audio", StageObservation()).ready,
            "device": p.audioDevice,
            "model": resolved.spec.audio_model(),
            "reason": p.audioReason,
        },
        "translation": {
            "replicas": observed.get("translation", StageObservation()).replicas,
            "readyReplicas": observed.get("translation", StageObservation()).ready,
            "model": p.translationModel,
            "backend": p.translationBackend,
            "reason": p.translationReason,
        },
        "gateway": {
            "replicas": observed.get("gateway", StageObservation()).replicas,
            "readyReplicas": observed.get("gateway", StageObservation()).ready,
            "endpoint": gateway_endpoint(resolved.name, resolved.namespace),
        },
    }


def failed_status(
    message: str, field: str, generation: int, previous: Mapping[str, Any] | None, *, now: str | None = None
) -> dict[str, Any]:
    """Status of a spec the operator refuses: Failed, Ready=False naming the field."""
    now = now or now_iso()
    prev_conditions = {c.get("type", ""): c for c in (previous or {}).get("conditions") or []}
    ready = _condition(prev_conditions, "Ready", False, "InvalidSpec", message, generation, now)
    kept = [c for t, c in prev_conditions.items() if t != "Ready" and t]
    return {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": [ready, *kept],
        "invalidField": field,
    }


def status_changed(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether patching ``new`` would change anything (skips no-op writes on every watch event)."""
    current = current or {}
    return any(current.get(k) != v for k, v in new.items())


def pipeline_object(body: Mapping[str, Any]) -> dict[str, Any]:
    """A TranslationPipeline as the API returns it, from the body Kopf hands a handler (its views
    copied into plain dicts, so the reconcile and the autoscaler work on a snapshot)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def conditions_changed(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> bool:
    """Whether two condition lists differ in anything but their transition times."""

    def key(cs: Iterable[Mapping[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {
            c.get("type", ""): (
                c.get("status"),
                c.get("reason"),
                c.get("message"),
                c.get("observedGeneration"),
            )
            for c in cs
        }

    return key(old) != key(new)


def merge_conditions(
    current: list[Mapping[str, Any]], ours: list[Mapping[str, Any]], owned: Collection[str]
) -> list[dict[str, Any]]:
    """The condition list to write: ``owned`` types from ``ours``, every other type as it is now.

    Entries keep their place in ``current``; owned types ``current`` lacks are appended.
    """
    mine = {c.get("type"): dict(c) for c in ours if c.get("type") in owned}
    out: list[dict[str, Any]] = []
    for c in current:
        t = c.get("type")
        if t in owned:
            if t in mine:
                out.append(mine.pop(t))
        else:
            out.append(dict(c))
    return out + list(mine.values())


async def write_status(
    kube: KubeClient, namespace: str, name: str, patch: Mapping[str, Any], owned: Collection[str]
) -> dict[str, Any] | None:
    """Merge-patch a pipeline's status without losing another writer's conditions.

    ``conditions`` is a list, and a merge patch replaces a list whole: the reconcile (Ready and
    the stage conditions) and the autoscaler (ScalingActive), each writing the list as it read
    it a moment earlier, would drop each other's latest entries. So the list is rebuilt from the
    object as it is now (``owned`` types from ``patch``, the rest untouched) and written with the
    object's resourceVersion as a precondition: if anyone wrote in between, the API server
    answers 409 Conflict and it is read and merged again. None when the pipeline is gone.
    """
    for attempt in range(WRITE_ATTEMPTS):
        fresh = await kube.get(API_VERSION, KIND, namespace, name)
        if fresh is None:
            return None
        body = dict(patch)
        if "conditions" in patch:
            now = list((fresh.get("status") or {}).get("conditions") or [])
            body["conditions"] = merge_conditions(now, list(patch["conditions"] or []), owned)
        precondition = {"resourceVersion": fresh["metadata"]["resourceVersion"]}
        try:
            result: dict[str, Any] = await kube.patch(
                API_VERSION,
                KIND,
                namespace,
                name,
                {"metadata": precondition, "status": body},
                subresource="status",
            )
            return result
        except ApiError as e:
            if e.status == 404:
                return None
            if e.status != 409 or attempt == WRITE_ATTEMPTS - 1:
                raise
    return None
