"""Issue 6, item 6: security, as a user or an auditor would check it.

- the gateway refuses missing or wrong tokens and foreign origins, over a real WebSocket against
  the gateway process its container runs;
- no token reaches a log line, at debug level and with uvicorn's access log on;
- every pod the chart or the operator creates passes the restricted Pod Security Standard;
- the operator's RBAC grants nothing it does not use (checked against the API calls it makes);
- the per-pipeline NetworkPolicies admit exactly gateway -> workloads and scrapers -> metrics.

The figures (cases probed, templates checked, grants used) are recorded by
benchmarks/bench_security.py with the same functions (livetranslate.testing.security).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from livetranslate.operator import builders, rbac
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate.testing import security
from livetranslate.testing.kube_operator import (
    NS,
    Cluster,
    OperatorProcess,
    emulated_cluster,
    eventually,
    pipeline,
)

TOKEN = "lt-6f1d0c9e-Alice-Token-7b3a"
OTHER_TOKEN = "lt-2a9e44d1-Bob-Token-c0de"  # accepted too: a second key of the Secret
WRONG = "lt-0000ffff-Mallory-Token-dead"  # someone's real token elsewhere: must not be logged either
ALLOWED_ORIGIN = "https://captions.example.org"

# ---------------------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[security.GatewayProcess]:
    gw = security.GatewayProcess(tmp_path_factory.mktemp("gateway"), {"alice": TOKEN, "bob": OTHER_TOKEN},
                                 [ALLOWED_ORIGIN], log_level="debug")
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def auth_outcomes(gateway: security.GatewayProcess) -> list[security.AuthOutcome]:
    cases = security.auth_cases(TOKEN, WRONG, ALLOWED_ORIGIN, gateway.http_url)

    async def run() -> list[security.AuthOutcome]:
        outcomes = [await security.attempt(gateway.ws_url, case) for case in cases]
        await security.http_probes(gateway.http_url, TOKEN, WRONG)
        return outcomes

    return asyncio.run(run())


@pytest.mark.slow
def test_gateway_refuses_missing_and_wrong_tokens_and_foreign_origins(
        auth_outcomes: list[security.AuthOutcome]) -> None:
    wrong = [f"{o.case.name}: expected {o.case.expect}, got {o.got}" for o in auth_outcomes if not o.ok]
    assert wrong == []
    assert sum(o.case.expect == "accept" for o in auth_outcomes) >= 4  # the refusals are not blanket


@pytest.mark.slow
async def test_every_key_of_the_secret_is_a_token(gateway: security.GatewayProcess) -> None:
    case = security.AuthCase("second key", "accept", header=f"Bearer {OTHER_TOKEN}")
    assert (await security.attempt(gateway.ws_url, case)).ok


@pytest.mark.slow
def test_no_token_reaches_the_gateway_log(gateway: security.GatewayProcess,
                                          auth_outcomes: list[security.AuthOutcome]) -> None:
    log = gateway.log()
    # The log is the debug-level one: uvicorn writes every request line and header at that level.
    assert "WebSocket /v1/stream" in log and "authorization" in log.lower(), "the probes were not logged at all"
    assert security.leaks(log, [TOKEN, OTHER_TOKEN, WRONG]) == []


async def test_no_token_in_uvicorns_access_log(tmp_path: Path) -> None:
    """The container runs with the access log off, but an operator may turn it on: its lines
    carry every query string, so the redaction must hold there too."""
    import uvicorn

    from livetranslate.logs import JsonFormatter, RedactingFilter
    from livetranslate.workloads.gateway.app import create_app
    from livetranslate.workloads.gateway.settings import GatewayConfig, GatewaySettings

    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "k").write_text("access-log-only-token-42\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    port = security.free_port()
    cfg = GatewayConfig(GatewaySettings(auth_dir=str(auth), audio_url=f"http://127.0.0.1:{security.free_port()}",
                                        translation_url=f"http://127.0.0.1:{security.free_port()}"), None)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_config=None,
                                           access_log=True, log_level="debug", ws="websockets-sansio"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=20)
        for token in ("access-log-only-token-42", "not-registered-token-99"):
            await security.http_probes(f"http://127.0.0.1:{port}", token, token)
            await security.attempt(f"ws://127.0.0.1:{port}",
                                   security.AuthCase("q", "accept", query_token=token))
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        root.removeHandler(handler)
        root.setLevel(old_level)
    log = stream.getvalue()
    assert '"logger": "uvicorn.access"' in log and "/metrics?token=[redacted]" in log
    assert security.leaks(log, ["access-log-only-token-42", "not-registered-token-99"]) == []


@pytest.mark.parametrize("line", [
    "GET /v1/stream?token=abc123secret&x=1 HTTP/1.1",
    "GET /v1/stream?x=1&access_token=abc123secret HTTP/1.1",
    "< authorization: Bearer abc123secret",
    "< Authorization: Basic abc123secret",
    "< cookie: session=abc123secret",
    "< sec-websocket-protocol: bearer.abc123secret",
    "proxy-authorization=abc123secret",
])
def test_redaction_patterns(line: str) -> None:
    from livetranslate.logs import redact

    assert "abc123secret" not in redact(line)
    assert "[redacted]" in redact(line)


def test_redaction_leaves_ordinary_lines_alone() -> None:
    from livetranslate.logs import redact

    for line in ('127.0.0.1:5 - "WebSocket /v1/stream" [accepted]', "session started sampleRate=16000",
                 "upstream unavailable: audio http://town-hall-audio.demo.svc:8080"):
        assert redact(line) == line


# ------------------------------------------------------------------------- pod security


def test_every_pod_the_operator_builds_is_restricted() -> None:
    report = security.pss_report(security.operator_objects())
    variants = len(list(security.pipeline_variants()))
    assert variants == 3 * 3 * 2 * 2 * 2  # devices x backends x auth x diarization x redis
    assert report.templates == 3 * variants  # audio, translation, gateway Deployments each
    assert report.violations == []


def test_every_pod_the_chart_renders_is_restricted() -> None:
    pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) is not installed")
    report = security.pss_report(security.chart_objects())
    assert report.templates >= len(security.CHART_VARIANTS)  # the operator Deployment in each
    assert report.violations == []


# ---------------------------------------------------------------------------- NetworkPolicy


def _children(settings: OperatorSettings | None = None, name: str = "town-hall"
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    settings = settings or OperatorSettings()
    _, spec, placement = next(security.pipeline_variants())
    resolved = builders.resolve(name, NS, 1, spec, placement)
    return (builders.build_children(resolved, builders.BuildState(), settings),
            builders.build_network_policies(resolved, settings))


def test_network_policies_select_the_pods_and_ports_the_services_use() -> None:
    children, policies = _children()
    pods = security.pods_of(c for c in children if c["kind"] == "Deployment")
    ports = security.service_port_targets((c for c in children if c["kind"] == "Service"), pods)
    by_stage = {p["metadata"]["labels"][builders.STAGE_LABEL]: p for p in policies}
    assert sorted(by_stage) == sorted(builders.STAGES)
    for stage, policy in by_stage.items():
        assert security.selects(policy["spec"]["podSelector"], pods[stage].labels)
        others = [s for s in builders.STAGES if s != stage]
        assert not any(security.selects(policy["spec"]["podSelector"], pods[s].labels) for s in others)
        rule_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert rule_ports == {ports[stage]}, (stage, rule_ports, ports)


def test_network_policies_admit_only_gateway_to_workloads_and_scrapers_to_metrics() -> None:
    children, policies = _children()
    other_children, other_policies = _children(name="board-meeting")
    pods = security.pods_of(c for c in children if c["kind"] == "Deployment")
    other = security.pods_of(c for c in other_children if c["kind"] == "Deployment")
    everything = policies + other_policies
    port = 8080
    prometheus = security.Pod("prometheus-0", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    grafana = security.Pod("grafana-0", "monitoring", {"app.kubernetes.io/name": "grafana"})
    prometheus_elsewhere = security.Pod("prometheus-0", "demo", {"app.kubernetes.io/name": "prometheus"})
    stranger = security.Pod("debug", NS, {"run": "debug"})
    browser = security.Pod("ingress-nginx", "ingress", {"app.kubernetes.io/name": "ingress-nginx"})

    def allowed(src: security.Pod, dst: security.Pod, p: int = port) -> bool:
        return security.ingress_allowed(everything, src, dst, p)

    for stage in builders.INTERNAL_STAGES:
        dst = pods[stage]
        assert allowed(pods["gateway"], dst), f"gateway -> {stage}"
        assert allowed(prometheus, dst), f"prometheus -> {stage} metrics"
        assert not allowed(pods["gateway"], dst, 9090), f"gateway -> {stage} on another port"
        for src in (stranger, grafana, prometheus_elsewhere, browser, other["gateway"],
                    *(pods[s] for s in builders.INTERNAL_STAGES if s != stage)):
            assert not allowed(src, dst), f"{src.name} ({src.namespace}) -> {stage}"
    for src in (browser, stranger, prometheus, other["gateway"]):
        assert allowed(src, pods["gateway"]), f"{src.name} -> gateway (clients come from anywhere)"


def test_scrapers_are_configurable() -> None:
    scrapers = [{"namespaceSelector": {"matchLabels": {"team": "observability"}},
                 "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["vmagent"]}]}}]
    children, policies = _children(OperatorSettings(network_policy_scrapers=scrapers))
    audio = security.pods_of(c for c in children if c["kind"] == "Deployment")["audio"]
    vmagent = security.Pod("vmagent", "obs", {"app": "vmagent"})
    labelled = security.Pod("vmagent", "obs", {"app": "vmagent"}, ns_labels={"team": "observability"})
    assert security.ingress_allowed(policies, labelled, audio, 8080)
    assert not security.ingress_allowed(policies, vmagent, audio, 8080)
    prometheus = security.Pod("prometheus-0", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert not security.ingress_allowed(policies, prometheus, audio, 8080)
    # No scrapers at all: only the gateway reaches the workloads.
    _, closed = _children(OperatorSettings(network_policy_scrapers=[]))
    assert not security.ingress_allowed(closed, prometheus, audio, 8080)


def test_network_policies_are_valid_kubernetes_objects() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for policy in _children()[1]:
        kv.validate(policy, "1.27", strict=True)


def test_chart_networkpolicy_for_the_operator() -> None:
    pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) is not installed")
    objects = {label: [o for lbl, o in security.chart_objects() if lbl == label] for label in security.CHART_VARIANTS}
    (policy,) = [o for o in objects["defaults"] if o["kind"] == "NetworkPolicy"]
    (deployment,) = [o for o in objects["defaults"] if o["kind"] == "Deployment"]
    operator = security.Pod("operator", "lt-system", deployment["spec"]["template"]["metadata"]["labels"])
    prometheus = security.Pod("prometheus-0", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = security.Pod("debug", "lt-system", {"run": "debug"})
    assert security.ingress_allowed([policy], prometheus, operator, 9090)
    assert not security.ingress_allowed([policy], stranger, operator, 9090)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LT_OPERATOR_NETWORK_POLICIES"] == "true"
    scrapers = json.loads(env["LT_OPERATOR_NETWORK_POLICY_SCRAPERS"])
    assert scrapers == OperatorSettings().network_policy_scrapers, "chart and operator defaults agree"
    off = objects["everything off"]
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]
    (dep_off,) = [o for o in off if o["kind"] == "Deployment"]
    env_off = {e["name"]: e.get("value") for e in dep_off["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_off["LT_OPERATOR_NETWORK_POLICIES"] == "false"


# ------------------------------------------------------------------ the operator, for real


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path / "kubeconfig") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        yield cluster


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(user_agent="test-kubectl")
    try:
        yield client
    finally:
        await client.close()


def _operator(**overrides: Any) -> OperatorProcess:
    return OperatorProcess(OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5,
                                            **overrides))


PODMONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "podmonitors", "singular": "podmonitor", "kind": "PodMonitor"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def _policies(cluster: Cluster, name: str = "town-hall") -> list[dict[str, Any]]:
    return cluster.api.find("networking.k8s.io/v1/networkpolicies", NS, f"{builders.PIPELINE_LABEL}={name}")


@pytest.mark.slow
async def test_operator_creates_network_policies_and_removes_them_when_turned_off(
        cluster: Cluster, kube: KubeClient) -> None:
    """Also the RBAC cross-check: after create, update, a Node change, a restart with policies
    off and a delete, every rule the operator holds was used and every call it made was allowed."""
    cluster.api.install_crd(PODMONITOR_CRD)
    operator = _operator()
    await operator.start()
    try:
        cluster.api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "1"})
        await kube.create(pipeline("town-hall"))
        policies = await eventually(lambda: len(_policies(cluster)) == 3 and _policies(cluster),
                                    message="three NetworkPolicies")
        tp = cluster.tp("town-hall") or {}
        expected = {p["metadata"]["name"]: p for p in _children()[1]}
        for policy in policies:
            assert policy["metadata"]["ownerReferences"][0]["uid"] == tp["metadata"]["uid"]  # garbage-collected
            assert policy["spec"] == expected[policy["metadata"]["name"]]["spec"]
        cluster.mark_ready("town-hall")
        await eventually(lambda: cluster.api.find("monitoring.coreos.com/v1/podmonitors", NS), message="PodMonitor")
        # Someone edits children by hand: the next reconcile patches them back (the patch verbs).
        await kube.patch("v1", "Service", NS, "town-hall-audio",
                         {"spec": {"selector": {builders.STAGE_LABEL: "gateway"}}})
        await kube.patch("policy/v1", "PodDisruptionBudget", NS, "town-hall-audio", {"spec": {"maxUnavailable": 3}})
        await kube.patch("networking.k8s.io/v1", "NetworkPolicy", NS, "town-hall-audio",
                         {"spec": {"ingress": [{}]}})
        await kube.patch("monitoring.coreos.com/v1", "PodMonitor", NS, "town-hall",
                         {"spec": {"selector": {"matchLabels": {builders.PIPELINE_LABEL: "other"}}}})
        await kube.patch("livetranslate.io/v1alpha1", "TranslationPipeline", NS, "town-hall",
                         {"spec": {"targetLanguages": ["es", "ca"]}})
        await eventually(lambda: "\"ca\"" in (cluster.api.read("v1/configmaps", NS, "town-hall-config") or {})
                         .get("data", {}).get("pipeline.json", ""), message="the update applied")
        await eventually(lambda: (cluster.api.read("networking.k8s.io/v1/networkpolicies", NS, "town-hall-audio")
                                  or {}).get("spec") == expected["town-hall-audio"]["spec"],
                         message="a hand-edited policy restored")
        cluster.api.remove_node("gpu-1")
        cluster.api.add_node("cpu-1")
        await asyncio.sleep(1.0)
    finally:
        await operator.kill()
    # The platform team turns them off (chart value -> env var -> the operator restarts).
    operator = _operator(network_policies=False)
    await operator.start()
    try:
        await eventually(lambda: _policies(cluster) == [], message="policies removed once turned off")
        assert len(cluster.children("town-hall")) == 10, "nothing else touched"
    finally:
        await operator.kill()

    used = {(c.group, c.resource, c.verb) for c in cluster.api.calls if c.agent != "test-kubectl"}
    granted = security.rule_triples([*rbac.RULES, *rbac.MONITOR_RULES])
    assert sorted(used - granted) == [], "calls the ClusterRole would refuse (403 in a cluster)"
    assert sorted(granted - used - set(security.RBAC_NOT_SEEN_IN_EMULATOR)) == [], "grants the operator does not use"
