"""Speech-to-text engines behind one interface, chosen by the device the operator placed us on.

faster-whisper (CTranslate2) serves CPU (int8) and CUDA (float16); OpenVINO GenAI's
``WhisperPipeline`` serves Intel NPU/GPU (and CPU, which is how CI checks that path). Both return
word-level timings, because the streaming policy commits words, trims the buffer at word ends and
reports segment times in session seconds. One engine instance is shared by every session; its
``transcribe`` is safe to call from several worker threads at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from livetranslate.capabilities import from_whisper, whisper_language
from livetranslate.workloads.audio.packaged import PACKAGED, ModelLoadError, packaged_model_dir
from livetranslate.workloads.audio.settings import AudioSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
PACKAGED_MODEL = "tiny.en"


@dataclass(frozen=True)
class Word:
    """A word with times relative to the start of the audio that was decoded."""

    text: str
    start: float
    end: float
    probability: float = 1.0
    segment: int = 0  # index into Hypothesis.segments
    # The decoder wrote no space before this word: it continues the previous one ("o" "'clock",
    # "12" ".5", "well" "-known"), so a final must not end between the two.
    glued: bool = False


@dataclass(frozen=True)
class SegmentStats:
    """What the decoder says about its own confidence in one segment."""

    text: str
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0


@dataclass
class Hypothesis:
    """One decoder pass: words plus the signals the hallucination filter needs."""

    words: list[Word] = field(default_factory=list)
    text: str = ""
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0
    seconds: float = 0.0  # wall time of the pass
    segments: list[SegmentStats] = field(default_factory=list)
    # The language the pass decoded in: the one asked for, or (asked for none) the one the model
    # detected, with the detection's probability (1.0 when it was asked for).
    language: str | None = None
    language_probability: float = 1.0


def max_new_tokens(seconds: float) -> int:
    """A token budget no real speech exceeds (about 4 words/s): it cuts decoder loops short."""
    return int(10 + 8 * seconds)


def is_glued(raw: str, index: int) -> bool:
    """Whether a decoder word, as the decoder wrote it (before stripping), has no space before it.

    Whisper's word splitter (faster-whisper's and OpenVINO GenAI's, both after openai/whisper)
    starts a new word at a token with a leading space or at a punctuation token, and merges
    punctuation into the word after it: "o'clock" comes out as " o" and "'clock". Only the missing
    space tells the second part belongs to the first. The first word of a pass has nothing in
    that pass to continue. In scripts written without spaces (Chinese, Japanese, Thai) every word
    is glued: it joins the previous one without a space, but a commit may still end before it
    (``words.continues_word``).
    """
    return index > 0 and bool(raw) and not raw[0].isspace()


class Engine(Protocol):
    name: str
    device: str
    model: str

    def transcribe(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> Hypothesis:
        """One pass. ``language`` None: the model detects it, among ``candidates`` when given
        (the languages the pipeline can do something with), and the hypothesis says which."""
        ...

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[Hypothesis]: ...


def resolve_model_path(model: str) -> Path:
    """A spec's model string as a local directory: a packaged model (tiny.en, base) or a mounted path.

    Other size names would need a download from a model hub, which production pods must not
    depend on at startup: those deployments mount converted weights and name the path.
    """
    name = model or PACKAGED_MODEL
    if name in PACKAGED:
        return packaged_model_dir(name)
    path = Path(name.removeprefix("file://")).expanduser()
    if path.is_dir():
        return path
    raise ModelLoadError(
        f"model {model!r} is neither a packaged model ({', '.join(PACKAGED)}) nor an existing directory; "
        "mount converted weights and set spec.audio.model (or LT_AUDIO_MODEL) to their path"
    )


def is_openvino_dir(path: Path) -> bool:
    return (path / "openvino_encoder_model.xml").exists()


# Mel frames per second of audio; Whisper's encoder was trained on 3000 frames (30 s).
_FRAMES_PER_SECOND = 100
_FULL_FRAMES = 3000


def _dynamic_pad_or_trim(array: np.ndarray, length: int = _FULL_FRAMES, *, axis: int = -1) -> np.ndarray:
    """Pad mel features to the audio's length (plus one second, in whole seconds), not to 30 s.

    faster-whisper pads every window to 30 s before the encoder, whose cost grows faster than
    linearly with length: re-decoding a 3 s streaming buffer then costs as much as 30 s of audio.
    CTranslate2's encoder accepts shorter inputs; measured here on espeak-ng sentences it is about
    5x faster with no loss in word error rate (see benchmarks/results/audio*.md).
    """
    from faster_whisper.audio import pad_or_trim

    n = array.shape[axis]
    target = min(length, int(np.ceil((n + _FRAMES_PER_SECOND) / _FRAMES_PER_SECOND)) * _FRAMES_PER_SECOND)
    return pad_or_trim(array, target, axis=axis)


def _set_dynamic_padding(enabled: bool) -> None:
    """faster-whisper looks ``pad_or_trim`` up as a module global on every window: swap it."""
    import faster_whisper.audio
    import faster_whisper.transcribe

    faster_whisper.transcribe.pad_or_trim = (  # type: ignore[attr-defined]
        _dynamic_pad_or_trim if enabled else faster_whisper.audio.pad_or_trim
    )


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
        import time

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
            if seg.words is None:
                hyp.words += [
                    Word(w.text, w.start, w.end, 1.0, index)
                    for w in _spread_words(seg.text, None, 0.0, float(seg.start), float(seg.end))
                ]
            for w in seg.words or []:
                if w.word.strip():
                    hyp.words.append(
                        Word(
                            w.word.strip(),
                            float(w.start),
                            float(w.end),
                            float(w.probability),
                            index,
                            is_glued(w.word, len(hyp.words)),
                        )
                    )
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
        import time

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
        longest = max(f.shape[-1] for f in feats)
        frames = min(
            _FULL_FRAMES,
            int(np.ceil((longest + _FRAMES_PER_SECOND) / _FRAMES_PER_SECOND)) * _FRAMES_PER_SECOND,
        )
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
        hyps = []
        for segs in outputs:
            hyp = Hypothesis(seconds=elapsed / len(audios), language=from_whisper(lang))
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
                if "words" not in seg:
                    hyp.words += [
                        Word(w.text, w.start, w.end, 1.0, index)
                        for w in _spread_words(text, None, 0.0, float(seg["start"]), float(seg["end"]))
                    ]
                for w in seg.get("words") or []:
                    raw = str(w["word"])
                    if raw.strip():
                        hyp.words.append(
                            Word(
                                raw.strip(),
                                float(w["start"]),
                                float(w["end"]),
                                float(w["probability"]),
                                index,
                                is_glued(raw, len(hyp.words)),
                            )
                        )
            hyp.text = " ".join(sg.text for sg in hyp.segments).strip()
            if hyp.segments:
                hyp.no_speech_prob = max(sg.no_speech_prob for sg in hyp.segments)
                hyp.avg_logprob = float(np.mean([sg.avg_logprob for sg in hyp.segments]))
                hyp.compression_ratio = max(sg.compression_ratio for sg in hyp.segments)
            hyps.append(hyp)
        return hyps

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


class OpenVinoEngine:
    """OpenVINO GenAI WhisperPipeline over an IR made by ``livetranslate convert-openvino``.

    NPU needs static shapes and a stateless decoder; the compiled blob is cached in CACHE_DIR
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
        import time

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
            for w in words:
                raw = str(w.word)
                if raw.strip():
                    hyp.words.append(
                        Word(
                            raw.strip(),
                            float(w.start_ts),
                            float(w.end_ts),
                            glued=is_glued(raw, len(hyp.words)),
                        )
                    )
        else:
            hyp.words = _spread_words(hyp.text, getattr(result, "chunks", None), len(audio) / SAMPLE_RATE)
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


