"""spec.modelCache: the real operator (Kopf, over HTTP) against the Kubernetes emulator.

The emulator has no Job controller: the tests play it, moving a Job's status and creating its pod
with the termination message the pull command writes, as kube-controller-manager and kubelet would.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from livetranslate.api import parse_spec
from livetranslate.config import Placement, ResolvedPipeline
from livetranslate.operator import builders, modelcache, rbac
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate.workloads.modelcache.errors import EXIT_PERMANENT
from livetranslate_testing import pss
from livetranslate_testing.kube_operator import NS, Cluster, OperatorProcess, eventually, pipeline

pytestmark = pytest.mark.slow

API = "livetranslate.io/v1alpha1"
JOBS = "batch/v1/jobs"
CACHE = {"size": "20Gi"}


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(user_agent="test-kubectl")
    try:
        yield client
    finally:
        await client.close()


def jobs(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    found = cluster.api.find(JOBS, NS, f"livetranslate.io/pipeline={name}")
    return {j["metadata"]["name"]: j for j in found}


def models(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return list(((cluster.tp(name) or {}).get("status") or {}).get("models") or [])


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    conditions = ((cluster.tp(name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finish(
    cluster: Cluster,
    job: str,
    summary: dict[str, Any],
    *,
    failed: bool = False,
    when: str = "",
    reason: str = "BackoffLimitExceeded",
) -> None:
    """Play the Job controller and kubelet: a pod that wrote ``summary``, then the Job's end
    (``reason`` on a Failed condition: ``PodFailurePolicy`` where the pod exited with the status
    of a model that cannot exist here)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-{uuid.uuid4().hex[:5]}", "namespace": NS, "labels": {"job-name": job}},
        "spec": {"containers": [{"name": "pull", "image": "x"}]},
    }
    cluster.api.create("v1/pods", pod)
    code = (EXIT_PERMANENT if reason == "PodFailurePolicy" else 1) if failed else 0
    terminated = {"exitCode": code, "message": json.dumps(summary)}
    cluster.api.set_status(
        "v1/pods",
        NS,
        pod["metadata"]["name"],
        {"containerStatuses": [{"name": "pull", "state": {"terminated": terminated}}]},
    )
    kind = "Failed" if failed else "Complete"
    status: dict[str, Any] = {
        "active": 0,
        "conditions": [{"type": kind, "status": "True", "lastTransitionTime": when or now()}],
    }
    if failed:
        status["conditions"][0]["reason"] = reason
    status["failed" if failed else "succeeded"] = modelcache.JOB_BACKOFF_LIMIT + 1 if failed else 1
    cluster.api.set_status(JOBS, NS, job, status)


