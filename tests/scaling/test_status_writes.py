"""Two writers of one status: the reconcile (Ready, stage conditions) and the autoscaler
(ScalingActive). ``conditions`` is a list a merge patch replaces whole; what a user must never see
is one writer's condition vanishing because the other wrote the list it had read earlier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from livetranslate.operator import status
from livetranslate.operator.kube import KubeClient
from livetranslate_testing.kube_operator import NS, Cluster, emulated_cluster, pipeline

TP = "livetranslate.io/v1alpha1/translationpipelines"
NAME = "town-hall"


def cond(type_: str, state: str = "True", reason: str = "R") -> dict[str, Any]:
    return {
        "type": type_,
        "status": state,
        "reason": reason,
        "message": reason,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def conditions(cluster: Cluster) -> dict[str, str]:
    tp = cluster.tp(NAME) or {}
    return {c["type"]: c["reason"] for c in (tp.get("status") or {}).get("conditions") or []}


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Cluster, KubeClient]]:
    async with emulated_cluster(tmp_path / "kubeconfig") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        cluster.api.create(TP, pipeline(NAME, {"targetLanguages": ["es"]}))
        kube = await KubeClient.connect()
        try:
            yield cluster, kube
        finally:
            await kube.close()


def test_merge_keeps_other_writers_entries_in_place() -> None:
    now = [cond("Ready"), cond("AudioReady"), cond("ScalingActive", reason="old")]
    ours = [cond("ScalingActive", reason="new"), cond("Ready", "False", "stale copy")]
    merged = status.merge_conditions(now, ours, owned={"ScalingActive"})
    assert [(c["type"], c["reason"]) for c in merged] == [
        ("Ready", "R"),
        ("AudioReady", "R"),
        ("ScalingActive", "new"),
    ]
    assert (
        status.merge_conditions([cond("Ready")], [cond("ScalingActive")], {"ScalingActive"})[-1]["type"]
        == "ScalingActive"
    )


@pytest.mark.slow
async def test_writers_with_stale_snapshots_do_not_drop_each_others_conditions(
    api: tuple[Cluster, KubeClient],
) -> None:
    cluster, kube = api
    # The reconcile read the status before the autoscaler wrote ScalingActive, and vice versa:
    # each one's list lacks the other's latest entry.
    await status.write_status(
        kube,
        NS,
        NAME,
        {
            "phase": "Ready",
            "conditions": [cond("Ready"), cond("AudioReady"), cond("TranslationReady"), cond("GatewayReady")],
        },
        owned=status.RECONCILE_CONDITIONS,
    )
    await status.write_status(
        kube,
        NS,
        NAME,
        {"conditions": [cond("ScalingActive", reason="WithinTarget")]},
        owned={"ScalingActive"},
    )
    stale_reconcile = {
        "phase": "Degraded",
        "conditions": [
            cond("Ready", "False", "StagesNotReady"),
            cond("AudioReady", "False", "ReplicasNotReady"),
            cond("TranslationReady"),
            cond("GatewayReady"),
        ],
    }
    await status.write_status(kube, NS, NAME, stale_reconcile, owned=status.RECONCILE_CONDITIONS)
    assert conditions(cluster) == {
        "Ready": "StagesNotReady",
        "AudioReady": "ReplicasNotReady",
        "TranslationReady": "R",
        "GatewayReady": "R",
        "ScalingActive": "WithinTarget",
    }
    # The autoscaler's snapshot still has the old Ready: writing ScalingActive must not bring it back.
    await status.write_status(
        kube,
        NS,
        NAME,
        {"conditions": [cond("Ready"), cond("ScalingActive", "False", "MetricsUnavailable")]},
        owned={"ScalingActive"},
    )
    assert conditions(cluster)["Ready"] == "StagesNotReady"
    assert conditions(cluster)["ScalingActive"] == "MetricsUnavailable"


@pytest.mark.slow
async def test_a_write_in_between_is_detected_and_merged_again(api: tuple[Cluster, KubeClient]) -> None:
    cluster, kube = api
    await status.write_status(
        kube, NS, NAME, {"conditions": [cond("Ready")]}, owned=status.RECONCILE_CONDITIONS
    )

    class Racing:
        """Lets another writer land between this writer's read and its patch, once."""

        def __init__(self) -> None:
            self.raced = False

        async def get(self, *args: Any) -> dict[str, Any] | None:
            fresh = await kube.get(*args)
            if not self.raced:
                self.raced = True
                await kube.patch_status(
                    "livetranslate.io/v1alpha1",
                    "TranslationPipeline",
                    NS,
                    NAME,
                    {"conditions": [cond("Ready"), cond("ScalingActive", reason="Scaling")]},
                )
            return fresh

        async def patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return await kube.patch(*args, **kwargs)

    racing = Racing()
    await status.write_status(
        racing,
        NS,
        NAME,
        {"conditions": [cond("Ready", "False", "StagesNotReady")]},  # type: ignore[arg-type]
        owned=status.RECONCILE_CONDITIONS,
    )
    assert racing.raced
    assert conditions(cluster) == {"Ready": "StagesNotReady", "ScalingActive": "Scaling"}


@pytest.mark.slow
async def test_a_deleted_pipeline_is_not_an_error(api: tuple[Cluster, KubeClient]) -> None:
    cluster, kube = api

    class DeletedInBetween:
        """The pipeline is deleted after this writer read it and before its patch lands."""

        def __init__(self) -> None:
            self.patched = 0

        async def get(self, *args: Any) -> dict[str, Any] | None:
            fresh = await kube.get(*args)
            cluster.api.delete_object(TP, NS, NAME)
            return fresh

        async def patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            self.patched += 1
            return await kube.patch(*args, **kwargs)  # answers 404

    racing = DeletedInBetween()
    assert await status.write_status(racing, NS, NAME, {"phase": "Ready"}, owned=set()) is None  # type: ignore[arg-type]
    assert racing.patched == 1 and cluster.tp(NAME) is None
    # One already gone before the read is not an error either.
    assert await status.write_status(kube, NS, NAME, {"phase": "Ready"}, owned=set()) is None
