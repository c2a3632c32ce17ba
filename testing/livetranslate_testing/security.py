"""Security checks shared by tests/reliability/test_security.py and benchmarks/bench_security.py.

The test asserts on them; the benchmark runs the same functions and records their figures (cases
probed, pod templates checked, unused RBAC grants) as RELIABILITY.md rows. Everything here runs
without a cluster: the gateway as the subprocess its container runs, pod templates from the
operator's builders and the chart's renderer, NetworkPolicies through a small evaluator of the
Kubernetes NetworkPolicy semantics.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livetranslate.procs import free_port, start, stop, wait_http

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "livetranslate"

# ------------------------------------------------------------------------------ the gateway


@dataclass(frozen=True)
class AuthCase:
    """One connection attempt and what a correct gateway does with it."""

    name: str
    expect: str  # "accept", "401" or "403"
    query_token: str | None = None
    header: str | None = None  # the whole Authorization header value
    origin: str | None = None
    subprotocol: str | None = None


@dataclass(frozen=True)
class AuthOutcome:
    case: AuthCase
    got: str  # "accept", an HTTP status, or "closed <code>"

    @property
    def ok(self) -> bool:
        # API.md: a bad token is refused before accept (401/403) or closed with 1008.
        if self.case.expect == "accept":
            return self.got == "accept"
        return self.got == self.case.expect or self.got == "closed 1008"


def auth_cases(token: str, wrong: str, allowed_origin: str, own_origin: str) -> list[AuthCase]:
    """Every way a client can present (or fail to present) a token and an origin."""
    return [
        AuthCase("no token", "401"),
        AuthCase("wrong bearer token", "401", header=f"Bearer {wrong}"),
        AuthCase("wrong query token", "401", query_token=wrong),
        AuthCase("empty query token", "401", query_token=""),
        AuthCase("valid token, other scheme", "401", header=f"Basic {token}"),
        AuthCase("prefix of the token", "401", header=f"Bearer {token[:-1]}"),
        AuthCase("token plus a suffix", "401", header=f"Bearer {token}x"),
        AuthCase("token only as a subprotocol", "401", subprotocol=f"bearer.{token}"),
        # An explicit wrong credential is not rescued by a second one.
        AuthCase("wrong header, valid query", "401", header=f"Bearer {wrong}", query_token=token),
        AuthCase("bearer header", "accept", header=f"Bearer {token}"),
        AuthCase("lower-case scheme", "accept", header=f"bearer {token}"),
        AuthCase("query token (browsers)", "accept", query_token=token),
        AuthCase("foreign origin", "403", query_token=token, origin="https://evil.example"),
        AuthCase(
            "allowed origin's look-alike", "403", query_token=token, origin=allowed_origin + ".evil.example"
        ),
        AuthCase("opaque origin", "403", query_token=token, origin="null"),
        AuthCase("foreign origin, no token", "401", origin="https://evil.example"),
        AuthCase("allowed origin", "accept", query_token=token, origin=allowed_origin),
        AuthCase("same origin (the captions page)", "accept", query_token=token, origin=own_origin),
    ]


async def attempt(base_ws_url: str, case: AuthCase) -> AuthOutcome:
    """Open /v1/stream as ``case`` says and start a session; report what the gateway did."""
    from urllib.parse import quote

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.typing import Origin, Subprotocol

    url = base_ws_url + "/v1/stream"
    if case.query_token is not None:
        url += "?token=" + quote(case.query_token, safe="")
    headers = {"Authorization": case.header} if case.header is not None else {}
    try:
        async with connect(
            url,
            additional_headers=headers,
            open_timeout=10,
            origin=Origin(case.origin) if case.origin else None,
            subprotocols=[Subprotocol(case.subprotocol)] if case.subprotocol else None,
        ) as ws:
            await ws.send(
                json.dumps(
                    {"type": "session.start", "sampleRate": 16000, "encoding": "pcm_s16le", "channels": 1}
                )
            )
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if reply.get("type") == "session.started":
                await ws.send(json.dumps({"type": "session.end"}))
                return AuthOutcome(case, "accept")
            return AuthOutcome(case, f"event {reply.get('type')}")
    except InvalidStatus as e:
        return AuthOutcome(case, str(e.response.status_code))
    except ConnectionClosed as e:
        return AuthOutcome(case, f"closed {e.rcvd.code if e.rcvd else 'abnormal'}")


async def http_probes(base_http_url: str, token: str, wrong: str) -> None:
    """Plain HTTP requests carrying tokens (a browser opening the page with ?token=..., a scraper
    with a header): nothing checks them, but every one is a request line a log could print."""
    import httpx

    async with httpx.AsyncClient(base_url=base_http_url, timeout=10) as client:
        for path in ("/", "/metrics", "/healthz", "/readyz", "/missing"):
            for t in (token, wrong):
                await client.get(f"{path}?token={t}")
                await client.get(path, headers={"Authorization": f"Bearer {t}", "Cookie": f"token={t}"})


class GatewayProcess:
    """``livetranslate serve gateway`` as its container runs it, logging to a file.

    Upstreams point at a closed loopback port: auth and origin are decided before any upstream is
    needed, and a session that starts gets its error events without any other service.
    """

    def __init__(
        self, workdir: Path, tokens: Mapping[str, str], allowed_origins: list[str], log_level: str = "debug"
    ) -> None:
        self.auth_dir = workdir / "auth"
        self.auth_dir.mkdir(parents=True, exist_ok=True)
        for key, value in tokens.items():
            (self.auth_dir / key).write_text(value + "\n")
        self.log_path = workdir / "gateway.log"
        self.port = free_port()
        self.allowed_origins = allowed_origins
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:

        closed = f"http://127.0.0.1:{free_port()}"
        env = {
            "LT_GATEWAY_AUTH_DIR": str(self.auth_dir),
            "LT_LOG_LEVEL": self.log_level,
            "LT_GATEWAY_ALLOWED_ORIGINS": json.dumps(self.allowed_origins),
            "LT_GATEWAY_AUDIO_URL": closed,
            "LT_GATEWAY_TRANSLATION_URL": closed,
            "LT_GATEWAY_CONNECT_TIMEOUT": "0.5",
            "PYTHONSAFEPATH": "1",
        }
        self.proc = start(
            [
                sys.executable,
                "-m",
                "livetranslate.cli",
                "serve",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            log=self.log_path,
            unset=["LT_CONFIG"],
        )
        try:
            wait_http(self.http_url + "/healthz", timeout=timeout, proc=self.proc, require_200=True)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {self.log_path.read_text()[-2000:]}") from e

    def stop(self) -> None:
        if self.proc is None:
            return
        stop(self.proc, timeout=20)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def leaks(log_text: str, secrets: Iterable[str]) -> list[str]:
    """Log lines that contain any of ``secrets`` (URL-encoded forms included)."""
    from urllib.parse import quote

    needles = {s for secret in secrets for s in (secret, quote(secret, safe=""))}
    return [line for line in log_text.splitlines() if any(n in line for n in needles)]


# ------------------------------------------------------------------------- pod security


def pipeline_variants() -> Iterator[tuple[str, Any, Any]]:
    """(label, spec, placement) for every device x backend x optional-feature combination the
    operator can build: what a pod template looks like depends on exactly these."""
    from livetranslate.api import TranslationPipelineSpec
    from livetranslate.config import Placement

    backends = {"apertium": "apertium-eng-spa", "vllm": "Qwen/Qwen2.5-7B-Instruct", "openai": "gpt-4o-mini"}
    for device, backend, auth, diarization, redis in itertools.product(
        ("cpu", "gpu", "npu"), backends, (False, True), (False, True), (False, True)
    ):
        raw: dict[str, Any] = {
            "targetLanguages": ["es"],
            "audio": {"diarization": {"enabled": diarization}},
            "translation": {"backend": backend},
            "gateway": {},
        }
        if auth:
            raw["gateway"]["authSecretRef"] = {"name": "lt-tokens"}
        if redis:
            raw["gateway"]["redisUrl"] = "redis://redis.demo.svc:6379/0"
        if backend == "openai":
            raw["translation"]["endpoint"] = "https://llm.example.internal/v1"
            raw["translation"]["apiKeySecretRef"] = {"name": "llm-key", "key": "apiKey"}
        spec = TranslationPipelineSpec.model_validate(raw)
        placement = Placement(
            audioDevice=device, translationBackend=backend, translationModel=backends[backend]
        )
        label = f"{device}/{backend}" + "".join(
            f"/{name}" for name, on in (("auth", auth), ("diarization", diarization), ("redis", redis)) if on
        )
        yield label, spec, placement


def operator_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object the operator's builders create, for every variant."""
    from livetranslate.operator import builders
    from livetranslate.operator.settings import OperatorSettings

    settings = OperatorSettings()
    for label, spec, placement in pipeline_variants():
        resolved = builders.resolve("town-hall", "demo", 1, spec, placement)
        objects = [
            *builders.build_children(resolved, builders.BuildState(), settings),
            builders.build_podmonitor(resolved),
            *builders.build_network_policies(resolved, settings),
        ]
        for obj in objects:
            yield label, obj


