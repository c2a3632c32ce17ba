"""Pure builders: a resolved pipeline (+ what is running now) -> the manifests of its children.

No I/O here, so every rule about what a pipeline's pods look like (pod security, probes, placement,
the vLLM engine container, replica ownership) is unit-tested with plain dicts. ``kube.apply``
sends the results; ownerReferences are added there, because only it knows the owner's uid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from livetranslate.api import Device, ReplicaRange, Stage, TranslationPipelineSpec
from livetranslate.config import (
    AUTH_MOUNT_DIR,
    CONFIG_ENV,
    CONFIG_KEY,
    DEFAULT_CONFIG_PATH,
    FALLBACK_KEYS_MOUNT_DIR,
    SERVICE_PORT,
    TRANSLATION_KEY_MOUNT_DIR,
    VLLM_LOCAL_URL,
    VLLM_PORT,
    Endpoints,
    Placement,
    ResolvedPipeline,
    service_url,
)
from livetranslate.operator import placement as placing
from livetranslate.operator.settings import OperatorSettings, Resources

STAGES: tuple[Stage, ...] = ("audio", "translation", "gateway")
# `livetranslate serve <workload>` names per stage.
SERVE_NAMES: dict[Stage, str] = {"audio": "audio", "translation": "translate", "gateway": "gateway"}
MANAGED_BY = "livetranslate-operator"
PIPELINE_LABEL = "livetranslate.io/pipeline"
STAGE_LABEL = "livetranslate.io/stage"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CONFIG_HASH_ANNOTATION = "livetranslate.io/config-hash"
ACTIVE_MODEL_ANNOTATION = "livetranslate.io/active-model"
# Written by the autoscaler when the audio device pool it prefers is exhausted (placement.place).
AUDIO_DEVICE_ANNOTATION = "livetranslate.io/audio-device"
RUN_AS = 10001
MODEL_DIR = "/models"
ENDPOINT_PATH = "/v1/stream"


@dataclass(frozen=True)
class BuildState:
    """What is running now, which the builders must not fight.

    ``replicas`` holds each existing Deployment's spec.replicas (None = not created yet): after
    creation the autoscaler is the single writer of replicas, so a rebuild keeps them, clamped
    into the spec's [min, max] when the user narrowed the range.
    """

    replicas: dict[Stage, int | None] = field(default_factory=dict)


def deployment_name(name: str, stage: Stage) -> str:
    return f"{name}-{stage}"


def configmap_name(name: str) -> str:
    return f"{name}-config"


def gateway_endpoint(name: str, namespace: str) -> str:
    return f"ws://{name}-gateway.{namespace}.svc:{SERVICE_PORT}{ENDPOINT_PATH}"


def resolve(
    name: str, namespace: str, generation: int, spec: TranslationPipelineSpec, placement: Placement
) -> ResolvedPipeline:
    """The document every workload reads (ConfigMap key pipeline.json)."""
    return ResolvedPipeline(
        name=name,
        namespace=namespace,
        generation=generation,
        spec=spec,
        placement=placement,
        endpoints=Endpoints(
            audio=service_url(name, "audio", namespace),
            translation=service_url(name, "translation", namespace),
            gateway=service_url(name, "gateway", namespace),
        ),
    )


def config_hash(resolved: ResolvedPipeline) -> str:
    """Changes whenever pipeline.json changes; in the pod template it rolls the pods.

    The generation is left out: a spec edit that changes nothing resolved must not restart pods.
    """
    doc = resolved.model_copy(update={"generation": 0}).to_json()
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def labels(name: str, stage: Stage | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "livetranslate",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "livetranslate",
        MANAGED_BY_LABEL: MANAGED_BY,
        PIPELINE_LABEL: name,
    }
    if stage is not None:
        out["app.kubernetes.io/component"] = stage
        out[STAGE_LABEL] = stage
    return out


def selector(name: str, stage: Stage) -> dict[str, str]:
    return {PIPELINE_LABEL: name, STAGE_LABEL: stage}


def desired_replicas(bounds: ReplicaRange, current: int | None) -> int:
    """Keep what runs (the autoscaler's decision) within [min, max]; start new ones at min."""
    if current is None:
        return bounds.min
    return max(bounds.min, min(bounds.max, current))


def stage_bounds(spec: TranslationPipelineSpec, stage: Stage) -> ReplicaRange:
    return {
        "audio": spec.audio.replicas,
        "translation": spec.translation.replicas,
        "gateway": spec.gateway.replicas,
    }[stage]


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


def _http_probe(path: str, *, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
        "initialDelaySeconds": initial,
    }


def _base_env(resolved: ResolvedPipeline, stage: Stage) -> list[dict[str, Any]]:
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


def _mounts() -> list[dict[str, Any]]:
    # The ConfigMap is mounted as a single file (subPath) rather than over the whole directory so
    # the gateway's auth Secret can sit at AUTH_MOUNT_DIR below it; config changes roll the pods
    # through the config-hash annotation, so subPath not refreshing in place loses nothing.
    return [
        {"name": "config", "mountPath": DEFAULT_CONFIG_PATH, "subPath": CONFIG_KEY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "models", "mountPath": MODEL_DIR},
    ]


def _volumes(name: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": configmap_name(name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "models", "emptyDir": {"sizeLimit": settings.model_cache_size}},
    ]


def _app_container(
    resolved: ResolvedPipeline,
    stage: Stage,
    image: str,
    resources: Resources,
    settings: OperatorSettings,
    extra_resources: dict[str, str] | None = None,
    startup_failures: int = 60,
) -> dict[str, Any]:
    return {
        "name": stage,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["livetranslate", "serve", SERVE_NAMES[stage]],
        "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
        "env": _base_env(resolved, stage),
        "volumeMounts": _mounts(),
        "resources": resources.as_k8s(extra_resources),
        "securityContext": container_security(),
        # Model loading can take a while: the startup probe holds liveness off until /healthz
        # answers, so a slow first download is not mistaken for a hang.
        "startupProbe": _http_probe("/healthz", period=5, failures=startup_failures),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "readinessProbe": _http_probe("/readyz", period=5, failures=2),
    }


def _pod_template(
    resolved: ResolvedPipeline,
    stage: Stage,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    device: Device,
    settings: OperatorSettings,
    grace: int = 30,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": pod_security(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "containers": containers,
        "volumes": volumes,
        **placing.scheduling(device),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return {
        "metadata": {
            "labels": labels(resolved.name, stage),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVICE_PORT),
                "prometheus.io/path": "/metrics",
                CONFIG_HASH_ANNOTATION: config_hash(resolved),
            },
        },
        "spec": spec,
    }


