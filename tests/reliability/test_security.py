"""Issue 6, item 6: security, as a user or an auditor would check it.

- the gateway refuses missing or wrong tokens and foreign origins, over a real WebSocket against
  the gateway process its container runs;
- no token reaches a log line, at debug level and with uvicorn's access log on;
- every pod the chart or the operator creates passes the restricted Pod Security Standard;
- the operator's RBAC grants nothing it does not use (checked against the API calls it makes);
- the per-pipeline NetworkPolicies admit exactly gateway -> workloads and scrapers -> metrics.

The figures (cases probed, templates checked, grants used) are recorded by
benchmarks/bench_security.py with the same functions (livetranslate_testing.security).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livetranslate.operator import builders, rbac
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing import security
from livetranslate_testing.kube_operator import NS, OperatorProcess, emulated_cluster, eventually, pipeline

TOKEN = "lt-6f1d0c9e-Alice-Token-7b3a"
OTHER_TOKEN = "lt-2a9e44d1-Bob-Token-c0de"  # accepted too: a second key of the Secret
WRONG = "lt-0000ffff-Mallory-Token-dead"  # someone's real token elsewhere: must not be logged either
ALLOWED_ORIGIN = "https://captions.example.org"

# ---------------------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[security.GatewayProcess]:
    gw = security.GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        {"alice": TOKEN, "bob": OTHER_TOKEN},
        [ALLOWED_ORIGIN],
        log_level="debug",
    )
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
    auth_outcomes: list[security.AuthOutcome],
) -> None:
    wrong = [f"{o.case.name}: expected {o.case.expect}, got {o.got}" for o in auth_outcomes if not o.ok]
    assert wrong == []
    assert sum(o.case.expect == "accept" for o in auth_outcomes) >= 4  # the refusals are not blanket


@pytest.mark.slow
async def test_every_key_of_the_secret_is_a_token(gateway: security.GatewayProcess) -> None:
    case = security.AuthCase("second key", "accept", header=f"Bearer {OTHER_TOKEN}")
    assert (await security.attempt(gateway.ws_url, case)).ok


@pytest.mark.slow
def test_the_captions_page_opened_with_a_token_sends_no_referer(gateway: security.GatewayProcess) -> None:
    import httpx

    page = httpx.get(f"{gateway.http_url}/?token={TOKEN}", timeout=10)
    assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"


@pytest.mark.slow
def test_no_token_reaches_the_gateway_log(
    gateway: security.GatewayProcess, auth_outcomes: list[security.AuthOutcome]
) -> None:
    log = gateway.log()
    # The log is the debug-level one: uvicorn writes every request line and header at that level.
    assert "WebSocket /v1/stream" in log and "authorization" in log.lower(), (
        "the probes were not logged at all"
    )
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
    # Earlier tests in the same process may have configured uvicorn's loggers (its default
    # dictConfig gives "uvicorn" and "uvicorn.access" handlers of their own and no propagation;
    # logs.configure() raises the access log's level): start from plain loggers that reach the
    # root handler, as a deployment that turns the access log on would have.
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    saved = [(lg.level, lg.propagate, lg.disabled, list(lg.handlers)) for lg in uvicorn_loggers]
    for lg in uvicorn_loggers:
        lg.setLevel(logging.NOTSET)
        lg.propagate, lg.disabled, lg.handlers = True, False, []
    port = security.free_port()
    cfg = GatewayConfig(
        GatewaySettings(
            auth_dir=str(auth),
            audio_url=f"http://127.0.0.1:{security.free_port()}",
            translation_url=f"http://127.0.0.1:{security.free_port()}",
        ),
        None,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=True,
            log_level="debug",
            ws="websockets-sansio",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=20)
        for token in ("access-log-only-token-42", "not-registered-token-99"):
            await security.http_probes(f"http://127.0.0.1:{port}", token, token)
            await security.attempt(
                f"ws://127.0.0.1:{port}", security.AuthCase("q", "accept", query_token=token)
            )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for lg, (level, propagate, disabled, handlers) in zip(uvicorn_loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate, lg.disabled, lg.handlers = propagate, disabled, handlers
    log = stream.getvalue()
    assert '"logger": "uvicorn.access"' in log and "/metrics?token=[redacted]" in log
    assert security.leaks(log, ["access-log-only-token-42", "not-registered-token-99"]) == []


@pytest.mark.parametrize(
    "line",
    [
        "GET /v1/stream?token=abc123secret&x=1 HTTP/1.1",
        "GET /v1/stream?x=1&access_token=abc123secret HTTP/1.1",
        "< authorization: Bearer abc123secret",
        "< Authorization: Basic abc123secret",
        "< cookie: session=abc123secret",
        "< sec-websocket-protocol: bearer.abc123secret",
        "proxy-authorization=abc123secret",
    ],
)
def test_redaction_patterns(line: str) -> None:
    from livetranslate.logs import redact

    assert "abc123secret" not in redact(line)
    assert "[redacted]" in redact(line)


def test_redaction_leaves_ordinary_lines_alone() -> None:
    from livetranslate.logs import redact

    for line in (
        '127.0.0.1:5 - "WebSocket /v1/stream" [accepted]',
        "session started sampleRate=16000",
        "upstream unavailable: audio http://town-hall-audio.demo.svc:8080",
    ):
        assert redact(line) == line


# ------------------------------------------------------------------------- pod security


def test_every_pod_the_operator_builds_is_restricted() -> None:
    report = security.pss_report(security.operator_objects())
    variants = len(list(security.pipeline_variants()))
    assert variants == 3 * 3 * 2 * 2 * 2  # devices x backends x auth x diarization x redis
    assert report.templates == 3 * variants  # audio, translation, gateway Deployments each
    assert report.violations == []


@pytest.fixture(scope="module")
def chart_objects() -> list[tuple[str, dict[str, Any]]]:
    pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) is not installed")
    return list(security.chart_objects())


def test_every_pod_the_chart_renders_is_restricted(chart_objects: list[tuple[str, dict[str, Any]]]) -> None:
    report = security.pss_report(chart_objects)
    assert report.templates >= len(security.CHART_VARIANTS)  # the operator Deployment in each
    assert report.violations == []


# ---------------------------------------------------------------------------- NetworkPolicy


def _children(
    settings: OperatorSettings | None = None, name: str = "town-hall"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    settings = settings or OperatorSettings()
    _, spec, placement = next(security.pipeline_variants())
    resolved = builders.resolve(name, NS, 1, spec, placement)
    return (
        builders.build_children(resolved, builders.BuildState(), settings),
        builders.build_network_policies(resolved, settings),
    )


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
    flows = security.network_policy_flows()
    assert len(flows) > 20
    assert [f.what for f in flows if not f.ok] == []
    assert [f for f in flows if f.allowed], "the policies do not block everything"


def test_scrapers_are_configurable() -> None:
    scrapers = [
        {
            "namespaceSelector": {"matchLabels": {"team": "observability"}},
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["vmagent"]}]},
        }
    ]
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


def test_chart_networkpolicy_for_the_operator(chart_objects: list[tuple[str, dict[str, Any]]]) -> None:
    objects = {label: [o for lbl, o in chart_objects if lbl == label] for label in security.CHART_VARIANTS}
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


@pytest.mark.slow
async def test_operator_creates_network_policies_and_removes_them_when_turned_off(tmp_path: Path) -> None:
    """Also the RBAC cross-check: after create, hand edits, an update, a Node change and a restart
    with policies off, every call the operator made is granted and every grant was used."""
    run = await security.operator_scenario(tmp_path)
    expected = {p["metadata"]["name"]: p for p in _children()[1]}
    assert sorted(p["metadata"]["name"] for p in run.policies_created) == sorted(expected)
    for policy in run.policies_created:
        assert policy["metadata"]["ownerReferences"][0]["uid"] == run.owner_uid  # garbage-collected
        assert policy["spec"] == expected[policy["metadata"]["name"]]["spec"]
    assert run.policy_restored, "a hand-edited policy is put back"
    assert run.policies_after_off == [] and run.children_after_off == 10, "off removes only the policies"

    granted = security.rule_triples([*rbac.RULES, *rbac.MONITOR_RULES])
    assert sorted(run.calls - granted) == [], "calls the ClusterRole would refuse (403 in a cluster)"
    assert sorted(granted - run.calls - set(security.RBAC_NOT_SEEN_IN_EMULATOR)) == [], (
        "grants the operator does not use"
    )


@pytest.mark.slow
async def test_peering_uses_exactly_the_charts_peering_grant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's clusterkopfpeerings rule (Kopf's own calls, two replicas) against what Kopf
    does with peering on: registering, renewing and withdrawing its record."""
    import yaml

    crd = yaml.safe_load((security.CHART / "crds" / "clusterkopfpeerings.kopf.dev.yaml").read_text())
    async with emulated_cluster(tmp_path / "kubeconfig") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        # The emulator prunes `metadata` under a schema that does not list it (the API server
        # never does): keep every field, the schema is not what this test is about.
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"] = True
        cluster.api.install_crd(crd)
        kube = await KubeClient.connect(user_agent="test-kubectl")
        try:
            await kube.request(
                "POST",
                "/apis/kopf.dev/v1/clusterkopfpeerings",
                json={
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": "lt-peers"},
                },
            )
            op = OperatorProcess(
                OperatorSettings(
                    metrics_port=0,
                    liveness_endpoint="",
                    retry_delay_seconds=0.5,
                    peering="lt-peers",
                    peering_lifetime=5,
                )
            )
            await op.start()
            try:
                await kube.create(pipeline("town-hall"))
                await eventually(
                    lambda: cluster.api.read("v1/configmaps", NS, "town-hall-config"),
                    timeout=30,
                    message="the active replica reconciles",
                )
            finally:
                await op.stop()  # graceful: the replica withdraws its peering record
        finally:
            await kube.close()
    used = {
        (c.group, c.resource, c.verb)
        for c in cluster.api.calls
        if c.agent != "test-kubectl" and c.group == "kopf.dev"
    }
    chart = {(g, r, v) for g, r, v in security.rule_triples(_chart_rules()) if g == "kopf.dev"}
    assert used and used <= chart, f"Kopf peering calls the chart does not grant: {sorted(used - chart)}"
    assert sorted(chart - used) == [], "peering grants Kopf does not use"


def _chart_rules() -> list[tuple[list[str], list[str], list[str]]]:
    pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) is not installed")
    (role,) = [o for _, o in security.chart_objects() if o["kind"] == "ClusterRole" and _ == "defaults"]
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]