CHART_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything on": {
        "operator": {"replicas": 3, "extraEnv": [{"name": "LT_OPERATOR_MODEL_CACHE_SIZE", "value": "40Gi"}]},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True},
        "samplePipeline": {"enabled": True},
        "image": {"pullSecrets": ["regcred"]},
    },
    "everything off": {
        "operator": {"replicas": 1, "peering": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
        "rbac": {"pipelineMonitors": False},
        "networkPolicies": {"enabled": False},
        "dashboards": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
    },
}


def chart_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object the chart renders, for each values variant (needs helm-python-sdk)."""
    import helm_python
    import yaml

    chart = helm_python.Chart.load(str(CHART))
    try:
        for label, values in CHART_VARIANTS.items():
            out = chart.render(values=values, name="lt", namespace="lt-system", is_install=True)
            for path, text in sorted(out.items()):
                if path.endswith("NOTES.txt"):
                    continue
                for doc in yaml.safe_load_all(text):
                    if doc:
                        yield label, doc
    finally:
        chart.close()


@dataclass
class PssReport:
    templates: int  # pod templates checked
    kinds: dict[str, int]  # objects checked per kind
    violations: list[str]


def pss_report(objects: Iterable[tuple[str, dict[str, Any]]]) -> PssReport:
    """Hold every pod-creating object to the restricted Pod Security Standard."""
    from livetranslate_testing.pss import object_violations, pod_spec_of

    templates, kinds, violations = 0, dict[str, int](), []
    for label, obj in objects:
        kinds[obj.get("kind", "?")] = kinds.get(obj.get("kind", "?"), 0) + 1
        if pod_spec_of(obj) is None:
            continue
        templates += 1
        violations += [f"{label}: {v}" for v in object_violations(obj)]
    return PssReport(templates, kinds, violations)


# ------------------------------------------------------------------------- NetworkPolicy


@dataclass(frozen=True)
class Pod:
    """A traffic endpoint: a pod's labels and its namespace's labels."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    ports: Mapping[str, int] = field(default_factory=dict)
    ns_labels: Mapping[str, str] = field(default_factory=dict)  # besides kubernetes.io/metadata.name

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.ns_labels}


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions; {} selects all)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _peer_admits(peer: Mapping[str, Any], policy_ns: str, src: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # pod-to-pod traffic in this model; ipBlocks are for outside addresses
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = selects(ns_sel, src.namespace_labels) if ns_sel is not None else src.namespace == policy_ns
    pod_ok = selects(pod_sel, src.labels) if pod_sel is not None else True
    return ns_ok and pod_ok


def _port_admits(ports: list[Mapping[str, Any]] | None, dst: Pod, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        want = p.get("port")
        if want is None:
            return True
        number = (dst.ports or {}).get(want) if isinstance(want, str) else want
        end = p.get("endPort", number)
        if number is not None and number <= port <= end:
            return True
    return False


def ingress_allowed(policies: Iterable[Mapping[str, Any]], src: Pod, dst: Pod, port: int) -> bool:
    """Whether NetworkPolicies admit TCP from ``src`` to ``dst:port`` (ingress side only)."""
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace") == dst.namespace
        and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
        and selects(p["spec"].get("podSelector", {}), dst.labels)
    ]
    if not selecting:
        return True  # a pod no policy selects is not isolated
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if (not peers or any(_peer_admits(peer, dst.namespace, src) for peer in peers)) and _port_admits(
                rule.get("ports"), dst, port
            ):
                return True
    return False


def pods_of(deployments: Iterable[Mapping[str, Any]]) -> dict[str, Pod]:
    """A pod per Deployment, with the labels and named ports its template gives it."""
    out = {}
    for dep in deployments:
        template = dep["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports") or []
            if "name" in p
        }
        stage = dep["metadata"]["labels"].get("livetranslate.io/stage", dep["metadata"]["name"])
        out[stage] = Pod(
            dep["metadata"]["name"], dep["metadata"]["namespace"], dict(template["metadata"]["labels"]), ports
        )
    return out


