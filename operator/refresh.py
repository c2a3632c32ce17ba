"""A pipeline's status, recomputed from fresh reads and written where it changed: the stages'
Deployments, the model cache's Jobs, and the gauges the alerts read. Called by the reconcile and
by the watches on Deployments and pull Jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from livetranslate.api import API_VERSION, KIND, ReplicaRange, Stage
from livetranslate.config import ResolvedPipeline
from livetranslate.operator import builders, modelsync, status
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.state import OperatorState


async def refresh_status(
    state: OperatorState, namespace: str, name: str, *, pending: set[tuple[str, str]] | None = None
) -> dict[str, Any] | None:
    """Recompute a pipeline's status from fresh reads and write it if it changed.

    Serialized per pipeline and read fresh inside the lock: the reconcile and the Deployment
    watch both call this, and a write computed from an older view must never land last.
    """
    resolved: ResolvedPipeline | None = state.resolved.get((namespace, name))
    if resolved is None:
        if pending is not None:
            pending.discard((namespace, name))
        return None
    kube: KubeClient = state.kube
    locks: dict[tuple[str, str], asyncio.Lock] = state.status_locks
    lock = locks.setdefault((namespace, name), asyncio.Lock())
    async with lock:
        if pending is not None:
            pending.discard((namespace, name))  # events from now on need a refresh of their own
        current = await kube.get(API_VERSION, KIND, namespace, name)
        if current is None:
            return None
        previous = current.get("status") or {}
        generation = int(current["metadata"].get("generation") or 0)
        if state.refused.get((namespace, name)) == generation:
            return previous  # the current spec was refused: its Failed status stands
        if generation > resolved.generation:
            return None  # a newer spec is being reconciled; that reconcile writes status
        observed = {
            stage: status.StageObservation.from_deployment(dep)
            for stage, dep in (await deployments(kube, namespace, name)).items()
        }
        models = await modelsync.observe(kube, resolved, previous.get("models"))
        new = status.compute_status(resolved, observed, previous, models=models)
        export_stage_gauges(state, namespace, name, resolved, new)
        if status.status_changed(
            previous, {k: v for k, v in new.items() if k != "conditions"}
        ) or status.conditions_changed(previous.get("conditions") or [], new["conditions"]):
            await patch_status(kube, namespace, name, new)
        await modelsync.announce(kube, current, previous.get("models"), models)
        return new


def export_stage_gauges(
    state: OperatorState, namespace: str, name: str, resolved: ResolvedPipeline, new: Mapping[str, Any]
) -> None:
    """Desired/ready/max replicas per stage for the alerts (no ready replicas, pinned at max)."""
    desired, ready, maximum = state.stage_gauges
    for stage in builders.STAGES:
        observed = new.get(stage) or {}
        bounds: ReplicaRange = getattr(resolved.spec, stage).replicas
        labels = {"namespace": namespace, "pipeline": name, "stage": stage}
        desired.labels(**labels).set(int(observed.get("replicas") or 0))
        ready.labels(**labels).set(int(observed.get("readyReplicas") or 0))
        maximum.labels(**labels).set(bounds.max)


async def deployments(kube: KubeClient, namespace: str, name: str) -> dict[Stage, dict[str, Any] | None]:
    """The pipeline's Deployments by stage (one list call, not one get per stage)."""
    found: dict[Stage, dict[str, Any] | None] = dict.fromkeys(builders.STAGES)
    for dep in await kube.list(
        "apps/v1", "Deployment", namespace, label_selector=f"{builders.PIPELINE_LABEL}={name}"
    ):
        stage = (dep["metadata"].get("labels") or {}).get(builders.STAGE_LABEL)
        if stage in found and dep["metadata"]["name"] == builders.deployment_name(name, stage):
            found[stage] = dep
    return found


async def patch_status(kube: KubeClient, namespace: str, name: str, new: Mapping[str, Any]) -> None:
    # Only the conditions the reconcile owns are replaced: the autoscaler writes ScalingActive
    # concurrently (a pipeline deleted meanwhile has nothing to report on: None, no error).
    await status.write_status(kube, namespace, name, new, owned=status.RECONCILE_CONDITIONS)
