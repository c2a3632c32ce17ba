"""Kopf handlers: thin wrappers that parse, place, build, apply and report.

- create/update/resume of a TranslationPipeline -> ``reconcile`` (everything idempotent);
- a Node change that changes what the cluster offers -> ``reconcile`` of every pipeline;
- a change of a Deployment the operator owns -> the owner's status (replicas, readiness, phase).

What the handlers share is one typed ``OperatorState`` on Kopf's ``memo`` (state.py): the client,
the settings, the metrics and the per-pipeline bookkeeping; the autoscaler reads it too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import pydantic
from prometheus_client import CollectorRegistry, start_http_server

from livetranslate import metrics
from livetranslate.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Stage,
    describe_validation_error,
    first_error_field,
    parse_spec,
)
from livetranslate.capabilities import backend_problems, speech_problems
from livetranslate.logs import log_context
from livetranslate.operator import builders, children, modelcache, modelsync, placement, refresh, status
from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate.operator.resync import resync_loop
from livetranslate.operator.settings import OperatorSettings
from livetranslate.operator.state import NodeFacts, OperatorState

log = logging.getLogger(__name__)

# Kopf keeps its own bookkeeping (handler progress, the last handled spec) under a prefix of its
# own, as other Kopf operators do. Kopf leaves every annotation under its storage prefix out of
# what it diffs; with its state under ``livetranslate.io/`` a change of our own annotations there
# (the active model, the audio device, a resync nudge) fired no handler. Now whoever sets one,
# kubectl or the autoscaler, the update handler reconciles: one channel for placement changes.
KOPF_PREFIX = f"kopf.{GROUP}"
# What operators before the move left on existing pipelines: the ``kopf-managed`` marker alone
# makes Kopf ignore the whole ``livetranslate.io/`` prefix, so the reconcile removes these once.
LEGACY_KOPF_ANNOTATIONS = frozenset(
    f"{GROUP}/{key}"
    for key in ("kopf-managed", "last-handled-configuration", "reconcile_pipeline", "forget_pipeline")
)
MANAGED = {builders.MANAGED_BY_LABEL: builders.MANAGED_BY}
# Deployment events within this many seconds of the first share one status refresh.
STATUS_COALESCE_SECONDS = 0.2


class InvalidSpec(Exception):
    """A spec the schema let through but the operator cannot run; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ------------------------------------------------------------------------------------ lifecycle


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Configure Kopf for a well-behaved controller and open the client and /metrics."""
    # Kopf's own Events (handler failures) are off by default in 1.45; users read them in describe.
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    # Kopf's bookkeeping in annotations under its own prefix, out of the user-facing status and
    # out of the prefix of the annotations users and the autoscaler set (see KOPF_PREFIX).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60

    op_settings: OperatorSettings = memo.get("settings") or OperatorSettings()
    # Kopf gives each object a shallow copy of this memo: what objects share is this one object.
    kube: KubeClient | None = memo.get("kube")
    registry: CollectorRegistry = memo.get("registry") or CollectorRegistry()
    state = memo.state = OperatorState(
        kube=kube or await KubeClient.connect(),
        settings=op_settings,
        registry=registry,
        reconcile_seconds=metrics.reconcile_seconds(registry),
        stage_gauges=metrics.stage_replicas(registry),
        scaling_active_gauge=metrics.scaling_active(registry),
        scaling_decisions=metrics.scaling_decisions(registry),
        owns_kube=kube is None,
    )
    if op_settings.metrics_port:
        start_http_server(op_settings.metrics_port, registry=registry)
        logger.info("serving /metrics on port %d", op_settings.metrics_port)
    if op_settings.resync_seconds > 0:
        state.resync_task = asyncio.create_task(resync_loop(state.kube, op_settings), name="resync")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState | None = memo.get("state")
    if state is None:
        return
    if state.resync_task is not None:
        state.resync_task.cancel()
    for _due, retry in state.model_retry.values():
        retry.cancel()
    if state.owns_kube:
        await state.kube.close()


# -------------------------------------------------------------------------------------- indices


@kopf.index("v1", "nodes")
def node_index(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, bool]]:
    """Per-node accelerator facts; placement reads the whole index."""
    return {name: placement.node_devices(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def pipeline_index(namespace: str | None, name: str, uid: str, **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, name) -> uid: the pipelines a Node change re-places (each is read fresh then)."""
    return {(namespace or "", name): uid}


def cluster_from(index: Mapping[str, Iterable[dict[str, bool]]]) -> placement.ClusterDevices:
    return placement.summarize(facts for values in index.values() for facts in values)


