"""Soak and load (issue 6, item 5): real-time sessions through `livetranslate up` for a long time,
with one upstream (audio, then translation, alternately) killed by its pid at a fixed interval.

What a user of a long meeting would notice, measured:

* **Finals lost.** Every session loops varied espeak-ng utterances (8 sentences x 3 voices, in a
  random order) with random pauses, paced like a microphone, and keeps the ground truth: each
  utterance's span in session seconds. An utterance is *delivered* when at least one final
  overlaps its span (widened by ``SPAN_SLACK`` s either side, for Whisper's timestamp error);
  delivered utterances whose overlapping finals hold under half of its words are counted apart as
  *garbled* (a recognition problem, not a loss). An utterance that no final overlaps is *lost*.
  The matching is by time because a final's text may merge two utterances or miss words.
* **Finals duplicated.** The same segmentId twice, or two finals with the same normalised text
  whose time spans overlap. Finals that overlap in time by more than ``OVERLAP_DUP`` s with
  different text are counted as partial duplicates (a replayed stretch transcribed twice).
* **Translations**: one per final and target language; missing ones and repeats are counted.
* **RSS of every process** (up, gateway, audio, translation, the translation's apertium-apy
  helpers, anything else under up) sampled from /proc: growth from the first to the last quarter
  of the run (tolerance: the larger of ``RSS_TOLERANCE_MIB`` and ``RSS_TOLERANCE_FRACTION``) and the
  least-squares slope in MiB/hour. Audio and translation restart during the run, so their series
  are per incarnation: growth is measured on the samples of each incarnation older than 60 s.
* **Caption latency** (end of speech -> final at the client, as ``bench_e2e.py`` defines it) per
  time bucket, and in the minute after each restart.

Machine load is recorded next to the figures: the sessions' audio senders record how far behind
the microphone schedule they fell, so a run the machine could not keep real time says so.

Run: ``.venv/bin/python -P benchmarks/bench_soak.py`` (30 min, 8 sessions, a restart every 5 min);
``--duration 240 --restart-every 60`` for a short run. Writes ``benchmarks/results/soak.json`` and
``soak.md`` (with ``reliability`` rows for RELIABILITY.md) and ``docs/img/soak.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livetranslate import procs
from livetranslate_testing.figures import percentile, provenance, provenance_line, write_result
from livetranslate_testing.speech import SAMPLE_RATE, SENTENCES, normalize, speak, to_pcm16, word_error_rate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import CHUNK_SECONDS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ITEM = "5 Soak and load"
VOICES = ("en-us", "en-gb", "en-us+f3")
SPAN_SLACK = 0.5  # seconds either side of an utterance a final may start or end early/late
OVERLAP_DUP = 0.5  # two finals sharing more than this many seconds of audio: a partial duplicate
RSS_TOLERANCE_MIB = 16.0
RSS_TOLERANCE_FRACTION = 0.05
# Seconds after a start or restart of a model stage not used for growth: models load, then the
# audio service's heap grows for minutes as new buffer lengths and batch sizes arrive. Measured on
# the audio service alone (17 min, 105 sessions; 13 min, 582 short sessions): RSS plateaus after
# 5-7 min, malloc'd bytes flat at 227-250 MiB from the first minute, the rest free heap glibc keeps.
INCARNATION_WARMUP = 300.0
LATENCY_SLO = 1.5  # spec.scaling.latencySLO.p95Seconds default
REALTIME_BOUND_S = 10.0  # a last-quarter p95 caption latency above this is not keeping up


# ------------------------------------------------------------------------------------ sessions


@dataclass
class Final:
    segment: int
    text: str
    start: float
    end: float
    received: float  # seconds since the run began
    latency: float  # end of speech -> received at the client
    gateway_latency: float | None


@dataclass
class SessionLog:
    index: int
    spans: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, text) sent
    finals: list[Final] = field(default_factory=list)
    translations: list[tuple[int, str, float]] = field(default_factory=list)  # (segment, lang, latency)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, code, message)
    ended: bool = False
    failure: str | None = None
    chunks: int = 0
    late_chunks: int = 0  # sent more than 0.5 s behind the microphone schedule
    max_lag: float = 0.0
    audio_seconds: float = 0.0
    t0: float = 0.0  # run seconds at which session second 0 was spoken


class Speaker:
    """An endless talk: random utterances with random pauses, produced 100 ms at a time."""

    def __init__(self, clips: list[tuple[str, np.ndarray]], seed: int) -> None:
        self.clips = clips
        self.rng = random.Random(seed)
        self.buf = np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.float32)
        self.t = 0.0  # session seconds of buf[0]
        self.spans: list[tuple[float, float, str]] = []
        self.stopping = False

    def _extend(self) -> None:
        text, clip = self.clips[self.rng.randrange(len(self.clips))]
        begin = self.t + len(self.buf) / SAMPLE_RATE
        self.spans.append((round(begin, 3), round(begin + len(clip) / SAMPLE_RATE, 3), text))
        pause = np.zeros(int(self.rng.uniform(1.0, 2.5) * SAMPLE_RATE), dtype=np.float32)
        self.buf = np.concatenate([self.buf, clip, pause])

    def chunk(self, n: int) -> np.ndarray | None:
        """The next ``n`` samples; None once stopping and the current utterance and pause are out."""
        if len(self.buf) == 0 and self.stopping:
            return None
        while len(self.buf) < n and not self.stopping:
            self._extend()
        out, self.buf = self.buf[:n], self.buf[n:]
        self.t += len(out) / SAMPLE_RATE
        return out


async def run_session(
    url: str, log: SessionLog, speaker: Speaker, t_run: float, stop: asyncio.Event, delay: float
) -> None:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    starts: dict[int, float] = {}
    try:
        async with connect(url, max_size=4 * 1024 * 1024, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "session.start", "sampleRate": SAMPLE_RATE}))
            first = json.loads(await ws.recv())
            if first.get("type") != "session.started":
                raise RuntimeError(f"session.start answered with {first}")
            t0 = time.monotonic()
            log.t0 = t0 - t_run

            async def send() -> None:
                n = int(SAMPLE_RATE * CHUNK_SECONDS)
                k = 0
                while True:
                    if stop.is_set():
                        speaker.stopping = True
                    samples = speaker.chunk(n)
                    if samples is None:
                        break
                    due = t0 + (k + 1) * CHUNK_SECONDS  # a chunk leaves once spoken
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    lag = time.monotonic() - due
                    log.max_lag = max(log.max_lag, lag)
                    log.late_chunks += lag > 0.5
                    log.chunks += 1
                    await ws.send(to_pcm16(samples))
                    k += 1
                log.audio_seconds = speaker.t
                await ws.send('{"type": "session.end"}')

            sender = asyncio.create_task(send())
            try:
                async for raw in ws:
                    now = time.monotonic()
                    ev = json.loads(raw)
                    kind = ev.get("type")
                    if kind == "transcript.final":
                        log.finals.append(
                            Final(
                                ev["segmentId"],
                                ev["text"],
                                ev["start"],
                                ev["end"],
                                now - t_run,
                                now - (t0 + ev["end"]),
                                ev.get("latency"),
                            )
                        )
                        starts[ev["segmentId"]] = t0 + ev["end"]
                    elif kind == "translation":
                        # A sentence's translation stands for each final it covers; its latency
                        # counts once, from the end of its last final's speech.
                        spoken = starts.get(ev["segmentId"])
                        for seg in ev.get("segmentIds") or [ev["segmentId"]]:
                            lat = (
                                now - spoken
                                if seg == ev["segmentId"] and spoken is not None
                                else float("nan")
                            )
                            log.translations.append((seg, ev["language"], lat))
                    elif kind == "error":
                        log.errors.append((now - t_run, ev.get("code", ""), ev.get("message", "")))
                    elif kind == "session.ended":
                        log.ended = True
                        break
            finally:
                if not sender.done():
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
    except Exception as exc:  # noqa: BLE001 - a session that breaks is a figure, not a crash
        log.failure = f"{type(exc).__name__}: {exc}"
    log.spans = list(speaker.spans)


# ------------------------------------------------------------------------------ up and /proc


class UpWatch:
    """`livetranslate up` started as a user starts it; its pids and restarts read from its output."""

    def __init__(self, log_path: Path, log_dir: Path) -> None:
        self.log_path = log_path
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "livetranslate.cli",
            "up",
            "--port",
            "0",
            "--log-dir",
            str(log_dir),
        ]
        self.proc = procs.start(cmd, env={"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}, log=log_path)

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def pid_of(self, stage: str) -> int | None:
        pids = [
            int(m.group(1))
            for line in self.lines()
            if (m := re.match(rf"{stage}: starting on \S+ \(pid (\d+)\)", line))
        ]
        return pids[-1] if pids else None

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                    return f"ws://127.0.0.1:{m.group(1)}/v1/stream"
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"livetranslate up did not get ready; see {self.log_path}")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, RSS MiB) for every process we can read."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if ppid:
            table[int(entry.name)] = (int(ppid.group(1)), int(rss.group(1)) / 1024 if rss else 0.0)
    return table


def sample_rss(up_pid: int, stage_pids: dict[str, int | None]) -> dict[str, Any]:
    """RSS by role: up, each stage, the translation's helpers, and anything else under up."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)

    def tree(root: int) -> list[int]:
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                out.append(pid)
                todo.extend(kids.get(pid, []))
        return out

    roles: dict[str, float] = {"up": table.get(up_pid, (0, 0.0))[1]}
    counted = {up_pid}
    for stage in ("gateway", "audio", "translation"):
        spid = stage_pids.get(stage)
        if spid is None or spid not in table:
            roles[stage] = 0.0
            continue
        helpers = [p for p in tree(spid) if p != spid]
        counted.update([spid, *helpers])
        if stage == "translation":  # apertium-apy and its pipeline: shown apart from the service
            roles[stage] = table[spid][1]
            roles["translation helpers"] = sum(table[p][1] for p in helpers)
        else:
            roles[stage] = table[spid][1] + sum(table[p][1] for p in helpers)
    everything = tree(up_pid)
    others = [p for p in everything if p not in counted]
    roles["other (orphans)"] = sum(table[p][1] for p in others)
    return {
        "rss_mib": {k: round(v, 1) for k, v in roles.items()},
        "processes": len(everything),
        "other_processes": len(others),
        "pids": dict(stage_pids),
    }


