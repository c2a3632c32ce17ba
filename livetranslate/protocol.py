"""Wire schemas: the public gateway WebSocket protocol and the internal service protocols.

Public (../shared/API.md section 2): clients talk to the gateway at ``/v1/stream``.
Internal: the gateway talks to the audio service over a WebSocket per session (``/v1/audio``) and
to the translation service over HTTP (``POST /v1/translate``, NDJSON streamed back). Every
message is a pydantic model with a ``Literal`` ``type`` tag, grouped into discriminated unions so
one ``TypeAdapter.validate_json`` call parses any frame and a bad one fails with a clear message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from livetranslate.api import BCP47_PATTERN, SOURCE_LANGUAGE_PATTERN

MAX_FRAME_BYTES = 1024 * 1024  # API.md: binary frames up to 1 MiB
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MODEL_SAMPLE_RATE = 16000  # what Whisper and the audio service take
# A speaker's voice on the wire: base64 of float16, room for embeddings of up to 1536 dimensions
# (Resemblyzer's have 256, pyannote's 256 or 512): a session of 32 voices stays under 200 KB.
MAX_VOICE_CHARS = 4096


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Event(BaseModel):
    # Server events tolerate additions on the reading side (clients of an older version).
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------- public: client -> gateway


class SessionStart(_Msg):
    type: Literal["session.start"]
    sampleRate: int = Field(16000, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    encoding: Literal["pcm_s16le", "pcm_f32le"] = "pcm_s16le"
    channels: int = Field(1, ge=1, le=2)
    sourceLanguage: str | None = Field(None, pattern=SOURCE_LANGUAGE_PATTERN)
    targetLanguages: list[Annotated[str, Field(pattern=BCP47_PATTERN)]] | None = Field(None, max_length=16)
    sessionId: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Resume acknowledgement: the highest final segmentId this client received before it lost the
    # connection. Finals after it are sent again (with their translations), none before it.
    lastSegmentId: int | None = Field(None, ge=-1)


class SessionEnd(_Msg):
    type: Literal["session.end"]


ClientMessage = Annotated[SessionStart | SessionEnd, Field(discriminator="type")]
client_message_adapter: TypeAdapter[SessionStart | SessionEnd] = TypeAdapter(ClientMessage)


# ---------------------------------------------------------------- public: gateway -> client


class SessionStarted(_Event):
    type: Literal["session.started"] = "session.started"
    sessionId: str
    resumed: bool = False
    sampleRate: int | None = None
    targetLanguages: list[str] | None = None


class TranscriptPartial(_Event):
    type: Literal["transcript.partial"] = "transcript.partial"
    segmentId: int
    text: str
    start: float
    end: float


class TranscriptFinal(_Event):
    type: Literal["transcript.final"] = "transcript.final"
    segmentId: int
    text: str
    start: float
    end: float
    speaker: str | None = None
    latency: float | None = None  # gateway-measured seconds from the end of speech to this event
    language: str | None = None  # the detected spoken language, where sourceLanguage is auto


class TranslationEvent(_Event):
    """One sentence, translated whole into one language: sent once and never changed."""

    type: Literal["translation"] = "translation"
    sentenceId: int
    segmentIds: list[int]  # the finals the sentence covers, in order
    segmentId: int  # the last of segmentIds (older clients key translations by it)
    language: str
    text: str
    quality: str | None = None  # "ok", or what the quality checks caught ("retried", "fallback", ...)
    latency: float | None = None  # gateway-measured seconds from the sentence's last final to this event


class TranslationPartial(_Event):
    """The sentence still being spoken, translated as far as it has been heard.

    A later partial of the same ``sentenceId`` and language, or its ``translation``, replaces it.
    """

    type: Literal["translation.partial"] = "translation.partial"
    sentenceId: int
    segmentIds: list[int]
    language: str
    text: str


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: str
    message: str
    segmentId: int | None = None
    sentenceId: int | None = None
    language: str | None = None


class SessionEnded(_Event):
    type: Literal["session.ended"] = "session.ended"
    sessionId: str


AnyServerEvent = (
    SessionStarted
    | TranscriptPartial
    | TranscriptFinal
    | TranslationPartial
    | TranslationEvent
    | ErrorEvent
    | SessionEnded
)
ServerEvent = Annotated[AnyServerEvent, Field(discriminator="type")]
server_event_adapter: TypeAdapter[AnyServerEvent] = TypeAdapter(ServerEvent)

# Error codes users can program against.
ERR_BAD_MESSAGE = "bad_message"
ERR_BAD_AUDIO = "bad_audio"
ERR_FRAME_TOO_LARGE = "frame_too_large"
ERR_NOT_STARTED = "session_not_started"
ERR_RATE_LIMITED = "rate_limited"
ERR_CAPACITY = "capacity_exceeded"
ERR_UPSTREAM = "upstream_unavailable"
ERR_TRANSLATION_FAILED = "translation_failed"
ERR_UNSUPPORTED_LANGUAGE = "unsupported_language"
ERR_INTERNAL = "internal_error"
# A session.start refused by a draining replica (close 1012 follows: resume elsewhere).
ERR_DRAINING = "draining"


# ---------------------------------------------------------------- HTTP: readiness
# The gateway's /readyz checks these dependencies besides itself; ``/readyz?exclude=<check>``
# leaves one out (kube-apiserver's convention). Its pods' readiness probe excludes all three.
GATEWAY_DEPENDENCY_CHECKS = ("audio", "translation", "sessionStore")


# ---------------------------------------------------------------- internal: gateway <-> audio
# WebSocket ws://<audio>/v1/audio, one per session. Binary frames: PCM s16le mono 16 kHz.


class SpeakerVoice(BaseModel):
    """One speaker the audio service tells apart in a session: its label and its voice."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(pattern=r"^S[1-9][0-9]?$")
    seconds: float = Field(ge=0, le=1e7)  # of speech the voice was learned from (its weight)
    # The voice's centroid: base64 of little-endian float16, the embedder's dimensions
    embedding: str = Field(min_length=4, max_length=MAX_VOICE_CHARS, pattern=r"^[A-Za-z0-9+/]+={0,2}$")