def _deployment(
    resolved: ResolvedPipeline,
    stage: Stage,
    template: dict[str, Any],
    replicas: int,
    strategy: dict[str, Any],
    progress_deadline: int = 600,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(resolved.name, stage),
            "namespace": resolved.namespace,
            "labels": labels(resolved.name, stage),
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": selector(resolved.name, stage)},
            "strategy": strategy,
            "template": template,
        },
    }


_SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}


def build_audio(resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings) -> dict[str, Any]:
    device = resolved.placement.audioDevice
    container = _app_container(
        resolved,
        "audio",
        settings.audio_image,
        settings.audio_resources,
        settings,
        placing.device_resources(device),
    )
    template = _pod_template(
        resolved, "audio", [container], _volumes(resolved.name, settings), device, settings
    )
    replicas = desired_replicas(resolved.spec.audio.replicas, state.replicas.get("audio"))
    # An accelerator pod cannot surge onto a device that is not free: replace in place instead.
    strategy = (
        _SURGE
        if device == "cpu"
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    return _deployment(resolved, "audio", template, replicas, strategy)


def _vllm_container(resolved: ResolvedPipeline, settings: OperatorSettings) -> dict[str, Any]:
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
            "--model",
            resolved.placement.translationModel,
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


def build_translation(
    resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings
) -> dict[str, Any]:
    backend = resolved.placement.translationBackend
    container = _app_container(
        resolved, "translation", settings.translate_image, settings.translate_resources, settings
    )
    containers = [container]
    volumes = _volumes(resolved.name, settings)
    ref = resolved.spec.translation.apiKeySecretRef
    if backend == "openai" and ref is not None:
        # A file, not an env copy: the service reads the key where pipeline.json says it is.
        volumes.append(
            {
                "name": "translation-key",
                "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
            }
        )
        container["volumeMounts"].append(
            {"name": "translation-key", "mountPath": TRANSLATION_KEY_MOUNT_DIR, "readOnly": True}
        )
    for i, fallback in enumerate(resolved.spec.translation.fallback):  # each key where the settings look
        if fallback.apiKeySecretRef is not None:
            key = fallback.apiKeySecretRef
            volumes.append(
                {
                    "name": f"fallback-key-{i}",
                    "secret": {"secretName": key.name, "items": [{"key": key.key, "path": key.key}]},
                }
            )
            container["volumeMounts"].append(
                {"name": f"fallback-key-{i}", "mountPath": f"{FALLBACK_KEYS_MOUNT_DIR}/{i}", "readOnly": True}
            )
    device: Device = "cpu"
    strategy = _SURGE
    progress_deadline = 600
    if backend == "vllm":
        containers.append(_vllm_container(resolved, settings))
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
        device = "gpu"
        # A surge pod would need a spare GPU that usually does not exist.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        progress_deadline = max(600, settings.vllm_startup_seconds)
    template = _pod_template(resolved, "translation", containers, volumes, device, settings)
    replicas = desired_replicas(resolved.spec.translation.replicas, state.replicas.get("translation"))
    return _deployment(resolved, "translation", template, replicas, strategy, progress_deadline)


def build_gateway(
    resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings
) -> dict[str, Any]:
    gw = resolved.spec.gateway
    container = _app_container(
        resolved, "gateway", settings.gateway_image, settings.gateway_resources, settings, startup_failures=24
    )
    volumes = _volumes(resolved.name, settings)
    if gw.authSecretRef is not None:
        volumes.append({"name": "auth", "secret": {"secretName": gw.authSecretRef.name}})
        container["volumeMounts"].append({"name": "auth", "mountPath": AUTH_MOUNT_DIR, "readOnly": True})
    template = _pod_template(resolved, "gateway", [container], volumes, "cpu", settings, grace=60)
    replicas = desired_replicas(gw.replicas, state.replicas.get("gateway"))
    return _deployment(resolved, "gateway", template, replicas, _SURGE)


def build_service(resolved: ResolvedPipeline, stage: Stage) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment_name(resolved.name, stage),
            "namespace": resolved.namespace,
            "labels": labels(resolved.name, stage),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(resolved.name, stage),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pdb(resolved: ResolvedPipeline, stage: Stage) -> dict[str, Any]:
    """At most one pod of a stage down at a time in voluntary disruptions (node drains).

    maxUnavailable 1 never blocks draining a single-replica stage, and keeps a multi-replica gateway
    from dropping every live session at once.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": deployment_name(resolved.name, stage),
            "namespace": resolved.namespace,
            "labels": labels(resolved.name, stage),
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(resolved.name, stage)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_podmonitor(resolved: ResolvedPipeline) -> dict[str, Any]:
    """Prometheus-operator scrape config for every pod of the pipeline: the autoscaler's and the
    dashboards' signals come from these scrapes, at the autoscaler's own interval."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": resolved.name, "namespace": resolved.namespace, "labels": labels(resolved.name)},
        "spec": {
            "selector": {"matchLabels": {PIPELINE_LABEL: resolved.name}},
            "podMetricsEndpoints": [
                {"port": "http", "path": "/metrics", "interval": resolved.spec.scaling.interval}
            ],
        },
    }


