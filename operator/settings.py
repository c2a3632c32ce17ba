"""Operator settings: images, resources and timings, from ``LT_OPERATOR_*`` environment variables.

The Helm chart sets these on the operator Deployment; nothing here is read from the pipeline spec,
because images and cluster-wide resource policy belong to the platform team, not to each pipeline.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Resources(BaseModel):
    """Requests and limits of one container (Kubernetes quantity strings)."""

    cpuRequest: str = "250m"
    memoryRequest: str = "512Mi"
    cpuLimit: str | None = "2"
    memoryLimit: str = "2Gi"

    def as_k8s(self, extra: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpuRequest, "memory": self.memoryRequest}
        limits = {"memory": self.memoryLimit}
        if self.cpuLimit:
            limits["cpu"] = self.cpuLimit
        for key, value in (extra or {}).items():
            # Extended resources (GPU, NPU) must have request == limit.
            requests[key] = value
            limits[key] = value
        return {"requests": requests, "limits": limits}


class OperatorSettings(BaseSettings):
    """``LT_OPERATOR_AUDIO_IMAGE=...``; nested values as JSON or ``LT_OPERATOR_AUDIO_RESOURCES__CPULIMIT``."""

    model_config = SettingsConfigDict(env_prefix="LT_OPERATOR_", env_nested_delimiter="__")

    audio_image: str = "livetranslate/audio:0.1.0"
    translate_image: str = "livetranslate/translate:0.1.0"
    gateway_image: str = "livetranslate/gateway:0.1.0"
    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    # Namespaces to watch; empty = the whole cluster.
    namespaces: list[str] = Field(default_factory=list)
    # Port of the operator's own /metrics (livetranslate_reconcile_seconds); 0 disables it.
    metrics_port: int = 9090
    # Kopf's liveness endpoint for the operator pod's livenessProbe; empty disables it.
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    # Seconds before a failed API call in a handler is retried (kopf.TemporaryError).
    retry_delay_seconds: float = 5.0
    # The cap of that delay, which doubles with each consecutive failure of the same reconcile.
    retry_max_delay_seconds: float = 120.0
    # Seconds between sweeps that nudge pipelines whose status lags their spec (or whose deletion
    # is stuck) for a whole interval: Kopf waits for a new event after some errors. 0 disables.
    resync_seconds: float = 20.0
    # Kopf's own API calls (finalizers, progress annotations, watches) on 5xx, 429 (a longer
    # Retry-After wins) and connection errors: one retry after each of these delays, then the
    # event is dropped (the resync sweep picks the pipeline up again). Bounded: 54 s in all.
    api_error_backoffs: list[float] = Field(
        default_factory=lambda: [1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0]
    )
    # Seconds before Kopf opens a watch stream again after one ended or broke (Kopf's default is
    # 0.1 s: with an API server that keeps cutting streams or answering 429, that is ten requests
    # a second per watched resource, each re-listing it). Nothing is missed: watches resume from
    # the last resourceVersion seen.
    watch_reconnect_seconds: float = 1.0
    # How long the vLLM container may take to download and load a model before it is restarted.
    vllm_startup_seconds: int = 1800
    service_account: str | None = None
    # Create a PodMonitor per pipeline where the prometheus-operator CRDs exist (checked through
    # discovery every few minutes, so installing them later is picked up).
    pipeline_monitors: bool = True
    # Kopf peering: with a name set, replicas register in the ClusterKopfPeering of that name and
    # only the highest-priority one acts (the chart runs two). Empty = standalone.
    peering: str = ""
    # Seconds a replica's peering record stays valid without a heartbeat.
    peering_lifetime: int = 60
    # One NetworkPolicy per stage of every pipeline: only the gateway reaches the audio and
    # translation pods, only `network_policy_scrapers` reach their metrics, clients reach the
    # gateway from anywhere. Off (LT_OPERATOR_NETWORK_POLICIES=false) deletes the ones it made:
    # for clusters whose CNI enforces none, or whose platform team writes its own.
    network_policies: bool = True
    # NetworkPolicy peers (Kubernetes NetworkPolicyPeer objects, JSON in the env var) allowed to
    # scrape /metrics of the audio and translation pods. The default matches Prometheus pods as
    # kube-prometheus-stack and the Prometheus operator label them, in a namespace "monitoring".
    network_policy_scrapers: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ]
    )

    audio_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpuRequest="1", memoryRequest="1Gi", cpuLimit="4", memoryLimit="4Gi"
        )
    )
    translate_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpuRequest="250m", memoryRequest="512Mi", cpuLimit="2", memoryLimit="2Gi"
        )
    )
    gateway_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpuRequest="250m", memoryRequest="256Mi", cpuLimit="2", memoryLimit="1Gi"
        )
    )
    vllm_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpuRequest="4", memoryRequest="24Gi", cpuLimit=None, memoryLimit="48Gi"
        )
    )
    # Size of the emptyDir that holds downloaded models (Whisper, vLLM's HF cache).
    model_cache_size: str = "20Gi"