async def test_model_cache_pulls_each_model_once_and_reports_it_ready(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "1"})
    await operator.sees_node("gpu-1")
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    # Whisper tiny.en, the translation model and its fallback: one Job each, and one claim.
    found = await eventually(lambda: len(jobs(cluster, "town-hall")) == 3 and jobs(cluster, "town-hall"))
    claim = cluster.api.read("v1/persistentvolumeclaims", NS, "town-hall-models")
    assert claim is not None and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    pulled = sorted(
        (j["metadata"]["annotations"][modelcache.MODEL_NAME_ANNOTATION], _arg(j, "--format"))
        for j in found.values()
    )
    assert pulled == [
        ("Qwen/Qwen2.5-3B-Instruct-AWQ", "hf"),
        ("Qwen/Qwen2.5-7B-Instruct", "hf"),
        ("tiny.en", "ct2"),
    ]
    tp = cluster.tp("town-hall") or {}
    for job in found.values():
        assert job["metadata"]["ownerReferences"][0]["uid"] == tp["metadata"]["uid"]
        assert pss.object_violations(job) == []
    await eventually(lambda: len(models(cluster, "town-hall")) == 3)
    assert {m["state"] for m in models(cluster, "town-hall")} == {"Pending"}
    assert condition(cluster, "town-hall", "ModelsReady")["status"] == "False"

    # The pods wait for their model on the read-only cache; vLLM serves the cached copy by name.
    audio = cluster.api.read("apps/v1/deployments", NS, "town-hall-audio") or {}
    pod = audio["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-model"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-cache")
    assert mount["readOnly"] is True
    doc = ResolvedPipeline.model_validate_json(
        (cluster.api.read("v1/configmaps", NS, "town-hall-config") or {})["data"]["pipeline.json"]
    )
    assert doc.audio_model().startswith("/model-cache/audio/")
    translation = cluster.api.read("apps/v1/deployments", NS, "town-hall-translation") or {}
    vllm = next(c for c in translation["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert vllm["args"][vllm["args"].index("--model") + 1].startswith("/model-cache/translation/")
    assert vllm["args"][vllm["args"].index("--served-model-name") + 1] == "Qwen/Qwen2.5-7B-Instruct"

    for name, job in found.items():
        cluster.api.set_status(JOBS, NS, name, {"active": 1})
    await eventually(lambda: {m["state"] for m in models(cluster, "town-hall")} == {"Pulling"})
    for name in found:
        finish(cluster, name, {"bytes": 1000, "sha256": "ab" * 32})
    await eventually(lambda: condition(cluster, "town-hall", "ModelsReady").get("status") == "True")
    assert all(m["state"] == "Ready" and m["bytes"] == 1000 for m in models(cluster, "town-hall"))

    # Events follow the status patch that reports the change (modelsync.announce).
    def reasons() -> list[str]:
        return [e["reason"] for e in cluster.events("town-hall")]

    await eventually(
        lambda: reasons().count("ModelPull") == 3 and reasons().count("ModelReady") == 3,
        message=lambda: str(reasons()),
    )

    # A restarted operator finds the Jobs: nothing pulled twice.
    await operator.stop()
    second = OperatorProcess(operator.settings)
    await second.start()
    try:
        # The restarted operator's resume reconcile has run.
        await eventually(
            lambda: (
                second.memo is not None
                and second.memo.state.registry.get_sample_value(
                    "livetranslate_reconcile_seconds_count", {"result": "ok"}
                )
            )
        )
        assert sorted(jobs(cluster, "town-hall")) == sorted(found)
        assert [e["reason"] for e in cluster.events("town-hall")].count("ModelPull") == 3
        assert condition(cluster, "town-hall", "ModelsReady")["status"] == "True"
    finally:
        await second.stop()


def _arg(job: dict[str, Any], flag: str) -> str:
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    return str(cmd[cmd.index(flag) + 1])


async def test_model_cache_failed_pull_is_reported_and_retried_with_backoff(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelcache, "RETRY_BASE_SECONDS", 2.0)  # a minute in production
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    finish(cluster, job, {"error": "sha256 mismatch: expected 00.., got 11.."}, failed=True)
    await eventually(lambda: condition(cluster, "town-hall", "ModelsReady").get("reason") == "ModelFailed")
    assert [m["state"] for m in models(cluster, "town-hall")] == ["Failed"]
    assert "sha256 mismatch" in condition(cluster, "town-hall", "ModelsReady")["message"]
    # The Event follows the status patch that reports the failure (modelsync.announce).
    failed = await eventually(
        lambda: [e for e in cluster.events("town-hall") if e["reason"] == "ModelFailed"]
    )
    assert failed[0]["type"] == "Warning" and "sha256 mismatch" in failed[0]["message"]
    # The reconcile starts the pull again: the same Job name, attempt 2, fresh status.
    await eventually(
        lambda: (
            (jobs(cluster, "town-hall").get(job) or {})
            .get("metadata", {})
            .get("annotations", {})
            .get(modelcache.ATTEMPT_ANNOTATION)
            == "2"
        ),
        timeout=30,
    )
    assert "status" not in jobs(cluster, "town-hall")[job] or not modelcache.job_failed(
        jobs(cluster, "town-hall")[job]
    )
    # The Event follows the Job's re-creation.
    await eventually(lambda: any(e["reason"] == "ModelPullRetried" for e in cluster.events("town-hall")))


async def test_model_cache_conversion_that_fails_moves_audio_to_the_next_device(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    cluster.api.add_node("npu-1", allocatable={"npu.intel.com/accel": "1"})
    await operator.sees_node("npu-1")
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    assert _arg(jobs(cluster, "town-hall")[job], "--format") == "openvino-ir"  # the NPU needs an IR
    cluster.api.set_status(JOBS, NS, job, {"active": 1})
    await eventually(lambda: [m["state"] for m in models(cluster, "town-hall")] == ["Converting"])
    error = {"error": "the OpenVINO export failed: unsupported op", "reason": "ConversionFailed"}
    finish(cluster, job, error, failed=True, reason="PodFailurePolicy")

    def placed() -> str | None:
        return cluster.audio_device("town-hall")

    await eventually(lambda: placed() == "cpu", message=lambda: str(placed()))
    await eventually(
        lambda: (
            "could not be converted to an OpenVINO IR"
            in ((cluster.tp("town-hall") or {})["status"]["audio"].get("reason") or "")
        )
    )
    # The CPU's own weights are pulled; the failed conversion stays as the record (not retried).
    await eventually(lambda: len(jobs(cluster, "town-hall")) == 2)
    formats = sorted(_arg(j, "--format") for j in jobs(cluster, "town-hall").values())
    assert formats == ["ct2", "openvino-ir"]


async def test_model_cache_conversion_killed_is_retried_and_audio_returns_to_the_npu(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that failed for a passing reason (the converter OOM-killed: the Job gave up
    after its pod retries) is not a model the NPU cannot run: audio runs on the next device while
    the conversion is retried after its backoff, and returns to the NPU once a retry completes."""
    monkeypatch.setattr(modelcache, "RETRY_BASE_SECONDS", 2.0)  # a minute in production
    cluster.api.add_node("npu-1", allocatable={"npu.intel.com/accel": "1"})
    await operator.sees_node("npu-1")
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    policy = jobs(cluster, "town-hall")[job]["spec"]["podFailurePolicy"]["rules"]
    assert policy == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "pull", "operator": "In", "values": [EXIT_PERMANENT]},
        }
    ]
    finish(cluster, job, {}, failed=True)  # OOM-killed: no summary, the Job's backoff ran out

    def placed() -> str | None:
        return cluster.audio_device("town-hall")

    def audio_reason() -> str:
        return ((cluster.tp("town-hall") or {}).get("status", {}).get("audio") or {}).get("reason") or ""

    await eventually(lambda: placed() == "cpu", message=lambda: str(placed()))
    # The ConfigMap is written before the status patch: the reason follows within the reconcile.
    await eventually(lambda: "failed and is retried" in audio_reason(), message=audio_reason)

    def attempt() -> str | None:
        meta = (jobs(cluster, "town-hall").get(job) or {}).get("metadata", {})
        return (meta.get("annotations") or {}).get(modelcache.ATTEMPT_ANNOTATION)

    await eventually(lambda: attempt() == "2", timeout=30)
    # while the retry runs, audio stays where it works and the IR is still reported
    assert placed() == "cpu"
    assert ("tiny.en", "openvino-ir") in {(m["name"], m["format"]) for m in models(cluster, "town-hall")}
    finish(cluster, job, {"bytes": 1, "sha256": "00"})
    await eventually(lambda: placed() == "npu", message=lambda: str(placed()))


async def test_model_cache_read_write_once_pins_each_stage_to_its_volume_node(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall", {"modelCache": {**CACHE, "accessMode": "ReadWriteOnce"}}))
    await eventually(lambda: cluster.api.read("v1/persistentvolumeclaims", NS, "town-hall-models-audio"))
    assert cluster.api.read("v1/persistentvolumeclaims", NS, "town-hall-models") is None
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    # The scheduler binds the claim where the Job's pod went (WaitForFirstConsumer).
    cluster.api.patch_object(
        "v1/persistentvolumeclaims",
        NS,
        "town-hall-models-audio",
        {"metadata": {"annotations": {modelcache.SELECTED_NODE_ANNOTATION: "node-7"}}},
    )
    cluster.api.set_status(JOBS, NS, job, {"active": 1})

    def pinned() -> Any:
        dep = cluster.api.read("apps/v1/deployments", NS, "town-hall-audio") or {}
        pod = dep.get("spec", {}).get("template", {}).get("spec", {})
        affinity = pod.get("affinity", {}).get("nodeAffinity", {})
        return affinity.get("requiredDuringSchedulingIgnoredDuringExecution")

    terms = await eventually(pinned)
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["node-7"]


async def test_model_cache_deleted_pipeline_leaves_no_jobs_and_no_cache_means_no_jobs(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("plain"))
    await eventually(lambda: cluster.api.read("apps/v1/deployments", NS, "plain-audio"))
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    await eventually(lambda: jobs(cluster, "town-hall"))
    await asyncio.sleep(0.5)
    assert jobs(cluster, "plain") == {} and "models" not in ((cluster.tp("plain") or {}).get("status") or {})
    await kube.delete(API, "TranslationPipeline", NS, "town-hall")
    await eventually(lambda: jobs(cluster, "town-hall") == {}, message="Jobs collected with their owner")
    # The garbage collector takes the owner's dependents one by one: the claim may go after the Jobs.
    await eventually(
        lambda: cluster.api.read("v1/persistentvolumeclaims", NS, "town-hall-models") is None,
        message="PersistentVolumeClaim collected with its owner",
    )


async def test_model_cache_api_calls_are_covered_by_the_rbac_rules(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    finish(cluster, job, {"bytes": 1, "sha256": "ab" * 32})
    await eventually(lambda: condition(cluster, "town-hall", "ModelsReady").get("status") == "True")
    await operator.stop()
    ours = {(c.group, c.resource, c.verb) for c in cluster.api.calls if c.agent != "test-kubectl"}
    assert {
        ("batch", "jobs", "create"),
        ("", "persistentvolumeclaims", "create"),
        ("", "pods", "list"),
    } <= ours
    assert sorted(c for c in ours if not rbac.allows(*c)) == []


def test_model_cache_job_names_fit_and_never_collide() -> None:
    resolved = builders.resolve("a" * 60, NS, 1, parse_spec({"modelCache": {}}), Placement())
    other = resolved.model_copy(update={"name": "a" * 59 + "b"})
    (model,) = modelcache.required_models(resolved)
    first, second = modelcache.job_name(resolved.name, model), modelcache.job_name(other.name, model)
    assert len(first) <= 63 and len(second) <= 63 and first != second
    job = modelcache.build_job(resolved, model, OperatorSettings())
    assert pss.object_violations(job) == []


async def test_model_cache_pull_pod_that_cannot_run_says_why(
    cluster: Cluster, operator: OperatorProcess, kube: KubeClient
) -> None:
    # A token Secret that does not exist: the kubelet cannot start the pull pod, and the model's
    # status says so instead of a silent Pending.
    await kube.create(pipeline("town-hall", {"modelCache": CACHE}))
    (job,) = await eventually(lambda: list(jobs(cluster, "town-hall")))
    name = f"{job}-x1"
    cluster.api.create(
        "v1/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"job-name": job}},
            "spec": {"containers": [{"name": "pull", "image": "x"}]},
        },
    )
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}
    cluster.api.set_status(
        "v1/pods", NS, name, {"containerStatuses": [{"name": "pull", "state": {"waiting": waiting}}]}
    )
    cluster.api.set_status(JOBS, NS, job, {"active": 1})
    await eventually(lambda: "not found" in ((models(cluster, "town-hall") or [{}])[0].get("message") or ""))
    (model,) = models(cluster, "town-hall")
    assert model["state"] == "Pending"
    assert model["message"] == 'pull pod not running: CreateContainerConfigError: secret "hf-token" not found'
