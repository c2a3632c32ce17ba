"""Settings of the audio workload: one pydantic-settings class, env prefix ``LT_AUDIO_``.

Two sources, merged by pydantic-settings at startup: the environment (tuning knobs an operator of
the cluster may want to change without touching the TranslationPipeline) over the resolved pipeline
the operator mounts (``AudioSettings.from_pipeline``: pipeline name, model, placed device, VAD and
diarization switches, read through the shared ``PipelineSource``). The environment wins where both
say something, so a pod can be pinned by hand while debugging.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from livetranslate.config import FROM_FILE, PipelineSettings, ResolvedPipeline

DeviceName = Literal["cpu", "gpu", "npu", "cuda", "auto"]


class StreamingSettings(BaseModel):
    """How the rolling buffer becomes partials and finals (LT_AUDIO_STREAMING__*)."""

    # New audio (seconds) a speaking session accumulates before its next partial decode. Short,
    # because a word becomes final one pass after it is first heard; under load a session's
    # passes space out by themselves (one in flight each), so this is a floor, not a rate.
    step_seconds: float = Field(0.3, gt=0.05, le=5.0)
    # Silence that ends an utterance: everything heard so far becomes final. The pass that runs
    # as the silence starts usually already heard it all, so the final costs no further pass.
    min_silence_seconds: float = Field(0.35, gt=0.05, le=5.0)
    # Audio kept before the first voiced frame, so word onsets are not clipped.
    preroll_seconds: float = Field(0.3, ge=0.0, le=2.0)
    # Once the buffer is longer than this, it is cut at the last committed word.
    trim_seconds: float = Field(10.0, gt=1.0, le=25.0)
    # Whisper sees at most 30 s: at this length the buffer is finalised whatever was agreed.
    max_buffer_seconds: float = Field(24.0, gt=2.0, le=29.0)
    # Agreed words needed before a mid-utterance final (1 = word by word, like LocalAgreement-2).
    min_final_words: int = Field(2, ge=1, le=50)
    # Two passes over the first second of an utterance agree on wrong words too often ("For me,
    # then" for "The meeting will"), and those words carry a low decoder probability. Until the
    # utterance has this much voiced audio, agreed words commit only while each has at least
    # agree_min_probability; after it, agreement alone commits. 0.7 s rather than 1.0 s: in the
    # benchmark replay it cut the p95 final latency by 0.06-0.10 s at the same WER (0.5 s and
    # below let wrong early words through: WER 0.118 -> 0.132).
    min_agree_seconds: float = Field(0.7, ge=0.0, le=10.0)
    agree_min_probability: float = Field(0.5, ge=0.0, le=1.0)
    # Audio an agreed word needs after it before it commits: a word cut by the buffer's end
    # ("slide" of "slides", "present" of "presentation") agrees with itself one step later.
    agree_margin_seconds: float = Field(0.3, ge=0.0, le=2.0)
    # Silero speech probability thresholds (enter / stay).
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    vad_neg_threshold: float = Field(0.35, gt=0.0, lt=1.0)


class LimitSettings(BaseModel):
    """Protection against bad or greedy clients (LT_AUDIO_LIMITS__*)."""

    max_sessions: int = Field(64, ge=1)
    # Sessions waiting for a decode; beyond it new decode work is refused as overloaded.
    max_queue: int = Field(256, ge=1)
    # A session that sends nothing for this long is closed.
    idle_timeout_seconds: float = Field(60.0, gt=0)
    # A session that sends only silence for this long is closed (a forgotten open microphone).
    silence_timeout_seconds: float = Field(600.0, gt=0)
    # Audio received but not yet decoded beyond this means the decoder cannot keep up.
    max_backlog_seconds: float = Field(20.0, gt=1.0)
    # Text frames that fail to parse before the connection is closed.
    max_bad_messages: int = Field(5, ge=1)


class DiarizationSettings(BaseModel):
    """Online speaker clustering (LT_AUDIO_DIARIZATION__*)."""

    # "auto": pyannote.audio when a pipeline is mounted at pyannote_path, else the offline default.
    backend: Literal["auto", "resemblyzer", "pyannote"] = "auto"
    pyannote_path: str = ""
    # Cosine similarity to a speaker's centroid above which audio is that speaker.
    threshold: float = Field(0.75, gt=0.0, lt=1.0)
    # Seconds of audio a speaker decision looks at (the utterance so far, at most this much).
    window_seconds: float = Field(6.0, gt=0.5)


class AudioSettings(PipelineSettings):
    """Everything the audio service reads at startup."""

    @classmethod
    def from_pipeline(cls, resolved: ResolvedPipeline) -> dict[str, Any]:
        """The model (its cached copy where there is one), the placed device, VAD, diarization."""
        audio = resolved.spec.audio
        return {
            "pipeline": resolved.name,
            "model": resolved.audio_model(),
            "device": resolved.placement.audioDevice,
            "vad": audio.vad,
            "diarization": audio.diarization.enabled,
            "max_speakers": audio.diarization.maxSpeakers,
        }

    model_config = SettingsConfigDict(env_prefix="LT_AUDIO_", env_nested_delimiter="__", extra="ignore")

    pipeline: str = "local"
    # Whisper size name ("tiny.en": the packaged weights), a CTranslate2 model directory, or an
    # OpenVINO IR directory (converted with `livetranslate convert-openvino`).
    model: str = ""
    device: DeviceName = "auto"
    engine: Literal["auto", "faster-whisper", "openvino"] = "auto"
    compute_type: str = ""  # default: int8 on CPU, float16 on CUDA
    # OpenVINO device name when the engine is openvino ("NPU", "GPU", "CPU").
    openvino_device: str = ""
    openvino_cache_dir: str = str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "livetranslate" / "openvino"
    )
    # Decoder worker threads (0 = one per CPU core) and CTranslate2 threads per worker.
    workers: int = Field(0, ge=0)
    threads_per_worker: int = Field(0, ge=0)
    # Threads of numpy's BLAS (OpenBLAS) in this process; 0 leaves the library's default (one per
    # core). Its only work here is the mel filter bank of each pass, a small matrix product the
    # decode workers already run side by side, and its spare thread busy-waits after each one.
    # Measured on 2 cores (benchmarks/results/audio.md): one stream's CPU 0.49 -> 0.26 s per
    # audio second; at 8 streams p95 final latency 1.50 -> 1.21 s.
    blas_threads: int = Field(1, ge=0)
    # Beam width of partial passes (redone every step) and of the pass that finalises an
    # utterance. Greedy for both by default: beam 5 on final passes cost 6% more CPU and gave no
    # measurable WER gain on the benchmark audio (0.081 vs 0.068, within run-to-run noise).
    beam_size: int = Field(1, ge=1, le=10)
    final_beam_size: int = Field(1, ge=1, le=10)
    # Most buffers of different sessions decoded in one call when they wait at the same time.
    max_batch: int = Field(8, ge=1, le=64)
    # Pad the encoder input to the buffer's length instead of 30 s (faster-whisper engine).
    dynamic_padding: bool = True
    vad: bool = True
    diarization: bool = False
    max_speakers: int = Field(4, ge=1, le=32)
    # Drain (the replica is being removed: SIGTERM): /readyz turns 503, a new stream is refused
    # with the error "draining" (close 1012), and each live stream is handed back to its gateway
    # at its next pause (an utterance end), or after drain_session_seconds without one; the
    # gateway resumes it on another replica from its last final. The process exits once no stream
    # is left, or after drain_seconds in all. drain_seconds plus uvicorn's own 20 s shutdown stay
    # inside the audio pods' terminationGracePeriodSeconds (operator/builders.py, 45 s).
    drain_on_sigterm: bool = True
    drain_session_seconds: float = Field(8.0, ge=0)
    drain_seconds: float = Field(20.0, gt=0)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    diarizer: DiarizationSettings = Field(default_factory=DiarizationSettings)

    def worker_count(self) -> int:
        return self.workers or _cpu_count()

    def cpu_threads(self) -> int:
        return self.threads_per_worker or max(1, _cpu_count() // self.worker_count())


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_settings(resolved: ResolvedPipeline | None = None, **overrides: object) -> AudioSettings:
    """Explicit overrides, then the environment, then the pipeline (``resolved``, or the mounted
    file): an env var overrides the operator's placement on one pod."""
    return AudioSettings.load(FROM_FILE if resolved is None else resolved, **overrides)
