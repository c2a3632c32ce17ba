"""Autoscaling policies side by side: LiveTranslate's policy vs Kubernetes HPA vs a KEDA-style scaler.

Runs ``livetranslate bench autoscaling`` on the built-in traces (step, burst, diurnal, noisy) and
records the figures in benchmarks/results/autoscaling.json and .md, and the plot in
docs/img/autoscaling.png. The simulation is deterministic (seeded noise), so the figures do not
depend on this machine's load; the load average is recorded anyway.

Usage: .venv/bin/python benchmarks/bench_autoscaling.py [--trace FILE.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from livetranslate import bench

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", help="CSV with header t_seconds,active_sessions")
    args = parser.parse_args()
    started = time.perf_counter()
    argv = ["--results-dir", str(RESULTS), "--plot", str(ROOT / "docs" / "img" / "autoscaling.png"),
            "--json", str(RESULTS / "autoscaling.json")]
    if args.trace:
        argv += ["--trace", args.trace]
    rc = bench.main(["autoscaling", *argv])
    data = json.loads((RESULTS / "autoscaling.json").read_text())
    data["benchmark"] = "autoscaling"
    data["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["wall_seconds"] = round(time.perf_counter() - started, 2)
    (RESULTS / "autoscaling.json").write_text(json.dumps(data, indent=2))

    lines = ["# Autoscaling: LiveTranslate policy vs HPA vs KEDA-style", "",
             (f"Run {data['time']}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
             "(the simulation is deterministic; the load does not change the figures)."), "",
             f"Service rates per replica: {data['params']['source']}.", "",
             "| trace | policy | SLO-violation s | replica-seconds | scaling actions |", "|---|---|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(f"| {r['trace']} | {r['policy']} | {r['slo_violation_s']:.0f} | {r['replica_seconds']:.0f} | "
                     f"{r['actions']} |")
    lines += ["", (f"Summed over all traces: SLO-violation ratio vs HPA **{data['slo_violation_ratio_vs_hpa']:.3f}**, "
              f"replica-seconds ratio vs HPA **{data['replica_seconds_ratio_vs_hpa']:.3f}** "
              "(target: <= 0.5 with <= 1.0)."), "", "![replicas and latency](../../docs/img/autoscaling.png)", ""]
    (RESULTS / "autoscaling.md").write_text("\n".join(lines))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
