"""The TranslationPipeline's status as pydantic models: what the operator reports (API.md section 1,
``status``). The CRD's status schema is generated from ``TranslationPipelineStatus``
(livetranslate/crd.py), like the spec's from livetranslate/api.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from livetranslate.api import Device, Phase


class Condition(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


CONDITION_TYPES = ("Ready", "AudioReady", "TranslationReady", "GatewayReady", "ScalingActive", "ModelsReady")


class StageStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    replicas: int = 0
    readyReplicas: int = 0


class AudioStatus(StageStatus):
    device: Device | None = None
    model: str | None = None
    # Why the operator placed audio on this device (shown by kubectl describe and in Events).
    reason: str | None = None


class TranslationStatus(StageStatus):
    model: str | None = None
    backend: Literal["vllm", "openai", "apertium"] | None = None
    reason: str | None = None


class GatewayStatus(StageStatus):
    endpoint: str | None = None


class ScalingDecisionRecord(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    time: str
    stage: str
    from_: int | str = Field(..., alias="from")
    to: int | str
    reason: str


ModelState = Literal["Pending", "Pulling", "Converting", "Ready", "Failed"]


class ModelStatus(BaseModel):
    """One model of the pipeline's cache (spec.modelCache): what it is and how far it got."""

    model_config = ConfigDict(extra="allow")

    stage: Literal["audio", "translation"]
    name: str
    format: str
    state: ModelState = "Pending"
    bytes: int | None = None
    sha256: str | None = None
    message: str | None = None


class TranslationPipelineStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    phase: Phase = "Pending"
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    audio: AudioStatus = Field(default_factory=AudioStatus)
    translation: TranslationStatus = Field(default_factory=TranslationStatus)
    gateway: GatewayStatus = Field(default_factory=GatewayStatus)
    lastScalingDecision: ScalingDecisionRecord | None = None
    models: list[ModelStatus] | None = None
    # "2/3": stages whose Deployment has all its replicas ready (a kubectl get printer column).
    readyStages: str | None = None
    # The spec field the operator refused (phase Failed), e.g. "spec.targetLanguages[1]".
    invalidField: str | None = None
