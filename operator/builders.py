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
    CONFIG_KEY,
    FALLBACK_KEYS_MOUNT_DIR,
    SERVICE_PORT,
    TRANSLATION_KEY_MOUNT_DIR,
    Endpoints,
    Placement,
    ResolvedPipeline,
    service_url,
)
from livetranslate.operator import modelcache, podparts
from livetranslate.operator import placement as placing
from livetranslate.operator.podparts import (
    configmap_name,
    container_security,
    pod_security,
)
from livetranslate.operator.settings import OperatorSettings, Resources
from livetranslate.protocol import GATEWAY_DEPENDENCY_CHECKS

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
ENDPOINT_PATH = "/v1/stream"


@dataclass(frozen=True)
class BuildState:
    """What is running now, which the builders must not fight.

    ``replicas`` holds each existing Deployment's spec.replicas (None = not created yet): after
    creation the autoscaler is the single writer of replicas, so a rebuild keeps them, clamped
    into the spec's [min, max] when the user narrowed the range.
    """

    replicas: dict[Stage, int | None] = field(default_factory=dict)
    # ReadWriteOnce model cache: the node that holds each stage's volume (None: not bound yet).
    cache_nodes: dict[str, str | None] = field(default_factory=dict)


def deployment_name(name: str, stage: Stage) -> str:
    return f"{name}-{stage}"


def gateway_endpoint(name: str, namespace: str) -> str:
    return f"ws://{name}-gateway.{namespace}.svc:{SERVICE_PORT}{ENDPOINT_PATH}"


def resolve(
    name: str, namespace: str, generation: int, spec: TranslationPipelineSpec, placement: Placement
) -> ResolvedPipeline:
    """The document every workload reads (ConfigMap key pipeline.json)."""
    resolved = ResolvedPipeline(
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
    if spec.modelCache is not None:
        resolved.modelPaths = modelcache.model_paths(modelcache.required_models(resolved))
    elif (converted := modelcache.pod_conversion(resolved)) is not None:
        resolved.modelPaths = {"audio": modelcache.pod_converted_path(converted)}
    return resolved


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


# A gateway replica stays in its Service while a dependency every replica shares (the audio and
# translation stages, Redis) is down: its sessions then say so (upstream_unavailable) where a
# Service without endpoints would refuse connections. Draining still takes it out.
READINESS_PATHS: dict[str, str] = {
    "gateway": "/readyz?" + "&".join(f"exclude={check}" for check in GATEWAY_DEPENDENCY_CHECKS)
}


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
        "env": podparts.base_env(resolved, stage),
        "volumeMounts": podparts.mounts(),
        "resources": resources.as_k8s(extra_resources),
        "securityContext": container_security(),
        # Model loading can take a while: the startup probe holds liveness off until /healthz
        # answers, so a slow first download is not mistaken for a hang.
        "startupProbe": podparts.http_probe("/healthz", period=5, failures=startup_failures),
        "livenessProbe": podparts.http_probe("/healthz", period=10, failures=3),
        "readinessProbe": podparts.http_probe(READINESS_PATHS.get(stage, "/readyz"), period=5, failures=2),
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
    # The audio service drains on SIGTERM (its streams resume on other replicas) for up to 20 s,
    # then uvicorn's own shutdown takes up to 20 s: 45 s leaves both their time.
    template = _pod_template(
        resolved, "audio", [container], podparts.volumes(resolved.name, settings), device, settings, grace=45
    )
    podparts.use_cache(
        template, modelcache.pod_pieces(resolved, "audio", settings.audio_image, settings, state.cache_nodes)
    )
    podparts.use_cache(template, modelcache.conversion_pieces(resolved, settings.audio_image, settings))
    replicas = desired_replicas(resolved.spec.audio.replicas, state.replicas.get("audio"))
    # An accelerator pod cannot surge onto a device that is not free: replace in place instead.
    strategy = (
        _SURGE
        if device == "cpu"
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    return _deployment(resolved, "audio", template, replicas, strategy)


def build_translation(
    resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings
) -> dict[str, Any]:
    backend = resolved.placement.translationBackend
    container = _app_container(
        resolved, "translation", settings.translate_image, settings.translate_resources, settings
    )
    containers = [container]
    volumes = podparts.volumes(resolved.name, settings)
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
        containers.append(podparts.vllm_container(resolved, settings))
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
        device = "gpu"
        # A surge pod would need a spare GPU that usually does not exist.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        progress_deadline = max(600, settings.vllm_startup_seconds)
    template = _pod_template(resolved, "translation", containers, volumes, device, settings)
    pieces = modelcache.pod_pieces(
        resolved, "translation", settings.translate_image, settings, state.cache_nodes
    )
    podparts.use_cache(template, pieces)
    replicas = desired_replicas(resolved.spec.translation.replicas, state.replicas.get("translation"))
    return _deployment(resolved, "translation", template, replicas, strategy, progress_deadline)


def build_gateway(
    resolved: ResolvedPipeline, state: BuildState, settings: OperatorSettings
) -> dict[str, Any]:
    gw = resolved.spec.gateway
    container = _app_container(
        resolved, "gateway", settings.gateway_image, settings.gateway_resources, settings, startup_failures=24
    )
    volumes = podparts.volumes(resolved.name, settings)
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
