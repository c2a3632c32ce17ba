"""Gateway settings: env vars with the prefix ``LT_GATEWAY_``, on top of the resolved pipeline.

The pipeline document says what the operator decided (upstream addresses, session cap, allowed
origins, auth Secret; ``GatewaySettings.from_pipeline``, read through the shared
``PipelineSource``); env vars override it for a gateway started by hand or in tests, and carry what
only the gateway cares about (queue sizes, time limits). Without a pipeline file the API's own
defaults apply (``without_pipeline``), so no default is repeated here as a literal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from livetranslate.api import TranslationPipelineSpec
from livetranslate.capabilities import offline_source_languages
from livetranslate.config import AUTH_MOUNT_DIR, PipelineSettings, ResolvedPipeline, load_resolved


def _spec_values(spec: TranslationPipelineSpec) -> dict[str, Any]:
    """What the spec (or, without one, the API's defaults) says the gateway does."""
    return {
        "redis_url": spec.gateway.redisUrl,
        "max_sessions": spec.gateway.maxSessionsPerReplica,
        "source_language": spec.sourceLanguage,
        "target_languages": list(spec.targetLanguages),
        "context_segments": spec.translation.contextSegments,
        "diarization": spec.audio.diarization.enabled,
        "max_speakers": spec.audio.diarization.maxSpeakers,
        "allowed_origins": list(spec.gateway.allowedOrigins),
        "auth_dir": AUTH_MOUNT_DIR if spec.gateway.authSecretRef else None,
    }


class GatewaySettings(PipelineSettings):
    model_config = SettingsConfigDict(
        env_prefix="LT_GATEWAY_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    @classmethod
    def without_pipeline(cls) -> dict[str, Any]:
        return _spec_values(TranslationPipelineSpec())

    @classmethod
    def from_pipeline(cls, resolved: ResolvedPipeline) -> dict[str, Any]:
        values = _spec_values(resolved.spec)
        values.update(
            pipeline=resolved.name,
            audio_url=resolved.endpoints.audio,
            translation_url=resolved.endpoints.translation,
        )
        if resolved.placement.translationBackend == "apertium":
            # Detection chooses among the languages the offline backend translates from.
            values["detect_languages"] = offline_source_languages(list(resolved.spec.targetLanguages))
        return values

    pipeline: str = Field("local", description="Pipeline name, the `pipeline` label of every metric")
    audio_url: str | None = Field(None, description="Base URL of the audio service (overrides the config)")
    translation_url: str | None = Field(None, description="Base URL of the translation service")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "LT_GATEWAY_REDIS_URL", "REDIS_URL"),
        description="Redis for session state; REDIS_URL is read too",
    )
    max_sessions: int | None = Field(None, ge=1, description="Overrides spec.gateway.maxSessionsPerReplica")
    source_language: str | None = None
    # LT_GATEWAY_DETECT_LANGUAGES='["en","es"]': the spoken languages detection may choose among.
    detect_languages: list[str] | None = None
    target_languages: list[str] | None = None
    context_segments: int | None = Field(None, ge=0, le=32)
    diarization: bool | None = None
    max_speakers: int | None = None
    # Auth: a directory whose every regular file holds one accepted token. None = the Secret mount
    # when the pipeline names an authSecretRef, else no auth.
    auth_dir: str | None = None
    allowed_origins: list[str] | None = None

    # Limits of one connection.
    max_frame_bytes: int = 1024 * 1024
    # Audio may arrive faster than real time (a file streamed as fast as possible); beyond this
    # multiple of the announced format's byte rate the gateway stops reading (TCP backpressure).
    max_audio_speed: float = 20.0
    max_messages_per_second: float = 200.0
    max_bad_messages: int = 10  # within bad_message_window seconds -> close 1008
    bad_message_window: float = 10.0
    send_queue_events: int = 256
    stuck_client_seconds: float = 10.0  # a send (or a full queue) blocked this long closes the socket
    idle_timeout_seconds: float = 300.0  # no frame at all for this long -> close
    start_timeout_seconds: float = 30.0  # no session.start within this -> close

    # Sentences: what is translated (docs/captions.md). "final" translates every final alone, the
    # behaviour before sentences, kept to measure against (benchmarks/bench_quality.py).
    translation_unit: Literal["sentence", "final"] = "sentence"
    sentence_max_words: int = Field(40, ge=1, description="An open sentence closes at this many words")
    sentence_max_seconds: float = Field(20.0, gt=0, description="... or when it spans this long")
    # An open sentence that got no final for this long closes (a pause the audio service did not
    # report as an utterance end, e.g. a lost event).
    sentence_idle_seconds: float = Field(3.0, gt=0)
    # Live re-translation of the open sentence on each new final: at most one request in flight
    # per session, none while whole sentences wait, and no more often than this.
    partial_translations: bool = True
    partial_min_interval_seconds: float = Field(0.5, ge=0)
    partial_settle_seconds: float = Field(0.1, ge=0)

    # Sessions.
    session_ttl_seconds: int = 3600  # how long a detached session can be resumed
    session_log_segments: int = 512  # finals kept per session for replay on resume
    resume_wait_seconds: float = 15.0  # wait this long for the previous owner to finish its flush

    # Upstreams.
    connect_timeout: float = 5.0
    translate_timeout: float = 30.0
    flush_timeout: float = 30.0
    audio_buffer_seconds: float = 120.0  # audio held for replay while the audio service is away
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 5.0
    breaker_failures: int = 5
    breaker_reset_seconds: float = 5.0
    readiness_cache_seconds: float = 2.0

    # Drain (the replica is being removed: SIGTERM, or POST /v1/admin/drain): /readyz turns 503 and
    # new sessions are refused at once; each live session is handed over to another replica at its
    # next pause (the audio service's utterance end), or after drain_session_seconds without one;
    # the process exits once no session is left, or after drain_seconds in all. Keep drain_seconds
    # plus 22 s (uvicorn's graceful-shutdown bound of 20 s, for connections still closing) below
    # the pod's terminationGracePeriodSeconds (60 s for the gateway).
    drain_on_sigterm: bool = True
    drain_session_seconds: float = Field(8.0, ge=0)
    drain_seconds: float = Field(35.0, gt=0)
    # Bearer token for POST /v1/admin/drain. Unset, the endpoint is off: the gateway faces clients.
    admin_token: SecretStr | None = None

    root_path: str = Field(
        "", description="Path prefix the gateway is served under (X-Forwarded-Prefix wins)"
    )


