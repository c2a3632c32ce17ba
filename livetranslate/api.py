"""The TranslationPipeline API (group livetranslate.io, version v1alpha1) as pydantic models.

These models are the single source of truth for the resource: the CRD YAML under ``crds/`` is
generated from them (``livetranslate crd``), the operator parses specs with them, and the local
runner (``livetranslate up``) reads the same YAML a user would ``kubectl apply``.

Field names are camelCase on purpose: they are the wire names of ../shared/API.md section 1.
Cross-field rules are declared twice, on purpose: as CEL ``x-kubernetes-validations`` so the API
server refuses them at ``kubectl apply`` time, and as pydantic validators so the operator and
``livetranslate up`` refuse the same specs with the same message when no API server checked them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GROUP = "livetranslate.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TranslationPipeline"
PLURAL = "translationpipelines"
SINGULAR = "translationpipeline"
SHORT_NAMES = ["tp"]

# BCP-47 language tag, restricted to what speech and MT engines use: a 2-3 letter primary
# language subtag, then optional script/region/variant subtags ("en", "pt-BR", "zh-Hant-TW").
BCP47_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
SOURCE_LANGUAGE_PATTERN = r"^(auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A DNS-1123 subdomain, which is what a Secret name must be.
DNS1123_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

Device = Literal["npu", "gpu", "cpu"]
DEFAULT_DEVICES: tuple[Device, ...] = ("npu", "gpu", "cpu")
Backend = Literal["auto", "vllm", "openai", "apertium"]
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]
Stage = Literal["audio", "translation", "gateway"]

LanguageCode = Annotated[str, Field(pattern=BCP47_PATTERN, max_length=35)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
# A Kubernetes storage quantity (binary or decimal suffix), e.g. 60Gi, 500M.
Quantity = Annotated[
    str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", max_length=32)
]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a Kubernetes-style duration string ("15s", "1m30s", "250ms")."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"not a duration: {value!r} (expected e.g. 15s, 5m, 1m30s, 250ms)")
    return sum(float(n) * _DURATION_UNIT[u] for n, u in _DURATION_PART.findall(value))


class _Model(BaseModel):
    # Unknown fields are an error (a typo in a spec must not be silently ignored); the API server
    # prunes them the same way because the CRD schema is structural without preserve-unknown.
    # Strict types, as the CRD schema is: `enabled: 0.0` or `replicas: {min: "2"}` is refused by
    # kubectl apply, so `livetranslate up` must refuse it too (found by resource fuzzing).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class ReplicaRange(_Model):
    """Replica bounds the autoscaler stays within."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "replicas.min must be <= replicas.max"}
            ]
        },
    )

    min: int = Field(1, ge=0, le=1000)
    max: int = Field(4, ge=0, le=1000)

    @model_validator(mode="after")
    def _min_le_max(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        return self


def _replicas(lo: int, hi: int) -> Any:
    return Field(default_factory=lambda: ReplicaRange(min=lo, max=hi))


class Diarization(_Model):
    enabled: bool = False
    maxSpeakers: int = Field(4, ge=1, le=32)


# Whisper models that ship in the package index (the audio extra), and whether each hears more than
# English. Any other model is converted weights the user mounts, named by path or URI.
PACKAGED_WHISPER_MODELS: dict[str, bool] = {"tiny.en": False, "base": True}
ENGLISH_DEFAULT_MODEL = "tiny.en"
MULTILINGUAL_DEFAULT_MODEL = "base"


def is_model_path(model: str) -> bool:
    """Whether ``model`` names converted weights by path or URI rather than by a packaged name."""
    return model.startswith(("/", "./", "../", "~")) or "://" in model


class AudioSpec(_Model):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.model) || self.model in ['tiny.en', 'base'] || self.model.startsWith('/') "
                    "|| self.model.startsWith('./') || self.model.startsWith('../') "
                    "|| self.model.startsWith('~') || self.model.contains('://')",
                    "message": "model: neither a packaged model (tiny.en, base) nor the path or URI of "
                    "converted weights",
                },
            ]
        },
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Whisper model: a packaged name (tiny.en, English only; base, multilingual) or the "
        "path/URI of converted weights. Default: tiny.en for English, base otherwise",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is not None and v not in PACKAGED_WHISPER_MODELS and not is_model_path(v):
            raise ValueError(
                f"{v!r} is neither a packaged model ({', '.join(PACKAGED_WHISPER_MODELS)}) nor "
                "the path or URI of converted weights (e.g. /models/whisper-small)"
            )
        return v

    devices: list[Device] = Field(
        default_factory=lambda: list(DEFAULT_DEVICES),
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Device preference order; the operator falls back along it",
    )
    vad: bool = True
    diarization: Diarization = Field(default_factory=Diarization)
    replicas: ReplicaRange = _replicas(1, 4)

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("devices must not repeat an entry")
        return v