# -------------------------------------------------------------------------------- evaluation


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


def evaluate_session(log: SessionLog, languages: list[str]) -> dict[str, Any]:
    finals = log.finals
    lost: list[dict[str, Any]] = []
    # A lost utterance before the session's last final is a hole in the transcript; one after it
    # was still queued (not yet transcribed) when the session ended and the gateway's flush timed
    # out: a backlog the machine could not work off, not an utterance dropped by a restart.
    last_end = max((f.end for f in finals), default=0.0)
    garbled = 0
    wers: list[float] = []
    for start, end, text in log.spans:
        hits = [f for f in finals if _overlap(f.start, f.end, start - SPAN_SLACK, end + SPAN_SLACK) > 0]
        if not hits:
            lost.append(
                {"start": start, "end": end, "text": text, "spoken_at_run_s": round(log.t0 + start, 1)}
            )
            continue
        ref = set(normalize(text))
        got = {w for f in hits for w in normalize(f.text)}
        if len(ref & got) < len(ref) / 2:
            garbled += 1
        wers.append(word_error_rate(text, " ".join(f.text for f in hits)))
    ids = [f.segment for f in finals]
    dup_ids = len(ids) - len(set(ids))
    dup_text = 0
    partial = 0
    ordered = sorted(finals, key=lambda f: f.start)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start > a.end:
                break
            ov = _overlap(a.start, a.end, b.start, b.end)
            if ov > 0 and normalize(a.text) == normalize(b.text):
                dup_text += 1
            elif ov > OVERLAP_DUP:
                partial += 1
    spurious = sum(
        1
        for f in finals
        if not any(_overlap(f.start, f.end, s - SPAN_SLACK, e + SPAN_SLACK) > 0 for s, e, _ in log.spans)
    )
    got_tr: dict[tuple[int, str], int] = {}
    for seg, lang, _lat in log.translations:
        got_tr[(seg, lang)] = got_tr.get((seg, lang), 0) + 1
    missing_tr = sum(1 for f in finals for lang in languages if (f.segment, lang) not in got_tr)
    dup_tr = sum(n - 1 for n in got_tr.values() if n > 1)
    holes = sum(1 for u in lost if u["start"] < last_end)
    codes: dict[str, int] = {}
    for _t, code, _m in log.errors:
        codes[code] = codes.get(code, 0) + 1
    return {
        "session": log.index,
        "utterances": len(log.spans),
        "finals": len(finals),
        "lost": len(lost),
        "lost_holes": holes,
        "lost_at_end": len(lost) - holes,
        "lost_utterances": lost[:10],
        "garbled": garbled,
        "error_codes": codes,
        "mean_wer": round(statistics.fmean(wers), 3) if wers else None,
        "duplicate_segment_ids": dup_ids,
        "duplicate_texts": dup_text,
        "partial_duplicates": partial,
        "spurious_finals": spurious,
        "translations": len(log.translations),
        "translations_missing": missing_tr,
        "translations_duplicated": dup_tr,
        "errors": len(log.errors),
        "ended": log.ended,
        "failure": log.failure,
        # Overload as the client is told of it: the decoder's "overloaded", and the gateway
        # dropping the oldest audio its replay buffer could not hand to the audio service.
        "overloaded": codes.get("overloaded", 0),
        "audio_dropped": sum(1 for _t, _c, m in log.errors if "replay buffer" in m),
        "audio_seconds": round(log.audio_seconds, 1),
        "max_send_lag_s": round(log.max_lag, 3),
        "late_chunk_fraction": round(log.late_chunks / log.chunks, 4) if log.chunks else None,
    }


