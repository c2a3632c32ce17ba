"""Real speech for tests and benchmarks: espeak-ng voices through sox, and word error rate.

Shared by the audio, gateway and end-to-end tests and by the benchmarks, so every figure is
measured on audio made the same way. Needs the Debian packages espeak-ng and sox.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

# Sentences with ordinary vocabulary: what a meeting sounds like, and what tiny.en gets mostly right.
SENTENCES = (
    "The meeting will start in five minutes.",
    "Please open the quarterly report on your screen.",
    "We need to finish the project before the end of the month.",
    "The weather today is cold and rainy.",
    "Thank you all for coming to the town hall this evening.",
    "Our new office is next to the train station.",
    "I would like to ask a question about the budget.",
    "The children are playing in the park with their dog.",
)


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str = "en-us"
    pause_after: float = 0.8  # seconds of silence after the utterance


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install espeak-ng sox")


def speak(text: str, voice: str = "en-us", rate_wpm: int = 160) -> np.ndarray:
    """One utterance as float32 mono samples at 16 kHz."""
    require_tools()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        out = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        # -R: sox dithers the 16-bit output with a fresh random seed on every run unless told to
        # repeat; the same text must give the same samples, or a test draws a new input each run
        subprocess.run(
            ["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)],
            check=True,
            capture_output=True,
        )
        return read_wav(out)[0]


def compose(
    utterances: Sequence[Utterance], lead_silence: float = 0.5
) -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    """Utterances joined by pauses. Returns samples and (start, end, text, voice) per utterance."""
    parts = [np.zeros(int(lead_silence * SAMPLE_RATE), dtype=np.float32)]
    spans: list[tuple[float, float, str, str]] = []
    t = lead_silence
    for u in utterances:
        samples = speak(u.text, u.voice)
        spans.append((t, t + len(samples) / SAMPLE_RATE, u.text, u.voice))
        parts.append(samples)
        parts.append(np.zeros(int(u.pause_after * SAMPLE_RATE), dtype=np.float32))
        t += len(samples) / SAMPLE_RATE + u.pause_after
    return np.concatenate(parts), spans


def add_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise at the given signal-to-noise ratio (over the whole signal's power)."""
    rng = np.random.default_rng(seed)
    power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-9
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=samples.shape)
    return np.clip(samples + noise, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the file's sample rate (16-bit PCM WAV)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            frames = frames.reshape(-1, w.getnchannels()).mean(axis=1).astype("<i2")
        return (frames.astype(np.float32) / 32768.0), w.getframerate()


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


_UNITS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _spoken(number: int) -> list[str]:
    """0-99 as the words a speaker says ("25" -> twenty five)."""
    if number < 20:
        return [_UNITS[number]]
    tens, unit = divmod(number, 10)
    return [_TENS[tens - 2]] + ([_UNITS[unit]] if unit else [])


def normalize(text: str) -> list[str]:
    """Lower-case words of any script without punctuation, numbers under 100 spelt out in English
    ("12%" -> twelve percent); accents stay ("años" is not "anos").

    Whisper writes numbers as digits, scripts and references spell them: without this, "twenty
    minutes" heard as "20 minutes" would count as an error in every system compared.
    """
    text = text.casefold().replace("%", " percent ").replace("\u2019", "'")
    out: list[str] = []
    for w in re.sub(r"[^\w' ]+|_", " ", text).split():
        out += _spoken(int(w)) if w.isdecimal() and int(w) < 100 else [w]
    return out


def word_error_rate(reference: str, hypothesis: str) -> float:
    """jiwer's word error rate over ``normalize``d words (1.0 for an empty hypothesis)."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(" ".join(ref), " ".join(hyp)))
