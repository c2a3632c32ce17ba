"""Gateway fuzzing figures (issue 6 item 4): many more generated sessions than the CI test runs.

The campaign is the one of ``tests/reliability/test_gateway_fuzz.py`` (same strategies, same
oracle, same processes: ``livetranslate serve gateway`` in front of the audio stand-in), run in
rounds while well-behaved sessions stream alongside. Recorded: examples and frames sent, oracle
failures (a bad input with neither an error event nor a policy close), gateway crashes, finals
lost or repeated in the well-behaved sessions, sessions left behind, and the gateway's RSS after
every round (bounded memory). Run: ``.venv/bin/python -P benchmarks/bench_gateway_fuzz.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from livetranslate_testing.figures import loadavg, provenance, provenance_line, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ITEM = "4 Gateway fuzzing"


def load_campaign() -> ModuleType:
    """The test module, loaded by path: one copy of the strategies and the oracle."""
    path = ROOT / "tests" / "reliability" / "test_gateway_fuzz.py"
    spec = importlib.util.spec_from_file_location("gateway_fuzz_campaign", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class _RemoteGateway:
    """What ``run_campaign`` needs of a gateway that another process started: its URL and liveness."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.gateway = self
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if Path(f"/proc/{self.pid}").exists():
            return None
        self.returncode = -1
        return self.returncode


def worker(url: str, pid: int, examples: int, out: Path) -> None:
    """One more fuzzing client, in its own process, at the same time as the others."""
    fz = load_campaign()
    try:
        r = fz.run_campaign(_RemoteGateway(url, pid), examples=examples)
    except Exception as exc:  # noqa: BLE001 - an oracle failure: reported to the harness
        r = fz.CampaignResult(problems=[f"{type(exc).__name__}: {str(exc)[:2000]}"])
    out.write_text(json.dumps(dataclasses.asdict(r)))


def run_round(fz: ModuleType, gw: Any, examples: int, parallel: int, tmp: Path) -> Any:
    """``parallel`` fuzzing clients at once (this process and parallel-1 workers); results summed."""
    outs = [tmp / f"worker-{i}-{time.monotonic_ns()}.json" for i in range(parallel - 1)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-P",
                str(Path(__file__).resolve()),
                "worker",
                "--url",
                gw.url,
                "--pid",
                str(gw.gateway.pid),
                "--examples",
                str(examples),
                "--out",
                str(out),
            ]
        )
        for out in outs
    ]
    try:
        mine = fz.run_campaign(gw, examples=examples)
    except Exception as exc:  # noqa: BLE001 - an oracle failure: recorded, next round
        mine = fz.CampaignResult(problems=[f"{type(exc).__name__}: {str(exc)[:2000]}"])
    for proc, out in zip(procs, outs, strict=True):
        proc.wait(1800)
        if out.exists():
            other = json.loads(out.read_text())
            for key in ("examples", "frames_sent", "bad_inputs", "error_events", "policy_closes"):
                setattr(mine, key, getattr(mine, key) + other[key])
            mine.problems += other["problems"]
            mine.crashed = mine.crashed or other["crashed"]
            for kind, n in other["kinds"].items():
                mine.kinds[kind] = mine.kinds.get(kind, 0) + n
        else:
            mine.problems.append(f"fuzz worker exited with {proc.returncode} and no result")
    return mine


