"""Gateway settings: env vars with the prefix ``LT_GATEWAY_``, on top of the resolved pipeline.

The pipeline document (``load_resolved()``) says what the operator decided (upstream addresses,
session cap, allowed origins, auth Secret); env vars override it for a gateway started by hand or
in tests, and carry what only the gateway cares about (queue sizes, time limits).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from livetranslate.api import TranslationPipelineSpec
from livetranslate.capabilities import offline_source_languages
from livetranslate.config import AUTH_MOUNT_DIR, ResolvedPipeline, load_resolved


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LT_GATEWAY_", env_nested_delimiter="__", extra="ignore")

    pipeline: str = Field("local", description="Pipeline name, the `pipeline` label of every metric")
    audio_url: str | None = Field(None, description="Base URL of the audio service (overrides the config)")
    translation_url: str | None = Field(None, description="Base URL of the translation service")
    redis_url: str | None = Field(None, description="Redis for session state; REDIS_URL is read too")
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
    """Settings merged with the resolved pipeline: the single source the gateway reads at run time."""

    def __init__(self, settings: GatewaySettings, resolved: ResolvedPipeline | None) -> None:
        self.settings = settings
        self.resolved = resolved
        # Without a pipeline file (a gateway started by hand, a test) the API's own defaults apply.
        spec = resolved.spec if resolved else TranslationPipelineSpec()
        self.pipeline = resolved.name if resolved else settings.pipeline
        self.audio_url = _strip(settings.audio_url or (resolved.endpoints.audio if resolved else None))
        self.translation_url = _strip(
            settings.translation_url or (resolved.endpoints.translation if resolved else None)
        )
        self.redis_url = settings.redis_url or os.environ.get("REDIS_URL") or spec.gateway.redisUrl
        self.max_sessions = settings.max_sessions or spec.gateway.maxSessionsPerReplica
        self.source_language = settings.source_language or spec.sourceLanguage
        self.target_languages = list(settings.target_languages or spec.targetLanguages)
        # What language detection may choose among in auto sessions: the settings' list, else on
        # the offline backend the languages it can translate from; empty means any.
        if settings.detect_languages is not None:
            self.detect_languages = list(settings.detect_languages)
        elif resolved is not None and resolved.placement.translationBackend == "apertium":
            self.detect_languages = offline_source_languages(self.target_languages)
        else:
            self.detect_languages = []
        self.context_segments = (
            settings.context_segments
            if settings.context_segments is not None
            else spec.translation.contextSegments
        )
        self.diarization = (
            settings.diarization if settings.diarization is not None else spec.audio.diarization.enabled
        )
        self.max_speakers = settings.max_speakers or spec.audio.diarization.maxSpeakers
        self.allowed_origins = list(
            settings.allowed_origins if settings.allowed_origins is not None else spec.gateway.allowedOrigins
        )
        if settings.auth_dir:
            self.auth_dir: Path | None = Path(settings.auth_dir)
        elif spec.gateway.authSecretRef:
            self.auth_dir = Path(AUTH_MOUNT_DIR)
        else:
            self.auth_dir = None


def _strip(url: str | None) -> str | None:
    return url.rstrip("/") if url else None


def load_config(settings: GatewaySettings | None = None) -> GatewayConfig:
    return GatewayConfig(settings or GatewaySettings(), load_resolved())
