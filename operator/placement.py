"""Placement: which device the audio stage gets and which backend translation uses.

A pure function of the spec and the cluster's Nodes, so it is unit-tested with plain dicts and
re-run whenever a Node joins, leaves or changes its allocatable resources. The reason is recorded
in the resolved config, the status and an Event, because "why is my audio on CPU?" is the first
question a user asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from livetranslate.api import Device, TranslationPipelineSpec
from livetranslate.config import Placement, ResolvedBackend

NPU_RESOURCE = "npu.intel.com/accel"
GPU_RESOURCE = "nvidia.com/gpu"
DEVICE_RESOURCES: dict[Device, str | None] = {"npu": NPU_RESOURCE, "gpu": GPU_RESOURCE, "cpu": None}
# Labels published by node-feature-discovery / NVIDIA GPU feature discovery. Used for *preferred*
# affinity only: the extended-resource request is the hard constraint, so a cluster running just
# the device plugin (no feature discovery) still schedules.
GPU_NODE_LABEL = "nvidia.com/gpu.present"
NPU_NODE_LABEL = "intel.feature.node.kubernetes.io/npu"
DEVICE_LABELS: dict[Device, str | None] = {"npu": NPU_NODE_LABEL, "gpu": GPU_NODE_LABEL, "cpu": None}
APERTIUM_MODEL = "apertium"


# Kubernetes quantity suffixes (apimachinery resource.Quantity): binary, then decimal SI.
_QUANTITY_SUFFIXES: dict[str, Decimal] = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("2", "500m", "1.5Gi", "2T", "1e3") as a number, following
    apimachinery's grammar (binary Ki..Ei, decimal n..E, or a decimal exponent); 0.0 for anything
    that is not a quantity (an allocatable the device plugin never filled in counts as none)."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return 0.0
    number, exponent, suffix = match.groups()
    amount = Decimal(number) * (Decimal(f"1{exponent}") if exponent else _QUANTITY_SUFFIXES[suffix or ""])
    return float(amount)


@dataclass(frozen=True)
class ClusterDevices:
    """How many schedulable Nodes offer each accelerator (what placement depends on)."""

    npu_nodes: int = 0
    gpu_nodes: int = 0
    nodes: int = 0

    def has(self, device: Device) -> bool:
        return device == "cpu" or (self.npu_nodes if device == "npu" else self.gpu_nodes) > 0

    def describe(self) -> str:
        return f"{self.nodes} node(s): {self.npu_nodes} with NPU, {self.gpu_nodes} with GPU"


def node_devices(node: Mapping[str, Any]) -> dict[str, bool]:
    """What one Node offers: {"npu": bool, "gpu": bool, "schedulable": bool}."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    spec = node.get("spec") or {}
    return {
        "npu": parse_quantity(allocatable.get(NPU_RESOURCE, 0)) >= 1,
        "gpu": parse_quantity(allocatable.get(GPU_RESOURCE, 0)) >= 1,
        "schedulable": not spec.get("unschedulable", False),
    }


def summarize(devices: Iterable[Mapping[str, bool]]) -> ClusterDevices:
    """Fold per-node facts (from ``node_devices``) into cluster facts; cordoned nodes do not count."""
    npu = gpu = total = 0
    for facts in devices:
        if not facts.get("schedulable", True):
            continue
        total += 1
        npu += bool(facts.get("npu"))
        gpu += bool(facts.get("gpu"))
    return ClusterDevices(npu_nodes=npu, gpu_nodes=gpu, nodes=total)


def cluster_devices(nodes: Iterable[Mapping[str, Any]]) -> ClusterDevices:
    return summarize(node_devices(n) for n in nodes)


def active_model(spec: TranslationPipelineSpec, annotation: str | None) -> str:
    """The model translation serves: the autoscaler's choice if it is one the spec allows."""
    allowed = [spec.translation.model, *spec.translation.fallbackModels]
    return annotation if annotation in allowed else spec.translation.model