def run(examples: int, rounds: int, parallel: int = 1) -> dict[str, Any]:
    fz = load_campaign()
    per_round = max(1, examples // rounds)
    result: dict[str, Any] = {**provenance("gateway_fuzz"), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        gw = fz.start_gateway(Path(tmp))
        try:
            warm = fz.run_campaign(gw, examples=10)
            rss_start = gw.rss_mib()
            result["rss_after_warmup_mib"] = round(rss_start, 1)
            good = fz.GoodSessions(gw.url)
            good.start()
            totals = {
                "examples": warm.examples,
                "frames_sent": 0,
                "bad_inputs": 0,
                "error_events": 0,
                "policy_closes": 0,
                "seconds": 0.0,
            }
            problems: list[str] = list(warm.problems)
            crashed = False
            kinds: dict[str, int] = {}
            try:
                for i in range(rounds):
                    began = time.monotonic()
                    r = run_round(fz, gw, max(1, per_round // parallel), parallel, Path(tmp))
                    r.seconds = time.monotonic() - began  # wall clock of the round, all clients
                    for key in ("examples", "frames_sent", "bad_inputs", "error_events", "policy_closes"):
                        totals[key] += getattr(r, key)
                    totals["seconds"] += r.seconds
                    problems += r.problems
                    crashed = crashed or r.crashed or not gw.alive()
                    for kind, n in r.kinds.items():
                        kinds[kind] = kinds.get(kind, 0) + n
                    row = {
                        "round": i + 1,
                        "examples": r.examples,
                        "rss_mib": round(gw.rss_mib(), 1),
                        "problems": len(r.problems),
                        "good_sessions": good.completed,
                        "loadavg": os.getloadavg(),
                    }
                    result["rounds"].append(row)
                    print(
                        f"round {i + 1}/{rounds}: {r.examples} examples, gateway RSS {row['rss_mib']} MiB, "
                        f"{len(r.problems)} problems, {good.completed} good sessions so far",
                        flush=True,
                    )
                    if crashed:
                        break
            finally:
                good.stop()
            left = gw.wait_sessions_gone()
            left = -1 if math.isnan(left) else int(left)  # NaN: the metric was missing
            rss_end = gw.rss_mib()
            result.update(
                {
                    "totals": totals,
                    "frame_kinds": kinds,
                    "problems": problems[:20],
                    "gateway_crashed": crashed,
                    "good_sessions": good.completed,
                    "good_session_failures": good.failures[:20],
                    "sessions_left": left,
                    "rss_end_mib": round(rss_end, 1),
                    "rss_growth_mib": round(rss_end - rss_start, 1),
                    "rss_peak_mib": max([rss_end, *(r["rss_mib"] for r in result["rounds"])]),
                    "tracebacks_in_log": gw.log_tail(10_000_000).count("Traceback"),
                }
            )
        finally:
            fz.stop_gateway(gw)
    result["loadavg_after"] = loadavg()
    result["reliability"] = reliability_rows(result)
    return result


def reliability_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    t = r["totals"]
    n = t["examples"]
    return [
        {
            "item": ITEM,
            "figure": "generated sessions (hypothesis examples) over a real WebSocket",
            "value": n,
            "unit": "sessions",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": "frames sent (text and binary, incl. floods and oversized frames)",
            "value": t["frames_sent"],
            "unit": "frames",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": "gateway crashes",
            "value": int(r["gateway_crashed"]),
            "unit": "",
            "target": "0",
            "met": not r["gateway_crashed"],
        },
        {
            "item": ITEM,
            "figure": "sessions where a bad input got neither an error event nor a policy close "
            "(or any other oracle failure)",
            "value": len(r["problems"]),
            "unit": "sessions",
            "target": "0",
            "met": not r["problems"],
        },
        {
            "item": ITEM,
            "figure": "bad inputs sent / error events received / policy closes",
            "value": f"{t['bad_inputs']} / {t['error_events']} / {t['policy_closes']}",
            "unit": "",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": "well-behaved sessions alongside that lost or repeated a final",
            "value": len(r["good_session_failures"]),
            "unit": f"of {r['good_sessions']}",
            "target": "0",
            "met": not r["good_session_failures"] and r["good_sessions"] > 0,
        },
        {
            "item": ITEM,
            "figure": "sessions still held after every connection closed",
            "value": r["sessions_left"],
            "unit": "",
            "target": "0",
            "met": r["sessions_left"] == 0,
        },
        {
            "item": ITEM,
            "figure": f"gateway RSS growth over {n} fuzz sessions (after warm-up)",
            "value": r["rss_growth_mib"],
            "unit": "MiB",
            "target": "bounded: under 96 MiB",
            "met": r["rss_growth_mib"] < 96,
        },
        {
            "item": ITEM,
            "figure": "tracebacks in the gateway log",
            "value": r["tracebacks_in_log"],
            "unit": "",
            "target": "0",
            "met": r["tracebacks_in_log"] == 0,
        },
    ]


def write(result: dict[str, Any]) -> None:
    write_result(RESULTS / "gateway_fuzz.json", result)
    t = result["totals"]
    lines = [
        "# Gateway fuzzing",
        "",
        (
            f"{provenance_line(result)}, {', '.join(f'{x:.2f}' for x in result['loadavg_after'])} at the "
            f"end, shared with other work; `{result['command']}`. "
            f"{t['examples']} generated sessions in {t['seconds']:.0f} s ({result.get('parallel', 1)} fuzzing clients "
            "at once) against a `livetranslate serve gateway` process with the audio stand-in, well-behaved "
            "sessions streaming alongside."
        ),
        "",
        "| figure | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["reliability"]:
        value = f"{row['value']} {row['unit']}".strip()
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['figure']} | {value} | {row['target']} | {met} |")
    lines += [
        "",
        "Gateway RSS after each round: "
        + ", ".join(f"{r['rss_mib']:.0f}" for r in result["rounds"])
        + f" MiB (after warm-up {result['rss_after_warmup_mib']:.0f}).",
    ]
    if result["problems"]:
        lines += ["", "First problems:", ""] + [f"- {p[:400]}" for p in result["problems"][:5]]
    (RESULTS / "gateway_fuzz.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=3, help="fuzzing clients at once")
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--examples", type=int, required=True)
    w.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("LT_LOG_FORMAT", "text")
    if args.cmd == "worker":
        worker(args.url, args.pid, args.examples, args.out)
        return
    result = run(args.examples, args.rounds, args.parallel)
    result["parallel"] = args.parallel
    write(result)
    print((RESULTS / "gateway_fuzz.md").read_text())


if __name__ == "__main__":
    main()
