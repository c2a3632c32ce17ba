"""A switch to a fallback model and back: the benchmark's quick run drops no request, and the
engine a new pod's service first finds still loading keeps its slot affinity once it is up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from livetranslate.workloads.translate.quality import Job
from tests.reliability.conftest import load_benchmark

from .conftest import completion, engine_with, gguf_path

bench = load_benchmark("bench_model_switch")


async def test_an_engine_still_loading_is_asked_for_its_slots_again_once_it_is_up() -> None:
    # A pod's containers start together, so its service first finds llama-server loading the
    # model: 503 "Loading model" on every endpoint but /health. Taking that for "no slot count"
    # would leave every session unpinned for the pod's life, after every model switch.
    loading = True
    bodies: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        if loading:
            return httpx.Response(
                503, json={"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
            )
        if request.url.path == "/props":
            return httpx.Response(200, json={"total_slots": 4})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if request.url.path == "/metrics":
            return httpx.Response(404)
        bodies.append(json.loads(request.content))
        return completion(" Hola.")

    engine = engine_with(server, slot_affinity=True)
    state = await engine.check()
    assert not state.ready and engine.slot_map is None
    loading = False
    state = await engine.check()
    assert state.ready and engine.slot_map is not None and engine.slot_map.slots == 4
    await engine.translate([Job("Hello.", "en", "es", session_id="a")], None)
    assert bodies[0]["id_slot"] == 0
    await engine.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_switch_there_from_the_cache_and_back_downloaded_drops_no_request(tmp_path: Path) -> None:
    from livetranslate.workloads.translate import llama_server

    if llama_server.find_binary() is None:
        pytest.skip(
            f"llama-server is not built ({llama_server.cached_binary()}); scripts/bootstrap.sh builds it"
        )
    gguf_path()  # skips without the model's package
    assert bench.main(["--quick", "--out", str(tmp_path / "switch")]) == 0
    result = json.loads((tmp_path / "switch.json").read_text())
    assert list(result)[:5] == ["benchmark", "time", "machine", "commit", "command"]
    assert result["benchmark"] == "model_switch"
    size = result["setup"]["bytes"]
    assert [p["bytes"] for p in result["setup"]["pulls"]] == [size, size]  # both names cached up front

    cache, download = result["switches"]
    assert (cache["mode"], cache["from"], cache["to"]) == ("cache", "gemma-270m", "gemma-270m-fallback")
    assert (download["mode"], download["to"]) == ("download-100MBps", "gemma-270m")
    # From the cache nothing is fetched at the switch; without it the whole file is, paced.
    assert cache["fetch"] is None and "init_done" in cache["phases_s"]
    assert download["fetch"]["bytes"] == size and 0 < download["fetch"]["mb_per_s"] <= 105
    for s in result["switches"]:
        p = s["phases_s"]
        # One pod at a time (maxSurge 0): the new one starts once the old one is gone, and its
        # first translation comes after it turned ready.
        assert p["service_exited"] <= p["gone"] <= p["containers_started"] <= p["service_ready"]
        assert p["engine_ready"] <= p["service_ready"] <= p["first_result"] == s["switch_s"]
        assert s["unavailable_s"] == p["service_ready"]
        r = s["requests"]
        assert r["sent"] > 0 and r["retried"] > 0  # traffic met the outage and was retried ...
        assert r["failed"] == 0 and r["not_answered"] == 0 and r["completed"] == r["sent"]  # ... not dropped
        assert s["latency_s"]["during_n"] > 0
    assert result["no_request_dropped"] is True
    assert set(result["summary"]) == {"cache", "download-100MBps"}
    assert all(m["dropped"] == 0 for m in result["summary"].values())
    assert "No request dropped: yes." in (tmp_path / "switch.md").read_text()