class SecretKeyRef(_Model):
    name: str = Field(..., pattern=DNS1123_PATTERN, max_length=253)
    key: str = Field("apiKey", min_length=1, max_length=253)


class SecretRef(_Model):
    name: str = Field(..., pattern=DNS1123_PATTERN, max_length=253)


class FallbackEndpoint(_Model):
    """An OpenAI-compatible endpoint that takes the segments the primary engine cannot (its circuit
    open, an error, a refused language), in the order listed."""

    endpoint: str = Field(
        ...,
        pattern=r"^https?://",
        max_length=2048,
        description="Base URL of an OpenAI-compatible server (…/v1)",
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Model name to ask for; default: the server's only model",
    )
    apiKeySecretRef: SecretKeyRef | None = None
    promptStyle: Literal["chat", "completion"] = Field(
        "chat", description="chat: /v1/chat/completions (hosted APIs); completion: /v1/completions"
    )


class TranslationSpec(_Model):
    backend: Backend = "auto"
    model: str = Field(
        "Qwen/Qwen2.5-7B-Instruct",
        min_length=1,
        max_length=512,
        description="Model served by vLLM on GPU nodes (or by the openai endpoint)",
    )
    fallbackModels: list[str] = Field(
        default_factory=lambda: ["Qwen/Qwen2.5-3B-Instruct-AWQ"],
        max_length=8,
        description="Smaller variants, used in order under GPU-memory pressure",
    )
    gpuMemoryUtilization: float = Field(0.85, gt=0, le=1)
    maxModelLen: int = Field(4096, ge=256, le=1_048_576, description="vLLM --max-model-len")
    contextSegments: int = Field(
        3,
        ge=0,
        le=32,
        description="Earlier segments of the session sent as context (at least this many, "
        "growing to twice this minus one before the window moves on)",
    )
    endpoint: str | None = Field(
        None, max_length=2048, description="Base URL of an OpenAI-compatible server (backend openai)"
    )
    apiKeySecretRef: SecretKeyRef | None = None
    sleepAfterIdle: Duration | None = Field(
        None,
        description="vLLM sleep mode: free the GPU's memory after this long without requests "
        "(weights to CPU memory); the next request wakes it. Unset: always awake",
    )
    fallback: list[FallbackEndpoint] = Field(
        default_factory=list,
        max_length=4,
        description="OpenAI-compatible endpoints behind the primary engine's circuit breaker, in order",
    )
    replicas: ReplicaRange = _replicas(1, 8)

    @property
    def sleep_after_idle_seconds(self) -> float:
        return parse_duration(self.sleepAfterIdle) if self.sleepAfterIdle else 0.0


class ModelCacheSpec(_Model):
    """Models pulled once into a PersistentVolumeClaim, verified, and mounted read-only by the
    pods of the stage that runs them (see docs/model-cache.md)."""

    storageClassName: str = Field(
        "", max_length=253, description='StorageClass of the cache volume; "" = the cluster default'
    )
    size: Quantity = Field("60Gi", description="Capacity of the cache volume (each, with ReadWriteOnce)")
    accessMode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany",
        description="ReadWriteMany: one cache shared by every pod. ReadWriteOnce: one cache per stage, "
        "and the stage's pods pinned to the node that holds it",
    )
    huggingFaceTokenSecretRef: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token, for gated or private repos"
    )


class GatewaySpec(_Model):
    replicas: ReplicaRange = _replicas(1, 4)
    maxSessionsPerReplica: int = Field(500, ge=1, le=100_000)
    authSecretRef: SecretRef | None = None
    redisUrl: str | None = Field(
        None,
        max_length=2048,
        description="Redis holding session state, so sessions resume on any replica (REDIS_URL)",
    )
    allowedOrigins: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Origins allowed to open the WebSocket from a browser; empty = same origin only",
    )


class LatencySLO(_Model):
    p95Seconds: float = Field(1.5, gt=0, le=60)


