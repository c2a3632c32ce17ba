"""End to end on a real Kubernetes cluster (kind): build and load the four images, `helm install`
the chart (Helm's own library, no helm binary), apply a TranslationPipeline in a namespace that
enforces the restricted Pod Security Standard, wait until it is Ready on a CPU-only cluster (audio
falls back to CPU, translation to the offline Apertium backend), stream real speech through the
gateway over `kubectl port-forward`, assert captions and translations arrive, then delete the
pipeline and the release and assert everything they created is gone.

Runs where a Docker engine, kind and kubectl are available (`make e2e-kind`); skipped with the
missing piece named everywhere else. LT_E2E_KEEP_CLUSTER=1 keeps the cluster for inspection;
LT_E2E_SKIP_BUILD=1 reuses images already loaded into it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from livetranslate.procs import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "livetranslate"
CLUSTER = os.environ.get("LT_E2E_CLUSTER", "livetranslate-e2e")
RELEASE = "lt"
OPERATOR_NS = "livetranslate-system"
PIPELINE_NS = "e2e"
PIPELINE = "demo"
IMAGES = ("operator", "audio", "translate", "gateway")
PIPELINE_LABEL = "livetranslate.io/pipeline"


def _version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def _missing_tools() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        return f"no Docker engine reachable ({(info.stderr or info.stdout).strip().splitlines()[-1:]})"
    return None


def _run(
    *cmd: str, timeout: float = 600, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["kubectl", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            input=stdin,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
        return out

    def get_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    reason = _missing_tools()
    if reason:
        pytest.skip(f"kind e2e needs Docker, kind and kubectl: {reason}")
    tmp = tmp_path_factory.mktemp("kind")
    existing = _run("kind", "get", "clusters").stdout.split()
    created = CLUSTER not in existing
    if created:
        _run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s", timeout=600)
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(_run("kind", "get", "kubeconfig", "--name", CLUSTER).stdout)
    try:
        if not os.environ.get("LT_E2E_SKIP_BUILD"):
            for image in IMAGES:
                tag = f"livetranslate-{image}:{_version()}"
                _run(
                    "docker",
                    "build",
                    "-f",
                    str(ROOT / "docker" / f"{image}.Dockerfile"),
                    "-t",
                    tag,
                    str(ROOT),
                    timeout=3600,
                )
                _run("kind", "load", "docker-image", tag, "--name", CLUSTER, timeout=900)
        yield Kube(kubeconfig)
    finally:
        if created and not os.environ.get("LT_E2E_KEEP_CLUSTER"):
            _run("kind", "delete", "cluster", "--name", CLUSTER, check=False, timeout=300)


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[Any]:
    helm = pytest.importorskip("helm_python")
    config = helm.Config(kubeconfig_path=str(kube.kubeconfig), namespace=OPERATOR_NS)
    config.install(
        str(CHART),
        RELEASE,
        {"image": {"pullPolicy": "IfNotPresent"}},
        namespace=OPERATOR_NS,
        create_namespace=True,
        wait="watcher",
        timeout=600,
    )
    try:
        yield config
    finally:
        config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=300)
        config.close()


def test_pipeline_serves_captions_and_cleans_up(kube: Kube, release: Any, tmp_path: Path) -> None:
    # The operator: two replicas, one active through peering, both Ready.
    kube.kubectl(
        "-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}-livetranslate", "--timeout=300s"
    )
    deadline = time.monotonic() + 120
    paused = False
    while time.monotonic() < deadline and not paused:
        logs = kube.kubectl(
            "-n",
            OPERATOR_NS,
            "logs",
            "-l",
            "app.kubernetes.io/component=operator",
            "--prefix",
            "--tail=-1",
            check=False,
        ).stdout
        paused = "Pausing operations in favour of" in logs
        time.sleep(3)
    assert paused, "with Kopf peering one of the two operator replicas must pause"

    # A namespace that refuses any pod breaking the restricted Pod Security Standard.
    kube.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": PIPELINE_NS,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        ),
    )
    pipeline = {
        "apiVersion": "livetranslate.io/v1alpha1",
        "kind": "TranslationPipeline",
        "metadata": {"name": PIPELINE, "namespace": PIPELINE_NS},
        "spec": {
            "sourceLanguage": "en",
            "targetLanguages": ["es"],
            "audio": {"model": "tiny.en", "devices": ["gpu", "cpu"], "replicas": {"min": 1, "max": 1}},
            "translation": {"backend": "auto", "replicas": {"min": 1, "max": 1}},
            "gateway": {"replicas": {"min": 1, "max": 1}},
            "scaling": {"enabled": False},
        },
    }
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pipeline))
    kube.kubectl(
        "-n",
        PIPELINE_NS,
        "wait",
        f"tp/{PIPELINE}",
        "--for=jsonpath={.status.phase}=Ready",
        "--timeout=900s",
        timeout=960,
    )
    status = kube.get_json("-n", PIPELINE_NS, "tp", PIPELINE)["status"]
    assert status["audio"]["device"] == "cpu", status
    assert status["translation"]["model"] == "apertium", status
    assert status["translation"]["readyReplicas"] >= 1 and status["gateway"]["readyReplicas"] >= 1, status

    # Speech through the gateway, over a port-forward, exactly as NOTES.txt tells users.
    from livetranslate_testing.speech import SENTENCES, Utterance, compose, word_error_rate, write_wav

    samples, script = compose([Utterance(s) for s in SENTENCES[:3]])
    wav = write_wav(tmp_path / "speech.wav", samples)
    port = free_port()
    forward = subprocess.Popen(
        ["kubectl", "-n", PIPELINE_NS, "port-forward", f"svc/{PIPELINE}-gateway", f"{port}:8080"],
        env=kube.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        out = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "livetranslate.cli",
                "stream",
                str(wav),
                "--url",
                f"ws://127.0.0.1:{port}/v1/stream",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finally:
        forward.send_signal(signal.SIGTERM)
        forward.wait(timeout=30)
    finals = [e["text"] for e in events if e["type"] == "transcript.final"]
    translations = [e for e in events if e["type"] == "translation"]
    assert finals, events
    reference = " ".join(text for _start, _end, text, _voice in script)
    assert word_error_rate(reference, " ".join(finals)) < 0.5, finals
    assert translations and all(t["language"] == "es" and t["text"].strip() for t in translations)

    # Delete: every object the operator made for the pipeline goes with it (owner references).
    kube.kubectl("-n", PIPELINE_NS, "delete", "tp", PIPELINE, "--wait=true", "--timeout=300s", timeout=330)
    deadline = time.monotonic() + 180
    left: list[str] = []
    while time.monotonic() < deadline:
        listed = kube.kubectl(
            "-n",
            PIPELINE_NS,
            "get",
            "deployments,services,configmaps,pods",
            "-l",
            f"{PIPELINE_LABEL}={PIPELINE}",
            "-o",
            "name",
        ).stdout
        left = listed.split()
        if not left:
            break
        time.sleep(3)
    assert not left, f"left behind after deleting the pipeline: {left}"


def test_uninstall_removes_the_operator(kube: Kube, release: Any) -> None:
    release.uninstall(RELEASE, wait="watcher", timeout=300)
    left = kube.kubectl(
        "-n",
        OPERATOR_NS,
        "get",
        "deployments,services,serviceaccounts,configmaps",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    ).stdout.split()
    assert not left, left
    roles = kube.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
    ).stdout.split()
    assert not roles, roles
    # Helm never deletes CRDs from crds/: pipelines elsewhere would go with them.
    kube.kubectl("get", "crd", "translationpipelines.livetranslate.io")
