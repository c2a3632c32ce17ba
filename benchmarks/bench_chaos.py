"""Operator chaos and API-fault benchmark (issue 6, items 1 and 2).

Chaos: 50 TranslationPipelines; each round applies a few creates, spec updates and deletes, then
SIGKILLs the operator process (by pid) when it sends a randomly chosen request of the reconciles
those changes start, sometimes changes more while it is down, restarts it, kills it again at a
random request of its resume (every pipeline re-reconciled), restarts it once more and times how
long the cluster takes to be right again: every live pipeline with exactly its children, its
config at the current generation and its status Ready (or Failed naming the field, for a spec the
CPU-only cluster cannot serve); every deleted pipeline gone, with its children. 50 rounds of 2
kills (100 SIGKILLs) by default. Counted: orphaned children, duplicate children, lost or stale status, stuck finalizers.

API faults: for each fault kind (409 on writes, 429 with Retry-After, 500, watch streams cut
mid-stream) at each rate (10% and 30% of requests), a fresh emulator and operator, 20 pipelines
created, then updates and deletes: time to converge, duplicates, requests sent against a
fault-free baseline of the same workload, request rate while converging and once idle, and the
delay before a faulted request is retried (backoff); the idle window's requests are broken down
by verb and resource. A cut watch stream resumes from the last event it delivered (Kopf does not
re-list), and 30% of events cut means a backlog of N events costs about 0.4 N reconnects to
deliver, so the idle window is long enough (30 s by default) to see that tail end. Then an outage: every request fails (500)
for 10 s while changes are pending; requests per second during the outage against the baseline
rate show whether retries back off or storm.

Usage: python -P benchmarks/bench_chaos.py [--rounds 50] [--kills-per-round 2] [--pipelines 50] [--skip-faults]
       [--skip-chaos] [--rates 0.1 0.3] [--fault-kinds drop_watch ...] [--idle-seconds 30] [--out benchmarks/results]
Writes benchmarks/results/chaos.json (with the "reliability" rows) and chaos.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock

from livetranslate.crd import build_crd
from livetranslate_testing.chaos import (
    OPERATOR_AGENT,
    Inspection,
    KillSwitch,
    OperatorSubprocess,
    Workload,
    converge,
    inspect,
)
from livetranslate_testing.figures import loadavg, percentile, provenance, provenance_line, write_result
from livetranslate_testing.kube_emulator import Call, Faults, KubeEmulator

ROOT = Path(__file__).resolve().parents[1]
NS = "chaos"
FAULT_KINDS = ("conflict", "throttle", "server_error", "drop_watch")


def operator_calls(api: KubeEmulator, since: int = 0) -> int:
    return sum(1 for c in api.calls[since:] if c.agent.startswith((OPERATOR_AGENT, "kopf")))


def emulator() -> KubeEmulator:
    api = KubeEmulator(auto_ready_deployments=True)
    api.install_crd(build_crd())
    return api


# ------------------------------------------------------------------------------------- chaos


async def run_chaos(
    rounds: int,
    size: int,
    seed: int,
    timeout: float,
    tmp: Path,
    progress: Callable[[dict[str, Any]], None] | None = None,
    kills_per_round: int = 1,
) -> dict[str, Any]:
    rng = random.Random(seed)
    api = emulator()
    totals: Counter[str] = Counter()
    per_round: list[dict[str, Any]] = []
    failures: list[str] = []
    async with api, kmock.Server(api) as server:
        kubeconfig = api.kubeconfig(str(server.url), tmp / "kubeconfig")
        op = OperatorSubprocess(api, kubeconfig, tmp / "operator-chaos.log")
        switch = KillSwitch(op)
        api.gate = switch
        work = Workload(api, NS, size, rng)
        op.spawn()
        await op.wait_watching()
        work.fill()
        first, found = await converge(api, NS, timeout)
        if not found.converged:
            raise RuntimeError(f"the first {size} pipelines never converged: {found.summary()}")
        print(f"{size} pipelines converged in {first:.1f}s (load {loadavg()})", flush=True)
        for i in range(rounds):
            calls_before = operator_calls(api)
            work.step(rng.randint(1, 6))
            wheres: list[str] = []
            startup = 0.0
            restarted = time.monotonic()
            for kill in range(kills_per_round):
                # Kill at a random request of the reconciles under way: the changes just applied
                # (about 15 requests per pipeline) or, from the second kill on, the previous
                # restart's resume of every pipeline.
                switch.arm(rng.randint(1, 120 if kill == 0 else 400))
                try:
                    await asyncio.wait_for(switch.fired.wait(), timeout=rng.uniform(2.0, 6.0))
                    call = switch.tripped_by
                    wheres.append(f"{call.verb} {call.resource}" if call else "?")
                except TimeoutError:
                    switch.remaining = None
                    op.kill()  # the reconciles finished first: kill it idle
                    wheres.append("idle")
                if rng.random() < 0.5:
                    work.step(rng.randint(1, 4))  # users keep applying while the operator is down
                op.spawn()
                restarted = time.monotonic()
                try:
                    startup = await op.wait_watching()
                except RuntimeError as e:  # did not come up (noted, then once more, as a pod restart would)
                    failures.append(f"round {i + 1}: restart failed: {str(e)[-300:]}")
                    op.kill()
                    op.spawn()
                    startup = await op.wait_watching()
            where = ", ".join(wheres)
            sent = operator_calls(api, 0) - calls_before
            _elapsed, found = await converge(api, NS, max(1.0, timeout - (time.monotonic() - restarted)))
            to_converge = time.monotonic() - restarted if found.converged else None
            row = {
                "round": i + 1,
                "killed_at": where,
                "kills": len(wheres),
                "requests_in_round": sent,
                "startup_s": round(startup, 2),
                "converge_s": round(to_converge, 2) if to_converge is not None else None,
                "pipelines": len(work.names()),
                "loadavg": loadavg(),
            }
            if not found.converged:
                row["problems"] = found.counts()
                failures.append(f"round {i + 1}: {found.summary()}")
                totals.update(found.counts())
            per_round.append(row)
            print(
                f"round {i + 1}/{rounds}: killed at {where} ({sent} requests); "
                f"restart watching in {startup:.1f}s, converged "
                f"{f'in {to_converge:.1f}s' if to_converge is not None else 'NOT: ' + found.summary()} "
                f"(load {loadavg()[0]})",
                flush=True,
            )
            if progress is not None:
                progress(
                    chaos_summary(rounds, size, seed, work, op, per_round, totals, inspect(api, NS), failures)
                )
        final = inspect(api, NS)
        op.stop()
    return chaos_summary(rounds, size, seed, work, op, per_round, totals, final, failures)


def chaos_summary(
    rounds: int,
    size: int,
    seed: int,
    work: Workload,
    op: OperatorSubprocess,
    per_round: list[dict[str, Any]],
    totals: Counter[str],
    final: Inspection,
    failures: list[str],
) -> dict[str, Any]:
    crashes = op.crashes()
    kopf_drops = op.api_error_throttles()
    times = [r["converge_s"] for r in per_round if r["converge_s"] is not None]
    startups = [r["startup_s"] for r in per_round]
    return {
        "rounds": len(per_round),
        "rounds_planned": rounds,
        "pipelines": size,
        "seed": seed,
        "operations": dict(work.ops),
        "kills": sum(r.get("kills", 1) for r in per_round),
        "converged_rounds": len(times),
        "converge_p50_s": round(percentile(times, 0.5), 2),
        "converge_p95_s": round(percentile(times, 0.95), 2),
        "converge_max_s": round(max(times), 2) if times else None,
        "startup_p50_s": round(percentile(startups, 0.5), 2) if startups else None,
        "problems_at_timeout": dict(totals),
        "final": final.counts(),
        "failures": failures[:20],
        "crash_log_lines": crashes[:20],
        "crash_lines": len(crashes),
        "kopf_event_drops": kopf_drops,
        "killed_at": dict(Counter(w for r in per_round for w in r["killed_at"].split(", "))),
        "per_round": per_round,
    }


# -------------------------------------------------------------------------------- API faults


async def run_faults(
    kind: str | None, rate: float, seed: int, size: int, timeout: float, tmp: Path, idle_s: float = 30.0
) -> dict[str, Any]:
    """One fault kind at one rate (kind None = the fault-free baseline)."""
    rng = random.Random(seed)
    api = emulator()
    if kind is not None:
        api.faults = Faults(**{kind: rate}, seed=seed)  # type: ignore[arg-type]
    label = f"{kind or 'baseline'}@{rate:.0%}" if kind else "baseline"
    clock = CallClock()
    api.gate = clock
    async with api, kmock.Server(api) as server:
        kubeconfig = api.kubeconfig(str(server.url), tmp / "kubeconfig")
        op = OperatorSubprocess(api, kubeconfig, tmp / f"operator-{label.replace('@', '-')}.log")
        op.spawn()
        await op.wait_watching()
        work = Workload(api, NS, size, rng, unservable_rate=0.0)
        calls0, t0 = operator_calls(api), time.monotonic()
        work.fill()
        first, found = await converge(api, NS, timeout)
        # Then changes on a running cluster: half the pipelines updated, a quarter deleted.
        names = work.names()
        for name in rng.sample(names, len(names) // 2):
            work.update(name)
        for name in rng.sample(names, len(names) // 4):
            work.delete(name)
        second, found2 = await converge(api, NS, timeout)
        converging_s = time.monotonic() - t0
        calls1 = operator_calls(api)
        # Idle: converged, nothing changes; an error storm would show here.
        await asyncio.sleep(idle_s)
        idle_calls = operator_calls(api) - calls1
        idle_kinds = Counter(
            f"{c.verb} {c.resource}"
            for c in api.calls[calls1:]
            if c.agent.startswith((OPERATOR_AGENT, "kopf"))
        )
        crashes = op.crashes()
        kopf_drops = op.api_error_throttles()
        op.stop()
    backoffs = retry_delays(api, clock.seen)
    return {
        "scenario": label,
        "kind": kind,
        "rate": rate if kind else 0.0,
        "pipelines": size,
        "create_converge_s": round(first, 2) if found.converged else None,
        "change_converge_s": round(second, 2) if found2.converged else None,
        "converged": found.converged and found2.converged,
        "problems": (found2 if found.converged else found).counts(),
        "requests": calls1 - calls0,
        "requests_per_s": round((calls1 - calls0) / max(converging_s, 1e-9), 1),
        "idle_requests_per_s": round(idle_calls / idle_s, 2),
        "idle_seconds": idle_s,
        "idle_requests": dict(idle_kinds.most_common(8)),
        "injected": dict(api.injected),
        "retry_delay_p50_s": round(percentile(backoffs, 0.5), 2) if backoffs else None,
        "retry_delay_min_s": round(min(backoffs), 2) if backoffs else None,
        "crash_lines": len(crashes),
        "crash_log_lines": crashes[:10],
        "kopf_event_drops": kopf_drops,
        "loadavg": loadavg(),
    }


CallKey = tuple[str, str, str, str | None, str | None]


def call_key(call: Call) -> CallKey:
    return (call.agent, call.verb, call.resource, call.namespace, call.name)


class CallClock:
    """An emulator gate that notes when each request arrived (loop time), per request identity."""

    def __init__(self) -> None:
        self.seen: dict[CallKey, list[float]] = {}

    async def __call__(self, call: Call) -> None:
        self.seen.setdefault(call_key(call), []).append(asyncio.get_running_loop().time())


def retry_delays(api: KubeEmulator, seen: dict[CallKey, list[float]]) -> list[float]:
    """For each faulted request, seconds until the same client sent the same request again."""
    times: dict[CallKey, list[float]] = {}
    for at, kind, call in api.fault_log:
        # Only requests for one named object: two creates of different Events (or two lists)
        # look alike, and the gap between them says nothing about backoff.
        if kind != "drop_watch" and call.name is not None and call.verb != "watch":
            times.setdefault(call_key(call), []).append(at)
    delays: list[float] = []
    for key, faulted in times.items():
        later = seen.get(key, [])
        for at in faulted:
            nxt = next((t for t in later if t > at + 1e-6), None)
            if nxt is not None:
                delays.append(nxt - at)
    return delays


async def run_outage(seed: int, size: int, outage_s: float, timeout: float, tmp: Path) -> dict[str, Any]:
    """Every request fails (500) for ``outage_s`` while changes are pending; then the server heals."""
    rng = random.Random(seed)
    api = emulator()
    async with api, kmock.Server(api) as server:
        kubeconfig = api.kubeconfig(str(server.url), tmp / "kubeconfig")
        op = OperatorSubprocess(api, kubeconfig, tmp / "operator-outage.log")
        op.spawn()
        await op.wait_watching()
        work = Workload(api, NS, size, rng, unservable_rate=0.0)
        c0, t0 = operator_calls(api), time.monotonic()
        work.fill()
        await converge(api, NS, timeout)
        healthy_rate = (operator_calls(api) - c0) / (time.monotonic() - t0)
        api.faults = Faults(server_error=1.0, seed=seed)
        for name in work.names():
            work.update(name)
        c1 = operator_calls(api)
        await asyncio.sleep(outage_s)
        during = operator_calls(api) - c1
        api.faults = None
        healed = time.monotonic()
        elapsed, found = await converge(api, NS, timeout)
        crashes = op.crashes()
        op.stop()
    return {
        "pipelines": size,
        "outage_s": outage_s,
        "requests_during_outage": during,
        "outage_requests_per_s": round(during / outage_s, 1),
        "healthy_requests_per_s": round(healthy_rate, 1),
        "converge_after_outage_s": round(elapsed, 2) if found.converged else None,
        "problems": found.counts(),
        "crash_lines": len(crashes),
        "loadavg": loadavg(),
        "time_healed": round(time.monotonic() - healed, 2),
    }


# ------------------------------------------------------------------------------------ report


def reliability_rows(
    chaos: dict[str, Any] | None, faults: list[dict[str, Any]], outage: dict[str, Any] | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if chaos:
        item = "1 Operator chaos"
        n, k = chaos["pipelines"], chaos["kills"]
        counts = Counter(chaos["problems_at_timeout"])  # what was still wrong when a round timed out
        for key, words in (
            ("orphans", "orphaned children"),
            ("duplicates", "duplicate children"),
            ("bad_status", "lost or incorrect status"),
            ("stale", "children left at an old spec"),
            ("missing", "children missing"),
            ("stuck_finalizers", "stuck finalizers"),
        ):
            rows.append(
                {
                    "item": item,
                    "figure": f"{words} after {k} SIGKILLs, {n} pipelines",
                    "value": counts.get(key, 0),
                    "unit": "",
                    "target": "0",
                    "met": counts.get(key, 0) == 0,
                }
            )
        rows.append(
            {
                "item": item,
                "figure": f"rounds converged within the timeout ({k} kills in "
                f"{chaos['rounds']} of {chaos['rounds_planned']} planned rounds)",
                "value": f"{chaos['converged_rounds']}/{chaos['rounds']}",
                "unit": "",
                "target": "all",
                "met": chaos["converged_rounds"] == chaos["rounds"],
            }
        )
        for q in ("p50", "p95", "max"):
            rows.append(
                {
                    "item": item,
                    "figure": f"time to converge after a round's last restart, {q} (process start included)",
                    "value": chaos[f"converge_{q}_s"],
                    "unit": "s",
                    "target": "",
                    "met": None,
                }
            )
        rows.append(
            {
                "item": item,
                "figure": "handler crashes in the operator log",
                "value": chaos["crash_lines"],
                "unit": "",
                "target": "0",
                "met": chaos["crash_lines"] == 0,
            }
        )
    baseline = next((f for f in faults if f["kind"] is None), None)
    for f in faults:
        if f["kind"] is None:
            continue
        item = "2 API faults"
        dup = f["problems"].get("duplicates", 0) + f["problems"].get("orphans", 0)
        rows.append(
            {
                "item": item,
                "figure": f"{f['scenario']}: converged, no duplicate or orphaned child",
                "value": "yes" if f["converged"] and dup == 0 else f"no ({f['problems']})",
                "unit": "",
                "target": "yes",
                "met": f["converged"] and dup == 0,
            }
        )
        rows.append(
            {
                "item": item,
                "figure": f"{f['scenario']}: time to converge (create 20 / change)",
                "value": f"{f['create_converge_s']} / {f['change_converge_s']}",
                "unit": "s",
                "target": "",
                "met": None,
            }
        )
        if baseline:
            ratio = round(f["requests"] / max(1, baseline["requests"]), 2)
            rows.append(
                {
                    "item": item,
                    "figure": f"{f['scenario']}: requests sent vs fault-free baseline",
                    "value": ratio,
                    "unit": "x",
                    "target": "bounded (< 3x)",
                    "met": ratio < 3,
                }
            )
        # Settling traffic (Deployments turning ready, status refreshes) goes on for a moment after
        # convergence even without faults: the bound is relative to the fault-free run.
        idle_bound = max(2.0, 3 * (baseline["idle_requests_per_s"] if baseline else 0.0))
        window = f.get("idle_seconds", 5.0)
        rows.append(
            {
                "item": item,
                "figure": f"{f['scenario']}: requests/s in the {window:g} s after converging",
                "value": f["idle_requests_per_s"],
                "unit": "req/s",
                "target": f"<= {idle_bound:g} (3x fault-free, at least 2)",
                "met": f["idle_requests_per_s"] <= idle_bound,
            }
        )
        if f.get("retry_delay_p50_s") is not None:
            rows.append(
                {
                    "item": item,
                    "figure": (
                        f"{f['scenario']}: delay before a faulted request on a named "
                        "object is sent again, p50"
                    ),
                    "value": f["retry_delay_p50_s"],
                    "unit": "s",
                    "target": "backoff visible (> 0.1 s)",
                    "met": f["retry_delay_p50_s"] > 0.1,
                }
            )
    if outage:
        item = "2 API faults"
        # Per pipeline, three clients retry while the server is down (the reconcile, Kopf's own
        # bookkeeping patch and its Event posting), each backing off from about 1 s: a storm
        # would be each retrying at the speed of its failures, hundreds of requests a second.
        per_pipeline = round(outage["outage_requests_per_s"] / max(1, outage["pipelines"]), 2)
        rows.append(
            {
                "item": item,
                "figure": (
                    f"outage (every request 500 for {outage['outage_s']:.0f}s, "
                    f"{outage['pipelines']} pipelines changing): requests/s per pipeline "
                    f"({outage['outage_requests_per_s']} in all; "
                    f"{outage['healthy_requests_per_s']} while healthy)"
                ),
                "value": per_pipeline,
                "unit": "req/s",
                "target": "<= 1.5 (3 clients backing off from 1 s)",
                "met": per_pipeline <= 1.5,
            }
        )
        rows.append(
            {
                "item": item,
                "figure": "outage: time to converge once the server heals",
                "value": outage["converge_after_outage_s"],
                "unit": "s",
                "target": "",
                "met": None,
            }
        )
    return rows


def render_md(report: dict[str, Any]) -> str:
    lines = [
        "# Operator chaos and API faults",
        "",
        (
            f"{provenance_line(report)}, shared with other work (load average at the end "
            f"{report.get('loadavg_after')}). `{report['command']}`."
        ),
        "",
        *(
            [
                f"API faults measured in a later run: {report['faults_measured_at']}, `{report['faults_command']}`.",
                "",
            ]
            if report.get("faults_measured_at")
            else []
        ),
        "| item | figure | value | unit | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["reliability"]:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['item']} | {r['figure']} | {r['value']} | {r['unit']} | {r['target']} | {met} |")
    chaos = report.get("chaos")
    if chaos:
        lines += [
            "",
            (
                f"Chaos: {chaos['kills']} SIGKILLs over {chaos['rounds']} rounds (the first of a round "
                "mid-reconcile of its changes, the next during the restart's resume), operations "
                f"{chaos['operations']}; where the kill landed: {chaos['killed_at']}. Restart to "
                f"watching p50 {chaos['startup_p50_s']} s (process start and imports)."
            ),
        ]
        if chaos["failures"]:
            lines += ["", "Rounds that did not converge:", ""] + [f"- {f}" for f in chaos["failures"]]
    if report.get("faults"):
        lines += [
            "",
            (
                "| scenario | converged | create (s) | change (s) | requests | req/s | idle req/s | "
                "injected | Kopf event drops | retry delay p50 (s) | load |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for f in report["faults"]:
            lines.append(
                f"| {f['scenario']} | {f['converged']} | {f['create_converge_s']} | "
                f"{f['change_converge_s']} | {f['requests']} | {f['requests_per_s']} | "
                f"{f['idle_requests_per_s']} | {f['injected']} | {f.get('kopf_event_drops', '')} | "
                f"{f['retry_delay_p50_s']} | {f['loadavg']} |"
            )
    lines += [
        "",
        "Kopf event drops: times Kopf's own bookkeeping request failed with an API error it does not",
        "retry (409) or that outlasted its backoffs; the operator's resync sweep nudges such pipelines",
        "(operator/resync.py), which is why a 409 scenario converges in tens of seconds.",
        "",
    ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """API faults first (minutes), then the chaos rounds (the long part), rewriting the results
    after every round: an interrupted run still leaves a report of the rounds it completed."""
    report: dict[str, Any] = provenance("chaos")

    def write(
        chaos: dict[str, Any] | None, faults: list[dict[str, Any]], outage: dict[str, Any] | None
    ) -> None:
        report.update(
            chaos=chaos,
            faults=faults,
            outage=outage,
            reliability=reliability_rows(chaos, faults, outage),
            loadavg_after=loadavg(),
        )
        write_result(args.out / f"{args.name}.json", report)
        (args.out / f"{args.name}.md").write_text(render_md(report))

    with tempfile.TemporaryDirectory(prefix="lt-chaos-") as tmpdir:
        tmp = Path(tmpdir)
        faults: list[dict[str, Any]] = []
        outage = None
        if not args.skip_faults:
            faults.append(
                await run_faults(
                    None, 0.0, args.seed, args.fault_pipelines, args.timeout, tmp, args.idle_seconds
                )
            )
            print(json.dumps(faults[-1]), flush=True)
            for kind in args.fault_kinds:
                for rate in args.rates:
                    faults.append(
                        await run_faults(
                            kind, rate, args.seed, args.fault_pipelines, args.timeout, tmp, args.idle_seconds
                        )
                    )
                    print(json.dumps(faults[-1]), flush=True)
            outage = await run_outage(args.seed, args.fault_pipelines, args.outage_seconds, args.timeout, tmp)
            print(json.dumps(outage), flush=True)
            write(None, faults, outage)
        chaos = None
        if not args.skip_chaos:
            chaos = await run_chaos(
                args.rounds,
                args.pipelines,
                args.seed,
                args.timeout,
                tmp,
                progress=lambda partial: write(partial, faults, outage),
                kills_per_round=args.kills_per_round,
            )
        write(chaos, faults, outage)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="chaos rounds (changes, kills, convergence)")
    parser.add_argument(
        "--kills-per-round",
        type=int,
        default=2,
        help="SIGKILLs per round: the first mid-reconcile of the changes, the next ones "
        "during the restart's resume; convergence is timed after the last restart",
    )
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--fault-pipelines", type=int, default=20)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--fault-kinds", nargs="+", choices=FAULT_KINDS, default=list(FAULT_KINDS))
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="how long the converged cluster is watched for idle traffic",
    )
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a round may take to converge")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--skip-chaos", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--name", default="chaos", help="results file stem")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="run nothing: recompute the reliability rows and the .md from the stored JSON",
    )
    parser.add_argument(
        "--faults-from",
        type=Path,
        default=None,
        help="with --rerender: take the API-fault runs from this results file (a later "
        "--skip-chaos run) and keep the stored chaos rounds",
    )
    args = parser.parse_args()
    if args.rerender:
        path = args.out / f"{args.name}.json"
        report = json.loads(path.read_text())
        if args.faults_from is not None:
            other = json.loads(args.faults_from.read_text())
            report.update(
                faults=other["faults"],
                outage=other["outage"],
                faults_measured_at=other["time"],
                faults_commit=other["commit"],
                faults_command=other["command"],
            )
        report["reliability"] = reliability_rows(
            report.get("chaos"), report.get("faults") or [], report.get("outage")
        )
        write_result(path, report)  # the run's provenance stays: nothing was measured now
        (args.out / f"{args.name}.md").write_text(render_md(report))
        print(render_md(report))
        return 0
    report = asyncio.run(amain(args))
    print(render_md(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