# ------------------------------------------------------------------------------------ reconcile


async def reconcile(
    body: Mapping[str, Any],
    state: OperatorState,
    cluster: placement.ClusterDevices,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[str, Any]:
    """Bring one pipeline's children to its spec; returns the status written.

    Raises ``InvalidSpec`` (after writing status Failed and an Event, with no child touched) and
    ``ApiError`` for API failures (retried by the caller).
    """
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    locks: dict[tuple[str, str], asyncio.Lock] = state.reconcile_locks
    # One reconcile per pipeline at a time (a spec change and a Node change can coincide), each
    # working from a fresh read, so placement changes are detected against what was really written.
    async with locks.setdefault(key, asyncio.Lock()):
        fresh = await state.kube.get(API_VERSION, KIND, key[0], key[1])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return {}
        started = time.perf_counter()
        try:
            return await _reconcile(fresh, state, cluster, logger)
        except InvalidSpec:
            raise  # counted as result="invalid" where it was raised
        except Exception:
            # API failures and bugs alike: the reconcile-errors alert pages on this label.
            state.reconcile_seconds.labels(result="error").observe(time.perf_counter() - started)
            raise


async def _reconcile(
    body: Mapping[str, Any],
    state: OperatorState,
    cluster: placement.ClusterDevices,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[str, Any]:
    kube: KubeClient = state.kube
    settings: OperatorSettings = state.settings
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 0)
    previous = dict(body.get("status") or {})
    owner = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta}
    started = time.perf_counter()
    try:
        try:
            spec = parse_spec(body.get("spec"))
        except pydantic.ValidationError as e:
            raise InvalidSpec(first_error_field(e), describe_validation_error(e)) from e
        annotations = meta.get("annotations") or {}
        jobs = await modelsync.list_jobs(kube, namespace, name) if spec.modelCache else []
        placed = placement.place(
            spec,
            cluster,
            active_model_annotation=annotations.get(builders.ACTIVE_MODEL_ANNOTATION),
            audio_device_annotation=annotations.get(builders.AUDIO_DEVICE_ANNOTATION),
            unusable=modelcache.unusable_devices(jobs, spec.audio_model()),
        )
        problems = speech_problems(spec.sourceLanguage) + backend_problems(
            placed.translationBackend,
            spec.sourceLanguage,
            list(spec.targetLanguages),
            endpoint=spec.translation.endpoint,
        )
        if problems:
            raise InvalidSpec(problems[0].split(":", 1)[0], "; ".join(problems))
    except InvalidSpec as e:
        message = (
            f"{e.message} (existing children, if any, keep running the last valid spec)"
            if previous.get("phase") not in (None, "Pending", "Failed")
            else e.message
        )
        state.refused[(namespace, name)] = generation
        new = status.failed_status(message, e.field, generation, previous)
        await refresh.patch_status(kube, namespace, name, new)
        await kube.post_event(owner, "InvalidSpec", message, type_="Warning")
        state.reconcile_seconds.labels(result="invalid").observe(time.perf_counter() - started)
        raise

    legacy = sorted(LEGACY_KOPF_ANNOTATIONS & set(annotations))
    if legacy:
        await kube.patch(
            API_VERSION, KIND, namespace, name, {"metadata": {"annotations": dict.fromkeys(legacy)}}
        )
        logger.info("removed the annotations of the operator's old Kopf storage: %s", ", ".join(legacy))
    resolved = builders.resolve(name, namespace, generation, spec, placed)
    existing = await refresh.deployments(kube, namespace, name)
    current: dict[Stage, int | None] = {
        stage: None if dep is None else int((dep.get("spec") or {}).get("replicas", 0))
        for stage, dep in existing.items()
    }
    cache = await modelsync.sync(kube, resolved, owner, settings, jobs)
    if cache.retry_in is not None:
        _reconcile_later(state, (namespace, name), cache.retry_in, cluster, logger)
    build = builders.BuildState(replicas=current, cache_nodes=cache.nodes)
    # No Deployment yet: the children are most likely all missing, so create first (a child
    # that does exist, from a reconcile cut short, answers 409 and is patched).
    first_build = all(dep is None for dep in existing.values())

    async def apply(manifest: dict[str, Any]) -> None:
        keep: list[tuple[str, ...]] = []
        stage = manifest["metadata"]["labels"].get(builders.STAGE_LABEL)
        # Within bounds, replicas belong to the autoscaler: do not write them back.
        if manifest["kind"] == "Deployment" and current.get(stage) == manifest["spec"]["replicas"]:
            keep.append(("spec", "replicas"))
        await kube.apply(manifest, owner, keep_on_update=keep, likely_new=first_build)

    config, *rest = builders.build_children(resolved, build, settings)
    # First: the pods mount the config, and no pod should ever run without its NetworkPolicy.
    await asyncio.gather(apply(config), children.network_policies(kube, resolved, settings, apply))
    await asyncio.gather(*(apply(m) for m in rest))
    if settings.pipeline_monitors and await children.serves_podmonitors(state):
        await apply(builders.build_podmonitor(resolved))
    state.resolved[(namespace, name)] = resolved
    state.refused.pop((namespace, name), None)

    await children.announce_placement(kube, owner, previous, resolved)
    refreshed = await refresh.refresh_status(state, namespace, name)
    state.reconcile_seconds.labels(result="ok").observe(time.perf_counter() - started)
    logger.info(
        "reconciled: audio on %s, translation %s/%s, phase %s",
        placed.audioDevice,
        placed.translationBackend,
        placed.translationModel,
        (refreshed or {}).get("phase"),
    )
    return refreshed or {}


