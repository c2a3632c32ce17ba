"""The faster-whisper (CTranslate2) engine: CPU int8 or CUDA float16, one pass or a batch of
sessions' buffers at once.

Two departures from faster-whisper's defaults, both measured: mel features padded to the audio's
length rather than to 30 s (``_dynamic_pad_or_trim``), and language detection that chooses among
the languages the pipeline can use (``FasterWhisperEngine.detect_language``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livetranslate.capabilities import from_whisper, whisper_language
from livetranslate.workloads.audio.packaged import ModelLoadError
from livetranslate.workloads.audio.transcription import (
    PACKAGED_MODEL,
    SAMPLE_RATE,
    Hypothesis,
    SegmentStats,
    Word,
    append_words,
    max_new_tokens,
    spread_words,
)

# Mel frames per second of audio; Whisper's encoder was trained on 3000 frames (30 s).
_FRAMES_PER_SECOND = 100
_FULL_FRAMES = 3000


def _padded_frames(frames: int) -> int:
    """``frames`` plus one second, rounded up to whole seconds."""
    return int(np.ceil((frames + _FRAMES_PER_SECOND) / _FRAMES_PER_SECOND)) * _FRAMES_PER_SECOND


def _dynamic_pad_or_trim(array: np.ndarray, length: int = _FULL_FRAMES, *, axis: int = -1) -> np.ndarray:
    """Pad mel features to the audio's length (plus one second, in whole seconds), not to 30 s.

    faster-whisper pads every window to 30 s before the encoder, whose cost grows faster than
    linearly with length: re-decoding a 3 s streaming buffer then costs as much as 30 s of audio.
    CTranslate2's encoder accepts shorter inputs; measured here on espeak-ng sentences it is about
    5x faster with no loss in word error rate (see benchmarks/results/audio*.md).
    """
    from faster_whisper.audio import pad_or_trim

    n = array.shape[axis]
    target = min(length, _padded_frames(n))
    return pad_or_trim(array, target, axis=axis)


def _set_dynamic_padding(enabled: bool) -> None:
    """faster-whisper looks ``pad_or_trim`` up as a module global on every window: swap it."""
    import faster_whisper.audio
    import faster_whisper.transcribe

    faster_whisper.transcribe.pad_or_trim = (  # type: ignore[attr-defined]
        _dynamic_pad_or_trim if enabled else faster_whisper.audio.pad_or_trim
    )


def _segment_words(
    hyp: Hypothesis,
    index: int,
    text: str,
    span: tuple[float, float],
    words: Sequence[tuple[str, float, float, float]] | None,
) -> None:
    """One segment's words: the decoder's, or (a pass without word times) spread over the segment."""
    if words is None:
        hyp.words += [
            Word(w.text, w.start, w.end, 1.0, index) for w in spread_words(text, None, 0.0, span[0], span[1])
        ]
        return
    append_words(hyp, words, index)


class FasterWhisperEngine:
    """CTranslate2 Whisper; CPU int8 or CUDA float16."""

    name = "faster-whisper"

    def __init__(
        self,
        model_dir: Path,
        device: str,
        compute_type: str,
        workers: int,
        cpu_threads: int,
        beam_size: int = 1,
        model_name: str = PACKAGED_MODEL,
        dynamic_padding: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel

        _set_dynamic_padding(dynamic_padding)
        on_gpu = device in ("gpu", "cuda")
        self.device = "gpu" if on_gpu else device
        self.model = model_name
        self.beam_size = beam_size
        try:
            self._model = WhisperModel(
                str(model_dir),
                device="cuda" if on_gpu else device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=workers,
            )
        except Exception as exc:  # CTranslate2 raises plain RuntimeError/ValueError
            raise ModelLoadError(f"faster-whisper could not load {model_dir}: {exc}") from exc

    def transcribe(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> Hypothesis:
        """``word_times=False`` skips the alignment pass (about a third of a pass's cost); words
        then get times spread over their segment, good enough for a partial."""
        t0 = time.perf_counter()
        multilingual = bool(self._model.model.is_multilingual)
        asked = (
            (whisper_language(language) if language and language != "auto" else None)
            if multilingual
            else "en"
        )
        detected, probability = (None, 1.0)
        if asked is None:
            # Detection as faster-whisper does it inside transcribe (one encoder pass and the
            # language token), but choosing among the candidates, whose probabilities are
            # renormalised: Whisper base hears espeak-ng Spanish as Latin now and then.
            detected, probability = self.detect_language(audio, candidates)
            asked = detected
        segments, info = self._model.transcribe(
            audio,
            language=asked,
            beam_size=beam_size or self.beam_size,
            best_of=1,
            temperature=0.0,
            word_timestamps=word_times,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            vad_filter=False,
            without_timestamps=False,
            max_new_tokens=max_new_tokens(len(audio) / SAMPLE_RATE),
        )
        hyp = Hypothesis(
            language=from_whisper(asked or info.language),
            language_probability=probability if detected else 1.0,
        )
        texts: list[str] = []
        weights = 0.0
        for index, seg in enumerate(segments):
            texts.append(seg.text)
            hyp.segments.append(
                SegmentStats(
                    seg.text.strip(),
                    float(seg.no_speech_prob),
                    float(seg.avg_logprob),
                    float(seg.compression_ratio),
                )
            )
            words = None
            if seg.words is not None:
                words = [(w.word, float(w.start), float(w.end), float(w.probability)) for w in seg.words]
            _segment_words(hyp, index, seg.text, (float(seg.start), float(seg.end)), words)
            span = max(seg.end - seg.start, 1e-3)
            hyp.no_speech_prob = max(hyp.no_speech_prob, float(seg.no_speech_prob))
            hyp.avg_logprob += float(seg.avg_logprob) * span
            hyp.compression_ratio = max(hyp.compression_ratio, float(seg.compression_ratio))
            weights += span
        if weights:
            hyp.avg_logprob /= weights
        hyp.words = [w for w in hyp.words if w.text]
        hyp.text = "".join(texts).strip()
        hyp.seconds = time.perf_counter() - t0
        return hyp

    def detect_language(
        self, audio: np.ndarray, candidates: Sequence[str] | None = None
    ) -> tuple[str, float]:
        """The most likely spoken language (among ``candidates`` where given) and its probability
        (renormalised over the candidates)."""
        if not self._model.model.is_multilingual:
            return "en", 1.0
        best, probability, ranked = self._model.detect_language(audio)
        if candidates:
            allowed = {w for w in (whisper_language(c) for c in candidates) if w}
            kept = [(lang, p) for lang, p in ranked if lang in allowed]
            total = sum(p for _, p in kept)
            if kept and total > 0:
                best, p = max(kept, key=lambda lp: lp[1])
                probability = p / total
        return str(best), float(probability)

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[Hypothesis]:
        """Several sessions' buffers in one encoder and one decoder call.

        Buffers are padded to the longest one (plus a second) and decoded greedily together with
        faster-whisper's batched path; on 2 cores this cut CPU time per buffer by about a third
        at 8 buffers (see benchmarks/results/audio.md). A batch of one takes the plain path.
        """
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import BatchedInferencePipeline

        model = self._model
        multilingual = bool(model.model.is_multilingual)
        if len(audios) == 1 or (multilingual and (not language or language == "auto")):
            # Detection is per buffer (each session's utterance has its own language): the plain
            # path detects; only passes of a known language decode together.
            return [self.transcribe(a, prompt, language, beam_size, word_times, candidates) for a in audios]
        t0 = time.perf_counter()
        lang = (whisper_language(language) or "en") if multilingual and language else "en"
        tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=lang)
        feats = [model.feature_extractor(a)[..., :-1] for a in audios]
        frames = min(_FULL_FRAMES, _padded_frames(max(f.shape[-1] for f in feats)))
        batch = np.stack(
            [np.pad(f[..., :frames], ((0, 0), (0, frames - min(frames, f.shape[-1])))) for f in feats]
        )
        meta = [{"offset": 0.0, "duration": len(a) / SAMPLE_RATE} for a in audios]
        options = self._batch_options(
            tokenizer,
            prompt,
            max(len(a) for a in audios) / SAMPLE_RATE,
            beam_size or self.beam_size,
            word_times,
        )
        # A fresh pipeline object per call: it keeps one piece of state between calls.
        outputs = BatchedInferencePipeline(model).forward(batch, tokenizer, meta, options)
        elapsed = time.perf_counter() - t0
        return [_batch_hypothesis(segs, elapsed / len(audios), from_whisper(lang)) for segs in outputs]

    def _batch_options(
        self, tokenizer: Any, prompt: str | None, seconds: float, beam_size: int, word_times: bool
    ) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=beam_size,
            best_of=1,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            log_prob_threshold=None,
            no_speech_threshold=None,
            compression_ratio_threshold=None,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0],
            initial_prompt=prompt or None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=False,
            max_initial_timestamp=1.0,
            word_timestamps=word_times,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=max_new_tokens(seconds),
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )


def _batch_hypothesis(segs: list[dict[str, Any]], seconds: float, language: str) -> Hypothesis:
    """One buffer's hypothesis from the segments faster-whisper's batched path gives back."""
    hyp = Hypothesis(seconds=seconds, language=language)
    for index, seg in enumerate(segs):
        text = str(seg["text"]).strip()
        hyp.segments.append(
            SegmentStats(
                text,
                float(seg["no_speech_prob"]),
                float(seg["avg_logprob"]),
                float(seg["compression_ratio"]),
            )
        )
        words = None
        if "words" in seg:
            words = [
                (str(w["word"]), float(w["start"]), float(w["end"]), float(w["probability"]))
                for w in seg["words"] or []
            ]
        _segment_words(hyp, index, text, (float(seg["start"]), float(seg["end"])), words)
    hyp.text = " ".join(sg.text for sg in hyp.segments).strip()
    if hyp.segments:
        hyp.no_speech_prob = max(sg.no_speech_prob for sg in hyp.segments)
        hyp.avg_logprob = float(np.mean([sg.avg_logprob for sg in hyp.segments]))
        hyp.compression_ratio = max(sg.compression_ratio for sg in hyp.segments)
    return hyp