def service_port_targets(services: Iterable[Mapping[str, Any]], pods: Mapping[str, Pod]) -> dict[str, int]:
    """The container port number each stage's Service sends its traffic to."""
    out = {}
    for svc in services:
        stage = svc["metadata"]["labels"]["livetranslate.io/stage"]
        pod = pods[stage]
        assert selects({"matchLabels": svc["spec"]["selector"]}, pod.labels), (
            f"Service {stage} selects no pod"
        )
        target = svc["spec"]["ports"][0]["targetPort"]
        out[stage] = pod.ports[target] if isinstance(target, str) else int(target)
    return out


# ---------------------------------------------------------------------------------- RBAC


Triple = tuple[str, str, str]


def rule_triples(rules: Iterable[tuple[Iterable[str], Iterable[str], Iterable[str]]]) -> set[Triple]:
    return {(g, r, v) for groups, resources, verbs in rules for g in groups for r in resources for v in verbs}


# Grants the emulator scenario of tests/reliability/test_security.py cannot show in use, each with
# the call that needs it. Everything else the ClusterRole grants must appear in that scenario.
RBAC_NOT_SEEN_IN_EMULATOR: dict[Triple, str] = {
    ("", "pods", "list"): "operator/scaling/timer.py counts NPUs requested by running pods, only "
    "once a pipeline's audio sits on an NPU (covered in tests/scaling)",
    ("", "pods", "patch"): "operator/scaling/timer.py sets pod-deletion-cost before a gateway or audio "
    "scale-down (covered in tests/scaling/test_deletion_cost.py)",
    **{
        (group, resource, verb): "spec.modelCache only (tests/operator/test_model_cache_operator.py checks "
        "its calls against the rules); patch only where a claim's or Job's labels drifted"
        for group, resource, verbs in (
            ("", "persistentvolumeclaims", ("get", "create", "patch")),
            ("batch", "jobs", ("get", "create", "patch", "delete")),
        )
        for verb in verbs
    },
}


