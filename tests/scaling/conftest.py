"""Fixtures for the autoscaler's integration tests: a real Prometheus scraping exporters the test
drives (our workloads' metrics per stage pod, and stand-ins publishing dcgm-exporter's and vLLM's
metric names), plus the Kubernetes emulator with the real operator from tests/operator."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from livetranslate import metrics as m
from livetranslate.procs import free_port
from livetranslate_testing.kube_operator import (
    NS,
    Cluster,
    OperatorProcess,
    emulated_cluster,
    running_operator,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PIPELINE = "town-hall"
SCRAPE_S = 0.5


class Exporter:
    """One /metrics endpoint on loopback (a pod, as Prometheus sees it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port = free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Load:
    """What the stand-in pods report; tests change these and the feeder keeps publishing them."""

    caption_s: float = 0.8
    translation_s: float = 0.3
    audio_rtf: float = 0.5
    queue_audio: float = 0.0
    queue_translation: float = 0.0
    sessions: float = 50.0
    gpu_used_fraction: float = 0.7
    kv_cache: float = 0.5
    vllm_waiting: float = 0.0
    # Decode passes the audio pod completes per second (its processing histogram's rate); 0 = the
    # pod publishes no such series (the autoscaler then has no audio throughput, and no plan).
    audio_passes_per_s: float = 0.0
    jitter: dict[str, float] = field(default_factory=dict)


class Workloads:
    """Stand-ins for the gateway, audio and translation pods, dcgm-exporter and vLLM."""

    GPU_MIB = 81_920

    def __init__(self) -> None:
        self.load = Load()
        self.gateway, self.audio, self.translation, self.dcgm = Exporter(), Exporter(), Exporter(), Exporter()
        self.caption = m.caption_latency(self.gateway.registry)
        self.sessions = m.sessions_active(self.gateway.registry)
        self.rtf = m.audio_realtime_factor(self.audio.registry)
        self.passes = m.audio_processing(self.audio.registry)
        self._passes_due = 0.0
        self.queue_a = m.queue_depth(self.audio.registry)
        self.tr_latency = m.translation_latency(self.translation.registry)
        self.queue_t = m.queue_depth(self.translation.registry)
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "waiting", ["model_name"], registry=self.translation.registry
        )
        self.kv = Gauge("vllm:kv_cache_usage_perc", "kv", ["model_name"], registry=self.translation.registry)
        labels = ["gpu", "UUID", "modelName", "Hostname", "container", "namespace", "pod"]
        self.fb_used = Gauge("DCGM_FI_DEV_FB_USED", "used MiB", labels, registry=self.dcgm.registry)
        self.fb_free = Gauge("DCGM_FI_DEV_FB_FREE", "free MiB", labels, registry=self.dcgm.registry)
        # A GPU of someone else's pod on the same node: must not count.
        self._other = ("1", "GPU-other", "H100", "node-a", "main", "other", "other-app-5d8c9-xk2j4")
        self._ours = ("0", "GPU-ours", "H100", "node-a", "vllm", NS, f"{PIPELINE}-translation-6f7b8-q9z7w")
        self._task: asyncio.Task[None] | None = None
        self.exporters = {
            "gateway": self.gateway,
            "audio": self.audio,
            "translation": self.translation,
            "dcgm": self.dcgm,
        }

    def publish(self) -> None:
        ld = self.load
        self.sessions.labels(PIPELINE).set(ld.sessions)
        self.rtf.labels(PIPELINE, "cpu").set(ld.audio_rtf)
        self.queue_a.labels(PIPELINE, "audio").set(ld.queue_audio)
        self.queue_t.labels(PIPELINE, "translation").set(ld.queue_translation)
        self.waiting.labels("m").set(ld.vllm_waiting)
        self.kv.labels("m").set(ld.kv_cache)
        used = ld.gpu_used_fraction * self.GPU_MIB
        self.fb_used.labels(*self._ours).set(used)
        self.fb_free.labels(*self._ours).set(self.GPU_MIB - used)
        self.fb_used.labels(*self._other).set(self.GPU_MIB * 0.99)
        self.fb_free.labels(*self._other).set(self.GPU_MIB * 0.01)
        for _ in range(20):
            self.caption.labels(PIPELINE).observe(ld.caption_s)
            self.tr_latency.labels(PIPELINE).observe(ld.translation_s)
        if ld.audio_passes_per_s > 0:  # called every 0.1 s
            self._passes_due += ld.audio_passes_per_s * 0.1
            while self._passes_due >= 1.0:
                self._passes_due -= 1.0
                self.passes.labels(PIPELINE, "cpu").observe(0.05)

    async def _feed(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(0.1)

    def start(self) -> None:
        for e in self.exporters.values():
            e.start()
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._feed())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for e in self.exporters.values():
            e.stop()

    def scrape_config(self) -> dict[str, Any]:
        def job(name: str, pod: str, exporter: Exporter, **extra: Any) -> dict[str, Any]:
            return {
                "job_name": name,
                "scrape_interval": f"{int(SCRAPE_S * 1000)}ms",
                "scrape_timeout": f"{int(SCRAPE_S * 1000)}ms",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": NS, "pod": pod}}
                ],
                **extra,
            }

        return {
            "global": {"scrape_interval": f"{int(SCRAPE_S * 1000)}ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                job("gateway", f"{PIPELINE}-gateway-7c6d5-a1b2c", self.gateway),
                job("audio", f"{PIPELINE}-audio-5f4e3-d4e5f", self.audio),
                job("translation", f"{PIPELINE}-translation-6f7b8-q9z7w", self.translation),
                # dcgm-exporter's own pod lives elsewhere; honor_labels keeps the pod/namespace it
                # reports (the GPU's consumer), as a ServiceMonitor with honorLabels does.
                {
                    **job("dcgm", "dcgm-exporter-x8k2p", self.dcgm),
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{self.dcgm.port}"],
                            "labels": {"namespace": "gpu-operator", "pod": "dcgm-exporter-x8k2p"},
                        }
                    ],
                },
            ],
        }


class Prometheus:
    """A real Prometheus server on a free loopback port, its TSDB in a temporary folder."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "prometheus.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.tmp / 'prometheus.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
            r.raise_for_status()
            result: list[dict[str, Any]] = r.json()["data"]["result"]
            return result


@pytest.fixture
def prometheus_binary() -> str:
    if not Path(PROMETHEUS).exists():
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus')")
    return PROMETHEUS


@pytest.fixture
async def workloads() -> AsyncIterator[Workloads]:
    w = Workloads()
    w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture
def prometheus(
    prometheus_binary: str, workloads: Workloads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Prometheus]:
    # Our scrape is 0.5 s, so a 3 s rate window holds six samples.
    monkeypatch.setenv("LT_SCALING_MIN_RATE_WINDOW_SECONDS", "3")
    (tmp_path / "prom").mkdir()
    prom = Prometheus(tmp_path / "prom", workloads.scrape_config())
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path / "kubeconfig", auto_ready_deployments=True) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        yield cluster


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    async with running_operator(graceful_stop=True) as proc:
        yield proc
