"""The offline backend for real: Debian's Apertium behind apertium-apy, as `livetranslate up` runs it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from livetranslate.procs import free_port, stop, wait_http
from livetranslate.workloads.translate.apertium import ApertiumEngine
from livetranslate.workloads.translate.app import create_app
from livetranslate.workloads.translate.settings import ApertiumSettings, TranslateSettings

from .conftest import metric_value, read_ndjson, tr_request

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("apertium-apy") is None or not os.path.exists("/usr/share/apertium/modes/eng-spa.mode"),
        reason="Debian packages apertium-apy and apertium-eng-spa are not installed (scripts/bootstrap.sh)",
    ),
]


def listening_addresses(port: int) -> list[str]:
    """IPv4/IPv6 addresses with a listening TCP socket on ``port`` (from /proc, no tools needed)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                addr, _, hexport = fields[1].partition(":")
                if int(hexport, 16) == port and fields[3] == "0A":
                    if width == 8:
                        found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                    else:
                        found.append(addr)
    return found


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def apertium_settings(**over: Any) -> TranslateSettings:
    over.setdefault("target_languages", ["es"])
    return TranslateSettings(pipeline="offline", backend="apertium", source_language="en", **over)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(apertium_settings())) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield c


def test_english_to_spanish(client: TestClient) -> None:
    [line] = read_ndjson(
        client.post(
            "/v1/translate", json=tr_request("Good morning, where is the train station?", ["es"], segment=7)
        )
    )
    assert line["type"] == "translation" and line["segmentId"] == 7 and line["quality"] == "ok"
    assert "Buenos días" in line["text"] and "tren" in line["text"]
    assert "#" not in line["text"] and "*" not in line["text"]


def test_missing_pair_is_a_clear_error_not_a_passthrough(client: TestClient) -> None:
    lines = read_ndjson(client.post("/v1/translate", json=tr_request("Good morning.", ["es", "de"])))
    by_lang = {line["language"]: line for line in lines}
    assert by_lang["es"]["type"] == "translation"
    assert by_lang["de"]["type"] == "error" and by_lang["de"]["code"] == "unsupported_language"
    assert "en->de" in by_lang["de"]["message"]


def test_pair_without_a_mode_is_translated_through_a_pivot(client: TestClient) -> None:
    # No English->French mode is packaged: eng-spa then es-fr, and the listener is told so
    [line] = read_ndjson(client.post("/v1/translate", json=tr_request("The house is big.", ["fr"])))
    assert line["type"] == "translation" and line["quality"] == "pivot:es", line
    assert line["text"].startswith("La maison est grande")


def test_only_the_pipelines_own_pairs_are_warmed(client: TestClient) -> None:
    # Warming every installed mode (133 here) started hundreds of processes and GiBs
    engine = client.app.state.service.primary.engine  # type: ignore[attr-defined]
    assert engine.warm_modes == ["eng-spa"]
    french = ApertiumEngine(ApertiumSettings(), "en", ["es", "fr"])
    assert french.warm_modes == ["eng-spa", "es-fr"]
    assert ApertiumEngine(ApertiumSettings(), "auto", ["es"]).warm_modes == []


def test_readyz_names_pipeline_pairs_it_cannot_serve(tmp_path: Path) -> None:
    # A modes directory with every installed pair but English->Catalan, whatever this machine has
    # (and without Spanish->Catalan, which would reach Catalan from English through Spanish).
    installed = ApertiumSettings().modes_dir
    for mode in installed.glob("*.mode"):
        if not mode.name.startswith(("eng-cat", "spa-cat")):
            (tmp_path / mode.name).symlink_to(mode)
    settings = apertium_settings(target_languages=["es", "ca"], apertium=ApertiumSettings(modes_dir=tmp_path))
    with TestClient(create_app(settings)) as c:
        body = c.get("/readyz").json()
    assert any("en->ca" in p and "apertium-eng-cat" in p for p in body["problems"]), body
    assert not any("en->es" in p for p in body["problems"]), body


def test_many_sessions_at_once(client: TestClient) -> None:
    sentences = [
        "The meeting starts now.",
        "Thank you for coming.",
        "We have three new products.",
        "Please ask your questions.",
        "The house is big.",
    ]

    def one(i: int) -> list[dict[str, Any]]:
        return read_ndjson(
            client.post(
                "/v1/translate",
                json=tr_request(sentences[i % len(sentences)], ["es"], session=f"s{i}", segment=i),
            )
        )

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert all(
        r[0]["type"] == "translation" and r[0]["segmentId"] == i and r[0]["text"]
        for i, r in enumerate(results)
    )
    assert results[4][0]["text"].startswith("La casa es")
    # concurrent segments went to APy together (one joined call per batch), and came back apart
    text = client.get("/metrics").text
    calls = metric_value(text, "livetranslate_translation_batch_size_count", backend="apertium")
    segments = metric_value(text, "livetranslate_translation_batch_size_sum", backend="apertium")
    assert segments / calls > 1.5


def test_apy_bound_to_loopback_and_restarted_when_it_dies(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    engine = service.primary.engine
    pid, port = engine.proc.pid, engine.port
    assert listening_addresses(port) == ["127.0.0.1"]
    assert group_members(pid), "APy's pair pipelines run in its process group"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    saw_unready = False
    while time.monotonic() < deadline and not saw_unready:
        saw_unready = client.get("/readyz").status_code == 503
    # a segment sent during the restart waits for APy instead of failing
    resp = client.post("/v1/translate", json=tr_request("Thank you for coming.", ["es"]))
    assert resp.status_code == 200, resp.text
    [line] = read_ndjson(resp)
    assert line["type"] == "translation", str(line)
    assert engine.proc.pid != pid
    assert saw_unready
    # the dead APy's pair pipelines went with it, not left running as orphans (they see their stdin
    # close; the supervisor also kills the group, for a pipeline stuck in a long read)
    assert group_members(pid) == []
    assert metric_value(client.get("/metrics").text, "livetranslate_translation_engine_restarts") >= 1


def test_served_as_users_start_it(tmp_path: Any) -> None:
    """`livetranslate serve translate` with the pipeline file the operator writes."""
    from livetranslate.api import TranslationPipelineSpec
    from livetranslate.config import Endpoints, Placement, ResolvedPipeline

    resolved = ResolvedPipeline(
        name="town-hall",
        spec=TranslationPipelineSpec(targetLanguages=["es"]),
        placement=Placement(translationBackend="apertium"),
        endpoints=Endpoints(audio="http://a", translation="http://t", gateway="http://g"),
    )
    (tmp_path / "pipeline.json").write_text(resolved.to_json())
    port = free_port()
    env = {**os.environ, "LT_PIPELINE_CONFIG": str(tmp_path / "pipeline.json"), "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "livetranslate.cli",
            "serve",
            "translate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 60, proc)
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        resp = httpx.post(f"{base}/v1/translate", json=tr_request("The house is big.", ["es"]), timeout=10)
        assert read_ndjson(resp)[0]["text"].startswith("La casa es")
        text = httpx.get(f"{base}/metrics").text
        assert (
            metric_value(text, "livetranslate_translation_latency_seconds_count", pipeline="town-hall") == 1
        )
        children = child_pids(proc.pid)
        assert children, "apertium-apy child not running"
    finally:
        stop(proc)
    # the service takes its APy child down with it
    time.sleep(0.5)
    for child in children:
        status = Path(f"/proc/{child}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()