class SpeakerMemory(BaseModel):
    """The speakers a session's diarization knows, so its next audio stream (handed over,
    resumed, reopened after a pause) keeps their labels instead of numbering voices afresh.
    ``voices[i]`` is speaker ``S{i+1}``; a stream whose embedder differs starts without them."""

    model_config = ConfigDict(extra="forbid")

    embedder: str = Field(min_length=1, max_length=64)
    voices: list[SpeakerVoice] = Field(max_length=32)


class AudioStart(_Msg):
    type: Literal["start"]
    sessionId: str
    language: str = "en"
    # With language "auto": the languages detection may choose among (the ones the pipeline can
    # translate from, or pass through); empty means any language the model knows.
    languages: list[Annotated[str, Field(pattern=BCP47_PATTERN)]] = Field(
        default_factory=list, max_length=128
    )
    diarization: bool = False
    maxSpeakers: int = Field(4, ge=1, le=32)
    # Session seconds already transcribed before this stream (a resumed session): segment times
    # the audio service reports are offset by it, so they stay in session time.
    timeOffset: float = Field(0.0, ge=0)
    # With language "auto": the session's spoken language so far, as the last stream's utterance
    # ends reported it. A new stream of a session that already spoke (handed over, resumed, or
    # reopened after an idle pause) starts from it instead of detecting the language afresh.
    spokenLanguage: Annotated[str, Field(pattern=BCP47_PATTERN)] | None = None
    # With diarization: the speakers the session's last stream knew, as its utterance ends
    # reported them, so a voice heard before keeps its label on this stream.
    speakers: SpeakerMemory | None = None
    # The audio service takes 16 kHz only (the gateway resamples); any other rate is refused with
    # a clear error rather than transcribed at the wrong speed.
    sampleRate: int = MODEL_SAMPLE_RATE


class AudioFlush(_Msg):
    """Finalise everything buffered (end of session); the service answers ``flushed``."""

    type: Literal["flush"]


AudioClientMessage = Annotated[AudioStart | AudioFlush, Field(discriminator="type")]
audio_client_adapter: TypeAdapter[AudioStart | AudioFlush] = TypeAdapter(AudioClientMessage)


class AudioReady(_Event):
    type: Literal["ready"] = "ready"
    device: str
    model: str