# Stages only the gateway may call; the gateway itself takes client traffic from anywhere.
INTERNAL_STAGES: tuple[Stage, ...] = ("audio", "translation")


def build_network_policies(resolved: ResolvedPipeline, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Ingress isolation per stage: the audio and translation APIs answer only this pipeline's
    gateway (their /metrics, on the same port, also the configured scrapers); the gateway's port
    is open, since its clients are browsers and apps anywhere.

    Egress is left open: the workloads reach DNS, model downloads, Redis and hosted LLM endpoints
    whose addresses the operator cannot know. Kubelet probes are node traffic, which the common
    CNIs (Calico, Cilium) admit regardless of policy.
    """
    port = [{"protocol": "TCP", "port": SERVICE_PORT}]
    gateway_peer = {"podSelector": {"matchLabels": selector(resolved.name, "gateway")}}
    scrapers = [dict(peer) for peer in settings.network_policy_scrapers]

    def policy(stage: Stage, ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": deployment_name(resolved.name, stage),
                "namespace": resolved.namespace,
                "labels": labels(resolved.name, stage),
            },
            "spec": {
                "podSelector": {"matchLabels": selector(resolved.name, stage)},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    out = []
    for stage in INTERNAL_STAGES:
        ingress = [{"from": [gateway_peer], "ports": port}]
        if scrapers:
            ingress.append({"from": scrapers, "ports": port})
        out.append(policy(stage, ingress))
    out.append(policy("gateway", [{"ports": port}]))
    return out


def build_configmap(resolved: ResolvedPipeline) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(resolved.name),
            "namespace": resolved.namespace,
            "labels": labels(resolved.name),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash(resolved)},
        },
        "data": {CONFIG_KEY: resolved.to_json()},
    }


def build_children(
    resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Every child, in apply order: the config first (pods mount it), Services before Deployments."""
    return [
        build_configmap(resolved),
        *(build_service(resolved, stage) for stage in STAGES),
        *(build_pdb(resolved, stage) for stage in STAGES),
        build_audio(resolved, state, settings),
        build_translation(resolved, state, settings),
        build_gateway(resolved, state, settings),
    ]