def _spread_words(
    text: str, chunks: Any, duration: float, start: float = 0.0, end: float | None = None
) -> list[Word]:
    """Word times when the engine gives only chunk (or no) timestamps: spread evenly by length.

    Rough, but enough for LocalAgreement (which compares words, not times) and for trimming.
    Words split at whitespace are whole words, so none of them is glued to the one before.
    """
    spans: list[tuple[str, float, float]] = []
    if chunks:
        spans = [
            (str(c.text), float(c.start_ts), float(c.end_ts if c.end_ts >= 0 else duration)) for c in chunks
        ]
    elif text:
        spans = [(text, start, duration if end is None else end)]
    words: list[Word] = []
    for chunk_text, t0, t1 in spans:
        parts = chunk_text.split()
        total = sum(len(p) for p in parts) or 1
        t = t0
        for p in parts:
            d = (t1 - t0) * len(p) / total
            words.append(Word(p, t, t + d))
            t += d
    return words


def load_engine(settings: AudioSettings) -> Engine:
    """The engine the settings and the placed device call for; raises ModelLoadError."""
    model_name = settings.model or PACKAGED_MODEL
    model_dir = resolve_model_path(model_name)
    device = settings.device
    engine = settings.engine
    if engine == "auto":
        engine = "openvino" if device == "npu" or is_openvino_dir(model_dir) else "faster-whisper"
    if engine == "openvino":
        if not is_openvino_dir(model_dir):
            raise ModelLoadError(
                f"{model_dir} is not an OpenVINO IR; run `livetranslate convert-openvino` and point "
                "spec.audio.model at its output"
            )
        ov_device = settings.openvino_device or {"npu": "NPU", "gpu": "GPU"}.get(device, "CPU")
        return OpenVinoEngine(
            model_dir,
            ov_device,
            settings.openvino_cache_dir,
            model_name,
            device="cpu" if device == "auto" else device,
        )
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    if device == "npu":
        raise ModelLoadError("the npu device needs the openvino engine and an OpenVINO IR model")
    on_gpu = device in ("gpu", "cuda")
    compute_type = settings.compute_type or ("float16" if on_gpu else "int8")
    log.info(
        "loading faster-whisper",
        extra={
            "fields": {
                "model_dir": str(model_dir),
                "device": device,
                "compute_type": compute_type,
                "workers": settings.worker_count(),
                "cpu_threads": settings.cpu_threads(),
            }
        },
    )
    return FasterWhisperEngine(
        model_dir,
        "cuda" if on_gpu else "cpu",
        compute_type,
        settings.worker_count(),
        settings.cpu_threads(),
        settings.beam_size,
        model_name,
        settings.dynamic_padding,
    )


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except (ImportError, RuntimeError):
        return False
