"""Settings of the translation service: the environment (``LT_TRANSLATE_*``) over the pipeline.

The operator's resolved pipeline says which backend and model the stage runs and what the spec
asks for (``TranslateSettings.from_pipeline``, read through the shared ``PipelineSource``); the
environment tunes the service itself (batching, timeouts, engine URLs, secrets). An environment
value always wins, so one container image serves every pipeline and a test overrides any knob
without writing a pipeline file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from livetranslate.api import TranslationSpec
from livetranslate.config import (
    FALLBACK_KEYS_MOUNT_DIR,
    FROM_FILE,
    TRANSLATION_KEY_MOUNT_DIR,
    VLLM_LOCAL_URL,
    PipelineSettings,
    ResolvedPipeline,
    load_resolved,
)

BackendName = Literal["vllm", "openai", "apertium"]
# How several segments travel to an OpenAI-compatible server in one micro-batch:
#   list:       one /v1/completions call with a list of prompts (vLLM batches them on the GPU;
#               llama.cpp's llama-server decodes them together in its --parallel slots);
#   packed:     one prompt holding numbered lines (servers that run one request at a time, such as
#               llama-cpp-python's, where a prompt list is silently cut to its first entry);
#   concurrent: one request per segment, all in flight at once (chat-only hosted APIs).
BatchMode = Literal["list", "packed", "concurrent"]
PromptStyle = Literal["completion", "chat"]


class OpenAISettings(BaseModel):
    """An OpenAI-compatible endpoint: the vLLM engine in the pod, a llama.cpp server, a hosted API."""

    url: str | None = None
    api_key: SecretStr | None = None
    # A file holding the key (the operator mounts spec.translation.apiKeySecretRef there).
    api_key_file: Path | None = None
    model: str | None = None
    prompt_style: PromptStyle = "completion"
    batch_mode: BatchMode = "concurrent"
    # llama.cpp's llama-server: pin each session's prompts for one target language to one slot
    # (its ``id_slot``), so the slot's cached prompt is the session's and only the new line is
    # processed. Without it the server picks a slot by prompt similarity, and when many sessions'
    # context windows jump at once they take each other's slots. Applies to one request per
    # segment (``concurrent``); a prompt list cannot pin its prompts. The slot count comes from
    # the server's ``/props``. Other servers ignore or refuse the field: leave it off for them.
    slot_affinity: bool = False
    timeout_s: float = Field(15.0, gt=0)
    temperature: float = Field(0.0, ge=0, le=2)
    # Output budget: tokens per source character (plus a floor), so a runaway stops early.
    max_tokens_per_char: float = Field(1.0, gt=0)
    min_max_tokens: int = Field(32, ge=1)

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None and self.api_key_file.exists():
            return self.api_key_file.read_text().strip() or None
        return None


class VllmSettings(OpenAISettings):
    url: str | None = VLLM_LOCAL_URL
    batch_mode: BatchMode = "list"
    # Put the engine to sleep (level 1: weights to CPU RAM, KV cache dropped) after this many idle
    # seconds; 0 keeps it awake. Needs vLLM started with --enable-sleep-mode and
    # VLLM_SERVER_DEV_MODE=1 (the endpoints exist only then).
    sleep_after_idle_s: float = Field(0.0, ge=0)
    sleep_level: Literal[1, 2] = 1
    metrics_interval_s: float = Field(5.0, gt=0)
    wake_timeout_s: float = Field(120.0, gt=0)


class ApertiumSettings(BaseModel):
    modes_dir: Path = Path("/usr/share/apertium/modes")
    apy_binary: str = "apertium-apy"
    startup_timeout_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    # Parallel HTTP requests to APy (it keeps one warm pipeline per pair and queues behind it).
    concurrency: int = Field(8, ge=1)
    restart_backoff_s: float = Field(1.0, ge=0)
    # APy stops a pair's pipeline unused this long (a detected language's pair, not the pipeline's).
    pipe_idle_s: float = Field(300.0, ge=1)


class BatchSettings(BaseModel):
    window_ms: float = Field(8.0, ge=0, description="How long a batch waits for more segments")
    max_batch: int = Field(16, ge=1)
    max_queue: int = Field(512, ge=1, description="Segments waiting; beyond it requests get 429")
    max_inflight_batches: int = Field(4, ge=1)


class BreakerSettings(BaseModel):
    failures: int = Field(3, ge=1, description="Consecutive failures that open the circuit")
    reset_s: float = Field(15.0, gt=0, description="Open time before one trial call")


class TranslateSettings(PipelineSettings):
    model_config = SettingsConfigDict(env_prefix="LT_TRANSLATE_", env_nested_delimiter="__", extra="ignore")

    pipeline: str | None = None
    backend: BackendName | None = None
    model: str | None = None
    fallback_models: list[str] | None = None
    # Next steps after the primary backend, in order (for example ["openai"] for an external
    # endpoint behind the local vLLM, or ["apertium"] for an offline last resort).
    fallback: list[BackendName] = Field(default_factory=list)
    # Then these OpenAI-compatible endpoints, in order (spec.translation.fallback).
    fallback_endpoints: list[OpenAISettings] = Field(default_factory=list)
    context_segments: int | None = Field(None, ge=0, le=32)
    # The protocol caps a segment at 4000 characters (what the gateway sends at most); lower it to
    # refuse long segments an engine with a short context window cannot take.
    max_chars: int = Field(4000, ge=1, le=4000)
    request_timeout_s: float = Field(30.0, gt=0)
    # How often the service measures its capacity in sessions (capacity.py); 5 s, as the audio
    # service measures its real-time factor.
    capacity_interval_s: float = Field(5.0, gt=0)
    source_language: str | None = None
    target_languages: list[str] | None = None
    # Bearer token for POST /v1/admin/model (unset: the endpoint is open inside the pod network).
    admin_token: SecretStr | None = None

    vllm: VllmSettings = Field(default_factory=VllmSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    apertium: ApertiumSettings = Field(default_factory=ApertiumSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)

    @classmethod
    def without_pipeline(cls) -> dict[str, Any]:
        """A service started by hand: the offline backend, the API's context default."""
        return {
            "pipeline": "local",
            "backend": "apertium",
            "context_segments": TranslationSpec().contextSegments,
            "fallback_models": [],
        }

    @classmethod
    def from_pipeline(cls, resolved: ResolvedPipeline) -> dict[str, Any]:
        """What the operator decided for this stage: backend, model, languages, keys' mounts."""
        spec = resolved.spec.translation
        values: dict[str, Any] = {
            "pipeline": resolved.name,
            "backend": resolved.placement.translationBackend,
            "model": resolved.placement.translationModel or spec.model,
            "fallback_models": list(spec.fallbackModels),
            "context_segments": spec.contextSegments,
            "source_language": resolved.spec.sourceLanguage,
            "target_languages": list(resolved.spec.targetLanguages),
            "fallback_endpoints": [
                {
                    "url": f.endpoint,
                    "model": f.model,
                    "prompt_style": f.promptStyle,
                    "api_key_file": (
                        Path(FALLBACK_KEYS_MOUNT_DIR) / str(i) / f.apiKeySecretRef.key
                        if f.apiKeySecretRef
                        else None
                    ),
                }
                for i, f in enumerate(spec.fallback)
            ],
        }
        openai: dict[str, Any] = {}
        if spec.endpoint:
            openai["url"] = spec.endpoint
        if spec.apiKeySecretRef is not None:
            # A key in the environment (api_key) still wins: OpenAISettings.key() reads it first.
            openai["api_key_file"] = Path(TRANSLATION_KEY_MOUNT_DIR) / spec.apiKeySecretRef.key
        if openai:
            values["openai"] = openai
        if spec.sleepAfterIdle:
            values["vllm"] = {"sleep_after_idle_s": spec.sleep_after_idle_seconds}
        return values


def load_settings(config_path: str | None = None) -> TranslateSettings:
    """The environment over the pipeline file (the operator's only channel to the pod)."""
    settings = TranslateSettings.load(load_resolved(config_path) if config_path else FROM_FILE)
    # The name every OpenAI client reads, for a local run against a hosted endpoint.
    if settings.openai.api_key is None and os.environ.get("OPENAI_API_KEY"):
        settings.openai.api_key = SecretStr(os.environ["OPENAI_API_KEY"])
    return settings
