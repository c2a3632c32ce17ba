"""The OpenVINO GenAI engine: Whisper on Intel NPU or GPU (and CPU, which is how CI checks this
path), over an IR made by ``livetranslate convert-openvino``."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livetranslate.capabilities import from_whisper, whisper_language
from livetranslate.workloads.audio.packaged import ModelLoadError
from livetranslate.workloads.audio.transcription import (
    SAMPLE_RATE,
    Hypothesis,
    append_words,
    max_new_tokens,
    spread_words,
)

log = logging.getLogger(__name__)


class OpenVinoEngine:
    """OpenVINO GenAI WhisperPipeline over an IR made by ``livetranslate convert-openvino``.

    On the NPU, GenAI's static pipeline (STATIC_PIPELINE) reshapes the stateful export to static
    shapes and a stateless decoder itself; the compiled blob is cached in CACHE_DIR
    because the first NPU compile takes minutes. The pipeline object is not documented as
    thread-safe, so each worker thread gets its own (they share the compiled-model cache).
    """

    name = "openvino"

    def __init__(self, model_dir: Path, ov_device: str, cache_dir: str, model_name: str, device: str) -> None:
        self.device = device
        self.model = model_name
        self._dir = model_dir
        self._ov_device = ov_device.upper()
        self._config: dict[str, Any] = {}
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            self._config["CACHE_DIR"] = cache_dir
        if self._ov_device == "NPU":
            self._config["STATIC_PIPELINE"] = True
        self._local = threading.local()
        self._word_timestamps = True
        self._pipeline()  # load now: a bad IR must fail at startup, not on the first request

    def _pipeline(self) -> Any:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            import openvino_genai

            try:
                # Word timings need the cross-attention decomposed at compile time.
                pipe = openvino_genai.WhisperPipeline(
                    str(self._dir), self._ov_device, word_timestamps=True, **self._config
                )
                self._word_timestamps = True
            except Exception:  # noqa: BLE001 - e.g. a static NPU pipeline without that support
                try:
                    pipe = openvino_genai.WhisperPipeline(str(self._dir), self._ov_device, **self._config)
                except Exception as exc:
                    raise ModelLoadError(
                        f"OpenVINO could not load {self._dir} on {self._ov_device}: {exc}"
                    ) from exc
                self._word_timestamps = False
                log.warning("OpenVINO pipeline without word timestamps; word times are estimated")
            self._local.pipe = pipe
        return pipe

    def transcribe(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> Hypothesis:
        t0 = time.perf_counter()
        pipe = self._pipeline()
        cfg = pipe.get_generation_config()
        cfg.word_timestamps = self._word_timestamps and word_times
        cfg.return_timestamps = True
        cfg.max_new_tokens = max_new_tokens(len(audio) / SAMPLE_RATE)
        cfg.num_beams = beam_size or 1
        if prompt:
            cfg.initial_prompt = prompt
        asked = whisper_language(language) if language and language != "auto" else None
        multilingual = bool(getattr(cfg, "is_multilingual", False))
        if asked and multilingual:
            cfg.language = f"<|{asked}|>"  # GenAI's form of a language token
        result = pipe.generate(audio.astype(np.float32).tolist(), cfg)
        # GenAI detects the language of a multilingual model left without one but does not report
        # it: such a pass carries no language and the session's tracker keeps what it knows.
        hyp = Hypothesis(
            text=str(result.texts[0]).strip() if result.texts else "",
            language=(from_whisper(asked) if asked else None) if multilingual else "en",
        )
        words = getattr(result, "words", None)
        if words:
            # GenAI's word splitter keeps each word's leading space, as faster-whisper's does.
            append_words(hyp, ((str(w.word), float(w.start_ts), float(w.end_ts), 1.0) for w in words))
        else:
            hyp.words = spread_words(hyp.text, getattr(result, "chunks", None), len(audio) / SAMPLE_RATE)
        scores = getattr(result, "scores", None)
        if scores:
            hyp.avg_logprob = float(scores[0]) / max(1, len(hyp.words))
        hyp.seconds = time.perf_counter() - t0
        return hyp

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[Hypothesis]:
        return [self.transcribe(a, prompt, language, beam_size, word_times, candidates) for a in audios]