# ----------------------------------------------------------------- NetworkPolicy behaviour


@dataclass(frozen=True)
class Flow:
    what: str
    expected: bool
    allowed: bool

    @property
    def ok(self) -> bool:
        return self.expected == self.allowed


def network_policy_flows(settings: Any = None, namespace: str = "demo") -> list[Flow]:
    """Who may connect to whom under the operator's policies for two pipelines side by side."""
    from livetranslate.operator import builders
    from livetranslate.operator.settings import OperatorSettings

    settings = settings or OperatorSettings()
    _, spec, placement = next(pipeline_variants())
    pods: dict[str, dict[str, Pod]] = {}
    policies: list[dict[str, Any]] = []
    for name in ("town-hall", "board-meeting"):
        resolved = builders.resolve(name, namespace, 1, spec, placement)
        children = builders.build_children(resolved, builders.BuildState(), settings)
        pods[name] = pods_of(c for c in children if c["kind"] == "Deployment")
        policies += builders.build_network_policies(resolved, settings)
    ours, other = pods["town-hall"], pods["board-meeting"]
    port = ours["gateway"].ports["http"]
    prometheus = Pod("prometheus-0", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    strangers = [
        Pod("debug", namespace, {"run": "debug"}),
        Pod("grafana-0", "monitoring", {"app.kubernetes.io/name": "grafana"}),
        Pod("prometheus-elsewhere", namespace, {"app.kubernetes.io/name": "prometheus"}),
        Pod("ingress-nginx", "ingress", {"app.kubernetes.io/name": "ingress-nginx"}),
        Pod("other-pipeline-gateway", namespace, dict(other["gateway"].labels)),
    ]
    flows: list[Flow] = []

    def flow(src: Pod, dst_stage: str, expected: bool, p: int = port) -> None:
        allowed = ingress_allowed(policies, src, ours[dst_stage], p)
        flows.append(Flow(f"{src.name} ({src.namespace}) -> {dst_stage}:{p}", expected, allowed))

    for stage in builders.INTERNAL_STAGES:
        flow(ours["gateway"], stage, True)
        flow(prometheus, stage, bool(settings.network_policy_scrapers))
        flow(ours["gateway"], stage, False, p=port + 1)
        for src in strangers:
            flow(src, stage, False)
        for sibling in builders.INTERNAL_STAGES:
            if sibling != stage:
                flow(ours[sibling], stage, False)
    for src in [prometheus, *strangers]:
        flow(src, "gateway", True)
    return flows


# ------------------------------------------------------------------ the operator, for real


@dataclass
class OperatorScenario:
    """What the real operator did against the emulator: its API calls and its policies."""

    calls: set[Triple]
    policies_created: list[dict[str, Any]]
    policy_restored: bool
    policies_after_off: list[dict[str, Any]]
    children_after_off: int
    owner_uid: str


async def operator_scenario(workdir: Path, name: str = "town-hall") -> OperatorScenario:
    """Create a pipeline, hand-edit its children, update it, change the Nodes, restart the
    operator with NetworkPolicies off: every kind of call the operator makes in normal life."""
    from livetranslate.operator import builders
    from livetranslate.operator.kube import KubeClient
    from livetranslate.operator.settings import OperatorSettings
    from livetranslate_testing.kube_operator import (
        NS,
        PODMONITOR_CRD,
        OperatorProcess,
        emulated_cluster,
        eventually,
        pipeline,
    )

    def operator(**overrides: Any) -> OperatorProcess:
        return OperatorProcess(
            OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5, **overrides)
        )

    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = workdir / "kubeconfig"
    saved = os.environ.get("KUBECONFIG")
    async with emulated_cluster(kubeconfig) as cluster:
        os.environ["KUBECONFIG"] = str(kubeconfig)
        kube = await KubeClient.connect(user_agent="test-kubectl")
        try:
            api = cluster.api

            def policies() -> list[dict[str, Any]]:
                return api.find(
                    "networking.k8s.io/v1/networkpolicies", NS, f"{builders.PIPELINE_LABEL}={name}"
                )

            api.install_crd(PODMONITOR_CRD)
            op = operator()
            await op.start()
            try:
                api.add_node("gpu-1", allocatable={"nvidia.com/gpu": "1"})
                await kube.create(pipeline(name))
                created = await eventually(lambda: len(policies()) == 3 and policies(), message="3 policies")
                await eventually(
                    lambda: api.find("monitoring.coreos.com/v1/podmonitors", NS), message="PodMonitor"
                )
                cluster.mark_ready(name)
                wanted = {
                    stage: next(p for p in created if p["metadata"]["name"] == f"{name}-{stage}")["spec"]
                    for stage in ("audio", "translation")
                }
                # Hand edits of the children: the next reconcile patches them back.
                await kube.patch(
                    "v1",
                    "Service",
                    NS,
                    f"{name}-audio",
                    {"spec": {"selector": {builders.STAGE_LABEL: "gateway"}}},
                )
                await kube.patch(
                    "policy/v1", "PodDisruptionBudget", NS, f"{name}-audio", {"spec": {"maxUnavailable": 3}}
                )
                await kube.patch(
                    "networking.k8s.io/v1", "NetworkPolicy", NS, f"{name}-audio", {"spec": {"ingress": [{}]}}
                )
                # A selector narrowed to nothing would leave the pods unprotected: put back too.
                await kube.patch(
                    "networking.k8s.io/v1",
                    "NetworkPolicy",
                    NS,
                    f"{name}-translation",
                    {"spec": {"podSelector": {"matchLabels": {"narrowed": "by-hand"}}}},
                )
                await kube.patch(
                    "monitoring.coreos.com/v1",
                    "PodMonitor",
                    NS,
                    name,
                    {"spec": {"selector": {"matchLabels": {builders.PIPELINE_LABEL: "other"}}}},
                )
                await kube.patch(
                    "livetranslate.io/v1alpha1",
                    "TranslationPipeline",
                    NS,
                    name,
                    {"spec": {"targetLanguages": ["es", "ca"]}},
                )
                await eventually(
                    lambda: (
                        '"ca"'
                        in (api.read("v1/configmaps", NS, f"{name}-config") or {})
                        .get("data", {})
                        .get("pipeline.json", "")
                    ),
                    message="the update applied",
                )
                restored = await eventually(
                    lambda: all(
                        (api.read("networking.k8s.io/v1/networkpolicies", NS, f"{name}-{stage}") or {}).get(
                            "spec"
                        )
                        == wanted[stage]
                        for stage in wanted
                    ),
                    message="hand-edited policies restored",
                )
                api.remove_node("gpu-1")
                api.add_node("cpu-1")
                await asyncio.sleep(1.0)
            finally:
                await op.kill()
            # Turned off (chart value -> env var -> the operator pods restart).
            op = operator(network_policies=False)
            await op.start()
            try:
                await eventually(lambda: policies() == [], message="policies removed once turned off")
            finally:
                await op.kill()
            tp = cluster.tp(name) or {}
            return OperatorScenario(
                calls={(c.group, c.resource, c.verb) for c in api.calls if c.agent != "test-kubectl"},
                policies_created=created,
                policy_restored=bool(restored),
                policies_after_off=policies(),
                children_after_off=len(cluster.children(name)),
                owner_uid=tp["metadata"]["uid"],
            )
        finally:
            await kube.close()
            if saved is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved
