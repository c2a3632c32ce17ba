"""The generated CRD refuses bad specs the way the API server would, and matches the models."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from livetranslate.api import TranslationPipelineSpec, parse_spec
from livetranslate.crd import MAX_NAME_LENGTH, build_crd, openapi_schema, render
from livetranslate_testing.kube_schema import admit, check_structural

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = openapi_schema()


def tp(spec: dict[str, Any] | None = None, name: str = "town-hall") -> dict[str, Any]:
    return {
        "apiVersion": "livetranslate.io/v1alpha1",
        "kind": "TranslationPipeline",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec or {},
    }


def test_schema_is_structural() -> None:
    assert check_structural(SCHEMA) == []


def test_committed_copies_match_generator() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "livetranslate.cli", "crd"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out == render()
    for rel in (
        "crds/translationpipelines.livetranslate.io.yaml",
        "charts/livetranslate/crds/translationpipelines.livetranslate.io.yaml",
    ):
        assert (ROOT / rel).read_text() == out, f"{rel} is stale: run livetranslate crd > {rel}"


def test_names_subresource_and_printer_columns() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == ["tp"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Device": ".status.audio.device",
        "Model": ".status.translation.model",
        "Ready": ".status.readyStages",
        "Age": ".metadata.creationTimestamp",
    }


def test_empty_spec_gets_every_default_the_models_have() -> None:
    stored, errors = admit(tp({}), SCHEMA)
    assert errors == []
    # What the API server stores equals what the operator would fill in itself.
    assert parse_spec(stored["spec"]) == TranslationPipelineSpec()
    assert stored["spec"]["translation"]["replicas"] == {"min": 1, "max": 8}
    assert stored["spec"]["audio"]["devices"] == ["npu", "gpu", "cpu"]
    assert stored["spec"]["scaling"]["gpuMemory"] == {"highWatermark": 0.9, "lowWatermark": 0.6}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_admitted(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        stored, errors = admit(doc, SCHEMA)
        assert errors == []
        parse_spec(stored["spec"])


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown language code", {"targetLanguages": ["Spanish"]}, "targetLanguages"),
    ("empty targetLanguages", {"targetLanguages": []}, "targetLanguages"),
    ("17 targets", {"targetLanguages": [f"e{chr(97 + i)}" for i in range(17)]}, "targetLanguages"),
    ("duplicate target", {"targetLanguages": ["es", "es"]}, "targetLanguages"),
    (
        "source among targets",
        {"sourceLanguage": "es", "targetLanguages": ["es"]},
        "targetLanguages must not contain sourceLanguage",
    ),
    ("bad source", {"sourceLanguage": "EN"}, "sourceLanguage"),
    ("unknown device", {"audio": {"devices": ["tpu"]}}, "devices"),
    ("duplicate device", {"audio": {"devices": ["cpu", "cpu"]}}, "devices"),
    ("unknown backend", {"translation": {"backend": "llamacpp"}}, "backend"),
    ("gpu util 0", {"translation": {"gpuMemoryUtilization": 0}}, "gpuMemoryUtilization"),
    ("gpu util > 1", {"translation": {"gpuMemoryUtilization": 1.5}}, "gpuMemoryUtilization"),
    ("negative replicas", {"gateway": {"replicas": {"min": -1, "max": 2}}}, "replicas"),
    ("min > max", {"audio": {"replicas": {"min": 5, "max": 2}}}, "replicas.min must be <= replicas.max"),
    ("min > default max", {"translation": {"replicas": {"min": 9}}}, "replicas.min must be <= replicas.max"),
    (
        "watermarks out of order",
        {"scaling": {"gpuMemory": {"highWatermark": 0.5, "lowWatermark": 0.7}}},
        "lowWatermark must be < gpuMemory.highWatermark",
    ),
    ("bad duration", {"scaling": {"interval": "soon"}}, "interval"),
    ("bad secret name", {"gateway": {"authSecretRef": {"name": "Not_A_Name"}}}, "name"),
    ("zero sessions", {"gateway": {"maxSessionsPerReplica": 0}}, "maxSessionsPerReplica"),
    ("model neither packaged nor a path", {"audio": {"model": "small"}}, "a packaged model (tiny.en, base)"),
    (
        "English-only model for Spanish",
        {"sourceLanguage": "es", "targetLanguages": ["en"], "audio": {"model": "tiny.en"}},
        "tiny.en hears English only",
    ),
    (
        "English-only model for auto",
        {"sourceLanguage": "auto", "audio": {"model": "tiny.en"}},
        "tiny.en hears English only",
    ),
]


@pytest.mark.parametrize(
    ("spec", "model"),
    [
        ({}, "tiny.en"),
        ({"sourceLanguage": "es", "targetLanguages": ["en"]}, "base"),
        ({"sourceLanguage": "auto", "targetLanguages": ["en"]}, "base"),
        (
            {"sourceLanguage": "es", "targetLanguages": ["en"], "audio": {"model": "/models/whisper-small"}},
            "/models/whisper-small",
        ),
        ({"audio": {"model": "base"}}, "base"),
    ],
)
def test_the_audio_model_defaults_to_one_that_hears_the_source_language(
    spec: dict[str, Any], model: str
) -> None:
    stored, errors = admit(tp(spec), SCHEMA)
    assert errors == []
    assert parse_spec(stored["spec"]).audio_model() == model


@pytest.mark.parametrize(("spec", "needle"), [(s, n) for _, s, n in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_specs_are_refused_like_the_api_server(spec: dict[str, Any], needle: str) -> None:
    _, errors = admit(tp(spec), SCHEMA)
    assert errors, f"the schema let {spec} through"
    assert any(needle in e for e in errors), errors
    # The operator's own parsing refuses the same spec (no API server in `livetranslate up`).
    with pytest.raises(ValueError):
        parse_spec(copy.deepcopy(spec))


def test_unknown_fields_are_pruned_not_stored() -> None:
    stored, errors = admit(tp({"audio": {"modle": "typo"}}), SCHEMA)
    assert errors == []
    assert "modle" not in stored["spec"]["audio"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * MAX_NAME_LENGTH, True),
        ("a" * (MAX_NAME_LENGTH + 1), False),
        ("1st-floor", False),
        ("floor-1", True),
    ],
)
def test_names_must_fit_child_service_names(name: str, ok: bool) -> None:
    _, errors = admit(tp({}, name=name), SCHEMA)
    assert (errors == []) is ok, errors


def test_status_accepts_what_the_operator_writes() -> None:
    obj = tp({})
    obj["status"] = {
        "phase": "Ready",
        "observedGeneration": 2,
        "readyStages": "3/3",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllStagesReady",
                "message": "",
                "observedGeneration": 2,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "audio": {"replicas": 1, "readyReplicas": 1, "device": "npu", "model": "tiny.en", "reason": "x"},
        "translation": {"replicas": 1, "readyReplicas": 1, "model": "m", "backend": "vllm"},
        "gateway": {"replicas": 1, "readyReplicas": 1, "endpoint": "ws://x-gateway.demo.svc:8080/v1/stream"},
        "lastScalingDecision": {"time": "t", "stage": "translation", "from": 1, "to": 2, "reason": "p95"},
    }
    stored, errors = admit(obj, SCHEMA)
    assert errors == []
    assert stored["status"] == obj["status"]
    obj["status"]["phase"] = "Exploded"
    assert admit(obj, SCHEMA)[1]
