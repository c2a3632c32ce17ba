"""What the operator's handlers share: one typed object per operator process.

Kopf hands each object's handlers a shallow copy of its ``memo``; the startup handler puts one
``OperatorState`` on it (``memo.state``), so every pipeline's handlers, the Node and Deployment
watchers and the autoscaler see the same client, settings, metrics and per-pipeline bookkeeping.
Per-object state (the autoscaler's history of one pipeline) stays on that object's memo.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from livetranslate.config import ResolvedPipeline
from livetranslate.operator import placement
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings

Ref = tuple[str, str]  # (namespace, name) of a pipeline


@dataclass
class NodeFacts:
    """What every Node offers, kept from Node events (shared by all objects' handlers)."""

    nodes: dict[str, dict[str, bool]] = field(default_factory=dict)
    seeded: bool = False
    cluster: placement.ClusterDevices | None = None


@dataclass
class OperatorState:
    kube: KubeClient
    settings: OperatorSettings
    registry: CollectorRegistry
    reconcile_seconds: Histogram
    stage_gauges: tuple[Gauge, Gauge, Gauge]  # desired, ready, max replicas per stage
    scaling_active_gauge: Gauge
    scaling_decisions: Counter
    owns_kube: bool = False  # opened here, so closed at cleanup
    # Last applied config per pipeline, and the generation whose spec was refused.
    resolved: dict[Ref, ResolvedPipeline] = field(default_factory=dict)
    refused: dict[Ref, int] = field(default_factory=dict)
    # One reconcile and one status write per pipeline at a time.
    reconcile_locks: dict[Ref, asyncio.Lock] = field(default_factory=dict)
    status_locks: dict[Ref, asyncio.Lock] = field(default_factory=dict)
    status_pending: set[Ref] = field(default_factory=set)  # a coalesced status refresh is queued
    deployment_versions: dict[Ref, str | None] = field(default_factory=dict)  # last handled per Deployment
    discovery: dict[str, tuple[float, bool]] = field(default_factory=dict)  # API groups served, when asked
    nodes: NodeFacts = field(default_factory=NodeFacts)
    # A reconcile due when a failed model pull's backoff has passed: (monotonic due time, task).
    model_retry: dict[Ref, tuple[float, asyncio.Task[None]]] = field(default_factory=dict)
    job_states: dict[Ref, str] = field(default_factory=dict)  # last seen state per pull Job
    resync_task: asyncio.Task[None] | None = None

    def forget(self, ref: Ref) -> None:
        """A deleted pipeline: drop what is kept for it."""
        for kept in (self.resolved, self.refused, self.status_locks, self.reconcile_locks):
            kept.pop(ref, None)
        retry = self.model_retry.pop(ref, None)
        if retry is not None:
            retry[1].cancel()
