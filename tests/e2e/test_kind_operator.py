"""The operator against a real API server (kind): CRD admission, children, status, GC.

What only a real cluster proves: the generated CRD is accepted (structural, CEL rules compile),
kube-apiserver refuses invalid specs with the CEL messages, the operator's calls are allowed, and
the real garbage collector removes children through ownerReferences. Pods need the workload
images to become ready, which this test does not build (test_kind_helm.py does), so it checks
placement and status up to Progressing. The operator runs on the host as ``livetranslate
operator`` against the cluster's kubeconfig.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "translationpipelines.livetranslate.io.yaml"
NS = "lt-operator-e2e"


def wait_for(check: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def operator(kind_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kubectl = kind_cluster
    kubectl("apply", "-f", str(CRD))
    kubectl(
        "wait", "--for=condition=Established", "crd/translationpipelines.livetranslate.io", "--timeout=60s"
    )
    kubectl("create", "namespace", NS, check=False)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **kubectl.env,
        "PYTHONSAFEPATH": "1",
        "LT_OPERATOR_METRICS_PORT": "0",
        "LT_OPERATOR_LIVENESS_ENDPOINT": "",
        "LT_OPERATOR_NAMESPACES": f'["{NS}"]',
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "livetranslate.cli", "operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield kubectl
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kubectl("delete", "namespace", NS, "--wait=false", check=False)
        if os.environ.get("LT_E2E_SHOW_LOGS"):
            print(log.read_text()[-20000:])


def sample(name: str) -> str:
    doc = yaml.safe_load((ROOT / "examples" / "town-hall-cpu.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    return yaml.safe_dump(doc)


def test_api_server_refuses_invalid_specs_with_the_crd_rules(operator: Any) -> None:
    bad = yaml.safe_load(sample("bad"))
    bad["spec"]["audio"]["replicas"] = {"min": 3, "max": 1}
    out = operator("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0 and "replicas.min must be <= replicas.max" in out.stderr
    bad = yaml.safe_load(sample("bad"))
    bad["spec"]["targetLanguages"] = ["es", "es"]
    out = operator("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0


def test_sample_pipeline_gets_children_status_and_is_garbage_collected(operator: Any) -> None:
    operator("apply", "-f", "-", stdin=sample("town-hall"))
    selector = "livetranslate.io/pipeline=town-hall"

    def children() -> list[dict[str, Any]] | None:
        got = operator.json("deployments,services,configmaps", "-n", NS, "-l", selector)
        items = (got or {}).get("items", [])
        return items if len(items) == 7 else None

    items = wait_for(children, what="7 children")
    tp = operator.json("tp", "town-hall", "-n", NS)
    for item in items:
        assert item["metadata"]["ownerReferences"][0]["uid"] == tp["metadata"]["uid"]
    status = wait_for(
        lambda: (
            (operator.json("tp", "town-hall", "-n", NS) or {}).get("status", {}).get("phase")
            and operator.json("tp", "town-hall", "-n", NS)["status"]
        ),
        what="status",
    )
    assert status["phase"] in ("Progressing", "Ready", "Degraded")
    assert status["audio"]["device"] == "cpu"  # kind has no NPU or GPU
    assert status["translation"]["backend"] == "apertium"
    assert status["gateway"]["endpoint"] == f"ws://town-hall-gateway.{NS}.svc:8080/v1/stream"
    printed = operator("get", "tp", "-n", NS).stdout
    assert "town-hall" in printed and "cpu" in printed and "apertium" in printed

    uid = operator.json("deployment", "town-hall-gateway", "-n", NS)["metadata"]["uid"]
    operator(
        "patch",
        "tp",
        "town-hall",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec": {"gateway": {"redisUrl": "redis://redis:6379/0"}}}',
    )

    def patched() -> bool:
        # pipeline.json is the only channel to the pods; the config hash rolls them in place
        config = operator.json("configmap", "town-hall-config", "-n", NS)
        doc = json.loads(((config or {}).get("data") or {}).get("pipeline.json") or "{}")
        return bool(doc.get("spec", {}).get("gateway", {}).get("redisUrl") == "redis://redis:6379/0")

    wait_for(patched, what="pipeline.json patched with the Redis URL")
    assert operator.json("deployment", "town-hall-gateway", "-n", NS)["metadata"]["uid"] == uid

    operator("delete", "tp", "town-hall", "-n", NS, "--wait=true", timeout=180)

    def children_gone() -> bool:
        got = operator.json("deployments,services,configmaps", "-n", NS, "-l", selector)
        return got is not None and not got.get("items")  # None: kubectl failed, not "gone"

    wait_for(children_gone, what="children garbage-collected")
