"""The GPU and operator dashboards against a real Prometheus holding series shaped exactly like
their exporters publish them (dcgm-exporter with pod mapping, vLLM's OpenAI server, the operator's
livetranslate_* metrics), backfilled with `promtool tsdb create-blocks-from openmetrics`: every
panel must return data, so a label or metric name the exporters do not use fails here. No GPU
and no cluster run on this machine, so the values are made up; the shapes are not.

LT_DASHBOARD_PNG_DIR=docs/img also renders docs/img/dashboard-gpu.png and
docs/img/dashboard-operator.png (captioned as illustrative data).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from livetranslate.metrics import LATENCY_BUCKETS, PROCESSING_BUCKETS
from livetranslate.procs import free_port
from livetranslate_testing.grafana import empty_panels, query_panels, render_png

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEP = 15
MINUTES = 40
VARS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "namespace": ".*",
    "pipeline": ".*",
    "node": ".*",
    "slo": "1.5",
    "high_watermark": "0.9",
}
FB_TOTAL = 81559  # MiB of an 80 GB GPU, as dcgm-exporter reports used + free


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


def openmetrics(t0: int) -> str:
    """Forty minutes of a GPU pipeline under rising load, in OpenMetrics text with timestamps."""
    times = [t0 + i * STEP for i in range(MINUTES * 60 // STEP)]
    n = len(times)
    frac = [i / (n - 1) for i in range(n)]
    fams: list[str] = []

    def gauge(name: str, series: list[tuple[str, list[float]]]) -> None:
        fams.append(f"# TYPE {name} gauge")
        for labels, values in series:
            fams.extend(f"{name}{labels} {v:.6g} {t}" for t, v in zip(times, values, strict=True))

    def counter(name: str, series: list[tuple[str, list[float]]]) -> None:
        fams.append(f"# TYPE {name} counter")
        for labels, values in series:
            fams.extend(f"{name}_total{labels} {v:.6g} {t}" for t, v in zip(times, values, strict=True))

    def histogram(
        name: str, buckets: tuple[float, ...], series: list[tuple[dict[str, str], list[float], list[float]]]
    ) -> None:
        """Cumulative histograms from observations per step and their typical value."""
        fams.append(f"# TYPE {name} histogram")
        for labels, typical, per_step in series:
            counts = [0.0] * n
            bucket_counts = {b: [0.0] * n for b in (*buckets, math.inf)}
            total = 0.0
            for i in range(n):
                total += per_step[i]
                counts[i] = total
                for b, cumulative in bucket_counts.items():
                    # Observations spread between 0.5x and 2x the typical value.
                    share = min(1.0, max(0.0, (b - typical[i] * 0.5) / (typical[i] * 1.5)))
                    cumulative[i] = (cumulative[i - 1] if i else 0.0) + per_step[i] * share
            for b, values in bucket_counts.items():
                le = "+Inf" if b == math.inf else repr(float(b))
                lab = _labels(**labels, le=le)
                fams.extend(f"{name}_bucket{lab} {v:.6g} {t}" for t, v in zip(times, values, strict=True))
            fams.extend(
                f"{name}_count{_labels(**labels)} {v:.6g} {t}" for t, v in zip(times, counts, strict=True)
            )
            fams.extend(
                f"{name}_sum{_labels(**labels)} {v * typical[i]:.6g} {t}"
                for i, (t, v) in enumerate(zip(times, counts, strict=True))
            )

    pod_a, pod_b = "town-hall-translation-7d9f8-x2kq1", "town-hall-translation-7d9f8-p8m4c"
    gpu = {
        "Hostname": "gpu-node-a",
        "modelName": "NVIDIA H100 80GB HBM3",
        "namespace": "demo",
        "container": "vllm",
    }
    used0 = [60000 + 16000 * f for f in frac]
    used1 = [0.0 if f < 0.5 else 69000.0 for f in frac]
    gauge(
        "DCGM_FI_DEV_FB_USED",
        [
            (_labels(gpu="0", UUID="GPU-5a1c", pod=pod_a, **gpu), used0),
            (_labels(gpu="1", UUID="GPU-77b0", pod=pod_b, **gpu), used1),
        ],
    )
    gauge(
        "DCGM_FI_DEV_FB_FREE",
        [
            (_labels(gpu="0", UUID="GPU-5a1c", pod=pod_a, **gpu), [FB_TOTAL - u for u in used0]),
            (_labels(gpu="1", UUID="GPU-77b0", pod=pod_b, **gpu), [FB_TOTAL - u for u in used1]),
        ],
    )
    primary, fallback = "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-3B-Instruct-AWQ"
    vllm_a = _labels(model_name=primary, engine="0", namespace="demo", pod=pod_a, container="vllm")
    vllm_b = _labels(model_name=fallback, engine="0", namespace="demo", pod=pod_b, container="vllm")
    gauge(
        "vllm:kv_cache_usage_perc",
        [(vllm_a, [0.2 + 0.75 * f for f in frac]), (vllm_b, [math.nan if f < 0.5 else 0.3 for f in frac])],
    )
    gauge(
        "vllm:num_requests_waiting",
        [
            (vllm_a, [max(0.0, 40 * (f - 0.4)) for f in frac]),
            (vllm_b, [math.nan if f < 0.5 else 0.0 for f in frac]),
        ],
    )

    # The translation service mirrors its engine's state (vLLM listens on the pod's loopback only).
    tr_a = _labels(pipeline="town-hall", backend="vllm", namespace="demo", pod=pod_a, container="translate")
    tr_b = _labels(pipeline="town-hall", backend="vllm", namespace="demo", pod=pod_b, container="translate")
    gauge(
        "livetranslate_translation_engine_kv_cache_usage_ratio",
        [(tr_a, [0.2 + 0.75 * f for f in frac]), (tr_b, [math.nan if f < 0.5 else 0.3 for f in frac])],
    )
    gauge(
        "livetranslate_translation_engine_requests_waiting",
        [
            (tr_a, [max(0.0, 40 * (f - 0.4)) for f in frac]),
            (tr_b, [math.nan if f < 0.5 else 0.0 for f in frac]),
        ],
    )
    gauge(
        "livetranslate_translation_model_info",
        [
            (
                _labels(pipeline="town-hall", backend="vllm", model=primary, namespace="demo", pod=pod_a),
                [1.0] * n,
            ),
            (
                _labels(pipeline="town-hall", backend="vllm", model=fallback, namespace="demo", pod=pod_b),
                [math.nan if f < 0.5 else 1.0 for f in frac],
            ),
        ],
    )

    op = {"namespace": "demo", "pipeline": "town-hall"}
    replicas = {
        "audio": [2.0] * n,
        "translation": [1.0 if f < 0.5 else 2.0 for f in frac],
        "gateway": [1.0] * n,
    }
    gauge("livetranslate_stage_replicas", [(_labels(**op, stage=s), v) for s, v in replicas.items()])
    gauge(
        "livetranslate_stage_ready_replicas",
        [
            (
                _labels(**op, stage=s),
                [
                    r if 0.5 > f or f > 0.55 or s != "translation" else 1.0
                    for r, f in zip(v, frac, strict=True)
                ],
            )
            for s, v in replicas.items()
        ],
    )
    gauge(
        "livetranslate_stage_max_replicas",
        [
            (_labels(**op, stage=s), [m] * n)
            for s, m in (("audio", 4.0), ("translation", 2.0), ("gateway", 4.0))
        ],
    )
    gauge("livetranslate_scaling_active", [(_labels(**op), [0.0 if 0.2 < f < 0.3 else 1.0 for f in frac])])
    counter(
        "livetranslate_scaling_decisions",
        [
            (
                _labels(pipeline="town-hall", stage="translation", direction="up", reason="latency"),
                [0.0 if f < 0.5 else 1.0 for f in frac],
            ),
            (
                _labels(pipeline="town-hall", stage="translation", direction="model", reason="gpu_memory"),
                [0.0 if f < 0.48 else 1.0 for f in frac],
            ),
        ],
    )
    histogram(
        "livetranslate_reconcile_seconds",
        PROCESSING_BUCKETS,
        [
            ({"result": "ok"}, [0.08 + 0.1 * f for f in frac], [2.0] * n),
            # A burst of API failures while the second GPU's pod was being placed.
            ({"result": "error"}, [0.5] * n, [1.0 if 0.5 < f < 0.58 else 0.0 for f in frac]),
        ],
    )
    histogram(
        "livetranslate_caption_latency_seconds",
        LATENCY_BUCKETS,
        [({"namespace": "demo", "pipeline": "town-hall"}, [0.8 + 0.6 * f for f in frac], [30.0] * n)],
    )
    # A NaN value stands for "no sample yet" (the second GPU's engine starts halfway).
    lines = [line for line in fams if " nan " not in line]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float, float]]:
    promtool, prom_bin = shutil.which("promtool"), shutil.which("prometheus")
    if not (promtool and prom_bin):
        pytest.skip("promtool/prometheus not found (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prom-exporters")
    end = int(time.time()) - 120
    start = end - MINUTES * 60 + STEP
    (tmp / "series.om").write_text(openmetrics(start))
    data = tmp / "data"
    out = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "series.om"), str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    port = free_port()
    (tmp / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    proc = subprocess.Popen(
        [
            prom_bin,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, float(start), float(end)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", ["gpu", "operator"])
def test_every_panel_returns_data_from_exporter_shaped_series(
    prometheus: tuple[str, float, float], name: str
) -> None:
    url, start, end = prometheus
    dash = json.loads((ROOT / "dashboards" / f"{name}.json").read_text())
    data = query_panels(url, dash, start, end, VARS, step="30s")
    assert not empty_panels(data), f"{name}: panels without data: {empty_panels(data)}"
    png_dir = os.environ.get("LT_DASHBOARD_PNG_DIR")
    if png_dir:
        render_png(
            dash,
            data,
            Path(png_dir) / f"dashboard-{name}.png",
            "illustrative data shaped like dcgm-exporter, vLLM and the operator publish it "
            "(no GPU here), through a real Prometheus",
            start,
        )