class GatewayConfig:
    """What the gateway reads at run time: its settings (environment over pipeline over the API's
    defaults), with URLs normalised and the auth directory as a path."""

    def __init__(self, settings: GatewaySettings, resolved: ResolvedPipeline | None = None) -> None:
        self.settings = settings
        self.resolved = resolved
        self.pipeline = settings.pipeline
        self.audio_url = _strip(settings.audio_url)
        self.translation_url = _strip(settings.translation_url)
        self.redis_url = settings.redis_url
        self.max_sessions = settings.max_sessions or TranslationPipelineSpec().gateway.maxSessionsPerReplica
        self.source_language = settings.source_language or TranslationPipelineSpec().sourceLanguage
        self.target_languages = list(settings.target_languages or [])
        self.detect_languages = list(settings.detect_languages or [])
        self.context_segments = settings.context_segments or 0
        self.diarization = bool(settings.diarization)
        self.max_speakers = settings.max_speakers or 1
        self.allowed_origins = list(settings.allowed_origins or [])
        self.auth_dir: Path | None = Path(settings.auth_dir) if settings.auth_dir else None


def _strip(url: str | None) -> str | None:
    return url.rstrip("/") if url else None


def load_config(settings: GatewaySettings | None = None) -> GatewayConfig:
    resolved = load_resolved()
    return GatewayConfig(settings or GatewaySettings.load(resolved), resolved)
