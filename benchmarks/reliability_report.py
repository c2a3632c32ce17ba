"""RELIABILITY.md from the reliability rows every reliability benchmark records.

Each reliability benchmark (``benchmarks/bench_<name>.py``: chaos, gateway fuzzing, security, soak)
writes ``benchmarks/results/<name>.json`` with a top-level ``reliability`` list of rows
``{item, figure, value, unit, target, met}`` after the provenance block every results file starts
with (``livetranslate_testing.figures.provenance``: ``time``, ``machine.loadavg``, ``command``).
This script joins them into one table (issue 6, item 7), so the document can never say something
the recorded results do not. The output depends only on the results files (no clock), which lets
``scripts/check_generated.py`` fail CI when the committed RELIABILITY.md is stale.

Run: ``.venv/bin/python -P benchmarks/reliability_report.py`` (writes RELIABILITY.md at the repo
root), ``--stdout`` to print it instead; ``scripts/reliability.sh`` runs the benchmarks first.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "RELIABILITY.md"

# Issue 6's items, so an item nobody has measured yet shows as such instead of disappearing.
ITEMS = {
    1: "Operator chaos",
    2: "API faults",
    3: "Resource fuzzing",
    4: "Gateway fuzzing",
    5: "Soak and load",
    6: "Security",
}


@dataclass(frozen=True)
class Row:
    source: str  # results file stem
    item: str
    figure: str
    value: Any
    unit: str
    target: str
    met: bool | None

    @property
    def item_number(self) -> int:
        m = re.match(r"\s*(\d+)", self.item)
        return int(m.group(1)) if m else 99


@dataclass(frozen=True)
class Source:
    name: str
    time: str
    loadavg: str
    command: str
    rows: tuple[Row, ...]


class ReportError(Exception):
    """A results file whose reliability rows cannot be read; the message names the file and row."""


def load_sources(results_dir: Path) -> list[Source]:
    """Every ``*.json`` under ``results_dir`` with a ``reliability`` key, in file-name order."""
    sources = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: {exc}") from exc
        if not isinstance(data, dict) or "reliability" not in data:
            continue
        rows = []
        for i, raw in enumerate(data["reliability"]):
            if not isinstance(raw, dict) or not {"item", "figure", "value"} <= raw.keys():
                raise ReportError(f"{path}: reliability[{i}] needs item, figure and value: {raw!r}")
            met = raw.get("met")
            if met not in (True, False, None):
                raise ReportError(f"{path}: reliability[{i}].met must be true, false or null")
            rows.append(
                Row(
                    path.stem,
                    str(raw["item"]),
                    str(raw["figure"]),
                    raw["value"],
                    str(raw.get("unit") or ""),
                    str(raw.get("target") or ""),
                    met,
                )
            )
        machine = data.get("machine") or {}
        if machine.get("loadavg"):
            load = _load(machine["loadavg"])
        elif data.get("loadavg_after"):  # a file that did not record the start's load
            load = f"{_load(data['loadavg_after'])} (at the end)"
        else:
            load = "?"
        sources.append(
            Source(
                path.stem,
                str(data.get("time") or "?"),
                load,
                str(data.get("command") or f"python -P benchmarks/bench_{path.stem}.py"),
                tuple(rows),
            )
        )
    return sources


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(row: Row) -> str:
    v = row.value
    if isinstance(v, float):
        shown = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    elif isinstance(v, int) and not isinstance(v, bool):
        shown = f"{v:,}"
    else:
        shown = str(v)
    return _cell(f"{shown} {row.unit}".strip())


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[met]


def _load(loadavg: Any) -> str:
    if isinstance(loadavg, (list, tuple)) and loadavg:
        return ", ".join(f"{float(x):.2f}" for x in loadavg[:3])
    if isinstance(loadavg, (int, float)):
        return f"{float(loadavg):.2f}"
    if isinstance(loadavg, dict) and loadavg:
        return ", ".join(f"{k} {_load(v)}" for k, v in loadavg.items())
    return "?"


def render(sources: list[Source]) -> str:
    rows = sorted((r for s in sources for r in s.rows), key=lambda r: r.item_number)  # stable
    met = [r.met for r in rows]
    lines = [
        "# Reliability",
        "",
        "Reliability and security figures under load, faults and bad input (issue 6), as the benchmarks",
        "last recorded them in `benchmarks/results/`. Generated by `benchmarks/reliability_report.py`;",
        "`scripts/reliability.sh` re-runs the benchmarks and regenerates this file",
        "(`scripts/reliability.sh --table-only` only regenerates it). Do not edit by hand: CI checks",
        "that it matches the committed results.",
        "",
        (
            f"{len(rows)} figures: {met.count(True)} meet their target, {met.count(False)} do not, "
            f"{met.count(None)} are recorded without a target."
        ),
        "",
        "| item | figure | value | target | met | source |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r.item)} | {_cell(r.figure)} | {_value(r)} | {_cell(r.target) or '–'} | "
            f"{_met(r.met)} | [{r.source}](benchmarks/results/{r.source}.md) |"
        )
    measured = {r.item_number for r in rows}
    missing = [f"{n} {title}" for n, title in ITEMS.items() if n not in measured]
    if missing:
        lines += ["", "Not measured yet: " + "; ".join(missing) + "."]
    lines += [
        "",
        "## Where and when",
        "",
        "Every figure comes from a shared 2-core machine unless its command says otherwise; the load",
        "average (1, 5, 15 min) was recorded at the start of each run.",
        "",
        "| source | measured at | load average | re-run with |",
        "| --- | --- | --- | --- |",
    ]
    for s in sources:
        lines.append(f"| {s.name} | {_cell(s.time)} | {_cell(s.loadavg)} | `{_cell(s.command)}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--stdout", action="store_true", help="print the document instead of writing it")
    args = parser.parse_args(argv)
    try:
        text = render(load_sources(args.results_dir))
    except ReportError as exc:
        print(f"reliability_report: {exc}", file=sys.stderr)
        return 1
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