def place(
    spec: TranslationPipelineSpec,
    cluster: ClusterDevices,
    *,
    active_model_annotation: str | None = None,
    audio_device_annotation: str | None = None,
    unusable: Mapping[Device, str] | None = None,
) -> Placement:
    """Choose the audio device (first of spec.audio.devices the cluster has) and the backend.

    ``audio_device_annotation`` is the autoscaler's move along spec.audio.devices (an exhausted
    NPU pool): honoured only while it names a later entry of the list that the cluster offers.
    ``unusable`` names devices the audio model cannot run on, with why (an NPU placement whose
    OpenVINO conversion failed in the model cache): placement moves past them as past a missing one.
    """
    unusable = unusable or {}
    skipped = [d for d in spec.audio.devices if not cluster.has(d)]
    chosen: Device | None = next(
        (d for d in spec.audio.devices if cluster.has(d) and d not in unusable), None
    )
    devices = list(spec.audio.devices)
    moved = next((d for d in devices if d == audio_device_annotation), None)
    if (
        chosen is not None
        and moved is not None
        and cluster.has(moved)
        and devices.index(moved) > devices.index(chosen)
    ):
        audio_reason = (
            f"{moved}: moved along spec.audio.devices by the autoscaler (no allocatable {chosen} left)"
        )
        chosen = moved
    elif chosen is None:
        # Every preferred accelerator is missing and cpu was not listed: schedule on the first
        # preference anyway (pods stay Pending until such a node joins) and say so.
        chosen = spec.audio.devices[0]
        audio_reason = (
            f"none of spec.audio.devices {list(spec.audio.devices)} is in the cluster "
            f"({cluster.describe()}); waiting for a {chosen} node"
        )
    elif skipped or any(d in unusable and cluster.has(d) for d in devices):
        why = [f"no node offers {', '.join(skipped)} ({cluster.describe()})"] if skipped else []
        why += [f"not {d}: {unusable[d]}" for d in devices if d in unusable and cluster.has(d)]
        audio_reason = f"{chosen}: first available of {list(spec.audio.devices)}; " + "; ".join(why)
    elif chosen == "cpu":
        audio_reason = "cpu: first preference in spec.audio.devices"
    else:
        audio_reason = f"{chosen}: first preference in spec.audio.devices, offered by the cluster"

    backend: ResolvedBackend
    requested = spec.translation.backend
    if requested == "auto":
        if cluster.gpu_nodes:
            backend = "vllm"
            reason = f"backend auto: vllm, {cluster.gpu_nodes} GPU node(s) in the cluster"
        else:
            backend = "apertium"
            reason = "backend auto: apertium (offline, CPU), no GPU node in the cluster"
    else:
        backend = requested
        reason = f"backend {requested}: set in spec.translation.backend"
        if requested == "vllm" and not cluster.gpu_nodes:
            reason += "; no GPU node in the cluster yet, translation pods stay Pending until one joins"

    if backend == "vllm":
        model = active_model(spec, active_model_annotation)
        if model != spec.translation.model:
            reason += f"; serving fallback model {model} (chosen by the autoscaler)"
    elif backend == "openai":
        model = spec.translation.model
    else:
        model = APERTIUM_MODEL
    return Placement(
        audioDevice=chosen,
        audioReason=audio_reason,
        translationBackend=backend,
        translationModel=model,
        translationReason=reason,
    )


def scheduling(device: Device) -> dict[str, Any]:
    """Pod-spec fields that put a pod on ``device``: affinity and tolerations.

    Accelerator pods prefer nodes labelled by feature discovery and tolerate the accelerator's
    taint; CPU pods prefer nodes *without* accelerators, keeping those free for the stages that
    need them. The extended-resource request (see ``device_resources``) is the hard constraint.
    """
    label = DEVICE_LABELS[device]
    if label is not None:
        resource = DEVICE_RESOURCES[device]
        return {
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "preference": {
                                "matchExpressions": [{"key": label, "operator": "In", "values": ["true"]}]
                            },
                        }
                    ]
                }
            },
            "tolerations": [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}],
        }
    return {
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [
                                {"key": GPU_NODE_LABEL, "operator": "DoesNotExist"},
                                {"key": NPU_NODE_LABEL, "operator": "DoesNotExist"},
                            ]
                        },
                    }
                ]
            }
        },
        "tolerations": [],
    }


def device_resources(device: Device) -> dict[str, str]:
    """The extended resource a container on ``device`` requests (empty for CPU)."""
    resource = DEVICE_RESOURCES[device]
    return {resource: "1"} if resource else {}
