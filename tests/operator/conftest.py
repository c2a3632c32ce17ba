"""Fixtures: the Kubernetes emulator on loopback and the real operator (Kopf) running against it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livetranslate.operator.settings import OperatorSettings
from livetranslate.testing.kube_operator import Cluster, OperatorProcess, emulated_cluster


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path / "kubeconfig") as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        yield cluster


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    proc = OperatorProcess(OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5))
    await proc.start()
    try:
        yield proc
    finally:
        if proc.task is not None:
            # Cancel rather than stop gracefully: Kopf's graceful exit waits out idle watch streams
            # (seconds per test); the graceful path is exercised by the RBAC test's explicit stop().
            await proc.kill()

