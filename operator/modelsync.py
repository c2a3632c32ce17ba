"""The model cache against the API: claims and pull Jobs applied, failed pulls replaced after their
backoff, and ``status.models`` read back from the Jobs (see ``modelcache`` for the rules)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from livetranslate.config import ResolvedPipeline
from livetranslate.operator import modelcache
from livetranslate.operator.builders import PIPELINE_LABEL
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings

Apply = Callable[..., Awaitable[dict[str, Any]]]


@dataclass
class CacheSync:
    """What one reconcile learned about the cache."""

    nodes: dict[str, str | None] = field(default_factory=dict)  # ReadWriteOnce: stage -> node
    retry_in: float | None = None  # seconds until a failed pull is replaced


async def list_jobs(kube: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return await kube.list(
        "batch/v1",
        "Job",
        namespace,
        label_selector=f"{PIPELINE_LABEL}={name},app.kubernetes.io/component={modelcache.COMPONENT}",
    )


async def sync(
    kube: KubeClient,
    resolved: ResolvedPipeline,
    owner: Mapping[str, Any],
    settings: OperatorSettings,
    jobs: list[dict[str, Any]],
) -> CacheSync:
    """Apply the cache's claims and create a Job for every model without one; replace pull Jobs
    that gave up once their backoff has passed. Idempotent: a restarted operator finds the Jobs."""
    spec = resolved.spec.modelCache
    out = CacheSync()
    if spec is None:
        return out
    claims = await asyncio.gather(
        # A claim's spec is immutable once bound: created as built, never patched.
        *(kube.apply(c, owner, keep_on_update=[("spec",)]) for c in modelcache.build_claims(resolved))
    )
    by_claim = {c["metadata"]["name"]: c for c in claims}
    for stage, claim in modelcache.claim_names(resolved.name, spec).items():
        annotations = (by_claim.get(claim) or {}).get("metadata", {}).get("annotations") or {}
        out.nodes[stage] = annotations.get(modelcache.SELECTED_NODE_ANNOTATION)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    for model in modelcache.kept_models(resolved, jobs):
        name = modelcache.job_name(resolved.name, model)
        job = by_name.get(name)
        if job is None:
            await kube.apply(
                modelcache.build_job(resolved, model, settings), owner, keep_on_update=[("spec",)]
            )
            await kube.post_event(
                owner, "ModelPull", f"pulling {model.name} ({model.format}) into the model cache"
            )
            continue
        if not modelcache.job_failed(job) or modelcache.failed_for_good(job):
            continue
        wait = modelcache.retry_in(job)
        if wait > 0:
            out.retry_in = wait if out.retry_in is None else min(out.retry_in, wait)
            continue
        attempt = modelcache.attempt_of(job) + 1
        await kube.delete("batch/v1", "Job", resolved.namespace, name)
        await kube.apply(
            modelcache.build_job(resolved, model, settings, attempt), owner, keep_on_update=[("spec",)]
        )
        await kube.post_event(owner, "ModelPullRetried", f"pulling {model.name} again (attempt {attempt})")
    return out


async def observe(
    kube: KubeClient, resolved: ResolvedPipeline, previous: list[Mapping[str, Any]] | None
) -> list[dict[str, Any]] | None:
    """``status.models`` from the pull Jobs (None without a cache). A finished Job's pod is read
    once for its summary (bytes, sha256, or the error); later refreshes keep what was read."""
    if resolved.spec.modelCache is None:
        return None
    listed = await list_jobs(kube, resolved.namespace, resolved.name)
    jobs = {j["metadata"]["name"]: j for j in listed}
    before = {(m.get("stage"), m.get("name"), m.get("format")): m for m in previous or []}
    out = []
    for model in modelcache.kept_models(resolved, listed):
        name = modelcache.job_name(resolved.name, model)
        job = jobs.get(name)
        prev = before.get((model.stage, model.name, model.format))
        summary: dict[str, Any] = {}
        finished = job is not None and (modelcache.job_complete(job) or modelcache.job_failed(job))
        if finished and (prev is None or prev.get("state") not in ("Ready", "Failed")):
            pods = await kube.list("v1", "Pod", resolved.namespace, label_selector=f"job-name={name}")
            summary = modelcache.termination_summary(pods)
        elif finished and prev is not None and prev.get("state") == "Failed":
            summary = {"error": prev.get("message")}  # read once when it failed
        elif job is not None and not finished:
            # Say why its pod does not run (a missing Secret, no node that fits) instead of Pending.
            pods = await kube.list("v1", "Pod", resolved.namespace, label_selector=f"job-name={name}")
            summary = {"waiting": modelcache.waiting_reason(pods)}
        out.append(modelcache.model_status(model, job, summary, prev))
    return out


async def announce(
    kube: KubeClient,
    owner: Mapping[str, Any],
    previous: Sequence[Mapping[str, Any]] | None,
    current: Sequence[Mapping[str, Any]] | None,
) -> None:
    """An Event when a model turns Ready or Failed."""
    before = {(m.get("stage"), m.get("name"), m.get("format")): m.get("state") for m in previous or []}
    for m in current or []:
        state = m.get("state")
        if before.get((m.get("stage"), m.get("name"), m.get("format"))) == state:
            continue
        if state == "Ready":
            size = f"{int(m['bytes']) / 1e6:.0f} MB" if m.get("bytes") else "size unknown"
            await kube.post_event(
                owner, "ModelReady", f"{m['name']} ({m['format']}) verified in the cache, {size}"
            )
        elif state == "Failed":
            await kube.post_event(
                owner, "ModelFailed", f"{m['name']} ({m['format']}): {m.get('message')}", type_="Warning"
            )
