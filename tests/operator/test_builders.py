"""Pure builders, placement and status: what the pods look like, without a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from livetranslate.api import parse_spec
from livetranslate.config import AUTH_MOUNT_DIR, TRANSLATION_KEY_MOUNT_DIR, ResolvedPipeline
from livetranslate.operator import builders, placement, status
from livetranslate.operator.builders import BuildState
from livetranslate.operator.manifests import contains, merged_owners, without
from livetranslate.operator.settings import OperatorSettings
from livetranslate.workloads.translate.settings import TranslateSettings
from livetranslate_testing.pss import object_violations

SETTINGS = OperatorSettings()
NONE = placement.ClusterDevices()
NPU_GPU = placement.ClusterDevices(npu_nodes=1, gpu_nodes=2, nodes=3)


def resolved(
    spec: dict[str, Any] | None = None,
    cluster: placement.ClusterDevices = NONE,
    annotation: str | None = None,
    generation: int = 1,
) -> ResolvedPipeline:
    parsed = parse_spec(spec or {})
    return builders.resolve(
        "town-hall",
        "demo",
        generation,
        parsed,
        placement.place(parsed, cluster, active_model_annotation=annotation),
    )


def children(r: ResolvedPipeline, state: BuildState | None = None) -> dict[str, dict[str, Any]]:
    return {
        f"{m['kind']}/{m['metadata']['name']}": m
        for m in builders.build_children(r, state or BuildState(), SETTINGS)
    }


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod(dep)["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def pipeline_doc(r: ResolvedPipeline) -> dict[str, Any]:
    """The pipeline.json the pods mount (the ConfigMap's document)."""
    doc: dict[str, Any] = json.loads(
        children(r)[f"ConfigMap/{builders.configmap_name(r.name)}"]["data"]["pipeline.json"]
    )
    return doc


# ------------------------------------------------------------------------------------ placement


def node(name: str, **alloc: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": "8", **alloc}}, "spec": {}}


def test_cluster_devices_count_allocatable_and_skip_cordoned_nodes() -> None:
    nodes = [
        node("a", **{"npu.intel.com/accel": "1"}),
        node("b", **{"nvidia.com/gpu": "0"}),
        node("c", **{"nvidia.com/gpu": "4"}),
        {**node("d", **{"nvidia.com/gpu": "1"}), "spec": {"unschedulable": True}},
    ]
    assert placement.cluster_devices(nodes) == placement.ClusterDevices(npu_nodes=1, gpu_nodes=1, nodes=3)


@pytest.mark.parametrize(
    ("devices", "cluster", "expected"),
    [
        (["npu", "gpu", "cpu"], NPU_GPU, "npu"),
        (["npu", "gpu", "cpu"], placement.ClusterDevices(gpu_nodes=1, nodes=1), "gpu"),
        (["npu", "gpu", "cpu"], NONE, "cpu"),
        (["gpu", "npu"], placement.ClusterDevices(npu_nodes=1, nodes=1), "npu"),
        (["cpu", "npu"], NPU_GPU, "cpu"),
        (["npu"], NONE, "npu"),  # nothing available: keep the only preference, pods wait
    ],
)
def test_audio_device_is_first_preference_the_cluster_has(
    devices: list[str], cluster: placement.ClusterDevices, expected: str
) -> None:
    placed = placement.place(parse_spec({"audio": {"devices": devices}}), cluster)
    assert placed.audioDevice == expected
    assert placed.audioReason.startswith(expected) or "waiting" in placed.audioReason


def test_auto_backend_is_vllm_with_a_gpu_and_apertium_without() -> None:
    assert placement.place(parse_spec({}), NPU_GPU).translationBackend == "vllm"
    cpu = placement.place(parse_spec({}), NONE)
    assert (cpu.translationBackend, cpu.translationModel) == ("apertium", "apertium")
    assert "no GPU" in cpu.translationReason
    explicit = placement.place(parse_spec({"translation": {"backend": "vllm"}}), NONE)
    assert explicit.translationBackend == "vllm" and "Pending" in explicit.translationReason


def test_active_model_annotation_only_names_allowed_models() -> None:
    spec = parse_spec({})
    assert placement.active_model(spec, "Qwen/Qwen2.5-3B-Instruct-AWQ") == "Qwen/Qwen2.5-3B-Instruct-AWQ"
    assert placement.active_model(spec, "evil/model") == "Qwen/Qwen2.5-7B-Instruct"
    assert placement.active_model(spec, None) == "Qwen/Qwen2.5-7B-Instruct"


# ------------------------------------------------------------------------------------- builders


def test_children_names_labels_and_config() -> None:
    kids = children(resolved())
    assert sorted(kids) == sorted(
        [
            "ConfigMap/town-hall-config",
            "Service/town-hall-audio",
            "Service/town-hall-translation",
            "Service/town-hall-gateway",
            "Deployment/town-hall-audio",
            "Deployment/town-hall-translation",
            "Deployment/town-hall-gateway",
            "PodDisruptionBudget/town-hall-audio",
            "PodDisruptionBudget/town-hall-translation",
            "PodDisruptionBudget/town-hall-gateway",
        ]
    )
    config = json.loads(kids["ConfigMap/town-hall-config"]["data"]["pipeline.json"])
    assert ResolvedPipeline.model_validate(config) == resolved()
    for stage in builders.STAGES:
        dep, svc = kids[f"Deployment/town-hall-{stage}"], kids[f"Service/town-hall-{stage}"]
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        pdb = kids[f"PodDisruptionBudget/town-hall-{stage}"]
        assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
        assert svc["spec"]["ports"] == [
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
        ]


@pytest.mark.parametrize("cluster", [NONE, NPU_GPU], ids=["cpu", "npu+gpu"])
def test_every_pod_meets_the_restricted_pod_security_standard(cluster: placement.ClusterDevices) -> None:
    for key, obj in children(
        resolved({"gateway": {"authSecretRef": {"name": "lt-tokens"}}}, cluster)
    ).items():
        if obj["kind"] != "Deployment":
            continue
        spec = pod(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, key
            assert sc["capabilities"] == {"drop": ["ALL"]}, key
            assert sc["readOnlyRootFilesystem"] is True, key
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, key
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], key
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, f"{key}/{c['name']}: read-only root needs a writable /tmp"
        assert all(set(v) & {"configMap", "emptyDir", "secret"} for v in spec["volumes"]), key
        # The same checker the chart's templates go through.
        assert object_violations(obj) == [], key


def test_probes_ports_and_scrape_annotations() -> None:
    for stage in builders.STAGES:
        dep = children(resolved())[f"Deployment/town-hall-{stage}"]
        c = container(dep, stage)
        assert c["command"] == ["livetranslate", "serve", builders.SERVE_NAMES[stage]]
        # A gateway stays in its Service while a dependency every replica shares is down.
        ready = (
            "/readyz?exclude=audio&exclude=translation&exclude=sessionStore"
            if stage == "gateway"
            else "/readyz"
        )
        assert c["readinessProbe"]["httpGet"]["path"] == ready
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert env(c)["LT_PIPELINE_CONFIG"] == "/etc/livetranslate/pipeline.json"
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8080"


def test_npu_audio_requests_the_device_and_tolerates_its_taint() -> None:
    r = resolved({}, NPU_GPU)
    dep = children(r)["Deployment/town-hall-audio"]
    c = container(dep, "audio")
    assert (
        c["resources"]["requests"]["npu.intel.com/accel"]
        == "1"
        == c["resources"]["limits"]["npu.intel.com/accel"]
    )
    assert pipeline_doc(r)["placement"]["audioDevice"] == "npu"
    assert {"key": "npu.intel.com/accel", "operator": "Exists", "effect": "NoSchedule"} in pod(dep)[
        "tolerations"
    ]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "no spare NPU to surge onto"


def test_vllm_translation_pod_runs_the_engine_next_to_the_service() -> None:
    r = resolved(
        {"translation": {"gpuMemoryUtilization": 0.7, "maxModelLen": 8192}},
        NPU_GPU,
        annotation="Qwen/Qwen2.5-3B-Instruct-AWQ",
    )
    dep = children(r)["Deployment/town-hall-translation"]
    assert [c["name"] for c in pod(dep)["containers"]] == ["translation", "vllm"]
    vllm = container(dep, "vllm")
    args = vllm["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen2.5-3B-Instruct-AWQ"  # the autoscaler's choice
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.7"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8000"
    assert "--enable-sleep-mode" in args
    assert env(vllm)["VLLM_SERVER_DEV_MODE"] == "1"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert vllm["startupProbe"]["failureThreshold"] * vllm["startupProbe"]["periodSeconds"] >= 600
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod(dep)["tolerations"]
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod(dep)["volumes"])  # /dev/shm


def test_cpu_translation_has_no_engine_container_and_no_gpu() -> None:
    r = resolved()
    dep = children(r)["Deployment/town-hall-translation"]
    assert [c["name"] for c in pod(dep)["containers"]] == ["translation"]
    assert "nvidia.com/gpu" not in json.dumps(dep["spec"]["template"]["spec"]["containers"])
    assert pipeline_doc(r)["placement"]["translationBackend"] == "apertium"


def test_gateway_gets_redis_and_the_auth_secret() -> None:
    r = resolved({"gateway": {"redisUrl": "redis://r:6379/0", "authSecretRef": {"name": "lt-tokens"}}})
    dep = children(r)["Deployment/town-hall-gateway"]
    c = container(dep, "gateway")
    assert pipeline_doc(r)["spec"]["gateway"]["redisUrl"] == "redis://r:6379/0"
    assert {"name": "auth", "mountPath": AUTH_MOUNT_DIR, "readOnly": True} in c["volumeMounts"]
    assert {"name": "auth", "secret": {"secretName": "lt-tokens"}} in pod(dep)["volumes"]


def test_openai_backend_reads_its_key_from_the_secret() -> None:
    r = resolved(
        {
            "translation": {
                "backend": "openai",
                "endpoint": "http://llm:8000/v1",
                "apiKeySecretRef": {"name": "llm", "key": "token"},
            }
        }
    )
    dep = children(r)["Deployment/town-hall-translation"]
    c = container(dep, "translation")
    assert {"name": "translation-key", "mountPath": TRANSLATION_KEY_MOUNT_DIR, "readOnly": True} in c[
        "volumeMounts"
    ]
    assert {
        "name": "translation-key",
        "secret": {"secretName": "llm", "items": [{"key": "token", "path": "token"}]},
    } in pod(dep)["volumes"]
    # where the service looks for it, told by pipeline.json
    settings = TranslateSettings.load(ResolvedPipeline.model_validate(pipeline_doc(r)))
    assert str(settings.openai.api_key_file) == f"{TRANSLATION_KEY_MOUNT_DIR}/token"


def test_pipeline_json_is_the_only_channel_to_the_workloads() -> None:
    """No pod carries a copy of a value pipeline.json holds (placement, model, Redis, the key)."""
    r = resolved({"gateway": {"redisUrl": "redis://r:6379/0"}}, NPU_GPU)
    for name, dep in children(r).items():
        if not name.startswith("Deployment/"):
            continue
        for c in pod(dep)["containers"]:
            if c["name"] != "vllm":
                assert set(env(c)) == {
                    "LT_PIPELINE_CONFIG",
                    "LT_PORT",
                    "HOME",
                    "XDG_CACHE_HOME",
                    "HF_HOME",
                    "POD_NAME",
                    "POD_NAMESPACE",
                }, (name, sorted(env(c)))


@pytest.mark.parametrize(
    ("bounds", "current", "expected"),
    [
        ({"min": 1, "max": 4}, None, 1),
        ({"min": 2, "max": 4}, None, 2),
        ({"min": 1, "max": 4}, 3, 3),
        ({"min": 1, "max": 2}, 3, 2),
        ({"min": 4, "max": 6}, 1, 4),
        ({"min": 0, "max": 2}, 0, 0),
    ],
)
def test_replicas_keep_what_runs_within_bounds(
    bounds: dict[str, int], current: int | None, expected: int
) -> None:
    r = resolved({"audio": {"replicas": bounds}})
    dep = children(r, BuildState(replicas={"audio": current}))["Deployment/town-hall-audio"]
    assert dep["spec"]["replicas"] == expected


def test_config_hash_ignores_generation_but_not_content() -> None:
    assert builders.config_hash(resolved(generation=1)) == builders.config_hash(resolved(generation=7))
    assert builders.config_hash(resolved()) != builders.config_hash(resolved({"audio": {"vad": False}}))


# --------------------------------------------------------------------------------------- status


def obs(desired: int, ready: int, generation: int = 1, observed: int = 1) -> status.StageObservation:
    return status.StageObservation(
        exists=True,
        desired=desired,
        replicas=desired,
        ready=ready,
        updated=desired,
        available=ready,
        generation=generation,
        observed_generation=observed,
    )


def test_status_ready_only_when_every_stage_rolled_out() -> None:
    r = resolved()
    all_ready = {s: obs(1, 1) for s in builders.STAGES}
    st = status.compute_status(r, all_ready, None, now="t0")
    assert st["phase"] == "Ready" and st["readyStages"] == "3/3"
    assert st["conditions"][0] == {
        "type": "Ready",
        "status": "True",
        "reason": "AllStagesReady",
        "message": "audio, translation and gateway are ready",
        "observedGeneration": 1,
        "lastTransitionTime": "t0",
    }
    # The controller has not seen the new template yet: not ready, whatever readyReplicas says.
    stale = {**all_ready, "audio": obs(1, 1, generation=2, observed=1)}
    st2 = status.compute_status(r, stale, st, now="t1")
    assert st2["phase"] == "Degraded" and st2["readyStages"] == "2/3"
    # A whole stage down after having been Ready: Degraded too, never back to Progressing.
    down = status.compute_status(r, {**all_ready, "gateway": obs(1, 0)}, st, now="t1")
    assert down["phase"] == "Degraded" and down["readyStages"] == "2/3"
    assert (
        status.compute_status(r, {**all_ready, "gateway": obs(1, 0)}, None, now="t1")["phase"]
        == "Progressing"
    )
    again = status.compute_status(r, all_ready, st2, now="t2")
    # Ready flipped False then True: transition time moves; unchanged conditions keep theirs.
    assert again["conditions"][0]["lastTransitionTime"] == "t2"
    assert next(c for c in again["conditions"] if c["type"] == "GatewayReady")["lastTransitionTime"] == "t0"


def test_status_keeps_conditions_it_does_not_own() -> None:
    prev = {
        "conditions": [
            {
                "type": "ScalingActive",
                "status": "True",
                "reason": "x",
                "message": "",
                "lastTransitionTime": "t",
            }
        ]
    }
    st = status.compute_status(resolved(), {}, prev, now="t0")
    assert st["phase"] == "Progressing"
    assert any(c["type"] == "ScalingActive" for c in st["conditions"])


def test_failed_status_names_the_field() -> None:
    st = status.failed_status("spec.targetLanguages[0]: no pair", "spec.targetLanguages[0]", 3, None, now="t")
    assert st["phase"] == "Failed" and st["observedGeneration"] == 3
    assert st["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.targetLanguages[0]" in st["conditions"][0]["message"]


# ---------------------------------------------------------------------------------- client layer


def test_apply_helpers() -> None:
    assert contains({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}})
    assert not contains({"a": 1}, {"a": 2})
    assert contains({"a": 1}, {"b": None}) and not contains({"b": 1}, {"b": None})
    assert without({"spec": {"replicas": 3, "x": 1}}, [("spec", "replicas")]) == {"spec": {"x": 1}}
    other = {"uid": "u1", "name": "someone-else"}
    ours = {"uid": "u2", "name": "us"}
    assert merged_owners([other, {"uid": "u2", "name": "old"}], [ours]) == [other, ours]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("gpu", "gpu"),  # the autoscaler moved audio off an exhausted NPU pool
        ("cpu", "cpu"),
        ("npu", "npu"),  # naming the first choice changes nothing
        ("tpu", "npu"),  # not a device of the spec: ignored
    ],
)
def test_audio_device_annotation_moves_along_devices_only(annotation: str, expected: str) -> None:
    placed = placement.place(parse_spec({}), NPU_GPU, audio_device_annotation=annotation)
    assert placed.audioDevice == expected
    if expected != "npu":
        assert "autoscaler" in placed.audioReason


