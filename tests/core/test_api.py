"""The TranslationPipeline models: defaults, and refusal of bad specs naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from livetranslate.api import describe_validation_error, parse_duration, parse_spec


def test_defaults_fill_every_field() -> None:
    spec = parse_spec({})
    assert spec.sourceLanguage == "en"
    assert spec.audio.devices == ["npu", "gpu", "cpu"]
    assert spec.translation.replicas.max == 8
    assert spec.scaling.interval_seconds == 15
    assert spec.scaling.scale_down_stabilization_seconds == 300


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"targetLanguages": []}, "spec.targetLanguages"),
        ({"targetLanguages": ["es", "es"]}, "spec.targetLanguages"),
        ({"targetLanguages": ["Spanish"]}, "spec.targetLanguages.0"),
        ({"audio": {"replicas": {"min": 3, "max": 1}}}, "spec.audio.replicas"),
        ({"audio": {"devices": ["tpu"]}}, "spec.audio.devices.0"),
        ({"translation": {"gpuMemoryUtilization": 0}}, "spec.translation.gpuMemoryUtilization"),
        ({"scaling": {"gpuMemory": {"highWatermark": 0.5, "lowWatermark": 0.7}}}, "spec.scaling.gpuMemory"),
        ({"scaling": {"interval": "soon"}}, "spec.scaling.interval"),
        ({"bogus": 1}, "spec.bogus"),
        ({"modelCache": {"size": "60GB"}}, "spec.modelCache.size"),
        ({"modelCache": {"accessMode": "ReadOnlyMany"}}, "spec.modelCache.accessMode"),
        ({"modelCache": {"huggingFaceTokenSecretRef": {"name": "Bad_Name"}}}, "spec.modelCache"),
        ({"scaling": {"targetUtilization": {"audio": 1.5}}}, "spec.scaling.targetUtilization.audio"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_spec(spec)
    assert describe_validation_error(exc.value).startswith(field)


def test_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("15")
