"""`livetranslate operator` and `livetranslate crd` as users run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from livetranslate.api import parse_spec
from livetranslate.operator import builders, placement
from livetranslate.operator.settings import OperatorSettings
from livetranslate.procs import free_port
from livetranslate_testing.kube_operator import Cluster, eventually, pipeline

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "livetranslate.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_operator_command_parses_its_options() -> None:
    out = cli("operator", "--help")
    assert out.returncode == 0, out.stderr
    assert "--namespace" in out.stdout and "--metrics-port" in out.stdout


def test_crd_command_prints_one_yaml_document() -> None:
    out = cli("crd")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc["kind"] == "CustomResourceDefinition"
    assert doc["metadata"]["name"] == "translationpipelines.livetranslate.io"


def test_images_and_resources_come_from_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LT_OPERATOR_AUDIO_IMAGE": "acme/lt-audio:9",
        "LT_OPERATOR_VLLM_IMAGE": "vllm/vllm-openai:x",
        "LT_OPERATOR_GATEWAY_RESOURCES__MEMORYLIMIT": "3Gi",
        "LT_OPERATOR_NAMESPACES": '["a","b"]',
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    assert settings.namespaces == ["a", "b"]
    spec = parse_spec({})
    resolved = builders.resolve(
        "p", "ns", 1, spec, placement.place(spec, placement.ClusterDevices(gpu_nodes=1))
    )
    kids = {
        m["metadata"]["name"]: m
        for m in builders.build_children(resolved, builders.BuildState(), settings)
        if m["kind"] == "Deployment"
    }
    assert kids["p-audio"]["spec"]["template"]["spec"]["containers"][0]["image"] == "acme/lt-audio:9"
    vllm = kids["p-translation"]["spec"]["template"]["spec"]["containers"][1]
    assert vllm["image"] == "vllm/vllm-openai:x"
    gateway = kids["p-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["resources"]["limits"]["memory"] == "3Gi"


@pytest.mark.slow
async def test_operator_process_serves_metrics_and_liveness(cluster: Cluster) -> None:
    """`livetranslate operator` as the chart runs it: /metrics with reconcile timings, /healthz."""
    import asyncio
    import os

    import aiohttp

    metrics_port, live_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "LT_OPERATOR_METRICS_PORT": str(metrics_port),
        "LT_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{live_port}/healthz",
        "LT_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "livetranslate.cli",
        "operator",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        cluster.api.create("livetranslate.io/v1alpha1/translationpipelines", pipeline("town-hall"))
        await eventually(lambda: len(cluster.children("town-hall")) == 10, timeout=60)
        async with aiohttp.ClientSession() as http:

            async def scrape() -> str:
                try:
                    async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                        return await resp.text()
                except aiohttp.ClientError:
                    return ""

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{live_port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = asyncio.get_running_loop().time() + 30
            text = ""
            while 'livetranslate_reconcile_seconds_count{result="ok"}' not in text:
                assert asyncio.get_running_loop().time() < deadline, text[-2000:]
                await asyncio.sleep(0.2)
                text = await scrape()
            assert await healthy()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
    assert proc.returncode == 0, "SIGTERM is a clean exit"


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    # `livetranslate languages | head -0`: the reading end is gone before the command writes
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "livetranslate.cli", "languages"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_stream_of_a_missing_file_is_one_line_and_a_failure(tmp_path: Path) -> None:
    out = cli("stream", str(tmp_path / "missing.wav"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        == f"livetranslate stream: cannot read {tmp_path / 'missing.wav'}: No such file or directory"
    )