class GpuMemory(_Model):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.lowWatermark < self.highWatermark",
                    "message": "gpuMemory.lowWatermark must be < gpuMemory.highWatermark",
                }
            ]
        },
    )

    highWatermark: float = Field(0.90, gt=0, le=1)
    lowWatermark: float = Field(0.60, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> GpuMemory:
        if not self.lowWatermark < self.highWatermark:
            raise ValueError(
                f"gpuMemory.lowWatermark ({self.lowWatermark}) must be < "
                f"gpuMemory.highWatermark ({self.highWatermark})"
            )
        return self


class TargetUtilization(_Model):
    # The utilisation each stage's replicas are sized for, before the headroom the autoscaler adds
    # for the sessions' scatter: where the stage's latency still meets its share of the SLO. The
    # defaults are that point in the latency model of docs/scaling.md; measure your own.
    audio: float = Field(
        0.78, gt=0, le=1, description="Audio real-time factor per replica (decode seconds per second)"
    )
    translation: float = Field(0.71, gt=0, le=1, description="vLLM KV-cache use per translation replica")
    gateway: float = Field(
        0.8, gt=0, le=1, description="Share of maxSessionsPerReplica in use (room for reconnect storms)"
    )


class ScalingSpec(_Model):
    enabled: bool = True
    prometheusUrl: str = Field("http://prometheus-operated.monitoring.svc:9090", max_length=2048)
    interval: Duration = "15s"
    latencySLO: LatencySLO = Field(default_factory=LatencySLO)
    gpuMemory: GpuMemory = Field(default_factory=GpuMemory)
    scaleDownStabilization: Duration = "300s"
    targetUtilization: TargetUtilization = Field(
        default_factory=TargetUtilization,
        description="Utilisation per stage the autoscaler sizes replicas for, before headroom",
    )

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)

    @property
    def scale_down_stabilization_seconds(self) -> float:
        return parse_duration(self.scaleDownStabilization)


class TranslationPipelineSpec(_Model):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.targetLanguages.exists(l, l == self.sourceLanguage)",
                    "message": "targetLanguages must not contain sourceLanguage",
                },
                {
                    "rule": "!has(self.audio) || !has(self.audio.model) || self.audio.model != 'tiny.en' "
                    "|| self.sourceLanguage == 'en'",
                    "message": "audio.model: tiny.en hears English only; use base (or leave it unset) for "
                    "another sourceLanguage or auto",
                },
            ]
        },
    )

    sourceLanguage: str = Field("en", pattern=SOURCE_LANGUAGE_PATTERN, max_length=35)
    targetLanguages: list[LanguageCode] = Field(
        default_factory=lambda: ["es"],
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    audio: AudioSpec = Field(default_factory=AudioSpec)
    translation: TranslationSpec = Field(default_factory=TranslationSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    modelCache: ModelCacheSpec | None = Field(
        None, description="Pull, verify and cache the pipeline's models once; unset: each pod loads its own"
    )

    @field_validator("targetLanguages")
    @classmethod
    def _unique_targets(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for code in v:
            if code in seen:
                raise ValueError(f"targetLanguages: duplicate entry {code!r}")
            seen.add(code)
        return v

    @model_validator(mode="after")
    def _source_not_target(self) -> TranslationPipelineSpec:
        if self.sourceLanguage in self.targetLanguages:
            raise ValueError("targetLanguages must not contain sourceLanguage")
        model = self.audio.model
        if model is not None and PACKAGED_WHISPER_MODELS.get(model) is False and self.sourceLanguage != "en":
            raise ValueError(
                f"audio.model: {model} hears English only and cannot transcribe or detect "
                f"sourceLanguage {self.sourceLanguage}; use {MULTILINGUAL_DEFAULT_MODEL} (packaged, "
                "multilingual), a path to converted multilingual weights, or leave it unset"
            )
        return self

    def audio_model(self) -> str:
        """The Whisper model the audio stage loads: the spec's, or the packaged default for the
        source language (English-only tiny.en for English, multilingual base otherwise)."""
        if self.audio.model:
            return self.audio.model
        return ENGLISH_DEFAULT_MODEL if self.sourceLanguage == "en" else MULTILINGUAL_DEFAULT_MODEL


def parse_spec(spec: dict[str, Any] | None) -> TranslationPipelineSpec:
    """Parse a resource's spec, filling every default. Raises pydantic.ValidationError."""
    return TranslationPipelineSpec.model_validate(spec or {})


def first_error_field(exc: Exception) -> str:
    """The dotted spec path of the first validation error, for messages that name the field."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            loc = [str(p) for p in errs[0].get("loc", ()) if not str(p).startswith("function-")]
            return "spec." + ".".join(loc) if loc else "spec"
    return "spec"


def describe_validation_error(exc: Exception) -> str:
    """One line per problem, each naming the spec field: what users see in status and Events."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        field = f"spec.{loc}" if loc else "spec"
        lines.append(f"{field}: {err.get('msg', 'invalid')}")
    return "; ".join(lines)
