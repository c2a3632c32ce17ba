"""The restricted Pod Security Standard check (livetranslate_testing.pss) and every pod template
the operator builds held to it, for each placement it can choose (CPU/Apertium, GPU/vLLM, NPU).
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate as kv
import pytest

from livetranslate.api import TranslationPipelineSpec
from livetranslate.config import Placement
from livetranslate.operator import builders
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing.pss import object_violations, restricted_violations

GOOD_POD: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "app",
            "image": "livetranslate-gateway:0.1.0",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
            },
        }
    ],
    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "x"}}],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    pod = copy.deepcopy(GOOD_POD)
    node: Any = pod
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[leaf] = value
    return pod


def test_a_restricted_pod_passes() -> None:
    assert restricted_violations(GOOD_POD) == []


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        ("hostNetwork", True, "hostNetwork"),
        ("hostPID", True, "hostPID"),
        ("securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("securityContext.runAsUser", 0, "runAsUser"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "kernel.msgmax"),
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop must include ALL"),
        ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "SYS_ADMIN"),
        ("containers.0.securityContext.runAsUser", 0, "runAsUser"),
        ("containers.0.securityContext.procMount", "Unmasked", "procMount"),
        ("containers.0.securityContext.seLinuxOptions", {"user": "root"}, "seLinuxOptions.user"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort"),
        ("volumes", [{"name": "host", "hostPath": {"path": "/"}}], "hostPath"),
    ],
)
def test_each_breach_is_named(path: str, value: Any, fragment: str) -> None:
    problems = restricted_violations(_with(path, value))
    assert problems and any(fragment in p for p in problems), problems


def test_non_root_and_seccomp_may_come_from_either_level() -> None:
    pod = copy.deepcopy(GOOD_POD)
    del pod["securityContext"]
    problems = restricted_violations(pod)
    assert any("runAsNonRoot" in p for p in problems) and any("seccompProfile" in p for p in problems)
    pod["containers"][0]["securityContext"].update(
        {"runAsNonRoot": True, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}
    )
    assert restricted_violations(pod) == []


def test_init_containers_are_checked_too() -> None:
    pod = copy.deepcopy(GOOD_POD)
    pod["initContainers"] = [{"name": "init", "image": "x"}]
    assert any("initContainers[init]" in p for p in restricted_violations(pod))


def test_objects_without_pods_have_no_violations() -> None:
    assert object_violations({"kind": "ConfigMap", "metadata": {"name": "x"}}) == []
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"metadata": {}, "spec": _with("hostIPC", True)}},
    }
    assert object_violations(deployment) == ["Deployment/d: spec.hostIPC must not be true"]


# ---------------------------------------------------------------- the operator's own builders


def _operator_children() -> list[tuple[str, list[dict[str, Any]]]]:
    spec = TranslationPipelineSpec.model_validate(
        {
            "targetLanguages": ["es", "de"],
            "gateway": {"authSecretRef": {"name": "lt-tokens"}},
            "audio": {"diarization": {"enabled": True}},
        }
    )
    placements = {
        "cpu-apertium": Placement(audioDevice="cpu", translationBackend="apertium"),
        "gpu-vllm": Placement(
            audioDevice="gpu", translationBackend="vllm", translationModel="Qwen/Qwen2.5-7B-Instruct"
        ),
        "npu-openai": Placement(audioDevice="npu", translationBackend="openai", translationModel="gpt-x"),
    }
    out = []
    for label, placement in placements.items():
        resolved = builders.resolve("town-hall", "demo", 3, spec, placement)
        out.append((label, builders.build_children(resolved, builders.BuildState(), OperatorSettings())))
    return out


def test_operator_built_pods_are_restricted() -> None:
    for label, children in _operator_children():
        deployments = [c for c in children if c["kind"] == "Deployment"]
        assert len(deployments) == 3, label
        problems = [p for d in deployments for p in object_violations(d)]
        assert not problems, (label, problems)


def test_operator_built_objects_match_the_kubernetes_openapi_schema() -> None:
    for _label, children in _operator_children():
        for child in children:
            kv.validate(child, "1.27", strict=True)
