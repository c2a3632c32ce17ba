"""The resolved pipeline configuration: what the operator writes and every workload reads.

The operator resolves a TranslationPipeline (defaults filled, devices placed, backend chosen,
service addresses known) into one JSON document, stored in the ConfigMap ``<name>-config`` under
the key ``pipeline.json`` and mounted into every pod at ``/etc/livetranslate/pipeline.json``.
``livetranslate up`` writes the same document to a temporary file for its local processes. Workloads
never talk to the Kubernetes API; this file is the only channel from the operator to them (the
pods carry no copies of its values in their environment). The environment of a workload tunes the
service itself and overrides the file for local runs and tests.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from livetranslate.api import Device, TranslationPipelineSpec

CONFIG_KEY = "pipeline.json"
CONFIG_MOUNT_DIR = "/etc/livetranslate"
CONFIG_ENV = "LT_PIPELINE_CONFIG"
DEFAULT_CONFIG_PATH = f"{CONFIG_MOUNT_DIR}/{CONFIG_KEY}"

# Every workload container listens on this port for HTTP, WebSocket and /metrics.
SERVICE_PORT = 8080
# The vLLM engine container of a translation pod listens on loopback only; the translation
# service in the same pod is its only client.
VLLM_PORT = 8000
VLLM_LOCAL_URL = f"http://127.0.0.1:{VLLM_PORT}"
# Where the gateway finds the Secret named by spec.gateway.authSecretRef: every value of the
# Secret (one file per key) is an accepted bearer token.
AUTH_MOUNT_DIR = f"{CONFIG_MOUNT_DIR}/auth"
# Where the translation service finds the Secret named by spec.translation.apiKeySecretRef.
TRANSLATION_KEY_MOUNT_DIR = f"{CONFIG_MOUNT_DIR}/translation-key"
# Where it finds the key of spec.translation.fallback[i]: FALLBACK_KEYS_MOUNT_DIR/<i>/<key>.
FALLBACK_KEYS_MOUNT_DIR = f"{CONFIG_MOUNT_DIR}/fallback-keys"
# Where pods mount the pipeline's model cache (spec.modelCache), read-only.
MODEL_CACHE_MOUNT_DIR = "/model-cache"

ResolvedBackend = Literal["vllm", "openai", "apertium"]


class Endpoints(BaseModel):
    """Base URLs (http://host:port) of the pipeline's in-cluster services."""

    model_config = ConfigDict(extra="forbid")

    audio: str
    translation: str
    gateway: str


class Placement(BaseModel):
    """Where the operator put each stage, and why (the reason is shown in status and Events)."""

    model_config = ConfigDict(extra="forbid")

    audioDevice: Device = "cpu"
    audioReason: str = ""
    translationBackend: ResolvedBackend = "apertium"
    translationModel: str = ""
    translationReason: str = ""


class ResolvedPipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str = "default"
    generation: int = 0
    spec: TranslationPipelineSpec = Field(default_factory=TranslationPipelineSpec)
    placement: Placement = Field(default_factory=Placement)
    endpoints: Endpoints
    # Where each model lies in the model cache as the pods mount it (spec.modelCache): "audio", and
    # "translation:<model>" for the translation model and each fallback. Empty without a cache.
    modelPaths: dict[str, str] = Field(default_factory=dict)

    def audio_model(self) -> str:
        """What the audio stage loads: the cached copy where there is one, else the spec's model."""
        return self.modelPaths.get("audio") or self.spec.audio_model()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def service_url(name: str, stage: str, namespace: str, port: int = SERVICE_PORT) -> str:
    """The in-cluster URL of a pipeline stage's Service (``<name>-<stage>.<ns>.svc``)."""
    return f"http://{name}-{stage}.{namespace}.svc:{port}"


def load_resolved(path: str | os.PathLike[str] | None = None) -> ResolvedPipeline | None:
    """Read the resolved pipeline from ``path``, ``$LT_PIPELINE_CONFIG`` or the mount path.

    Returns None when no file exists (a workload started by hand, or in a unit test); a file that
    exists but does not parse is an error, because running with a half-read config is worse.
    """
    candidate = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    if not candidate.exists():
        return None
    return ResolvedPipeline.model_validate(json.loads(candidate.read_text()))


# ---------------------------------------------------------------------------------- settings


class _FromFile:
    """The pipeline file where LT_PIPELINE_CONFIG or the mount says (the default)."""


FROM_FILE = _FromFile()
_PIPELINE: ContextVar[ResolvedPipeline | None | _FromFile] = ContextVar("pipeline", default=FROM_FILE)


class PipelineSource(PydanticBaseSettingsSource):
    """The resolved pipeline as a pydantic-settings source, below the environment.

    Each service's settings class says which of its fields the pipeline fills
    (``from_pipeline``) and what a run without a pipeline file takes (``without_pipeline``);
    pydantic-settings merges this under the environment and over the fields' defaults, nested
    settings key by key, so one environment variable overrides one value of the file.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        chosen = _PIPELINE.get()
        resolved = load_resolved() if isinstance(chosen, _FromFile) else chosen
        cls: type[PipelineSettings] = self.settings_cls  # type: ignore[assignment]
        return cls.without_pipeline() if resolved is None else cls.from_pipeline(resolved)


class PipelineSettings(BaseSettings):
    """Base of the three services' settings: explicit arguments, then the environment, then the
    operator's pipeline.json, then the defaults (the API models' defaults where the spec has the
    value, so no service repeats them as literals)."""

    @classmethod
    def from_pipeline(cls, resolved: ResolvedPipeline) -> dict[str, Any]:
        """The values the pipeline gives this service (nested dicts for nested settings)."""
        return {}

    @classmethod
    def without_pipeline(cls) -> dict[str, Any]:
        """What a workload started without a pipeline file (by hand, in a test) takes instead."""
        return {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, PipelineSource(settings_cls), file_secret_settings

    @classmethod
    def load(cls, resolved: ResolvedPipeline | None | _FromFile = FROM_FILE, **overrides: Any) -> Self:
        """Settings for ``resolved`` (None: no pipeline; default: the mounted file)."""
        token = _PIPELINE.set(resolved)
        try:
            return cls(**overrides)
        finally:
            _PIPELINE.reset(token)