def _reconcile_later(
    state: OperatorState,
    key: tuple[str, str],
    delay: float,
    cluster: placement.ClusterDevices,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Reconcile again after ``delay`` (a failed model pull whose backoff runs): one timer per
    pipeline, the earliest kept; a pipeline deleted meanwhile is skipped by the fresh read."""
    due = time.monotonic() + delay
    pending = state.model_retry.get(key)
    if pending is not None and not pending[1].done() and pending[0] <= due:
        return
    if pending is not None:
        pending[1].cancel()

    async def later() -> None:
        await asyncio.sleep(delay)
        state.model_retry.pop(key, None)
        ref = {"metadata": {"namespace": key[0], "name": key[1]}}
        try:
            await reconcile(ref, state, state.nodes.cluster or cluster, logger)
        except (InvalidSpec, ApiError) as e:
            logger.warning("retrying the model pulls of %s/%s failed, the next change retries: %s", *key, e)

    state.model_retry[key] = (due, asyncio.create_task(later(), name=f"model-retry-{key[0]}/{key[1]}"))


def _api_retry(e: ApiError, settings: OperatorSettings, retry: int = 0) -> kopf.TemporaryError:
    """Retry the reconcile later, each time twice as late (jittered, capped): an API server that
    keeps failing sees fewer requests from every pipeline, not a steady stream from all of them."""
    delay = min(settings.retry_delay_seconds * 2 ** min(retry, 10), settings.retry_max_delay_seconds)
    return kopf.TemporaryError(f"Kubernetes API: {e}", delay=delay * random.uniform(0.8, 1.2))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_pipeline(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Create, update and resume are one idempotent reconcile (a restart mid-way converges)."""
    node_index: kopf.Index[str, dict[str, bool]] = kwargs["node_index"]
    raw = status.pipeline_object(body)
    with log_context(pipeline=body.metadata.name, namespace=body.metadata.namespace):
        try:
            await reconcile(raw, memo.state, cluster_from(node_index), logger)
        except InvalidSpec as e:
            raise kopf.PermanentError(e.message) from e
        except ApiError as e:
            if e.status in (400, 422):
                # The server refuses the manifest itself: retrying the same spec cannot help.
                raise kopf.PermanentError(f"Kubernetes API refused a child: {e}") from e
            if e.status == 403:
                # Missing RBAC or a quota/admission policy: an admin can fix it; retry slowly.
                raise kopf.TemporaryError(f"Kubernetes API forbids it: {e}", delay=60) from e
            raise _api_retry(e, memo.state.settings, int(kwargs.get("retry") or 0)) from e


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget_pipeline(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Drop in-memory state; the children go with the owner (garbage collection), no finalizer."""
    key = (namespace or "", name)
    state: OperatorState = memo.state
    state.forget(key)
    for gauge in (*state.stage_gauges, state.scaling_active_gauge):
        for labels in list(gauge._metrics):  # the label sets of this pipeline only
            if labels[:2] == (key[0], name):
                gauge.remove(*labels)


# ----------------------------------------------------------------------------- cluster changes


@kopf.on.event("v1", "nodes")
async def node_changed(
    name: str, body: kopf.Body, type: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Re-place every pipeline when what the cluster offers changes (an NPU node joins or leaves)."""
    node_index: kopf.Index[str, dict[str, bool]] = kwargs["node_index"]
    pipeline_index: kopf.Index[tuple[str, str], str] = kwargs["pipeline_index"]
    # Facts kept here from the events themselves: the index may not include this event yet.
    facts: NodeFacts = memo.state.nodes
    if not facts.seeded:
        facts.nodes.update({n: f for n, values in node_index.items() for f in values})
        facts.seeded = True
    if type == "DELETED":
        facts.nodes.pop(name, None)
    else:
        facts.nodes[name] = placement.node_devices(body)
    cluster = placement.summarize(facts.nodes.values())
    last, facts.cluster = facts.cluster, cluster
    if last is None or (last.npu_nodes > 0, last.gpu_nodes > 0) == (
        cluster.npu_nodes > 0,
        cluster.gpu_nodes > 0,
    ):
        return
    logger.info(
        "cluster devices changed: %s -> %s; re-placing pipelines", last.describe(), cluster.describe()
    )
    for namespace, pipeline_name in list(pipeline_index.keys()):
        ref = {"metadata": {"namespace": namespace, "name": pipeline_name}}
        with log_context(pipeline=pipeline_name, namespace=namespace):
            try:
                await reconcile(ref, memo.state, cluster, logger)
            except InvalidSpec:
                pass  # status and Event already written
            except ApiError as e:
                logger.warning(
                    "re-placing %s/%s failed, the next change retries: %s", namespace, pipeline_name, e
                )


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(
    labels: Mapping[str, str],
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    """Roll readiness up into the owner's status (watch, not poll: no sleeping in handlers)."""
    name = labels.get(builders.PIPELINE_LABEL)
    if not name or not namespace:
        return
    # A re-list after a broken watch stream replays every Deployment as an event of type None.
    # One whose resourceVersion was handled already changed nothing: refreshing every pipeline's
    # status on every dropped watch was a request storm (the API-fault benchmark: 48 req/s with
    # 30% of watch streams cut, on a cluster where nothing changed).
    versions: dict[tuple[str, str], str | None] = memo.state.deployment_versions
    key, version = (namespace, str(body.metadata.name)), body.metadata.get("resourceVersion")
    if kwargs.get("type") == "DELETED":
        versions.pop(key, None)
    elif kwargs.get("type") is None and version is not None and versions.get(key) == version:
        return
    else:
        versions[key] = version
    pending: set[tuple[str, str]] = memo.state.status_pending
    if (namespace, name) in pending:
        return  # a refresh is already queued; it reads fresh state, covering this event too
    pending.add((namespace, name))
    try:
        # Events come in bursts (a rollout's pods turning ready, a watch stream catching up after
        # a cut, a re-list): wait a moment so one refresh covers the burst, not one per event.
        try:
            await asyncio.sleep(STATUS_COALESCE_SECONDS)
        except asyncio.CancelledError:
            pending.discard((namespace, name))
            raise
        await refresh.refresh_status(memo.state, namespace, name, pending=pending)
    except ApiError as e:
        versions.pop(key, None)  # not reflected in status: a re-list must not skip it
        logger.warning("status of %s/%s not updated, the next change retries: %s", namespace, name, e)


@kopf.on.event("batch", "v1", "jobs", labels={**MANAGED, "app.kubernetes.io/component": modelcache.COMPONENT})
async def model_job_changed(
    labels: Mapping[str, str],
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    """A pull Job started, finished or gave up: reconcile its pipeline (a failed conversion moves
    the audio stage along its devices; a bound ReadWriteOnce volume pins the stage's pods; a model
    that turned Ready is reported in status.models and an Event)."""
    name = labels.get(builders.PIPELINE_LABEL)
    if not name or not namespace:
        return
    job = dict(body)
    key = (namespace, str(body.metadata.name))
    seen = "deleted" if kwargs.get("type") == "DELETED" else modelcache.job_phase(job)
    states: dict[tuple[str, str], str] = memo.state.job_states
    if states.get(key) == seen:
        return  # a re-list, or a change that moved nothing users see
    states[key] = seen
    if seen == "deleted":
        states.pop(key, None)
        return
    ref = {"metadata": {"namespace": namespace, "name": name}}
    with log_context(pipeline=name, namespace=namespace):
        try:
            await reconcile(ref, memo.state, cluster_from(kwargs["node_index"]), logger)
        except InvalidSpec:
            pass  # status and Event already written
        except ApiError as e:
            states.pop(key, None)
            logger.warning(
                "model cache of %s/%s not updated, the next change retries: %s", namespace, name, e
            )
