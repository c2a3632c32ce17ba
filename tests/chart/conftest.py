"""Fixtures for the chart tests: the chart rendered with Helm's own library, no cluster needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "livetranslate"
RELEASE = "lt"
NAMESPACE = "lt-system"

# Every optional piece switched on, and every knob moved off its default: the second rendering
# every test repeats, so a template that only works with defaults is caught.
NON_DEFAULT_VALUES: dict[str, Any] = {
    "fullnameOverride": "translate-op",
    "image": {
        "registry": "registry.example.internal/ml",
        "tag": "1.2.3",
        "pullPolicy": "Always",
        "pullSecrets": ["regcred"],
    },
    "operator": {
        "replicas": 3,
        "logLevel": "debug",
        "logFormat": "text",
        "peering": {"name": "lt-peers", "lifetime": 45},
        "metricsPort": 9100,
        "healthPort": 9101,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}
        ],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "speech"},
        "podLabels": {"team": "speech"},
        "extraEnv": [{"name": "LT_OPERATOR_MODEL_CACHE_SIZE", "value": "40Gi"}],
    },
    "workloads": {
        "audio": {
            "tag": "1.2.4",
            "resources": {"cpuRequest": "2", "memoryRequest": "2Gi", "cpuLimit": "4", "memoryLimit": "4Gi"},
        },
        "vllm": {"tag": "v0.11.1", "useRegistry": True},
    },
    "serviceAccount": {"name": "lt-operator", "annotations": {"example.com/role": "operator"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True, "interval": "15s"},
    },
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "runbookBaseUrl": "https://docs.example.internal/livetranslate/operations",
        "captionLatency": {"thresholdSeconds": "2.0", "objective": 0.99},
        "gpuFramebuffer": {"highWatermark": 0.85},
    },
    "dashboards": {"namespace": "monitoring", "folder": ""},
    "samplePipeline": {
        "enabled": True,
        "name": "town-hall",
        "spec": {
            "sourceLanguage": "en",
            "targetLanguages": ["es", "de"],
            "audio": {"devices": ["gpu", "cpu"], "replicas": {"min": 1, "max": 3}},
        },
    },
}

VARIANTS = {"default": {}, "non-default": NON_DEFAULT_VALUES}


@pytest.fixture(scope="session")
def helm() -> Any:
    helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) is not installed")
    return helm_python


@pytest.fixture(scope="session")
def chart(helm: Any) -> Any:
    loaded = helm.Chart.load(str(CHART))
    yield loaded
    loaded.close()


Render = Callable[[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    """Render with the given values; returns every object (NOTES.txt excluded), in order."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
        key = yaml.safe_dump(values, sort_keys=True)
        if key not in cache:
            out = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            objs: list[dict[str, Any]] = []
            for path, text in sorted(out.items()):
                if path.endswith("NOTES.txt"):
                    continue
                objs += [doc for doc in yaml.safe_load_all(text) if doc]
            cache[key] = objs
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def notes(chart: Any) -> Callable[[dict[str, Any]], str]:
    def _notes(values: dict[str, Any]) -> str:
        out = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))

    return _notes


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD the chart ships under crds/."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(params=sorted(VARIANTS), ids=sorted(VARIANTS))
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The chart's values, once with defaults and once with every knob moved."""
    return dict(VARIANTS[request.param])


@pytest.fixture(scope="session")
def non_default_values() -> dict[str, Any]:
    return dict(NON_DEFAULT_VALUES)