def _fit_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (units per second) of (t, value) points."""
    if len(points) < 3:
        return None
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den if den else None


def rss_growth(samples: list[dict[str, Any]], duration: float) -> dict[str, dict[str, Any]]:
    """Per role: first- and last-quarter medians, growth, slope; restarted roles per incarnation."""
    out: dict[str, dict[str, Any]] = {}
    roles = list(samples[0]["rss_mib"]) if samples else []
    for role in roles:
        stage = (
            role
            if role in ("gateway", "audio", "translation")
            else ("translation" if role == "translation helpers" else None)
        )
        # Split the series where the stage's pid changed: a fresh process is a fresh baseline.
        series: list[list[tuple[float, float]]] = []
        last_pid: Any = object()
        born = 0.0
        for s in samples:
            pid = s["pids"].get(stage) if stage else "up"
            if pid != last_pid:
                series.append([])
                last_pid, born = pid, s["t"]
            rss = s["rss_mib"].get(role, 0.0)
            # Every incarnation skips its warm-up, the first too; a stage read as 0 MiB was killed
            # and not yet replaced: not a sample of any process.
            if s["t"] - born >= (INCARNATION_WARMUP if stage in ("audio", "translation") else 0.0) and (
                stage is None or rss > 0
            ):
                series[-1].append((s["t"], rss))
        all_points = [(s["t"], s["rss_mib"].get(role, 0.0)) for s in samples]
        q = duration / 4
        first = [v for t, v in all_points if t <= samples[0]["t"] + q]
        last = [v for t, v in all_points if t >= samples[-1]["t"] - q]
        slopes = [(len(pts), sl) for pts in series if (sl := _fit_slope(pts)) is not None]
        slope = (sum(n * sl for n, sl in slopes) / sum(n for n, _ in slopes)) if slopes else None
        # Growth within incarnations: each one's last-quarter median minus its first-quarter median.
        growths = []
        for pts in series:
            if len(pts) >= 8:
                k = max(1, len(pts) // 4)
                growths.append(
                    statistics.median(v for _, v in pts[-k:]) - statistics.median(v for _, v in pts[:k])
                )
        base = statistics.median(first) if first else 0.0
        growth: float | None = (
            (statistics.median(last) - base)
            if (first and last and len(series) == 1)
            else (max(growths) if growths else None)
        )  # None: no process lived past its warm-up long enough
        tolerance = max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * base)
        out[role] = {
            "first_quarter_median_mib": round(base, 1),
            "last_quarter_median_mib": round(statistics.median(last), 1) if last else None,
            "incarnations": len(series),
            "growth_mib": round(growth, 1) if growth is not None else None,
            "slope_mib_per_hour": round(slope * 3600, 1) if slope is not None else None,
            "tolerance_mib": round(tolerance, 1),
            "flat": growth <= tolerance if growth is not None else None,
            "warmup_s": INCARNATION_WARMUP if stage in ("audio", "translation") else 0.0,
        }
    return out


def captions_back(logs: list[SessionLog], kills: list[dict[str, Any]]) -> None:
    """Per kill: seconds from the kill to the first final (any session) for speech that began after
    it, i.e. how long new captions stopped; and the same for translations after a translation kill."""
    for kill in kills:
        firsts = [f.received - kill["t"] for log in logs for f in log.finals if log.t0 + f.start > kill["t"]]
        kill["first_final_after_s"] = round(min(firsts), 2) if firsts else None


def latency_buckets(
    logs: list[SessionLog], kills: list[dict[str, Any]], bucket: float
) -> list[dict[str, Any]]:
    finals = [f for log in logs for f in log.finals]
    if not finals:
        return []
    n = int(max(f.received for f in finals) // bucket) + 1
    rows = []
    for i in range(n):
        lo, hi = i * bucket, (i + 1) * bucket
        lat = [f.latency for f in finals if lo <= f.received < hi]
        gw = [f.gateway_latency for f in finals if lo <= f.received < hi and f.gateway_latency is not None]
        events = [k["stage"] for k in kills if lo <= k["t"] < hi]
        rows.append(
            {
                "minute": round(lo / 60, 2),
                "finals": len(lat),
                "p50_s": round(percentile(lat, 0.5), 3) if lat else None,
                "p95_s": round(percentile(lat, 0.95), 3) if lat else None,
                "max_s": round(max(lat), 3) if lat else None,
                "gateway_p95_s": round(percentile(gw, 0.95), 3) if gw else None,
                "killed": events,
            }
        )
    return rows


def latency_trend(logs: list[SessionLog], duration: float) -> dict[str, Any]:
    """Whether the pipeline kept up: caption latency in the first and last quarter of the run. A
    machine that cannot serve the sessions in real time shows a latency that keeps growing."""
    finals = [f for log in logs for f in log.finals]
    first = [f.latency for f in finals if f.received < duration / 4]
    last = [f.latency for f in finals if 3 * duration / 4 <= f.received < duration]
    p_first = percentile(first, 0.95) if first else None
    p_last = percentile(last, 0.95) if last else None
    return {
        "first_quarter_p95_s": round(p_first, 3) if p_first is not None else None,
        "last_quarter_p95_s": round(p_last, 3) if p_last is not None else None,
    }


def overload_signals(result: dict[str, Any]) -> tuple[int, int, bool]:
    """(decoder overloaded notices, gateway audio drops, whether the drops are estimated).

    Results recorded before the drops were counted from their messages carry only error codes:
    there, notices of code upstream_unavailable beyond one per kill are the drops (a lower bound).
    """
    sessions = result["sessions"]
    overloaded = sum(s.get("error_codes", {}).get("overloaded", 0) for s in sessions)
    if all("audio_dropped" in s for s in sessions):
        return overloaded, sum(s["audio_dropped"] for s in sessions), False
    kills = len(result["restarts"])
    est = sum(max(0, s.get("error_codes", {}).get("upstream_unavailable", 0) - kills) for s in sessions)
    return overloaded, est, True


def kept_real_time(result: dict[str, Any]) -> bool:
    """Bounded latency that did not grow, and no audio shed by the gateway. Keeping up looks like a
    p95 near the SLO (1.1 s measured at 4 sessions on a quiet machine); REALTIME_BOUND_S is far
    above it. A decoder "overloaded" notice alone does not count: one comes after most audio
    restarts, while the fresh decoder works through the replayed audio."""
    trend = result["latency_trend"]
    first, last = trend["first_quarter_p95_s"], trend["last_quarter_p95_s"]
    _, dropped, _ = overload_signals(result)
    return (
        first is not None
        and last is not None
        and last <= REALTIME_BOUND_S
        and last <= max(2 * first, first + 2.0)
        and dropped == 0
    )


def around_restarts(logs: list[SessionLog], kills: list[dict[str, Any]], window: float) -> dict[str, Any]:
    """p95 caption latency of finals received within ``window`` s after each kind of restart, and
    of the rest of the run."""
    finals = [f for log in logs for f in log.finals]
    out: dict[str, Any] = {}
    near: set[int] = set()
    for stage in ("audio", "translation"):
        ts = [k["t"] for k in kills if k["stage"] == stage]
        picked = [(i, f) for i, f in enumerate(finals) if any(t <= f.received < t + window for t in ts)]
        near.update(i for i, _ in picked)
        lat = [f.latency for _, f in picked]
        out[f"after_{stage}_restart"] = {
            "finals": len(lat),
            "p95_s": round(percentile(lat, 0.95), 3) if lat else None,
            "max_s": round(max(lat), 3) if lat else None,
        }
    rest = [f.latency for i, f in enumerate(finals) if i not in near]
    out["steady"] = {
        "finals": len(rest),
        "p95_s": round(percentile(rest, 0.95), 3) if rest else None,
        "max_s": round(max(rest), 3) if rest else None,
    }
    tr = [lat for log in logs for (_s, _l, lat) in log.translations if not math.isnan(lat)]
    out["translation_p95_s"] = round(percentile(tr, 0.95), 3) if tr else None
    return out


# -------------------------------------------------------------------------------------- run


async def soak(
    args: argparse.Namespace, up: UpWatch, url: str, clips: list[tuple[str, np.ndarray]], t_run: float
) -> tuple[list[SessionLog], list[dict[str, Any]], list[dict[str, Any]]]:
    stop = asyncio.Event()
    logs = [SessionLog(i) for i in range(args.sessions)]
    speakers = [Speaker(clips, args.seed + i) for i in range(args.sessions)]
    kills: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    stages = [s for s in args.restart_stages.split(",") if s]

    def now() -> float:
        return time.monotonic() - t_run

    def pids() -> dict[str, int | None]:
        return {s: up.pid_of(s) for s in ("gateway", "audio", "translation")}

    async def killer() -> None:
        k = 0
        while stages and (args.max_restarts is None or k < args.max_restarts):
            at = args.first_restart + k * args.restart_every
            if at >= args.duration - 5:
                return
            await asyncio.sleep(max(0.0, at - now()))
            stage = stages[k % len(stages)]
            pid = up.pid_of(stage)
            mark = len(up.lines())
            if pid is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            kill = {
                "t": round(now(), 2),
                "stage": stage,
                "pid": pid,
                "ready_after_s": None,
                "loadavg": os.getloadavg(),
            }
            kills.append(kill)
            print(json.dumps({"event": "killed", **kill}), flush=True)
            k += 1
            # Recovery: up says "<stage>: ready in X s (restarted)" once the new process answers.
            while now() < args.duration + 60:
                if any(re.match(rf"{stage}: ready in .*\(restarted\)", ln) for ln in up.lines()[mark:]):
                    kill["ready_after_s"] = round(now() - kill["t"], 2)
                    break
                await asyncio.sleep(0.25)

    async def sampler() -> None:
        while True:
            s = await asyncio.to_thread(sample_rss, up.proc.pid, pids())
            s["t"] = round(now(), 2)
            s["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            samples.append(s)
            await asyncio.sleep(args.sample_every)

    async def timer() -> None:
        while now() < args.duration:
            await asyncio.sleep(min(10.0, args.duration - now()))
            done = sum(len(log.finals) for log in logs)
            print(
                json.dumps(
                    {"event": "progress", "t": round(now()), "finals": done, "loadavg": os.getloadavg()}
                ),
                flush=True,
            )
        stop.set()

    side = [asyncio.create_task(killer()), asyncio.create_task(sampler()), asyncio.create_task(timer())]
    sessions = [
        asyncio.create_task(
            asyncio.wait_for(
                run_session(url, log, sp, t_run, stop, i * 0.37), args.duration + args.end_timeout
            )
        )
        for i, (log, sp) in enumerate(zip(logs, speakers, strict=True))
    ]
    results = await asyncio.gather(*sessions, return_exceptions=True)
    for log, res in zip(logs, results, strict=True):
        if isinstance(res, BaseException) and log.failure is None:
            log.failure = f"{type(res).__name__}: {res}"
    for task in side:
        task.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    # One last sample after the sessions ended, for orphans.
    last = sample_rss(up.proc.pid, pids())
    last["t"] = round(now(), 2)
    last["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    samples.append(last)
    return logs, kills, samples


def make_clips() -> list[tuple[str, np.ndarray]]:
    return [(text, speak(text, voice)) for text in SENTENCES for voice in VOICES]


def rows_for(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The reliability rows (see RELIABILITY.md) this run supports."""
    t = result["totals"]
    lat = result["latency"]
    cfg = result["config"]
    rows: list[dict[str, Any]] = [
        {
            "item": ITEM,
            "figure": f"finals lost ({t['utterances']} utterances, {cfg['sessions']} sessions, "
            f"{cfg['duration_s'] / 60:.0f} min, {len(result['restarts'])} upstream restarts)",
            "value": t["lost"],
            "unit": "utterances",
            "target": "0",
            "met": t["lost"] == 0,
        },
        {
            "item": ITEM,
            "figure": "of which holes (no final while later speech got one), the rest still queued "
            "when the session ended",
            "value": t["lost_holes"],
            "unit": "utterances",
            "target": "0",
            "met": t["lost_holes"] == 0,
        },
        {
            "item": ITEM,
            "figure": "finals duplicated (same segment id, or same text over the same audio)",
            "value": t["duplicate_segment_ids"] + t["duplicate_texts"],
            "unit": "finals",
            "target": "0",
            "met": t["duplicate_segment_ids"] + t["duplicate_texts"] == 0,
        },
        {
            "item": ITEM,
            "figure": "finals overlapping another final's audio by > 0.5 s (partial duplicates)",
            "value": t["partial_duplicates"],
            "unit": "finals",
            "target": "0",
            "met": t["partial_duplicates"] == 0,
        },
        {
            "item": ITEM,
            "figure": "translations missing or repeated (every final in one translated sentence)",
            "value": t["translations_missing"] + t["translations_duplicated"],
            "unit": "translations",
            "target": "0",
            "met": t["translations_missing"] + t["translations_duplicated"] == 0,
        },
        {
            "item": ITEM,
            "figure": "sessions that failed or did not end cleanly",
            "value": t["sessions_failed"],
            "unit": "sessions",
            "target": "0",
            "met": t["sessions_failed"] == 0,
        },
    ]
    for role, g in result["rss"].items():
        if role == "other (orphans)":
            continue
        rows.append(
            {
                "item": ITEM,
                "figure": f"RSS growth, {role} ({g['first_quarter_median_mib']} MiB at "
                f"start; slope {g['slope_mib_per_hour']} MiB/h; {g['incarnations']} process(es)"
                + ("; none lived past its warm-up" if g["flat"] is None else "")
                + ")",
                "value": g["growth_mib"] if g["growth_mib"] is not None else "not measured",
                "unit": "MiB" if g["growth_mib"] is not None else "",
                "target": f"flat (<= {g['tolerance_mib']} MiB)",
                "met": g["flat"],
            }
        )
    rows.append(
        {
            "item": ITEM,
            "figure": "processes left orphaned under up after restarts (end of run)",
            "value": result["orphans_at_end"],
            "unit": "processes",
            "target": "0",
            "met": result["orphans_at_end"] == 0,
        }
    )
    steady = lat["steady"]["p95_s"]
    rows.append(
        {
            "item": ITEM,
            "figure": "p95 caption latency away from restarts (end of speech -> final)",
            "value": steady,
            "unit": "s",
            "target": f"<= {LATENCY_SLO} s (latencySLO)",
            "met": steady is not None and steady <= LATENCY_SLO,
        }
    )
    trend = result["latency_trend"]
    kept = kept_real_time(result)
    overloaded, dropped, estimated = overload_signals(result)
    rows.append(
        {
            "item": ITEM,
            "figure": "pipeline kept real time: p95 caption latency, first -> last quarter "
            f"({trend['first_quarter_p95_s']} -> {trend['last_quarter_p95_s']} s)",
            "value": "yes" if kept else "no (overloaded)",
            "unit": "",
            "target": "yes",
            "met": kept,
        }
    )
    rows.append(
        {
            "item": ITEM,
            "figure": "overload notices to clients: decoder overloaded / audio dropped by the "
            f"gateway's replay buffer{' (at least; estimated)' if estimated else ''}",
            "value": f"{overloaded} / {dropped}",
            "unit": "",
            "target": "- / 0",
            "met": dropped == 0,
        }
    )
    worst = max((b["p95_s"] for b in result["latency_per_bucket"] if b["p95_s"] is not None), default=None)
    rows.append(
        {
            "item": ITEM,
            "figure": f"worst per-{cfg['bucket_s']:.0f} s p95 caption latency",
            "value": worst,
            "unit": "s",
            "target": "",
            "met": None,
        }
    )
    for stage in ("audio", "translation"):
        a = lat[f"after_{stage}_restart"]
        if a["finals"]:
            rows.append(
                {
                    "item": ITEM,
                    "figure": f"p95 caption latency in the {cfg['restart_window_s']:.0f} s "
                    f"after {'an' if stage == 'audio' else 'a'} {stage} restart",
                    "value": a["p95_s"],
                    "unit": "s",
                    "target": "",
                    "met": None,
                }
            )
    back = [
        k["first_final_after_s"]
        for k in result["restarts"]
        if k["stage"] == "audio" and k["first_final_after_s"] is not None
    ]
    if back:
        rows.append(
            {
                "item": ITEM,
                "figure": "audio kill -> first caption of speech begun after it (max)",
                "value": max(back),
                "unit": "s",
                "target": "",
                "met": None,
            }
        )
    ready = [k["ready_after_s"] for k in result["restarts"] if k["ready_after_s"] is not None]
    if result["restarts"]:
        rows.append(
            {
                "item": ITEM,
                "figure": "upstream kill -> restarted and ready (max)",
                "value": max(ready) if ready else "never",
                "unit": "s" if ready else "",
                "target": "",
                "met": None if len(ready) == len(result["restarts"]) else False,
            }
        )
    rows.append(
        {
            "item": ITEM,
            "figure": "audio sent > 0.5 s behind the microphone schedule (client could not keep real time)",
            "value": t["late_chunk_fraction"],
            "unit": "fraction of chunks",
            "target": "0",
            "met": t["late_chunk_fraction"] == 0,
        }
    )
    return rows


