"""Issue 25: refused sessions count as demand, and a scale-down removes the emptiest pod.

The policy half is pure (hand-made signals); the pod-deletion-cost half runs against the
Kubernetes emulator, and the per-pod sessions come from a real Prometheus scraping stand-in pods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livetranslate.operator.kube import KubeClient
from livetranslate.operator.scaling.signals import PrometheusSignals, Sample, build_queries
from livetranslate.operator.scaling.timer import DELETION_COST_ANNOTATION, mark_deletion_costs
from livetranslate_testing.kube_operator import NS, Cluster, emulated_cluster

from .conftest import PIPELINE, Prometheus
from .test_policy import cur, healthy, make_spec, run


def test_refused_sessions_scale_the_refusing_stage_though_its_own_load_looks_fine() -> None:
    spec = make_spec()
    # 50 sessions on 100 gateway slots looks comfortable; 2 refusals a second say otherwise.
    refusing = {"refusals": {"gateway": Sample.of(2.0)}, "capacity": {"gateway": Sample.of(100.0)}}
    decisions, current = run(spec, cur(gateway=1), lambda t: healthy(t, **refusing), 3)
    assert current.replicas["gateway"] == 2, [d.stages["gateway"] for d in decisions]
    ups = [d.stages["gateway"] for d in decisions if d.stages["gateway"].direction == "up"]
    assert ups and ups[0].reason == "admission_refused" and "refused 30 sessions" in ups[0].message
    # Without refusals nothing moves (the same signals otherwise).
    _, after = run(spec, cur(gateway=1), healthy, 3)
    assert after.replicas["gateway"] == 1


def test_refusals_keep_the_replicas_that_would_carry_them_on_scale_down() -> None:
    spec = make_spec(scaling={"interval": "15s", "scaleDownStabilization": "30s"})
    light = {"sessions_active": Sample.of(5), "refusals": {"audio": Sample.of(0.5)}}
    decisions, current = run(spec, cur(audio=3), lambda t: healthy(t, **light), 10)
    assert current.replicas["audio"] >= 3, [d.stages["audio"] for d in decisions]


def test_the_refusal_and_capacity_queries_read_the_stages_own_series() -> None:
    q = build_queries(PIPELINE, NS, 15.0)
    assert q.admission_refusals.startswith("sum by (stage) (rate(livetranslate_admission_refusals_total{")
    assert q.stage_capacity.startswith("sum by (stage) (livetranslate_stage_capacity_sessions{")


@pytest.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Cluster, KubeClient]]:
    async with emulated_cluster(tmp_path / "kubeconfig") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        client = await KubeClient.connect()
        try:
            yield cluster, client
        finally:
            await client.close()


def _pod(name: str, stage: str) -> dict[str, object]:
    labels = {"livetranslate.io/pipeline": PIPELINE, "livetranslate.io/stage": stage}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": stage, "image": "x"}]},
    }


async def test_scale_down_weighs_each_pod_by_its_live_sessions(kube: tuple[Cluster, KubeClient]) -> None:
    cluster, client = kube
    for name in ("busy", "quiet", "new"):
        cluster.api.create("v1/pods", _pod(f"{PIPELINE}-gateway-{name}", "gateway"))
    cluster.api.create("v1/pods", _pod(f"{PIPELINE}-audio-other", "audio"))
    sessions = {f"{PIPELINE}-gateway-busy": 41.0, f"{PIPELINE}-gateway-quiet": 2.4}
    assert await mark_deletion_costs(client, NS, PIPELINE, "gateway", sessions) == 3

    def cost(name: str) -> str | None:
        pod = cluster.api.read("v1/pods", NS, name) or {}
        return (pod.get("metadata", {}).get("annotations") or {}).get(DELETION_COST_ANNOTATION)

    assert [cost(f"{PIPELINE}-gateway-{n}") for n in ("busy", "quiet", "new")] == ["41", "2", "0"]
    assert cost(f"{PIPELINE}-audio-other") is None  # another stage is not touched
    assert await mark_deletion_costs(client, NS, PIPELINE, "gateway", sessions) == 0  # no rewrite


@pytest.mark.slow
async def test_per_pod_sessions_come_from_prometheus(prometheus: Prometheus) -> None:
    signals = PrometheusSignals(prometheus.url)
    pods: dict[str, float] = {}
    for _ in range(60):
        pods = await signals.pod_sessions(PIPELINE, NS, "gateway")
        if pods:
            break
        await asyncio.sleep(0.25)
    assert pods == {f"{PIPELINE}-gateway-7c6d5-a1b2c": 50.0}
    assert await PrometheusSignals("http://127.0.0.1:9").pod_sessions(PIPELINE, NS, "gateway") == {}
