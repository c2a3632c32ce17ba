"""The Helm chart, rendered offline with Helm's own Go library (helm-python-sdk): lint, render
with default and non-default values, the values schema, Kubernetes OpenAPI validation of every
object, the restricted Pod Security Standard, RBAC without wildcards, and the files the chart
copies from elsewhere in the repository (CRDs, dashboards) staying identical to their sources.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from livetranslate.operator import rbac
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing.pss import object_violations

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "livetranslate"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) is what objects must fit.
KUBE_VERSION = "1.27"


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def _operator(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = _by_kind(objs)["Deployment"]
    return dep


def _env(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ----------------------------------------------------------------------------------------- lint


def test_lint_is_clean(helm: Any, values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values or None, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


# --------------------------------------------------------------------------------------- render


def test_default_render_has_the_operator_and_its_access(render: Any) -> None:
    kinds = _by_kind(render({}))
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ClusterKopfPeering",
        "ConfigMap",
    } <= kinds.keys()
    # Optional pieces stay off by default: they need CRDs a bare cluster lacks.
    assert not kinds.keys() & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "TranslationPipeline"}
    dep = _operator(render({}))
    assert dep["spec"]["replicas"] == 2
    env = _env(dep)
    peering = kinds["ClusterKopfPeering"][0]["metadata"]["name"]
    assert env["LT_OPERATOR_PEERING"] == peering, "both replicas must join the peering the chart creates"
    # Images: short names, no registry host unless the user sets one.
    images = [v for k, v in env.items() if k.endswith("_IMAGE")]
    images.append(dep["spec"]["template"]["spec"]["containers"][0]["image"])
    assert len(images) == 5
    for img in images:
        first, _, rest = img.partition("/")
        assert not rest or not re.search(r"[.:]|^localhost$", first), f"{img} names a registry host"
    assert env["LT_OPERATOR_VLLM_IMAGE"].startswith("vllm/vllm-openai:")


def test_non_default_values_reach_the_objects(render: Any, non_default_values: dict[str, Any]) -> None:
    objs = render(non_default_values)
    kinds = _by_kind(objs)
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "TranslationPipeline"} <= kinds.keys()
    dep = _operator(objs)
    assert dep["metadata"]["name"] == "translate-op"
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.internal/ml/livetranslate-operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "lt-operator"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 9100, "health": 9101}
    env = _env(dep)
    assert env["LT_OPERATOR_AUDIO_IMAGE"] == "registry.example.internal/ml/livetranslate-audio:1.2.4"
    assert env["LT_OPERATOR_GATEWAY_IMAGE"] == "registry.example.internal/ml/livetranslate-gateway:1.2.3"
    assert env["LT_OPERATOR_VLLM_IMAGE"] == "registry.example.internal/ml/vllm/vllm-openai:v0.11.1"
    assert json.loads(env["LT_OPERATOR_IMAGE_PULL_SECRETS"]) == ["regcred"]
    assert json.loads(env["LT_OPERATOR_AUDIO_RESOURCES"])["memoryLimit"] == "4Gi"
    assert "LT_OPERATOR_TRANSLATE_RESOURCES" not in env, "unset resources keep the operator's defaults"
    assert env["LT_OPERATOR_PEERING"] == "lt-peers"
    assert env["LT_OPERATOR_MODEL_CACHE_SIZE"] == "40Gi"
    assert env["LT_OPERATOR_METRICS_PORT"] == "9100"
    assert env["LT_OPERATOR_LIVENESS_ENDPOINT"] == "http://0.0.0.0:9101/healthz"
    (sample,) = kinds["TranslationPipeline"]
    assert sample["metadata"]["name"] == "town-hall"
    assert sample["spec"]["targetLanguages"] == ["es", "de"]
    for cm in kinds["ConfigMap"]:
        assert cm["metadata"]["namespace"] == "monitoring"
        assert "annotations" not in cm["metadata"], "an empty folder leaves the annotation out"
    (rule,) = kinds["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    text = json.dumps(rule)
    assert 'le=\\"2.0\\"' in text and "(1 - 0.99)" in text and "> 0.85" in text
    assert "https://docs.example.internal/livetranslate/operations#" in text


def test_single_replica_without_peering(render: Any) -> None:
    objs = render({"operator": {"replicas": 1, "peering": {"enabled": False}}})
    kinds = _by_kind(objs)
    assert "ClusterKopfPeering" not in kinds and "PodDisruptionBudget" not in kinds
    assert "LT_OPERATOR_PEERING" not in _env(_operator(objs))
    (role,) = kinds["ClusterRole"]
    assert all("kopf.dev" not in r["apiGroups"] for r in role["rules"])


def test_notes_tell_how_to_reach_the_gateway(notes: Any, non_default_values: dict[str, Any]) -> None:
    text = notes({})
    assert "port-forward svc/town-hall-gateway 8080:8080" in text
    assert "http://127.0.0.1:8080/" in text and "/v1/stream" in text
    sample = notes(non_default_values)
    assert "port-forward svc/town-hall-gateway" in sample and "-n lt-system" in sample


# --------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"operator": {"replicas": -1}}, "/operator/replicas"),
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        (
            {
                "operator": {
                    "securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}
                }
            },
            "allowPrivilegeEscalation",
        ),
        ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
        ({"operator": {"logLevel": "verbose"}}, "/operator/logLevel"),
        ({"operator": {"replica": 2}}, "replica"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"prometheusRule": {"captionLatency": {"thresholdSeconds": "1.4"}}}, "thresholdSeconds"),
        ({"prometheusRule": {"gpuFramebuffer": {"highWatermark": 1.5}}}, "highWatermark"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
        ({"samplePipeline": {"name": "Town Hall"}}, "/samplePipeline/name"),
        ({"workloads": {"audio": {"repository": ""}}}, "/workloads/audio/repository"),
    ],
)
def test_schema_refuses_bad_values(chart: Any, helm: Any, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):
        chart.render(values=bad, name="lt", namespace="lt-system")


def test_schema_accepts_both_variants(chart: Any, values: dict[str, Any]) -> None:
    chart.validate_schema(values)


def test_every_values_key_is_documented() -> None:
    """Each key has a comment above it, or sits under a commented key (its comment covers the
    block), or is a block whose own keys are all documented."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys: list[tuple[int, str, bool]] = []  # (indent, path, commented)
    stack: list[tuple[int, str, bool]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prev = lines[i - 1].strip() if i else ""
        commented = prev.startswith("#")
        covered = commented or any(c for _, _, c in stack if c)
        path = ".".join([p for _, p, _ in stack] + [m.group(2)])
        keys.append((indent, path, covered))
        stack.append((indent, m.group(2), commented))
    covered_by = {path: covered for _, path, covered in keys}

    def documented(path: str) -> bool:
        children = [p for p in covered_by if p.rpartition(".")[0] == path]
        return covered_by[path] or bool(children) and all(documented(c) for c in children)

    undocumented = [path for path in covered_by if not documented(path)]
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"
    assert len(keys) > 50


# ------------------------------------------------------------------------- Kubernetes validity


def test_every_object_matches_the_kubernetes_openapi_schema(
    render: Any, values: dict[str, Any], crd_schemas: dict[tuple[str, str], dict[str, Any]]
) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in render(values):
        key = (obj["apiVersion"], obj["kind"])
        if key in crd_schemas:
            # CRD schemas are OpenAPI v3.0 (boolean exclusiveMinimum): draft 4 semantics.
            jsonschema.Draft4Validator(crd_schemas[key]).validate(obj)
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_prometheus_operator_object(obj)
        else:
            kv.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 8


def _check_prometheus_operator_object(obj: dict[str, Any]) -> None:
    """No prometheus-operator schema ships offline: check the fields it needs by hand."""
    spec = obj["spec"]
    if obj["kind"] == "PrometheusRule":
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and rule["expr"]
    elif obj["kind"] in ("ServiceMonitor", "PodMonitor"):
        endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints")
        assert endpoints and spec["selector"]["matchLabels"]
    else:
        raise AssertionError(f"unexpected {obj['kind']}")


def test_monitors_select_the_operator(render: Any, non_default_values: dict[str, Any]) -> None:
    objs = render(non_default_values)
    kinds = _by_kind(objs)
    dep = _operator(objs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (svc,) = kinds["Service"]
    (sm,) = kinds["ServiceMonitor"]
    (pm,) = kinds["PodMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


# --------------------------------------------------------------------------- pod security


def test_every_pod_template_is_restricted(render: Any, values: dict[str, Any]) -> None:
    objs = render(values)
    pods = [
        o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
    ]
    assert pods
    problems = [p for o in pods for p in object_violations(o)]
    assert not problems, problems
    for o in pods:
        for c in o["spec"]["template"]["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c.get("resources", {}).get("requests"), "every container requests resources"


# ---------------------------------------------------------------------------------------- RBAC


def test_rbac_has_no_wildcards_and_only_what_the_operator_needs(render: Any, values: dict[str, Any]) -> None:
    roles = [o for o in render(values) if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    allowed_verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
            assert set(rule["verbs"]) <= allowed_verbs, rule
            assert "resourceNames" not in rule or rule["resourceNames"]
            # The operator never reads Secrets: pods mount them; it must not be able to.
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


# What the chart grants beyond the operator's own reconcile and scaling calls: Kopf peering (only
# with peering on) and the per-pipeline PodMonitors (only with rbac.pipelineMonitors).
PEERING = {("kopf.dev", "clusterkopfpeerings", v) for v in ("list", "watch", "patch")}
from livetranslate.operator.rbac import MONITOR_RULES

MONITORS = {
    (g, r, v) for groups, resources, verbs in MONITOR_RULES for g in groups for r in resources for v in verbs
}


@pytest.mark.parametrize(
    "overrides, extras",
    [
        ({}, PEERING | MONITORS),
        (
            {"operator": {"replicas": 1, "peering": {"enabled": False}}, "rbac": {"pipelineMonitors": False}},
            set(),
        ),
    ],
)
def test_cluster_role_grants_exactly_what_the_operator_uses(
    render: Any, overrides: dict[str, Any], extras: set[tuple[str, str, str]]
) -> None:
    """The operator's integration tests check every API call it makes against
    livetranslate.operator.rbac.RULES; the chart must grant those rules, and nothing else."""
    wanted = {
        (g, r, v) for groups, resources, verbs in rbac.RULES for g in groups for r in resources for v in verbs
    }
    (role,) = [o for o in render(overrides) if o["kind"] == "ClusterRole"]
    granted = _triples(role["rules"])
    assert granted - wanted - extras == set(), "the chart grants more than the operator uses"
    assert wanted - granted == set(), "the operator makes calls the chart does not allow (403 in a cluster)"
    assert extras <= granted


# ------------------------------------------------------------------ files copied from elsewhere


def test_chart_crds_match_the_generated_ones() -> None:
    generated = sorted((ROOT / "crds").glob("*.yaml"))
    assert generated, "crds/ at the root is empty: run `livetranslate crd`"
    for path in generated:
        copy = CHART / "crds" / path.name
        assert copy.exists(), f"charts/livetranslate/crds/{path.name} missing (copy crds/{path.name})"
        assert copy.read_bytes() == path.read_bytes(), (
            f"charts/livetranslate/crds/{path.name} differs from crds/"
        )


def test_chart_ships_the_translationpipeline_and_peering_crds(crd_schemas: dict[Any, Any]) -> None:
    assert ("kopf.dev/v1", "ClusterKopfPeering") in crd_schemas
    assert ("livetranslate.io/v1alpha1", "TranslationPipeline") in crd_schemas


def test_chart_dashboards_are_identical_to_dashboards_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "dashboards").glob("*.json")}
    copied = {p.name: p.read_bytes() for p in (CHART / "dashboards").glob("*.json")}
    assert source, "dashboards/ is empty"
    assert copied == source, "copy dashboards/*.json into charts/livetranslate/dashboards/"


def test_dashboards_ship_as_labelled_configmaps(render: Any) -> None:
    cms = [o for o in render({}) if o["kind"] == "ConfigMap"]
    shipped = {}
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "LiveTranslate"
        assert len(json.dumps(cm)) < 900_000, "ConfigMaps must stay under 1 MiB"
        for key, text in cm["data"].items():
            shipped[key] = json.loads(text)
    expected = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    assert shipped == expected


def test_sample_pipeline_is_a_valid_translationpipeline(
    render: Any, non_default_values: dict[str, Any]
) -> None:
    from livetranslate.api import TranslationPipelineSpec

    (sample,) = [o for o in render(non_default_values) if o["kind"] == "TranslationPipeline"]
    TranslationPipelineSpec.model_validate(sample["spec"])
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["samplePipeline"]["spec"]
    TranslationPipelineSpec.model_validate(defaults)


def test_operator_settings_parse_what_the_chart_sets(
    render: Any, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's LT_OPERATOR_* variables are read by the operator's own settings class: a
    name or format mismatch (a list not given as JSON, a renamed field) fails here, not at start-up
    in a cluster."""
    env = _env(_operator(render(values)))
    for key in [k for k in os.environ if k.startswith("LT_OPERATOR_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    assert settings.audio_image == env["LT_OPERATOR_AUDIO_IMAGE"]
    assert settings.translate_image == env["LT_OPERATOR_TRANSLATE_IMAGE"]
    assert settings.gateway_image == env["LT_OPERATOR_GATEWAY_IMAGE"]
    assert settings.vllm_image == env["LT_OPERATOR_VLLM_IMAGE"]
    assert settings.image_pull_policy == env["LT_OPERATOR_IMAGE_PULL_POLICY"]
    assert settings.image_pull_secrets == json.loads(env["LT_OPERATOR_IMAGE_PULL_SECRETS"])
    assert str(settings.metrics_port) == env["LT_OPERATOR_METRICS_PORT"]
    assert settings.liveness_endpoint == env["LT_OPERATOR_LIVENESS_ENDPOINT"]
    if "LT_OPERATOR_AUDIO_RESOURCES" in env:
        assert (
            settings.audio_resources.memoryLimit
            == json.loads(env["LT_OPERATOR_AUDIO_RESOURCES"])["memoryLimit"]
        )
    if "LT_OPERATOR_MODEL_CACHE_SIZE" in env:  # operator.extraEnv reaches the settings too
        assert settings.model_cache_size == env["LT_OPERATOR_MODEL_CACHE_SIZE"]
