"""The public /v1/stream protocol end to end through a real gateway and protocol stand-ins."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from tests.gateway.conftest import Client, Stack, block_audio


async def test_session_finals_translations_and_end(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "sampleRate": 16000})
        started = await c.recv()
        assert started["type"] == "session.started" and started["targetLanguages"] == ["es", "fr"]
        await c.send_audio(block_audio([1, 2, 0, 3]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")

    finals = c.of("transcript.final")
    assert [(f["segmentId"], f["text"]) for f in finals] == [(0, "block 1"), (1, "block 2"), (2, "block 3")]
    assert [(f["start"], f["end"]) for f in finals] == [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0)]
    assert all(f["latency"] >= 0 for f in finals)
    translations = {(t["segmentId"], t["language"]): t["text"] for t in c.of("translation")}
    assert translations == {
        (i, lang): f"{lang}:block {k}" for i, k in enumerate([1, 2, 3]) for lang in ("es", "fr")
    }
    assert len(c.of("translation")) == 6
    # A partial names the segment the next final will carry.
    assert all(p["segmentId"] in (0, 1, 2, 3) for p in c.of("transcript.partial"))
    # Every final is sent before its translations.
    order = [(e["type"], e.get("segmentId")) for e in c.events]
    for f in finals:
        assert order.index(("transcript.final", f["segmentId"])) < order.index(
            ("translation", f["segmentId"])
        )


async def test_translation_requests_carry_context(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1, 2, 3, 4, 5, 6, 7]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    reqs = sorted(stack.translation.requests, key=lambda r: r.segmentId)
    assert [r.segmentId for r in reqs] == list(range(7))
    assert reqs[0].context == []
    # contextSegments defaults to 3: the finals before, each with its translation; the window
    # grows append-only to five (so each prompt extends the previous one), then moves on by three.
    sources = [[c.source for c in r.context] for r in reqs]
    assert sources[3] == ["block 1", "block 2", "block 3"]
    assert sources[5] == ["block 1", "block 2", "block 3", "block 4", "block 5"]
    assert sources[6] == ["block 4", "block 5", "block 6"]
    assert [c.translations for c in reqs[6].context] == [{"es": f"es:block {k}"} for k in (4, 5, 6)]
    assert all(r.targetLanguages == ["es"] for r in reqs)


@pytest.mark.parametrize(("encoding", "rate"), [("pcm_f32le", 44100), ("pcm_s16le", 48000)])
async def test_any_rate_resampled_and_stereo_downmixed(stack: Stack, encoding: str, rate: int) -> None:
    t = np.arange(rate * 3) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    if encoding == "pcm_s16le":
        stereo = (np.stack([tone, tone], axis=1) * 32767).astype("<i2").tobytes()
    else:
        stereo = np.stack([tone, tone], axis=1).astype("<f4").tobytes()
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "sampleRate": rate, "encoding": encoding, "channels": 2})
        await c.recv()
        # Odd chunk sizes split samples and channels: the gateway must carry the remainders.
        await c.send_audio(stereo, chunk=4099)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert abs(stack.audio.received_seconds - 3.0) < 0.01


async def test_health_ready_metrics_and_page(stack: Stack) -> None:
    base = stack.gateways[0].url
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        async with Client(stack.ws_url) as c:
            await c.send_json({"type": "session.start"})
            await c.recv()
            await c.send_audio(block_audio([2]))
            await c.until(lambda e: e["type"] == "translation")
            text = (await http.get("/metrics")).text
            assert 'livetranslate_sessions_active{pipeline="local"} 1.0' in text
            await c.send_json({"type": "session.end"})
            await c.until(lambda e: e["type"] == "session.ended")
        text = (await http.get("/metrics")).text
        assert 'livetranslate_caption_latency_seconds_count{pipeline="local"} 1.0' in text
        assert 'livetranslate_translation_latency_seconds_count{pipeline="local"} 2.0' in text
        assert 'livetranslate_queue_depth{pipeline="local",stage="gateway_send"}' in text
        page = await http.get("/", headers={"x-forwarded-prefix": "/town-hall"})
        assert '<base href="/town-hall/">' in page.text
        assert (await http.get("/static/captions.js")).status_code == 200
        assert (await http.get("/static/pcm-worklet.js")).status_code == 200


async def test_readyz_reports_a_dead_upstream(stack: Stack) -> None:
    await stack.translation_server.stop(force=True)
    async with httpx.AsyncClient(base_url=stack.gateways[0].url) as http:
        await asyncio.sleep(2.1)  # past the readiness cache
        r = await http.get("/readyz")
    assert r.status_code == 503
    assert json.loads(r.text)["checks"]["translation"].startswith("unreachable")


async def test_the_pods_readiness_probe_leaves_out_the_shared_dependencies(stack: Stack) -> None:
    """What the gateway's readiness probe asks (builders.READINESS_PATHS): the translation stage
    down keeps the replica in its Service, where sessions get a clear error (a drain still takes
    it out: test_drain.py); a misspelt check is refused rather than ignored."""
    await stack.translation_server.stop(force=True)
    gw = stack.gateways[0]
    async with httpx.AsyncClient(base_url=gw.url) as http:
        await asyncio.sleep(2.1)  # past the readiness cache
        probe = await http.get("/readyz?exclude=audio&exclude=translation&exclude=sessionStore")
        assert probe.status_code == 200, probe.text
        body = probe.json()
        assert body["checks"]["translation"].startswith("unreachable")
        assert body["excluded"] == ["audio", "sessionStore", "translation"]
        assert (await http.get("/readyz?exclude=audio")).status_code == 503
        typo = await http.get("/readyz?exclude=transaltion")
        assert typo.status_code == 400 and "transaltion" in typo.json()["error"]
