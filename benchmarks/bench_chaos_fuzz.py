"""Resource fuzzing figures (issue 6, item 3): generated TranslationPipeline specs, counted.

1. Schema: N hypothesis-generated specs (wrong types, out-of-range numbers, bad language codes,
   duplicates, min > max, unknown fields, mixed with valid ones) through the CRD's OpenAPI schema
   and CEL rules as the API server applies them (livetranslate_testing.kube_schema): how many are
   refused, how many refusals name the field, and whether the models (what ``livetranslate up``
   and the operator parse) agree with the schema on every one.
2. Operator: M admitted specs (every value in bounds; refusals then come from rules across fields
   or from what this CPU-only cluster cannot serve) applied at once to the emulator with the real
   operator process running: each must end Ready, or Failed with ``status.invalidField`` and a
   Ready=False message naming the field; none may crash a handler; deleting them all must leave
   nothing behind.

Usage: python -P benchmarks/bench_chaos_fuzz.py [--schema-specs 2000] [--operator-specs 60]
Writes benchmarks/results/chaos_fuzz.json (with the "reliability" rows) and chaos_fuzz.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kmock
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livetranslate.api import describe_validation_error, parse_spec
from livetranslate.crd import build_crd
from livetranslate_testing.chaos import OperatorSubprocess, inspect
from livetranslate_testing.figures import loadavg, provenance, provenance_line, write_result
from livetranslate_testing.kube_emulator import KubeEmulator
from livetranslate_testing.kube_schema import admit
from livetranslate_testing.spec_fuzz import (
    SCHEMA,
    TP,
    manifest,
    names_a_field,
    plausible_specs,
    spec_strategy,
)

ROOT = Path(__file__).resolve().parents[1]
NS = "fuzz"
ITEM = "3 Resource fuzzing"


def draw(strategy: st.SearchStrategy[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` examples of ``strategy`` (hypothesis' generation, outside a test)."""
    out: list[dict[str, Any]] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=strategy)
    def collect(spec: dict[str, Any]) -> None:
        out.append(spec)

    collect._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    collect()
    return out


