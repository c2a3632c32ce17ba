"""Grafana dashboards: well-formed JSON with the datasource, namespace and pipeline variables,
PromQL that parses (promtool), and only metrics our code exports or API.md lists as external.

The dashboards read no kube-state-metrics series: replica counts come from the operator's own
gauges (livetranslate_stage_*replicas), so the dashboards work with Prometheus alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from livetranslate_testing.promql import metric_names, unknown_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "charts" / "livetranslate" / "files" / "alerts.rules.yaml"
# Values Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$namespace": ".*",
    "$pipeline": ".*",
    "$node": ".*",
    "$slo": "1.5",
    "$high_watermark": "0.9",
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and Prometheus annotation."""
    out = [
        (f"{dash['uid']}/{p['title']}/{t['refId']}", t["expr"]) for p in dash["panels"] for t in p["targets"]
    ]
    out += [
        (f"{dash['uid']}/annotation {a['name']}", a["expr"])
        for a in dash["annotations"]["list"]
        if a.get("expr")
    ]
    return out


def substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARS[var])
    assert not re.search(r"\$[A-Za-z_{]", expr), f"unknown Grafana variable in {expr}"
    return expr


def test_three_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARDS} == {"pipeline-overview", "gpu", "operator"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    dash = _load(path)
    assert dash["uid"].startswith("livetranslate-") and dash["title"].startswith("LiveTranslate / ")
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert "namespace" in variables
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"{panel['title']}: say what the panel tells an operator"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24


def test_pipeline_and_operator_dashboards_filter_by_pipeline() -> None:
    for stem in ("pipeline-overview", "operator"):
        dash = _load(ROOT / "dashboards" / f"{stem}.json")
        assert "pipeline" in {v["name"] for v in dash["templating"]["list"]}
        for where, expr in _exprs(dash):
            if any(
                n.startswith("livetranslate_") and "scaling_decisions" not in n and "reconcile" not in n
                for n in metric_names(expr)
            ):
                assert 'pipeline=~"$pipeline"' in expr, f"{where} ignores the pipeline variable"


def test_pipeline_overview_covers_what_an_operator_watches() -> None:
    dash = _load(ROOT / "dashboards" / "pipeline-overview.json")
    text = json.dumps(dash)
    for metric in (
        "livetranslate_caption_latency_seconds_bucket",
        "livetranslate_translation_latency_seconds_bucket",
        "livetranslate_sessions_active",
        "livetranslate_queue_depth",
        "livetranslate_stage_replicas",
        "livetranslate_audio_realtime_factor",
        "vector($slo)",
    ):
        assert metric in text, metric
    annotations = [
        a for a in dash["annotations"]["list"] if "livetranslate_scaling_decisions_total" in a.get("expr", "")
    ]
    assert annotations, "scaling decisions must show as annotations"


def test_gpu_dashboard_covers_memory_cache_queue_and_model() -> None:
    text = json.dumps(_load(ROOT / "dashboards" / "gpu.json"))
    for metric in (
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
        "model_name",
    ):
        assert metric in text, metric


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_queries_read_only_known_metrics(path: Path) -> None:
    recorded = {
        r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r
    }
    for where, expr in _exprs(_load(path)):
        assert metric_names(substitute(expr)) or "vector(" in expr, f"{where}: no metric found in {expr}"
        unknown = unknown_metrics(substitute(expr), recorded)
        assert not unknown, (
            f"{where} reads {unknown}: not exported by livetranslate.metrics nor external in API.md"
        )


def test_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule) after Grafana's variable substitution."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not found (Debian package prometheus)")
    rules = []
    for path in DASHBOARDS:
        for i, (_where, expr) in enumerate(_exprs(_load(path))):
            rules.append(
                {"record": f"dashboard:{re.sub(r'[^a-z]', '_', path.stem)}:{i}", "expr": substitute(expr)}
            )
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(file)], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