def write_md(result: dict[str, Any], path: Path) -> None:
    t, cfg = result["totals"], result["config"]
    load = result["loadavg_during"]
    lines = [
        "# Soak: real-time sessions through `livetranslate up`, upstreams killed on a schedule",
        "",
        (
            f"{provenance_line(result)}, shared with other work (load average during the run: mean "
            f"{load['mean']:.2f}, max {load['max']:.2f}). {cfg['sessions']} sessions x "
            f"{cfg['duration_s'] / 60:.1f} min of espeak-ng speech streamed in real time; "
            f"{len(result['restarts'])} upstream kills (SIGKILL, {cfg['restart_stages']} alternately, every "
            f"{cfg['restart_every_s']:.0f} s). faster-whisper tiny.en int8, Apertium en->es. "
            f"`{result['command']}`."
        ),
        "",
        (
            f"- utterances sent: {t['utterances']}; finals: {t['finals']}; lost: **{t['lost']}** "
            f"({t['lost_holes']} holes, {t['lost_at_end']} still queued at the end); garbled "
            f"(under half the words): {t['garbled']}; spurious finals over silence: {t['spurious_finals']}"
        ),
        (
            f"- duplicated finals: **{t['duplicate_segment_ids'] + t['duplicate_texts']}**; partial duplicates: "
            f"{t['partial_duplicates']}; translations missing / repeated: {t['translations_missing']} / "
            f"{t['translations_duplicated']}"
        ),
        (
            f"- mean WER per utterance: {t['mean_wer']}; client send lag max {t['max_send_lag_s']} s, "
            f"late chunks {t['late_chunk_fraction']}"
        ),
        (
            f"- kept real time: **{'yes' if kept_real_time(result) else 'no'}** (p95 caption "
            f"latency {result['latency_trend']['first_quarter_p95_s']} s in the first quarter, "
            f"{result['latency_trend']['last_quarter_p95_s']} s in the last)"
        ),
        "",
        "| restart | at | pid | ready after | first final for new speech after | load avg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in result["restarts"]:
        lines.append(
            f"| {k['stage']} | {k['t']:.0f} s | {k['pid']} | {k['ready_after_s']} s | "
            f"{k['first_final_after_s']} s | {k['loadavg'][0]:.2f} |"
        )
    overloaded, dropped, estimated = overload_signals(result)
    lines += [
        "",
        (
            f"- overload notices the clients got: decoder overloaded {overloaded}, audio dropped by the "
            f"gateway's replay buffer {dropped}{' (at least: estimated from error codes)' if estimated else ''}"
        ),
    ]
    if not kept_real_time(result):
        lines += [
            "",
            (
                f"**This machine did not keep these {cfg['sessions']} sessions in real time** (load average "
                f"{load['mean']:.1f} on {result['machine']['cpus']} cores, from this run and other work): the audio "
                "backlog grew until the decoder reported overload and the gateway shed the oldest "
                "audio its replay buffer could not hand over (LT_GATEWAY_AUDIO_BUFFER_SECONDS, 120 s: "
                "where the gateway-measured latency levels off). Holes in such a run are mostly that "
                "shedding, not the restarts; utterances 'still queued at the end' are the backlog cut "
                "off by the gateway's flush limit at session end (LT_GATEWAY_FLUSH_TIMEOUT, 30 s); RSS "
                "growth of the gateway and audio service measures the backlog as much as any leak. "
                "Restart losses are measured where the sessions keep real time (fewer sessions, or a "
                "quieter machine)."
            ),
        ]
    lines += [
        "",
        (
            f"RSS growth per process: the median of its last quarter minus that of its first, "
            f"after a warm-up of {INCARNATION_WARMUP:g} s for every start of a model stage (the audio "
            "service's heap fills for 5-7 min, then stays flat: measured on the service alone "
            "over 17 min and 582 sessions, malloc'd bytes flat from the first minute). The slope "
            "is fitted within each process after its warm-up, a few minutes each here, so it is "
            "noise-dominated; growth is the judged figure."
        ),
        "",
        "| process | RSS first quarter | growth | slope | processes | flat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for role, g in result["rss"].items():

        def mib(x: float | None, unit: str = "MiB") -> str:
            return f"{x} {unit}" if x is not None else "-"

        lines.append(
            f"| {role} | {mib(g['first_quarter_median_mib'])} | {mib(g['growth_mib'])} | "
            f"{mib(g['slope_mib_per_hour'], 'MiB/h')} | {g['incarnations']} | "
            f"{ {True: 'yes', False: 'no', None: 'not measured'}[g['flat']] } |"
        )
    lat = result["latency"]
    lines += [
        "",
        (f"Caption latency (end of speech -> final at the client), per {cfg['bucket_s']:.0f} s of the run:"),
        "",
        "| minute | finals | p50 | p95 | max | gateway-measured p95 | killed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in result["latency_per_bucket"]:
        lines.append(
            f"| {b['minute']:g} | {b['finals']} | {b['p50_s']} s | {b['p95_s']} s | {b['max_s']} s | "
            f"{b['gateway_p95_s']} s | {', '.join(b['killed'])} |"
        )
    lines += [
        "",
        (
            f"Away from restarts p95 {lat['steady']['p95_s']} s ({lat['steady']['finals']} finals); "
            f"within {cfg['restart_window_s']:.0f} s after an audio restart p95 "
            f"{lat['after_audio_restart']['p95_s']} s ({lat['after_audio_restart']['finals']} finals), after a "
            f"translation restart {lat['after_translation_restart']['p95_s']} s; translation p95 "
            f"{lat['translation_p95_s']} s."
        ),
        "",
        (
            "Matching: an utterance is delivered when a final overlaps its span (+-"
            f"{SPAN_SLACK} s); lost when none does. Duplicates: a segment id twice, or the same text over "
            "overlapping audio."
        ),
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict[str, Any], samples: list[dict[str, Any]], finals: list[Final], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.scatter([f.received / 60 for f in finals], [f.latency for f in finals], s=4, alpha=0.4, label="final")
    buckets = result["latency_per_bucket"]
    ax1.plot(
        [b["minute"] + result["config"]["bucket_s"] / 120 for b in buckets],
        [b["p95_s"] for b in buckets],
        color="black",
        label="p95 per bucket",
    )
    ax1.axhline(LATENCY_SLO, color="grey", linestyle=":", label="SLO p95")
    ax1.set_ylabel("caption latency (s)")
    ax1.set_yscale("log")
    for role in samples[0]["rss_mib"] if samples else []:
        ax2.plot([s["t"] / 60 for s in samples], [s["rss_mib"].get(role, 0) for s in samples], label=role)
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_xlabel("minutes")
    for ax in (ax1, ax2):
        for k in result["restarts"]:
            ax.axvline(k["t"] / 60, color="red" if k["stage"] == "audio" else "orange", alpha=0.5)
        ax.legend(fontsize=7, loc="upper left")
    ax1.set_title("Soak through livetranslate up (red: audio killed, orange: translation killed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of speech per session")
    parser.add_argument("--restart-every", type=float, default=300.0)
    parser.add_argument("--first-restart", type=float, help="seconds into the run (default: --restart-every)")
    parser.add_argument("--restart-stages", default="audio,translation", help="killed in turn; empty: none")
    parser.add_argument("--max-restarts", type=int)
    parser.add_argument("--restart-window", type=float, default=60.0, help="latency 'after a restart' window")
    parser.add_argument("--bucket", type=float, default=60.0, help="seconds per latency bucket")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--end-timeout", type=float, default=180.0, help="seconds a session may take to end")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="soak")
    parser.add_argument(
        "--plot", type=Path, help="PNG plot path (default docs/img/soak.png for the full run)"
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="no run: rebuild the reliability rows and the .md from the existing .json",
    )
    args = parser.parse_args(argv)
    if args.rerender:
        path = args.results_dir / f"{args.name}.json"
        stored: dict[str, Any] = json.loads(path.read_text())
        stored["command"] = str(stored.get("command", "")).strip()
        stored["latency_trend"].pop("kept_real_time", None)  # judged by kept_real_time() now
        stored["kept_real_time"] = kept_real_time(stored)
        if stored.get("rss_samples"):  # growth is judged by today's rule from the stored samples
            stored["rss"] = rss_growth(
                stored["rss_samples"][:-1] or stored["rss_samples"], float(stored["config"]["duration_s"])
            )
        stored["reliability"] = rows_for(stored)
        write_result(path, stored, indent=1)  # the run's provenance stays: nothing was measured now
        write_md(stored, args.results_dir / f"{args.name}.md")
        print((args.results_dir / f"{args.name}.md").read_text())
        return 0
    if args.first_restart is None:
        args.first_restart = args.restart_every
    command = "python -P " + shlex.join(
        ["benchmarks/bench_soak.py", *(argv if argv is not None else sys.argv[1:])]
    )

    clips = make_clips()
    began = provenance("soak", command)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        up = UpWatch(Path(tmp) / "up.out", Path(tmp) / "logs")
        try:
            url = up.wait_ready(600)
            t_run = time.monotonic()
            logs, kills, samples = asyncio.run(soak(args, up, url, clips, t_run))
        finally:
            procs.stop(up.proc, timeout=60)
        orphans_after_stop = sum(1 for line in up.lines() if line.startswith("ending orphaned process"))

    captions_back(logs, kills)
    languages = ["es"]
    per_session = [evaluate_session(log, languages) for log in logs]
    keys = (
        "utterances",
        "finals",
        "lost",
        "lost_holes",
        "lost_at_end",
        "garbled",
        "duplicate_segment_ids",
        "duplicate_texts",
        "partial_duplicates",
        "spurious_finals",
        "translations",
        "translations_missing",
        "translations_duplicated",
        "errors",
    )
    totals: dict[str, Any] = {k: sum(s[k] for s in per_session) for k in keys}
    wers = [s["mean_wer"] for s in per_session if s["mean_wer"] is not None]
    totals["mean_wer"] = round(statistics.fmean(wers), 3) if wers else None
    totals["sessions_failed"] = sum(1 for s in per_session if s["failure"] or not s["ended"])
    totals["max_send_lag_s"] = max((s["max_send_lag_s"] for s in per_session), default=0.0)
    chunks = sum(log.chunks for log in logs)
    totals["late_chunk_fraction"] = (
        round(sum(log.late_chunks for log in logs) / chunks, 4) if chunks else None
    )
    loads = [s["loadavg"][0] for s in samples]
    result: dict[str, Any] = {
        **began,
        "loadavg_during": {
            "mean": round(statistics.fmean(loads), 2) if loads else None,
            "max": max(loads) if loads else None,
        },
        "config": {
            "sessions": args.sessions,
            "duration_s": args.duration,
            "restart_every_s": args.restart_every,
            "first_restart_s": args.first_restart,
            "restart_stages": args.restart_stages,
            "bucket_s": args.bucket,
            "restart_window_s": args.restart_window,
            "span_slack_s": SPAN_SLACK,
            "voices": list(VOICES),
        },
        "totals": totals,
        "restarts": kills,
        "rss": rss_growth([s for s in samples[:-1]] or samples, args.duration),
        "orphans_at_end": samples[-1]["other_processes"] if samples else 0,
        "orphans_ended_by_up": orphans_after_stop,
        "latency_per_bucket": latency_buckets(logs, kills, args.bucket),
        "latency": around_restarts(logs, kills, args.restart_window),
        "latency_trend": latency_trend(logs, args.duration),
        "sessions": per_session,
        "rss_samples": samples,
    }
    result["kept_real_time"] = kept_real_time(result)
    result["reliability"] = rows_for(result)
    write_result(args.results_dir / f"{args.name}.json", result, indent=1)
    write_md(result, args.results_dir / f"{args.name}.md")
    plot_path = args.plot or (
        ROOT / "docs" / "img" / "soak.png" if args.duration >= 1800 and args.name == "soak" else None
    )
    if plot_path is not None:
        try:
            plot(result, samples, [f for log in logs for f in log.finals], plot_path)
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
    print((args.results_dir / f"{args.name}.md").read_text())
    for row in result["reliability"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