def schema_phase(specs: list[dict[str, Any]]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    unnamed: list[str] = []
    disagreements: list[str] = []
    for spec in specs:
        stored, errors = admit(manifest(spec), SCHEMA)
        try:
            parse_spec(stored["spec"] if not errors else spec)
            models_ok = True
        except pydantic.ValidationError as e:
            models_ok = False
            if not errors and not names_a_field(describe_validation_error(e)):
                unnamed.append(describe_validation_error(e)[:200])
        if models_ok != (not errors):
            disagreements.append(f"{json.dumps(spec)[:200]}: schema {errors[:2]}, models {models_ok}")
        if errors:
            counts["refused"] += 1
            bad = [e for e in errors if not names_a_field(e)]
            counts["refused_naming_field"] += not bad
            unnamed += bad[:1]
        else:
            counts["admitted"] += 1
    return {
        "specs": len(specs),
        **counts,
        "unnamed": unnamed[:10],
        "unnamed_count": len(unnamed),
        "disagreements": disagreements[:10],
        "disagreement_count": len(disagreements),
    }


async def operator_phase(specs: list[dict[str, Any]], timeout: float, tmp: Path) -> dict[str, Any]:
    admitted = [s for s in specs if not admit(manifest(s), SCHEMA)[1]]
    api = KubeEmulator(auto_ready_deployments=True)
    api.install_crd(build_crd())
    outcome: Counter[str] = Counter()
    problems: list[str] = []
    async with api, kmock.Server(api) as server:
        kubeconfig = api.kubeconfig(str(server.url), tmp / "kubeconfig")
        op = OperatorSubprocess(api, kubeconfig, tmp / "operator-fuzz.log")
        op.spawn()
        await op.wait_watching()
        names = []
        for i, spec in enumerate(admitted):
            name = f"fuzz-{i:03d}"
            api.create(TP, manifest(spec, name) | {"metadata": {"name": name, "namespace": NS}})
            names.append(name)
        started = time.monotonic()
        settled: dict[str, dict[str, Any]] = {}
        while len(settled) < len(names) and time.monotonic() - started < timeout:
            for name in names:
                status = (api.read(TP, NS, name) or {}).get("status") or {}
                if status.get("phase") in ("Ready", "Failed"):
                    settled[name] = status
            await asyncio.sleep(0.2)
        settle_s = time.monotonic() - started
        for name, spec in zip(names, admitted, strict=True):
            status = settled.get(name)
            if status is None:
                outcome["stuck"] += 1
                problems.append(f"{name} never Ready or Failed: {json.dumps(spec)[:200]}")
            elif status["phase"] == "Ready":
                outcome["ready"] += 1
            else:
                ready: dict[str, Any] = next(
                    (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
                )
                if str(status.get("invalidField") or "").startswith("spec.") and names_a_field(
                    ready.get("message", "")
                ):
                    outcome["failed_naming_field"] += 1
                    outcome[f"failed {status['invalidField'].split('[')[0]}"] += 1
                else:
                    outcome["failed_unnamed"] += 1
                    problems.append(f"{name} Failed without naming the field: {status}")
        for name in names:
            api.delete_object(TP, NS, name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = inspect(api, NS)
            if not api.find(TP, NS) and found.converged:
                break
            await asyncio.sleep(0.2)
        left = len(api.find(TP, NS))
        orphans = len(inspect(api, NS).orphans)
        crashes = op.crashes()
        op.stop()
    return {
        "specs": len(admitted),
        **outcome,
        "settle_s": round(settle_s, 2),
        "left_after_delete": left,
        "orphans_after_delete": orphans,
        "crash_lines": len(crashes),
        "crash_log_lines": crashes[:10],
        "problems": problems[:10],
        "loadavg": loadavg(),
    }


def reliability_rows(schema: dict[str, Any], operator: dict[str, Any]) -> list[dict[str, Any]]:
    n, refused = schema["specs"], schema.get("refused", 0)
    rows = [
        {
            "item": ITEM,
            "figure": f"generated specs refused by the CRD schema and CEL rules (of {n})",
            "value": refused,
            "unit": "",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": "schema refusals whose message names no spec field",
            "value": refused - schema.get("refused_naming_field", 0),
            "unit": "",
            "target": "0",
            "met": refused == schema.get("refused_naming_field", 0),
        },
        {
            "item": ITEM,
            "figure": f"specs where the models and the CRD schema disagree (of {n})",
            "value": schema["disagreement_count"],
            "unit": "",
            "target": "0",
            "met": schema["disagreement_count"] == 0,
        },
    ]
    m = operator["specs"]
    rows += [
        {
            "item": ITEM,
            "figure": f"admitted specs through the operator: Ready (of {m})",
            "value": operator.get("ready", 0),
            "unit": "",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": f"admitted specs through the operator: Failed naming the field (of {m})",
            "value": operator.get("failed_naming_field", 0),
            "unit": "",
            "target": "",
            "met": None,
        },
        {
            "item": ITEM,
            "figure": "admitted specs neither Ready nor Failed naming the field",
            "value": operator.get("stuck", 0) + operator.get("failed_unnamed", 0),
            "unit": "",
            "target": "0",
            "met": operator.get("stuck", 0) + operator.get("failed_unnamed", 0) == 0,
        },
        {
            "item": ITEM,
            "figure": "handler crashes in the operator log",
            "value": operator["crash_lines"],
            "unit": "",
            "target": "0",
            "met": operator["crash_lines"] == 0,
        },
        {
            "item": ITEM,
            "figure": "pipelines or children left after deleting them all",
            "value": operator["left_after_delete"] + operator["orphans_after_delete"],
            "unit": "",
            "target": "0",
            "met": operator["left_after_delete"] + operator["orphans_after_delete"] == 0,
        },
    ]
    return rows


def render_md(report: dict[str, Any]) -> str:
    lines = [
        "# Resource fuzzing",
        "",
        (
            f"{provenance_line(report)}, shared with other work (load average at the end "
            f"{report.get('loadavg_after')}). `{report['command']}`."
        ),
        "",
        "| item | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for r in report["reliability"]:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['item']} | {r['figure']} | {r['value']} | {r['target']} | {met} |")
    op = report["operator"]
    lines += [
        "",
        (
            f"Operator outcomes: { {k: v for k, v in op.items() if isinstance(v, int)} }; all settled "
            f"in {op['settle_s']} s."
        ),
        "",
    ]
    for key in ("unnamed", "disagreements"):
        if report["schema"][key]:
            lines += [f"{key}:", ""] + [f"- `{x}`" for x in report["schema"][key]] + [""]
    if op["problems"]:
        lines += ["operator problems:", ""] + [f"- {p}" for p in op["problems"]] + [""]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    began = provenance("chaos_fuzz")
    schema = schema_phase(draw(spec_strategy, args.schema_specs, args.seed))
    print(json.dumps(schema), flush=True)
    with tempfile.TemporaryDirectory(prefix="lt-fuzz-") as tmp:
        operator = await operator_phase(
            draw(plausible_specs, args.operator_specs, args.seed), args.timeout, Path(tmp)
        )
    print(json.dumps(operator), flush=True)
    return {
        **began,
        "schema": schema,
        "operator": operator,
        "reliability": reliability_rows(schema, operator),
        "loadavg_after": loadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema-specs", type=int, default=2000)
    parser.add_argument("--operator-specs", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--name", default="chaos_fuzz")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report = asyncio.run(amain(args))
    write_result(args.out / f"{args.name}.json", report)
    text = render_md(report)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