def test_audio_device_annotation_needs_the_device_in_the_cluster() -> None:
    npu_only = placement.ClusterDevices(npu_nodes=1, nodes=1)
    placed = placement.place(
        parse_spec({"audio": {"devices": ["npu", "gpu"]}}), npu_only, audio_device_annotation="gpu"
    )
    assert placed.audioDevice == "npu"


def test_peering_settings_give_one_active_replica() -> None:
    from livetranslate.operator.main import kopf_settings

    assert kopf_settings(OperatorSettings()).peering.mandatory is False
    a = kopf_settings(OperatorSettings(peering="livetranslate", peering_lifetime=30))
    b = kopf_settings(OperatorSettings(peering="livetranslate", peering_lifetime=30))
    assert (a.peering.name, a.peering.mandatory, a.peering.standalone, a.peering.lifetime) == (
        "livetranslate",
        True,
        False,
        30,
    )
    assert a.peering.clusterwide is True
    # Kopf pauses every replica of equal priority: two processes must not draw the same one.
    assert a.peering.priority != b.peering.priority


def test_fallback_endpoint_keys_are_mounted_where_the_settings_look() -> None:
    r = resolved(
        {
            "translation": {
                "fallback": [
                    {"endpoint": "https://a.example/v1"},
                    {
                        "endpoint": "https://b.example/v1",
                        "apiKeySecretRef": {"name": "b-key", "key": "token"},
                    },
                ]
            }
        },
        NPU_GPU,
    )
    dep = children(r)["Deployment/town-hall-translation"]
    c = container(dep, "translation")
    assert {
        "name": "fallback-key-1",
        "mountPath": "/etc/livetranslate/fallback-keys/1",
        "readOnly": True,
    } in c["volumeMounts"]
    assert {
        "name": "fallback-key-1",
        "secret": {"secretName": "b-key", "items": [{"key": "token", "path": "token"}]},
    } in pod(dep)["volumes"]
    assert not any(v["name"] == "fallback-key-0" for v in pod(dep)["volumes"]), "no key, no volume"
    settings = TranslateSettings.load(ResolvedPipeline.model_validate(pipeline_doc(r)))
    assert str(settings.fallback_endpoints[1].api_key_file) == "/etc/livetranslate/fallback-keys/1/token"
    assert object_violations(dep) == [], "restricted pod security holds with the key volumes"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2.0),
        ("500m", 0.5),
        ("1.5Gi", 1.5 * 1024**3),
        ("2T", 2e12),
        ("1Pi", 1024.0**5),
        ("3E", 3e18),
        ("1e3", 1000.0),
        (".5M", 5e5),
        ("250u", 2.5e-4),
        ("many", 0.0),
        ("", 0.0),
    ],
)
def test_quantities_parse_as_kubernetes_writes_them(text: str, value: float) -> None:
    # A node's allocatable may use any suffix apimachinery knows (T, P, E and exponents included).
    assert placement.parse_quantity(text) == pytest.approx(value)


