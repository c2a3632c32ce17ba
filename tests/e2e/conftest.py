"""The e2e tier: a real Kubernetes API server (kind), skipped with a reason where none can be had.

``kind_cluster`` yields a kubeconfig: ``$LT_E2E_KUBECONFIG`` (any existing cluster), else a kind
cluster created for the session (kept with ``LT_E2E_KEEP_CLUSTER=1``). Without a Docker engine,
kind or kubectl the tests skip naming the missing piece.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLUSTER = os.environ.get("LT_E2E_OPERATOR_CLUSTER", "livetranslate-operator-e2e")


def missing_for_kind() -> str | None:
    """Why a kind cluster cannot be had here, or None."""
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
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine reachable ({lines[-1] if lines else 'docker info failed'})"
    return None


class Kubectl:
    """kubectl against one kubeconfig, failing loudly with its output."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["kubectl", *args],
            capture_output=True,
            text=True,
            env=self.env,
            input=stdin,
            timeout=timeout,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
        return out

    def json(self, *args: str) -> Any:
        out = self("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    given = os.environ.get("LT_E2E_KUBECONFIG")
    if given:
        if not shutil.which("kubectl"):
            pytest.skip("LT_E2E_KUBECONFIG is set but kubectl is not installed")
        yield Kubectl(Path(given))
        return
    reason = missing_for_kind()
    if reason:
        pytest.skip(
            f"needs a Kubernetes cluster: set LT_E2E_KUBECONFIG, or install Docker + kind + kubectl "
            f"({reason})"
        )
    existing = subprocess.run(
        ["kind", "get", "clusters"], capture_output=True, text=True, check=False
    ).stdout.split()
    created = CLUSTER not in existing
    if created:
        subprocess.run(
            ["kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s"], check=True, timeout=600
        )
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    kubeconfig.write_text(
        subprocess.run(
            ["kind", "get", "kubeconfig", "--name", CLUSTER], capture_output=True, text=True, check=True
        ).stdout
    )
    try:
        yield Kubectl(kubeconfig)
    finally:
        if created and not os.environ.get("LT_E2E_KEEP_CLUSTER"):
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False, timeout=300)
