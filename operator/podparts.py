"""Pieces of the pipeline's pod specs that several builders share: the restricted security
contexts, probes, the common env and volumes, the model cache's mounts, and the vLLM engine
container that runs next to the translation service."""

from __future__ import annotations

from typing import Any

from livetranslate.api import Stage
from livetranslate.config import (
    CONFIG_ENV,
    CONFIG_KEY,
    DEFAULT_CONFIG_PATH,
    SERVICE_PORT,
    VLLM_LOCAL_URL,
    VLLM_PORT,
    ResolvedPipeline,
)
from livetranslate.operator import modelcache
from livetranslate.operator import placement as placing
from livetranslate.operator.settings import OperatorSettings

RUN_AS = 10001
MODEL_DIR = "/models"


def configmap_name(name: str) -> str:
    return f"{name}-config"


# ------------------------------------------------------------------------------------ pod parts


def container_security() -> dict[str, Any]:
    """Restricted Pod Security Standard, container level."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, *, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
        "initialDelaySeconds": initial,
    }


def base_env(resolved: ResolvedPipeline, stage: Stage) -> list[dict[str, Any]]:
    return [
        {"name": CONFIG_ENV, "value": DEFAULT_CONFIG_PATH},
        {"name": "LT_PORT", "value": str(SERVICE_PORT)},
        # Read-only root filesystem: everything that caches goes to the writable emptyDirs.
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": f"{MODEL_DIR}/cache"},
        {"name": "HF_HOME", "value": f"{MODEL_DIR}/hf"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def mounts() -> list[dict[str, Any]]:
    # The ConfigMap is mounted as a single file (subPath) rather than over the whole directory so
    # the gateway's auth Secret can sit at AUTH_MOUNT_DIR below it; config changes roll the pods
    # through the config-hash annotation, so subPath not refreshing in place loses nothing.
    return [
        {"name": "config", "mountPath": DEFAULT_CONFIG_PATH, "subPath": CONFIG_KEY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "models", "mountPath": MODEL_DIR},
    ]


def volumes(name: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": configmap_name(name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "models", "emptyDir": {"sizeLimit": settings.model_cache_size}},
    ]


def use_cache(template: dict[str, Any], pieces: modelcache.PodPieces | None) -> None:
    """Mount the model cache read-only in every container and wait for the model before they start."""
    if pieces is None:
        return
    spec = template["spec"]
    spec["volumes"].extend(pieces.volumes)
    for container in spec["containers"]:
        container["volumeMounts"].extend(pieces.mounts)
    spec["initContainers"] = [*spec.get("initContainers", []), *pieces.init_containers]
    if pieces.node:
        modelcache.pin_to_node(spec, pieces.node)


def vllm_model_args(resolved: ResolvedPipeline) -> list[str]:
    """vLLM's model: the cached directory served under the model's name, or the hub id."""
    model = resolved.placement.translationModel
    cached = resolved.modelPaths.get(f"translation:{model}")
    return ["--model", cached, "--served-model-name", model] if cached else ["--model", model]


def vllm_container(resolved: ResolvedPipeline, settings: OperatorSettings) -> dict[str, Any]:
    spec = resolved.spec.translation
    probe_cmd = [
        "python3",
        "-c",
        f"import urllib.request; urllib.request.urlopen('{VLLM_LOCAL_URL}/health', timeout=3)",
    ]
    return {
        "name": "vllm",
        "image": settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [
            *vllm_model_args(resolved),
            "--gpu-memory-utilization",
            f"{spec.gpuMemoryUtilization:g}",
            "--max-model-len",
            str(spec.maxModelLen),
            # Sleep mode lets the autoscaler free GPU memory and swap to a fallback model fast.
            "--enable-sleep-mode",
            # Loopback only: the translation container next to it is its only client.
            "--host",
            "127.0.0.1",
            "--port",
            str(VLLM_PORT),
        ],
        # /sleep and /wake_up are development-mode endpoints in vLLM's OpenAI server.
        "env": [
            {"name": "VLLM_SERVER_DEV_MODE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": f"{MODEL_DIR}/hf"},
            {"name": "XDG_CACHE_HOME", "value": f"{MODEL_DIR}/cache"},
            {"name": "VLLM_CACHE_ROOT", "value": f"{MODEL_DIR}/vllm"},
            # With a model cache the weights are on disk, verified: never reach for the hub.
            *([{"name": "HF_HUB_OFFLINE", "value": "1"}] if resolved.modelPaths else []),
        ],
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "models", "mountPath": MODEL_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "resources": settings.vllm_resources.as_k8s({placing.GPU_RESOURCE: "1"}),
        "securityContext": container_security(),
        # The server binds loopback, which kubelet's HTTP probes cannot reach: probe from inside.
        "startupProbe": {
            "exec": {"command": probe_cmd},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, settings.vllm_startup_seconds // 10),
        },
        "livenessProbe": {
            "exec": {"command": probe_cmd},
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
    }
