"""Safe drain (issue 25 item 3): gateway replicas removed again and again while speech streams.

Two gateway replicas (``livetranslate serve gateway``) share a real Redis behind a Service
(``ServiceProxy``: new connections go to replicas whose /readyz says 200), in front of the
deterministic stand-in stages (livetranslate_testing/standins.py), so every final a session must
get is known from its audio. ``--sessions`` live speakers (``livetranslate stream --realtime``:
utterances of 1 to 3 s, a pause of 1 to 2 s after each; a new session when one ends) talk the
whole time. Then, ``--drains`` times: the replica holding the sessions gets SIGTERM (what the
kubelet sends on scale-down); it refuses new sessions, hands each live one over at its next pause
and exits; it is started again on its port (a new pod), and the other replica is drained next.

Counted per session: finals lost, duplicated, unexpected or out of order against the finals its
audio gives; translations sent twice; reconnects that were not handovers. Per handover: the extra
wait for the next final, the latency (arrival minus the moment the chunk with its last sample went
out) of the first final after the session resumed minus that session's median latency. Per drain:
SIGTERM to exit. Targets: 0 finals lost or duplicated; no extra wait over 2 s.

Run: ``python -P benchmarks/bench_drain.py [--drains 100] [--sessions 4] [--max-minutes 9]``.
Writes benchmarks/results/drain.json and drain.md. A run stops starting drains once
``--max-minutes`` have passed and records how many it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livetranslate.stream import Wav, stream_file
from livetranslate_testing.figures import loadavg, percentile, provenance, provenance_line, write_result
from livetranslate_testing.replicas import Fleet, ServiceProxy, TimedPrinter, account
from livetranslate_testing.standins import block_pcm, expected_finals

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_MS = 100
TARGET_EXTRA_WAIT = 2.0


@dataclass
class Talk:
    """One session of one speaker."""

    speaker: int
    levels: list[int]
    printer: TimedPrinter = field(default_factory=TimedPrinter)
    ok: bool | None = None


def script(rng: random.Random, seconds: int) -> list[int]:
    """Utterances of 1-3 one-second blocks (levels 1-30), each followed by 1-2 s of pause."""
    levels: list[int] = [0]
    while len(levels) < seconds:
        levels += [rng.randint(1, 30) for _ in range(rng.randint(1, 3))] + [0] * rng.randint(1, 2)
    return levels


async def speak(speaker: int, url: str, rng: random.Random, seconds: int, talks: list[Talk], stop: asyncio.Event) -> None:  # fmt: skip
    """Session after session until ``stop``; the speakers start a little apart."""
    await asyncio.sleep(speaker * 0.37)
    while not stop.is_set():
        talk = Talk(speaker, script(rng, seconds))
        talks.append(talk)
        wav = Wav(block_pcm(talk.levels), 16000, 1)
        talk.ok = await stream_file(
            wav, url, realtime=True, chunk_ms=CHUNK_MS, token=None, targets=None, printer=talk.printer
        )


async def drain_cycle(fleet: Fleet, proxy: ServiceProxy, rng: random.Random) -> dict[str, Any]:
    """SIGTERM the replica holding the most sessions, wait for its exit, start it again."""
    port = max(fleet.ports, key=lambda p: (proxy.open[p], rng.random()))
    sessions = proxy.open[port]
    began = time.monotonic()
    fleet.sigterm(port)
    code = await fleet.wait_exit(port, 60)
    exited = time.monotonic()
    if code is None:  # past any bound it has: not what a drain may do, so it is counted
        fleet.procs[port].kill()
        await fleet.wait_exit(port, 10)
    fleet.start_gateway(port)
    await asyncio.to_thread(fleet.wait_ready, port)
    return {
        "replica": fleet.ports.index(port),
        "sessions": sessions,
        "sigterm_at": began,
        "exit_code": code,
        "seconds_to_exit": round(exited - began, 3),
    }


def handovers_of(talk: Talk) -> list[tuple[float, float | None]]:
    """(when the session resumed, extra wait for its next final) per resume of the session."""
    events = talk.printer.events
    finals = talk.printer.finals
    lat = talk.printer.latencies(CHUNK_MS / 1000) if finals else {}
    resumes = [e["_at"] for e in events if e["type"] == "session.started" and e.get("resumed")]
    firsts = set()
    out: list[tuple[float, float | None]] = []
    for at in resumes:
        first = next((f for f in finals if f["_at"] >= at), None)
        if first is not None:
            firsts.add(first["segmentId"])
        out.append((at, lat[first["segmentId"]] if first is not None else None))
    usual = [v for k, v in lat.items() if k not in firsts]
    median = statistics.median(usual) if usual else 0.0
    return [(at, None if v is None else v - median) for at, v in out]


def summarise(talks: list[Talk], drains: list[dict[str, Any]], fleet: Fleet) -> dict[str, Any]:
    totals = dict.fromkeys(("expected", "received", "lost", "duplicated", "unexpected", "out_of_order"), 0)
    translations_twice = reconnects = refusals = handovers = failed = 0
    extra_by_drain: dict[int, list[float]] = {}
    for talk in talks:
        for key, value in account(talk.printer.finals, expected_finals(talk.levels)).items():
            totals[key] += value
        keys = [(t["sentenceId"], t["language"]) for t in talk.printer.translations]
        translations_twice += len(keys) - len(set(keys))
        reconnects += talk.printer.reconnects
        refusals += talk.printer.refusals
        handovers += talk.printer.handovers
        failed += talk.ok is not True
        for at, wait in handovers_of(talk):
            index = max((i for i, d in enumerate(drains) if d["sigterm_at"] <= at), default=None)
            if index is not None and wait is not None:
                extra_by_drain.setdefault(index, []).append(wait)
    for i, d in enumerate(drains):
        waits = extra_by_drain.get(i, [])
        d["extra_wait_max"] = round(max(waits), 3) if waits else None
        d["resumed"] = len(waits)
        d.pop("sigterm_at")
    extra = [w for ws in extra_by_drain.values() for w in ws]
    to_exit = [d["seconds_to_exit"] for d in drains]
    reasons: dict[str, int] = {}
    for port in fleet.ports:
        for line in fleet.log(port):
            if line.get("msg") == "session handed over":
                reasons[line["reason"]] = reasons.get(line["reason"], 0) + 1
    return {
        "drains": len(drains),
        "sessions": len(talks),
        "sessions_failed": failed,
        "handovers": handovers,
        "handovers_by_reason": reasons,
        "connections_lost": reconnects,
        "refusals_retried": refusals,
        "finals": totals,
        "translations_sent_twice": translations_twice,
        "extra_wait_seconds": {
            "handovers_measured": len(extra),
            "p50": _r(percentile(extra, 0.5)) if extra else None,
            "p95": _r(percentile(extra, 0.95)) if extra else None,
            "max": _r(max(extra)) if extra else None,
        },
        "seconds_to_exit": {
            "p50": _r(percentile(to_exit, 0.5)) if to_exit else None,
            "p95": _r(percentile(to_exit, 0.95)) if to_exit else None,
            "max": _r(max(to_exit)) if to_exit else None,
        },
        "exit_codes": sorted({d["exit_code"] for d in drains}, key=str),
        "per_drain": drains,
    }


def _r(x: float) -> float:
    return round(x, 3)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    fleet = Fleet(tmp, translate_delay=args.translate_delay)
    await asyncio.to_thread(fleet.start)
    proxy = ServiceProxy(fleet.ports)
    await proxy.start()
    talks: list[Talk] = []
    stop = asyncio.Event()
    speakers = [
        asyncio.create_task(
            speak(i, proxy.url, random.Random(args.seed + i), args.session_seconds, talks, stop)
        )
        for i in range(args.sessions)
    ]
    drains: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        await asyncio.sleep(3.0)
        while len(drains) < args.drains and time.monotonic() - began < args.max_minutes * 60:
            drains.append(await drain_cycle(fleet, proxy, rng))
            d = drains[-1]
            print(
                f"drain {len(drains)}: replica {d['replica']}, {d['sessions']} sessions, "
                f"exit {d['exit_code']} after {d['seconds_to_exit']} s",
                file=sys.stderr,
            )
            await asyncio.sleep(rng.uniform(0.2, 0.8))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*speakers), args.session_seconds + 60)
    finally:
        stop.set()
        for task in speakers:
            task.cancel()
        await asyncio.gather(*speakers, return_exceptions=True)
        await proxy.close()
        fleet.stop()
    result = summarise(talks, drains, fleet)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    return result


def write(result: dict[str, Any], name: str) -> None:
    write_result(RESULTS / f"{name}.json", result)
    s = result["settings"]
    f, w, e = result["finals"], result["extra_wait_seconds"], result["seconds_to_exit"]
    ok = f["lost"] == 0 and f["duplicated"] == 0 and f["unexpected"] == 0 and f["out_of_order"] == 0
    wait_ok = w["max"] is not None and w["max"] <= TARGET_EXTRA_WAIT
    short = result["drains"] < s["drains"]
    lines = [
        "# Safe drain: gateway replicas removed while speech streams",
        "",
        (
            f"{provenance_line(result)}, shared with other work (load average at the end "
            f"{', '.join(f'{x:.2f}' for x in result['loadavg_after'])}). `{result['command']}`"
        ),
        "",
        (
            f"Two gateway replicas share a real Redis behind a Service stand-in (new connections go to "
            f"replicas whose /readyz says 200) in front of the deterministic stand-in stages; "
            f"{s['sessions']} live speakers stream in real time (utterances of 1-3 s, 1-2 s pauses; a new "
            f"session of {s['session_seconds']} s when one ends). Each drain sends SIGTERM to the replica "
            f"holding the sessions, waits for it to exit, starts it again on its port, and drains the "
            f"other one next."
        ),
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
        f"| drains run | {result['drains']} of {s['drains']} asked"
        + (f" (stopped at the {s['max_minutes']} min bound)" if short else "")
        + " | 100 |",
        (
            f"| sessions / handovers | {result['sessions']} / {result['handovers']} "
            f"({_reasons(result['handovers_by_reason'])}) | |"
        ),
        f"| finals expected / received | {f['expected']} / {f['received']} | |",
        (
            f"| finals lost / duplicated / unexpected / out of order | {f['lost']} / {f['duplicated']} / "
            f"{f['unexpected']} / {f['out_of_order']} | 0 {'ok' if ok else 'MISS'} |"
        ),
        f"| translations sent twice | {result['translations_sent_twice']} | 0 |",
        (
            f"| connections lost / sessions failed | "
            f"{result['connections_lost']} / {result['sessions_failed']} | 0 |"
        ),
        (f"| session starts refused by a draining replica, then retried | {result['refusals_retried']} | |"),
        (
            f"| extra wait for the next final, p50 / p95 / max | {w['p50']} / {w['p95']} / {w['max']} s "
            f"({w['handovers_measured']} handovers) | max <= {TARGET_EXTRA_WAIT} s "
            f"{'ok' if wait_ok else 'MISS'} |"
        ),
        f"| SIGTERM to exit, p50 / p95 / max | {e['p50']} / {e['p95']} / {e['max']} s | <= 35 s (LT_GATEWAY_DRAIN_SECONDS) |",
        f"| exit codes | {', '.join(map(str, result['exit_codes']))} | 0 |",
        "",
        (
            "Extra wait: per handover, the latency of the first final after the session resumed "
            "(its arrival minus the moment the chunk holding its last sample went out) minus the "
            "session's median final latency. A replica waits for each session's next pause (an "
            "utterance end: here 1 s of silence after speech) before it hands the session over, so "
            "SIGTERM to exit is about the longest utterance left plus that second."
        ),
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drains", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=4, help="live speakers at once")
    parser.add_argument("--session-seconds", type=int, default=40, help="audio per session")
    parser.add_argument("--max-minutes", type=float, default=9.0, help="no drain starts after this")
    parser.add_argument("--translate-delay", type=float, default=0.02, help="stand-in seconds per language")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="drain", help="results file name (benchmarks/results/NAME.json)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the processes' logs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    result = provenance("drain")
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("name", "workdir")}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result |= asyncio.run(run(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
            result |= asyncio.run(run(args, Path(tmp)))
    result["loadavg_after"] = loadavg()
    write(result, args.name)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
