"""The pipeline dashboard against real data: `livetranslate up` runs the three services as users
run them, a real Prometheus (/usr/bin/prometheus, loopback, 1 s scrapes) scrapes them while real
speech streams through the gateway, and every panel of the pipeline overview must return data.

Set LT_DASHBOARD_PNG_DIR=docs/img to also render the panels' data to
docs/img/dashboard-pipeline-overview.png (matplotlib; no Grafana runs here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from livetranslate.procs import free_port, stop
from livetranslate_testing.grafana import empty_panels, query_panels, render_png

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "pipeline-overview.json"
# The session is short: a rate window of a few scrapes, not Grafana's minutes.
LIVE_VARS = {"__rate_interval": "10s", "__interval": "2s", "namespace": ".*", "pipeline": ".*", "slo": "1.5"}

pytestmark = pytest.mark.slow


@dataclass
class LiveRun:
    prometheus: str
    start: float
    end: float
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    prometheus_bin = shutil.which("prometheus")
    if not prometheus_bin:
        pytest.skip("prometheus not found (Debian package prometheus; scripts/bootstrap.sh installs it)")
    try:
        import livetranslate.local  # noqa: F401
        from livetranslate_testing.speech import SENTENCES, Utterance, compose, require_tools, write_wav

        require_tools()
    except (ImportError, RuntimeError, OSError) as exc:
        pytest.skip(f"livetranslate up or speech tools unavailable: {exc}")

    tmp = tmp_path_factory.mktemp("live-dashboard")
    gateway_port = free_port()
    env = {**os.environ, "PYTHONSAFEPATH": "1", "LT_LOG_FORMAT": "json"}
    up = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "livetranslate.cli",
            "up",
            "--port",
            str(gateway_port),
            "--log-dir",
            str(tmp / "logs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    procs: list[subprocess.Popen[Any]] = [up]
    try:
        ports: dict[str, int] = {}
        deadline = time.monotonic() + 300
        lines: list[str] = []
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                pytest.fail("livetranslate up exited:\n" + "".join(lines[-30:]))
            lines.append(line)
            m = re.match(r"(audio|translation|gateway): starting on 127\.0\.0\.1:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
            if "is ready" in line:
                break
        else:
            pytest.fail("livetranslate up not ready in 300 s:\n" + "".join(lines[-30:]))
        assert set(ports) == {"audio", "translation", "gateway"}, lines

        # Prometheus as a cluster would scrape the pods: one job per stage, a namespace label.
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"livetranslate-{stage}",
                    "scrape_interval": "1s",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{port}"],
                            "labels": {"namespace": "default", "pod": f"local-{stage}-0"},
                        }
                    ],
                }
                for stage, port in ports.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        for _ in range(120):
            try:
                if httpx.get(f"{prom_url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        start = time.time()
        time.sleep(3)

        samples, _ = compose([Utterance(s) for s in SENTENCES[:4]])
        wav = write_wav(tmp / "speech.wav", samples)
        events: list[dict[str, Any]] = []
        # One paced like a live microphone (sessions and queues visible to 1 s scrapes), one fast.
        for extra in (["--realtime"], []):
            out = subprocess.run(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "livetranslate.cli",
                    "stream",
                    str(wav),
                    "--url",
                    f"ws://127.0.0.1:{gateway_port}/v1/stream",
                    "--json",
                    *extra,
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
                check=False,
            )
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            events += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        time.sleep(4)  # let the last values be scraped
        yield LiveRun(prom_url, start, time.time(), events)
    finally:
        for proc in reversed(procs):
            stop(proc, timeout=30)


def test_the_session_produced_captions_and_translations(live: LiveRun) -> None:
    kinds = {e.get("type") for e in live.events}
    assert {"transcript.final", "translation"} <= kinds, kinds


def test_every_pipeline_panel_returns_data(live: LiveRun) -> None:
    dash = json.loads(DASHBOARD.read_text())
    data = query_panels(live.prometheus, dash, live.start, live.end, LIVE_VARS, step="1s")
    assert not empty_panels(data), f"panels without data after a real session: {empty_panels(data)}"
    png_dir = os.environ.get("LT_DASHBOARD_PNG_DIR")
    if png_dir:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(live.end))
        render_png(
            dash,
            data,
            Path(png_dir) / "dashboard-pipeline-overview.png",
            f"livetranslate up, scraped by a real Prometheus, {when}",
            live.start,
        )
