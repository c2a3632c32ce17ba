"""Alert rules: the plain rules file passes `promtool check rules` and the promtool unit tests
(a firing and a quiet case for every alert), the chart's PrometheusRule carries exactly the same
rules, and every rule reads only metrics that something really exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from livetranslate_testing.promql import unknown_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "livetranslate" / "files" / "alerts.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
REQUIRED_ALERTS = {
    "LiveTranslateCaptionLatencyBudgetBurnFast",
    "LiveTranslateCaptionLatencyBudgetBurnSlow",
    "LiveTranslateStageNoReadyReplicas",
    "LiveTranslateGPUFramebufferHigh",
    "LiveTranslateAutoscalerHeld",
    "LiveTranslateScalingPinnedAtMax",
    "LiveTranslateOperatorReconcileErrors",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not found (Debian package prometheus; scripts/bootstrap.sh installs it)")
    return path


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


def test_plain_rules_file_is_valid() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", UNIT_TESTS.name],
        cwd=UNIT_TESTS.parent,
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [c for t in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert REQUIRED_ALERTS <= alerts
    for alert in alerts:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c.get("exp_alerts") for c in mine), f"{alert}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{alert}: no case where it stays quiet"


def test_every_alert_says_what_to_do() -> None:
    for rule in _rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert len(annotations["runbook"]) > 40, f"{rule['alert']}: runbook line too thin"


def test_rules_read_only_metrics_that_exist() -> None:
    for rule in _rules():
        unknown = unknown_metrics(rule["expr"], _recorded())
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads unknown metrics {unknown}"


def test_prometheusrule_carries_exactly_the_plain_rules(render: Any) -> None:
    (rule,) = [o for o in render({"prometheusRule": {"enabled": True}}) if o["kind"] == "PrometheusRule"]
    plain = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == plain, (
        "files/alerts.rules.yaml is stale: write the PrometheusRule's spec.groups (default values) into it"
    )


def test_rules_rendered_with_other_values_are_still_valid(
    render: Any, non_default_values: dict[str, Any], tmp_path: Path
) -> None:
    (rule,) = [o for o in render(non_default_values) if o["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(
        [_promtool(), "check", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r):
        assert r["annotations"]["runbook_url"].startswith(
            "https://docs.example.internal/livetranslate/operations#"
        )


def test_every_runbook_url_points_at_a_section_of_the_operations_guide(render: Any) -> None:
    values = {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://docs.example.internal/ops"}}
    (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r):
        anchor = r["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in headings, f"{r['alert']}: docs/operations.md has no section #{anchor}"
