"""Helpers to run the real operator (Kopf) in-process against the Kubernetes emulator.

Used by tests/operator, the operator benchmark and the autoscaler's integration tests: a
``Cluster`` wraps the emulator with kubectl-like reads, ``OperatorProcess`` starts, stops and
kills the operator inside the current event loop, ``eventually`` polls for asynchronous effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf

from livetranslate.crd import build_crd
from livetranslate.operator.kube import KubeClient
from livetranslate.operator.settings import OperatorSettings
from livetranslate_testing.kube_emulator import KubeEmulator

NS = "demo"

# The Prometheus Operator's PodMonitor CRD, schemaless: installing it tells the operator that
# PodMonitors can be made (it checks discovery, as on a cluster with kube-prometheus-stack).
PODMONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "podmonitors", "singular": "podmonitor", "kind": "PodMonitor"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def pipeline(
    name: str = "town-hall", spec: dict[str, Any] | None = None, namespace: str = NS
) -> dict[str, Any]:
    return {
        "apiVersion": "livetranslate.io/v1alpha1",
        "kind": "TranslationPipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec if spec is not None else {},
    }


async def eventually(
    check: Callable[[], Any], timeout: float = 20.0, message: str | Callable[[], str] = ""
) -> Any:
    """Poll ``check`` until it returns something truthy (the operator is asynchronous).

    ``message`` may be a callable: it is asked only on failure, so it can describe the state then."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.05)
    said = message() if callable(message) else message
    raise AssertionError(f"timed out after {timeout}s: {said or check} (last: {last!r})")


class Cluster:
    """The emulator plus helpers the tests read like kubectl."""

    def __init__(self, api: KubeEmulator, url: str) -> None:
        self.api = api
        self.url = url

    def tp(self, name: str, namespace: str = NS) -> dict[str, Any] | None:
        return self.api.read("livetranslate.io/v1alpha1/translationpipelines", namespace, name)

    def children(self, name: str, namespace: str = NS) -> dict[str, dict[str, Any]]:
        sel = f"livetranslate.io/pipeline={name}"
        out: dict[str, dict[str, Any]] = {}
        for res in ("v1/configmaps", "v1/services", "apps/v1/deployments", "policy/v1/poddisruptionbudgets"):
            for obj in self.api.find(res, namespace, sel):
                out[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
        return out

    def events(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.find("v1/events", namespace)
            if e.get("involvedObject", {}).get("name") == name
        ]

    def pipeline_doc(self, name: str, namespace: str = NS) -> dict[str, Any]:
        """The pipeline.json the pods mount, as the ConfigMap holds it now ({} before it exists:
        a reconcile creates the model pull Jobs before it)."""
        cm = self.api.read("v1/configmaps", namespace, f"{name}-config") or {}
        doc: dict[str, Any] = json.loads((cm.get("data") or {}).get("pipeline.json") or "{}")
        return doc

    def audio_device(self, name: str, namespace: str = NS) -> str | None:
        device: str | None = self.pipeline_doc(name, namespace).get("placement", {}).get("audioDevice")
        return device

    def mark_ready(self, name: str, namespace: str = NS) -> None:
        for stage in ("audio", "translation", "gateway"):
            if self.api.read("apps/v1/deployments", namespace, f"{name}-{stage}") is not None:
                self.api.set_deployment_ready(namespace, f"{name}-{stage}")


class OperatorProcess:
    """The real operator (Kopf, all registered handlers) in this event loop; start/stop at will."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.task: asyncio.Task[None] | None = None
        self.stop_flag: asyncio.Event | None = None
        self.kube: KubeClient | None = None
        self.memo: kopf.Memo | None = None

    async def start(self) -> None:
        from livetranslate.operator.main import run

        self.stop_flag = asyncio.Event()
        ready = asyncio.Event()
        self.kube = await KubeClient.connect()
        memo = self.memo = kopf.Memo(kube=self.kube)
        self.task = asyncio.create_task(
            run(settings=self.settings, stop_flag=self.stop_flag, ready_flag=ready, memo=memo)
        )
        done, _ = await asyncio.wait(
            {self.task, asyncio.create_task(ready.wait())}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            self.task.result()  # raises what went wrong
        assert ready.is_set(), "operator did not become ready"

    async def sees_node(self, name: str, timeout: float = 20.0) -> None:
        """Wait until the operator's Node watch has seen ``name`` (placement reads what it saw)."""
        await eventually(
            lambda: self.memo is not None and name in self.memo.state.nodes.nodes,
            timeout=timeout,
            message=f"the operator never saw Node {name}",
        )

    async def stop(self) -> None:
        """Graceful stop (as on SIGTERM)."""
        if self.task is not None and self.stop_flag is not None:
            self.stop_flag.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, timeout=30)
        await self._close()

    async def kill(self) -> None:
        """Abrupt stop: cancel everything mid-flight, like a killed pod (no cleanup handlers)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self._close()

    async def _close(self) -> None:
        self.task = None
        if self.kube is not None:
            await self.kube.close()
            self.kube = None


@contextlib.asynccontextmanager
async def running_operator(*, graceful_stop: bool = False) -> AsyncIterator[OperatorProcess]:
    """The operator as the tests run it: no metrics or liveness server, a short retry delay. On
    exit it is cancelled (Kopf's graceful exit waits out idle watch streams, seconds per test)
    unless ``graceful_stop`` asks for the SIGTERM path."""
    proc = OperatorProcess(OperatorSettings(metrics_port=0, liveness_endpoint="", retry_delay_seconds=0.5))
    await proc.start()
    try:
        yield proc
    finally:
        if proc.task is not None:
            await (proc.stop() if graceful_stop else proc.kill())


@contextlib.asynccontextmanager
async def emulated_cluster(
    kubeconfig: Path, *, auto_ready_deployments: bool = False
) -> AsyncIterator[Cluster]:
    """The emulator on loopback with the TranslationPipeline CRD installed, and a kubeconfig for it
    written to ``kubeconfig`` (point $KUBECONFIG there before starting the operator)."""
    api = KubeEmulator(auto_ready_deployments=auto_ready_deployments)
    api.install_crd(build_crd())
    async with api, kmock.Server(api) as server:
        url = str(server.url).rstrip("/")
        api.kubeconfig(url, kubeconfig)
        yield Cluster(api, url)
