"""The level-triggered safety net under Kopf's edge-triggered handlers.

Kopf reacts to events. When the processing of one fails with an error it does not retry (a 409
on its own bookkeeping patch, a 5xx that outlasts its backoffs), it waits for the object's next
event, which may never come. Every ``resync_seconds`` (jittered) a sweep lists the pipelines,
finds those whose status lags their spec (or whose deletion is stuck) for a whole interval, and
writes the ``livetranslate.io/resync`` annotation on each: a change Kopf sees, so the update
handler reconciles it (found by the chaos benchmark: pipelines that never got children).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import aiohttp

from livetranslate.api import API_VERSION, GROUP, KIND
from livetranslate.logs import log_context
from livetranslate.operator import status
from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

RESYNC_ANNOTATION = f"{GROUP}/resync"


def lag_key(pipeline: Mapping[str, Any]) -> tuple[str, int, bool] | None:
    """(uid, generation, deleting) of a pipeline the operator has not caught up with, else None:
    its status is not at its generation, or it is being deleted and still carries our finalizer."""
    meta = pipeline.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    if meta.get("deletionTimestamp"):
        if f"{GROUP}/finalizer" in (meta.get("finalizers") or []):
            return (meta.get("uid", ""), generation, True)
        return None
    observed = (pipeline.get("status") or {}).get("observedGeneration")
    return None if observed == generation else (meta.get("uid", ""), generation, False)


async def resync_once(
    kube: KubeClient, namespaces: list[str], lagging: dict[str, tuple[str, int, bool]]
) -> int:
    """Nudge every pipeline that has been lagging, unchanged, since the previous sweep (the
    annotation is an event: the active replica, with peering, processes the pipeline again,
    finalizers and daemons included). Returns how many were nudged."""
    pipelines: list[dict[str, Any]] = []
    for namespace in namespaces or [None]:  # type: ignore[list-item]
        pipelines += await kube.list(API_VERSION, KIND, namespace)
    nudged = 0
    still: dict[str, tuple[str, int, bool]] = {}
    for pipeline in pipelines:
        key = lag_key(pipeline)
        if key is None:
            continue
        meta = pipeline["metadata"]
        ref = f"{meta.get('namespace')}/{meta.get('name')}"
        still[ref] = key
        if lagging.get(ref) != key:
            continue  # first seen lagging: give the normal path one interval
        with log_context(pipeline=meta.get("name"), namespace=meta.get("namespace")):
            log.warning(
                "pipeline lags its %s for a whole resync interval; nudging it",
                "deletion" if key[2] else f"generation {key[1]}",
            )
        try:
            await kube.patch(
                API_VERSION,
                KIND,
                meta.get("namespace"),
                meta["name"],
                {"metadata": {"annotations": {RESYNC_ANNOTATION: status.now_iso()}}},
            )
            nudged += 1
        except ApiError as e:
            if e.status != 404:
                log.warning("could not nudge %s: %s", ref, e)
    lagging.clear()
    lagging.update(still)
    return nudged


async def resync_loop(kube: KubeClient, settings: OperatorSettings) -> None:
    """Every ``resync_seconds`` (jittered), ``resync_once``; ends with the client's session."""
    lagging: dict[str, tuple[str, int, bool]] = {}
    while not kube.session.closed:
        await asyncio.sleep(settings.resync_seconds * random.uniform(0.8, 1.2))
        if kube.session.closed:
            return
        try:
            await resync_once(kube, settings.namespaces, lagging)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("resync sweep failed, the next one retries: %s", e)
        except RuntimeError as e:  # the session closed under the request: the operator is stopping
            log.debug("resync sweep stopped: %s", e)
            return