def test_model_cache_absent_the_default_spec_on_an_npu_converts_in_the_pod() -> None:
    # No spec.modelCache: an audio pod placed on an NPU converts its packaged model into its own
    # model volume before the engine starts, and pipeline.json points the engine at the IR.
    r = resolved({}, NPU_GPU)
    assert r.placement.audioDevice == "npu"
    audio = pod(children(r)["Deployment/town-hall-audio"])
    (init,) = audio["initContainers"]
    cmd = init["command"]
    assert init["name"] == "convert-model" and cmd[:3] == ["livetranslate", "model-cache", "pull"]
    assert cmd[cmd.index("--format") + 1] == "openvino-ir" and cmd[cmd.index("--name") + 1] == "tiny.en"
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert r.audio_model().startswith("/models/converted/audio/") and r.audio_model().endswith(
        "/openvino-ir-r2"
    )
    assert object_violations(children(r)["Deployment/town-hall-audio"]) == []
    # On a CPU node, or with a model the user mounts, nothing is converted.
    assert "initContainers" not in pod(children(resolved({}))["Deployment/town-hall-audio"])
    mounted = resolved({"audio": {"model": "/weights/whisper-small-ov"}}, NPU_GPU)
    assert "initContainers" not in pod(children(mounted)["Deployment/town-hall-audio"])
    assert mounted.audio_model() == "/weights/whisper-small-ov"
    # With a cache, the cache's Job converts instead and the pod waits for it.
    cached = resolved({"modelCache": {}}, NPU_GPU)
    inits = [c["name"] for c in pod(children(cached)["Deployment/town-hall-audio"])["initContainers"]]
    assert inits == ["wait-for-model"] and cached.audio_model().startswith("/model-cache/audio/")
