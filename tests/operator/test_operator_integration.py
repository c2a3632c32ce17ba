"""The real operator (Kopf, over HTTP) against the Kubernetes emulator: what a user would see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from livetranslate import metrics
from livetranslate.operator import rbac
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing.kube_emulator import Call
from livetranslate_testing.kube_operator import (
    NS,
    PODMONITOR_CRD,
    Cluster,
    OperatorProcess,
    eventually,
    pipeline,
)

pytestmark = pytest.mark.slow

TP = "livetranslate.io/v1alpha1/translationpipelines"
API = "livetranslate.io/v1alpha1"
KIND = "TranslationPipeline"
STAGES = ("audio", "translation", "gateway")
CHILDREN = 10  # ConfigMap + a Service, a PodDisruptionBudget and a Deployment per stage


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    """A client of our own, as kubectl would be."""
    client = await KubeClient.connect(user_agent="test-kubectl")
    try:
        yield client
    finally:
        await client.close()


def deployment(cluster: Cluster, name: str, stage: str) -> dict[str, Any] | None:
    return cluster.api.read("apps/v1/deployments", NS, f"{name}-{stage}")


def container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def phase(cluster: Cluster, name: str) -> str | None:
    tp = cluster.tp(name)
    return (tp or {}).get("status", {}).get("phase")


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    tp = cluster.tp(name) or {}
    return next((c for c in tp.get("status", {}).get("conditions", []) if c["type"] == type_), {})


async def test_create_builds_every_child_owned_by_the_pipeline_and_becomes_ready(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall"))
    kids = await eventually(
        lambda: len(cluster.children("town-hall")) == CHILDREN and cluster.children("town-hall"),
        message=f"{CHILDREN} children",
    )
    tp = cluster.tp("town-hall")
    assert tp is not None
    assert sorted(kids) == sorted(
        ["ConfigMap/town-hall-config"]
        + [f"{k}/town-hall-{s}" for s in STAGES for k in ("Deployment", "Service", "PodDisruptionBudget")]
    )
    for obj in kids.values():
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": API,
                "kind": KIND,
                "name": "town-hall",
                "uid": tp["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    config = json.loads(kids["ConfigMap/town-hall-config"]["data"]["pipeline.json"])
    assert config["placement"]["audioDevice"] == "cpu"
    assert config["placement"]["translationBackend"] == "apertium"
    assert config["endpoints"]["gateway"] == "http://town-hall-gateway.demo.svc:8080"

    await eventually(lambda: phase(cluster, "town-hall") == "Progressing")
    assert "invalidField" not in (cluster.tp("town-hall") or {})["status"]
    # Deployments report ready -> the pipeline is Ready, with figures taken from their status.
    cluster.mark_ready("town-hall")
    await eventually(lambda: phase(cluster, "town-hall") == "Ready", message="phase Ready")
    status = (cluster.tp("town-hall") or {})["status"]
    assert status["readyStages"] == "3/3"
    assert status["gateway"]["endpoint"] == "ws://town-hall-gateway.demo.svc:8080/v1/stream"
    assert status["audio"] == {**status["audio"], "replicas": 1, "readyReplicas": 1, "device": "cpu"}
    assert status["translation"]["backend"] == "apertium"
    ready = condition(cluster, "town-hall", "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} >= {
        "Ready",
        "AudioReady",
        "TranslationReady",
        "GatewayReady",
    }
    assert any(e["reason"] == "Placed" for e in cluster.events("town-hall"))

    # One pod stops being ready: Degraded, not Progressing (it was serving).
    cluster.api.set_deployment_ready(NS, "town-hall-gateway", ready=False)
    await eventually(lambda: condition(cluster, "town-hall", "GatewayReady").get("status") == "False")
    assert phase(cluster, "town-hall") == "Degraded"
    assert operator.memo is not None
    samples = operator.memo.state.registry.get_sample_value(
        "livetranslate_reconcile_seconds_count", {"result": "ok"}
    )
    assert samples and samples >= 1
    # The gauges the "no ready replicas" and "pinned at max" alerts read.
    registry = operator.memo.state.registry
    gateway = {"namespace": NS, "pipeline": "town-hall", "stage": "gateway"}
    await eventually(lambda: registry.get_sample_value(metrics.STAGE_READY_REPLICAS, gateway) == 0)
    assert registry.get_sample_value(metrics.STAGE_REPLICAS, gateway) == 1
    assert registry.get_sample_value(metrics.STAGE_MAX_REPLICAS, gateway) == 4
    assert registry.get_sample_value(metrics.STAGE_READY_REPLICAS, {**gateway, "stage": "audio"}) == 1


async def test_spec_update_patches_children_in_place_and_keeps_autoscaled_replicas(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall"))
    kids = await eventually(
        lambda: len(cluster.children("town-hall")) == CHILDREN and cluster.children("town-hall")
    )
    uids = {k: v["metadata"]["uid"] for k, v in kids.items()}
    # The autoscaler (single writer of replicas) scales translation to 3.
    await kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/town-hall-translation/scale",
        json={"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )

    await kube.patch(
        API,
        KIND,
        NS,
        "town-hall",
        {
            "spec": {
                "gateway": {"redisUrl": "redis://redis.demo.svc:6379/0", "replicas": {"min": 2, "max": 4}},
                "audio": {"vad": False},
            }
        },
    )
    await eventually(
        lambda: (
            cluster.pipeline_doc("town-hall")["spec"]["gateway"]["redisUrl"]
            == "redis://redis.demo.svc:6379/0"
        ),
        message="pipeline.json gets the Redis URL",
    )

    # The ConfigMap is applied before the Deployments (pods mount it): wait for every Deployment
    # to carry the new config's hash before reading them.
    def rolled() -> bool:
        cm = cluster.api.read("v1/configmaps", NS, "town-hall-config") or {}
        want = (cm.get("metadata", {}).get("annotations") or {}).get("livetranslate.io/config-hash")
        return all(
            (deployment(cluster, "town-hall", s) or {})
            .get("spec", {})
            .get("template", {})
            .get("metadata", {})
            .get("annotations", {})
            .get("livetranslate.io/config-hash")
            == want
            for s in STAGES
        )

    await eventually(rolled, message="every Deployment applied from the new config")
    after = cluster.children("town-hall")
    assert {k: v["metadata"]["uid"] for k, v in after.items()} == uids, "children patched, never recreated"
    gw = deployment(cluster, "town-hall", "gateway") or {}
    assert gw["spec"]["replicas"] == 2, "replicas clamped into the new [min, max]"
    tr = deployment(cluster, "town-hall", "translation") or {}
    assert tr["spec"]["replicas"] == 3, "the autoscaler's replicas survive a spec update"
    config = json.loads(after["ConfigMap/town-hall-config"]["data"]["pipeline.json"])
    assert config["generation"] == 2 and config["spec"]["audio"]["vad"] is False
    # The pod template carries the config hash: the update rolls the pods.
    assert (
        after["Deployment/town-hall-audio"]["spec"]["template"]["metadata"]["annotations"][
            "livetranslate.io/config-hash"
        ]
        != kids["Deployment/town-hall-audio"]["spec"]["template"]["metadata"]["annotations"][
            "livetranslate.io/config-hash"
        ]
    )
    cluster.mark_ready("town-hall")
    await eventually(
        lambda: (
            phase(cluster, "town-hall") == "Ready"
            and condition(cluster, "town-hall", "Ready").get("observedGeneration") == 2
        )
    )


async def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster, kube: KubeClient
) -> None:
    settings = OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5)
    first = OperatorProcess(settings)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold_translation_create(call: Call) -> None:
        if call.verb == "create" and call.resource == "deployments":
            held.set()
            await release.wait()

    await first.start()
    cluster.api.gate = hold_translation_create
    await kube.create(pipeline("town-hall"))
    await asyncio.wait_for(held.wait(), timeout=20)
    before = cluster.children("town-hall")
    assert "ConfigMap/town-hall-config" in before and "Deployment/town-hall-audio" not in before
    await first.kill()  # dies with a create in flight
    cluster.api.gate = None
    release.set()  # the held request now completes on the server, as a real one might

    second = OperatorProcess(settings)
    await second.start()
    try:
        kids = await eventually(
            lambda: len(cluster.children("town-hall")) == CHILDREN and cluster.children("town-hall")
        )
        for key, obj in before.items():
            assert kids[key]["metadata"]["uid"] == obj["metadata"]["uid"], f"{key} was recreated"
        deployments = cluster.api.find("apps/v1/deployments", NS, "livetranslate.io/pipeline=town-hall")
        assert sorted(d["metadata"]["name"] for d in deployments) == [
            f"town-hall-{s}" for s in sorted(STAGES)
        ]
        cluster.mark_ready("town-hall")
        await eventually(lambda: phase(cluster, "town-hall") == "Ready")
    finally:
        await second.stop()


async def test_placement_prefers_npu_and_gpu_when_nodes_offer_them(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("npu-1", allocatable={"npu.intel.com/accel": "1"})
    cluster.api.add_node(
        "gpu-1",
        allocatable={"nvidia.com/gpu": "2"},
        taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
    )
    await operator.sees_node("npu-1")
    await operator.sees_node("gpu-1")
    await kube.create(pipeline("conference", {"targetLanguages": ["es", "de"]}))
    await eventually(lambda: len(cluster.children("conference")) == CHILDREN)
    audio = deployment(cluster, "conference", "audio") or {}
    pod = audio["spec"]["template"]["spec"]
    assert container(audio, "audio")["resources"]["limits"]["npu.intel.com/accel"] == "1"
    assert {"key": "npu.intel.com/accel", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert cluster.audio_device("conference") == "npu"

    translation = deployment(cluster, "conference", "translation") or {}
    vllm = container(translation, "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env(vllm)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--enable-sleep-mode" in vllm["args"]
    assert vllm["args"][vllm["args"].index("--model") + 1] == "Qwen/Qwen2.5-7B-Instruct"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in translation["spec"][
        "template"
    ]["spec"]["tolerations"]
    await eventually(
        lambda: ((cluster.tp("conference") or {}).get("status", {}).get("audio", {}).get("device")) == "npu"
    )
    status = (cluster.tp("conference") or {})["status"]
    assert status["translation"]["backend"] == "vllm"
    assert "npu" in status["audio"]["reason"]


async def test_cpu_only_cluster_falls_back_and_a_joining_npu_node_moves_audio(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("cpu-1")
    await kube.create(pipeline("town-hall"))
    await eventually(lambda: len(cluster.children("town-hall")) == CHILDREN)
    audio = deployment(cluster, "town-hall", "audio") or {}
    assert "npu.intel.com/accel" not in container(audio, "audio")["resources"]["limits"]
    assert [
        c["name"]
        for c in (deployment(cluster, "town-hall", "translation") or {})["spec"]["template"]["spec"][
            "containers"
        ]
    ] == ["translation"], "no GPU: no vLLM container"
    uid = audio["metadata"]["uid"]

    cluster.api.add_node("npu-1", allocatable={"npu.intel.com/accel": "1"})

    def on_npu() -> bool:
        limits = container(deployment(cluster, "town-hall", "audio") or {}, "audio")["resources"]["limits"]
        return cluster.audio_device("town-hall") == "npu" and limits.get("npu.intel.com/accel") == "1"

    await eventually(on_npu, message="audio re-placed on the NPU")
    assert (deployment(cluster, "town-hall", "audio") or {})["metadata"]["uid"] == uid
    moved = await eventually(
        lambda: [e for e in cluster.events("town-hall") if e["reason"] == "PlacementChanged"]
    )
    assert "cpu -> npu" in moved[0]["message"]
    await eventually(
        lambda: ((cluster.tp("town-hall") or {}).get("status", {}).get("audio", {}).get("device")) == "npu"
    )

    cluster.api.remove_node("npu-1")
    await eventually(
        lambda: cluster.audio_device("town-hall") == "cpu" and not on_npu(),
        message="audio back on CPU when the NPU leaves",
    )


async def test_spec_the_backend_cannot_serve_fails_then_recovers_when_fixed(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    # Valid for the schema, but with no GPU the offline backend has no en->de pair.
    await kube.create(pipeline("town-hall", {"targetLanguages": ["es", "de"]}))
    await eventually(lambda: phase(cluster, "town-hall") == "Failed", message="phase Failed")
    ready = condition(cluster, "town-hall", "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.targetLanguages[1]" in ready["message"]
    warnings = await eventually(
        lambda: [e for e in cluster.events("town-hall") if e["reason"] == "InvalidSpec"]
    )
    assert warnings[0]["type"] == "Warning" and "spec.targetLanguages[1]" in warnings[0]["message"]
    await asyncio.sleep(0.5)
    assert cluster.children("town-hall") == {}, "nothing half-built"

    await kube.patch(API, KIND, NS, "town-hall", {"spec": {"targetLanguages": ["es"]}})
    await eventually(lambda: len(cluster.children("town-hall")) == CHILDREN)
    cluster.mark_ready("town-hall")
    await eventually(lambda: phase(cluster, "town-hall") == "Ready")
    assert condition(cluster, "town-hall", "Ready")["observedGeneration"] == 2


async def test_schema_refuses_invalid_specs_at_apply_time(cluster: Cluster, kube: KubeClient) -> None:
    from livetranslate.operator.kube import ApiError

    with pytest.raises(ApiError) as err:
        await kube.create(pipeline("bad", {"audio": {"replicas": {"min": 3, "max": 1}}}))
    assert err.value.status == 422 and "replicas.min must be <= replicas.max" in err.value.message


async def test_delete_removes_every_child(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall"))
    await eventually(lambda: len(cluster.children("town-hall")) == CHILDREN)
    await kube.delete(API, KIND, NS, "town-hall")
    await eventually(
        lambda: cluster.tp("town-hall") is None and cluster.children("town-hall") == {},
        message="pipeline and children gone",
    )


async def test_every_api_call_is_covered_by_the_rbac_rules(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "1"})
    calls_before = len(cluster.api.calls)
    await kube.create(pipeline("town-hall"))
    await eventually(lambda: len(cluster.children("town-hall")) == CHILDREN)
    cluster.mark_ready("town-hall")
    await eventually(lambda: phase(cluster, "town-hall") == "Ready")
    await operator.stop()
    # Everything the operator did, start-up included: Kopf's own calls and our client's.
    ours = {(c.group, c.resource, c.verb) for c in cluster.api.calls if c.agent != "test-kubectl"}
    assert len(cluster.api.calls) > calls_before
    # The operator's own writes were recorded (not only the test's create).
    assert {
        ("apps", "deployments", "create"),
        ("livetranslate.io", "translationpipelines/status", "patch"),
    } <= ours, sorted(ours)
    missing = sorted(c for c in ours if not rbac.allows(*c))
    assert missing == []


async def test_a_gpu_joining_lets_a_refused_pipeline_run_on_vllm(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("cpu-1")
    await kube.create(pipeline("town-hall", {"targetLanguages": ["de"]}))  # no en->de offline
    await eventually(lambda: phase(cluster, "town-hall") == "Failed")
    cluster.api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "1"})
    await eventually(
        lambda: len(cluster.children("town-hall")) == CHILDREN, message="built once a GPU joined"
    )
    translation = deployment(cluster, "town-hall", "translation") or {}
    assert [c["name"] for c in translation["spec"]["template"]["spec"]["containers"]] == [
        "translation",
        "vllm",
    ]
    await eventually(lambda: phase(cluster, "town-hall") == "Progressing")
    assert "invalidField" not in (cluster.tp("town-hall") or {})["status"]


async def test_a_podmonitor_per_pipeline_where_the_prometheus_operator_is_installed(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.install_crd(PODMONITOR_CRD)
    await kube.create(pipeline("town-hall"))
    monitors = await eventually(
        lambda: cluster.api.find("monitoring.coreos.com/v1/podmonitors", NS), message="a PodMonitor"
    )
    (monitor,) = monitors
    tp = cluster.tp("town-hall") or {}
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == tp["metadata"]["uid"]  # garbage-collected
    assert monitor["spec"]["selector"] == {"matchLabels": {"livetranslate.io/pipeline": "town-hall"}}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    ours = {
        (c.group, c.resource, c.verb)
        for c in cluster.api.calls
        if c.agent != "test-kubectl" and c.group == "monitoring.coreos.com"
    }
    assert ours and all(rbac.allows(*c, rules=rbac.MONITOR_RULES) for c in ours)


async def test_no_podmonitor_without_the_prometheus_operator(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall"))
    # The Placed event comes after the step that would make a PodMonitor: the reconcile is over.
    await eventually(lambda: any(e["reason"] == "Placed" for e in cluster.events("town-hall")))
    assert len(cluster.children("town-hall")) == CHILDREN
    assert not any(c.group == "monitoring.coreos.com" for c in cluster.api.calls)


async def test_a_burst_of_deployment_events_costs_one_status_refresh(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    # No autoscaler: its timer reads the pipeline too.
    await kube.create(pipeline("town-hall", {"scaling": {"enabled": False}}))
    await eventually(lambda: any(e["reason"] == "Placed" for e in cluster.events("town-hall")))
    await eventually(lambda: phase(cluster, "town-hall") == "Progressing")
    await asyncio.sleep(1.0)  # the reconcile's own events have settled
    before = len(cluster.api.calls)
    for stage in ("audio", "translation", "gateway"):  # a rollout: pods turn ready 20 ms apart
        cluster.api.set_deployment_ready(NS, f"town-hall-{stage}")
        await asyncio.sleep(0.02)
    await eventually(lambda: phase(cluster, "town-hall") == "Ready")
    await asyncio.sleep(1.0)
    # A refresh reads the Deployments once (then the status write reads the pipeline and patches).
    refreshes = [
        c
        for c in cluster.api.calls[before:]
        if c.agent != "test-kubectl" and (c.verb, c.resource) == ("list", "deployments")
    ]
    assert len(refreshes) == 1, [(c.agent, c.verb, c.resource) for c in cluster.api.calls[before:]]


async def test_an_annotation_set_by_hand_is_placed_on_a_pipeline_an_older_operator_handled(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    """Kopf's state lives under kopf.livetranslate.io/, so a change of a livetranslate.io/
    annotation fires the update handler: with the autoscaler off, nothing else could place it.
    A pipeline an older operator handled carries the livetranslate.io/kopf-managed marker that
    would hide the whole prefix from Kopf: the first reconcile removes the old storage."""
    cluster.api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "2"})
    await operator.sees_node("gpu-1")
    old = pipeline(
        "legacy",
        {
            "translation": {"backend": "vllm", "fallbackModels": ["Qwen/Qwen2.5-3B-Instruct-AWQ"]},
            "scaling": {"enabled": False},
        },
    )
    old["metadata"]["annotations"] = {
        "livetranslate.io/kopf-managed": "yes",
        "livetranslate.io/last-handled-configuration": json.dumps({"spec": {"targetLanguages": ["es"]}}),
        "team": "events",
    }
    await kube.create(old)
    await eventually(lambda: len(cluster.children("legacy")) == CHILDREN)

    def annotations() -> dict[str, str]:
        return (cluster.tp("legacy") or {}).get("metadata", {}).get("annotations") or {}

    await eventually(
        lambda: not any(k.startswith("livetranslate.io/") for k in annotations()),
        message=lambda: f"old Kopf storage left: {annotations()}",
    )
    assert annotations()["team"] == "events"
    # Kopf writes its own state once the handler is done: under its own prefix
    await eventually(
        lambda: any(k.startswith("kopf.livetranslate.io/") for k in annotations()),
        message=lambda: f"no Kopf state under kopf.livetranslate.io/: {annotations()}",
    )

    def served_model() -> str:
        args = container(deployment(cluster, "legacy", "translation") or {}, "vllm")["args"]
        return str(args[args.index("--model") + 1])

    await eventually(lambda: served_model() == "Qwen/Qwen2.5-7B-Instruct")
    cluster.api.patch_object(
        TP,
        NS,
        "legacy",
        {"metadata": {"annotations": {"livetranslate.io/active-model": "Qwen/Qwen2.5-3B-Instruct-AWQ"}}},
    )
    await eventually(
        lambda: served_model() == "Qwen/Qwen2.5-3B-Instruct-AWQ",
        timeout=10,
        message="the hand-set model placed by the update handler",
    )