class AudioPartial(_Event):
    type: Literal["partial"] = "partial"
    text: str
    start: float
    end: float


class AudioFinal(_Event):
    type: Literal["final"] = "final"
    text: str
    start: float
    end: float
    speaker: str | None = None
    # The spoken language of the final's utterance, where the session's language is "auto".
    language: str | None = None


class AudioUtteranceEnd(_Event):
    """The speaker paused: the utterance that ended at session second ``end`` is complete.

    Sent after the utterance's last final (if it had one). The gateway closes the open sentence
    on it, so a sentence without closing punctuation is translated as soon as the voice stops.
    """

    type: Literal["utterance_end"] = "utterance_end"
    end: float
    # With language "auto": the session's spoken language after this utterance (it moves only on
    # evidence from more than one utterance); the gateway carries it to the session's next stream.
    language: Annotated[str, Field(pattern=BCP47_PATTERN)] | None = None
    # With diarization: the speakers known after this utterance; carried to the next stream alike.
    speakers: SpeakerMemory | None = None


class AudioError(_Event):
    type: Literal["error"] = "error"
    code: str
    message: str


class AudioFlushed(_Event):
    type: Literal["flushed"] = "flushed"


AnyAudioEvent = AudioReady | AudioPartial | AudioFinal | AudioUtteranceEnd | AudioError | AudioFlushed
AudioServerEvent = Annotated[AnyAudioEvent, Field(discriminator="type")]
audio_server_adapter: TypeAdapter[AnyAudioEvent] = TypeAdapter(AudioServerEvent)


# ---------------------------------------------------------------- internal: gateway -> translation
# POST http://<translation>/v1/translate with TranslateRequest; the response is NDJSON, one
# TranslateResult line per target language as soon as it is ready. The service keeps no session
# state: the gateway sends the context (it owns session state, in Redis when replicated).


def describe_invalid(exc: ValidationError) -> str:
    """What is wrong with a message, its first problems each naming the field (both protocols)."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid message: " + "; ".join(parts)


def context_span(size: int) -> int:
    """Most earlier segments a request carries as context when ``contextSegments`` is ``size``."""
    return 2 * size - 1 if size > 0 else 0


def context_window(segment_id: int, size: int) -> range:
    """Ids of the earlier segments sent as context with segment ``segment_id``.

    At least the last ``size`` (fewer at the start of a session); the window then grows one
    segment at a time, up to ``context_span(size)``, before it jumps ahead by ``size``. A window
    that slid by one segment would rewrite the start of every prompt, so an engine's prefix cache
    (vLLM's automatic prefix caching, llama-server's slot and RAM cache) could reuse only the
    fixed instruction. A window that only grows between jumps makes each prompt of a session an
    extension of its previous one (that prompt plus the translation it produced), and the
    engine processes only the new line: on llama-server with Gemma-3-270M on 2 cores, 1.14 ->
    1.88 segments/s for 32 sessions served one request at a time.
    """
    if size <= 0:
        return range(0)
    return range(max(0, (segment_id // size - 1) * size), segment_id)


class ContextSegment(_Msg):
    source: str
    translations: dict[str, str] = Field(default_factory=dict)


class TranslateRequest(_Msg):
    """One unit to translate: a whole sentence, or (``partial``) the part of one heard so far.

    ``segmentId`` names the unit: the sentence id where the gateway translates sentences. A
    partial is a preview that a later request replaces, so the service spends no retries or
    fallbacks on it.
    """

    sessionId: str
    segmentId: int
    text: str = Field(..., max_length=4000)
    sourceLanguage: str = Field("en", pattern=SOURCE_LANGUAGE_PATTERN)
    targetLanguages: list[Annotated[str, Field(pattern=BCP47_PATTERN)]] = Field(
        ..., min_length=1, max_length=16
    )
    context: list[ContextSegment] = Field(default_factory=list, max_length=64)
    partial: bool = False


class TranslateResult(_Event):
    type: Literal["translation", "error"] = "translation"
    segmentId: int
    language: str
    text: str = ""
    quality: str | None = None
    code: str | None = None  # set when type == "error"
    message: str | None = None
    latencySeconds: float | None = None
