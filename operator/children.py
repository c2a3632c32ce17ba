"""The reconcile's children that need more than an apply: NetworkPolicies (removed again when
they are turned off), the PodMonitor (only where the prometheus-operator's CRDs exist, asked every
few minutes), and the Event that says where the stages were placed and why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from livetranslate.config import ResolvedPipeline
from livetranslate.operator import builders
from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate.operator.state import OperatorState


async def network_policies(
    kube: KubeClient,
    resolved: ResolvedPipeline,
    settings: OperatorSettings,
    apply: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Apply the pipeline's NetworkPolicies, or, with them turned off, remove the ones it made."""
    if settings.network_policies:
        await asyncio.gather(*(apply(m) for m in builders.build_network_policies(resolved, settings)))
        return
    made = await kube.list(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        resolved.namespace,
        label_selector=f"{builders.PIPELINE_LABEL}={resolved.name},"
        f"{builders.MANAGED_BY_LABEL}={builders.MANAGED_BY}",
    )
    await asyncio.gather(
        *(
            kube.delete("networking.k8s.io/v1", "NetworkPolicy", resolved.namespace, p["metadata"]["name"])
            for p in made
        )
    )


PODMONITOR_RECHECK_S = 300.0


async def serves_podmonitors(state: OperatorState) -> bool:
    """Whether the prometheus-operator CRDs exist, asked again every few minutes."""
    cache: dict[str, tuple[float, bool]] = state.discovery
    now = time.monotonic()
    seen = cache.get("podmonitors")
    if seen is None or now - seen[0] > PODMONITOR_RECHECK_S:
        try:
            found = await state.kube.serves("monitoring.coreos.com/v1", "podmonitors")
        except ApiError:
            found = seen[1] if seen else False
        cache["podmonitors"] = (now, found)
        return found
    return seen[1]


async def announce_placement(
    kube: KubeClient, owner: Mapping[str, Any], previous: Mapping[str, Any], resolved: ResolvedPipeline
) -> None:
    """An Event whenever the audio device or the translation backend/model changes."""
    p = resolved.placement
    before = (
        (previous.get("audio") or {}).get("device"),
        (previous.get("translation") or {}).get("backend"),
        (previous.get("translation") or {}).get("model"),
    )
    after = (p.audioDevice, p.translationBackend, p.translationModel)
    if before == after:
        return
    if before == (None, None, None):
        message = f"audio: {p.audioReason}; translation: {p.translationReason}"
        await kube.post_event(owner, "Placed", message)
        return
    changes = []
    if before[0] != after[0]:
        changes.append(f"audio {before[0]} -> {after[0]} ({p.audioReason})")
    if before[1:] != after[1:]:
        changes.append(
            f"translation {before[1]}/{before[2]} -> {after[1]}/{after[2]} ({p.translationReason})"
        )
    await kube.post_event(owner, "PlacementChanged", "; ".join(changes))
