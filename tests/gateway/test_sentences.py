"""Sentences through a real gateway: finals grouped, each sentence translated once and whole,
the open sentence re-translated as it grows, and nothing lost or repeated across a resume."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.gateway.conftest import Client, Stack, block_audio, drop

MEETING = {
    1: "Good morning,",
    2: "everyone, and thanks",
    3: "for joining us.",
    4: "Let's start",
    5: "with the budget",
}


async def speak(c: Client, levels: list[int], gap: float = 0.3) -> None:
    """One block a time with a pause between, so each final reaches the gateway on its own."""
    for level in levels:
        await c.send_audio(block_audio([level]))
        await asyncio.sleep(gap)


async def sentence_stack(stack: Stack, **gateway: Any) -> str:
    stack.audio.utterance_per_block = False
    stack.audio.texts = dict(MEETING)
    server = await stack.make_gateway(**gateway)
    return server.url.replace("http://", "ws://") + "/v1/stream"


async def test_finals_become_sentences_translated_once_whole(stack: Stack) -> None:
    url = await sentence_stack(stack)
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es", "fr"]})
        await c.recv()
        await speak(c, [1, 2, 3, 4, 5, 0], gap=0.7)  # finals further apart than partials may go
        await c.until(lambda e: e["type"] == "translation" and e["sentenceId"] == 1 and e["language"] == "fr")
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")

    finals = [(f["segmentId"], f["text"]) for f in c.of("transcript.final")]
    assert finals == [(i - 1, MEETING[i]) for i in range(1, 6)]
    got = {
        (t["sentenceId"], t["language"]): (t["segmentIds"], t["segmentId"], t["text"])
        for t in c.of("translation")
    }
    first = "Good morning, everyone, and thanks for joining us."
    second = "Let's start with the budget"
    assert got == {
        (0, "es"): ([0, 1, 2], 2, f"es:{first}"),
        (0, "fr"): ([0, 1, 2], 2, f"fr:{first}"),
        (1, "es"): ([3, 4], 4, f"es:{second}"),
        (1, "fr"): ([3, 4], 4, f"fr:{second}"),
    }
    assert len(c.of("translation")) == 4  # once per sentence and language, never per final
    # The open sentence was re-translated as it grew, and every preview came before its sentence's
    # translation, covering only finals already sent.
    partials = c.of("translation.partial")
    previews = {(0, (0,)), (0, (0, 1)), (1, (3,)), (1, (3, 4))}
    assert {(p["sentenceId"], tuple(p["segmentIds"])) for p in partials} == previews
    order = [(e["type"], e.get("sentenceId"), e.get("segmentId")) for e in c.events]
    for p in partials:
        ids = p["segmentIds"]
        assert p["text"] == f"{p['language']}:" + " ".join(MEETING[i + 1] for i in ids)
        assert order.index(("transcript.final", None, ids[-1])) < c.events.index(p)
        final_tr = next(
            i
            for i, e in enumerate(c.events)
            if e["type"] == "translation"
            and e["sentenceId"] == p["sentenceId"]
            and e["language"] == p["language"]
        )
        assert c.events.index(p) < final_tr
    # The sentence request carried the earlier sentence and its translations as context; the
    # previews were flagged as such.
    whole = [r for r in stack.translation.requests if not r.partial]
    assert [(r.segmentId, r.text) for r in whole] == [(0, first), (1, second)]
    assert [(x.source, x.translations) for x in whole[1].context] == [
        (first, {"es": f"es:{first}", "fr": f"fr:{first}"})
    ]
    # One preview per final that left its sentence open, none for a sentence's last final.
    assert len(stack.translation.requests) - len(whole) == len(previews)

    async with httpx.AsyncClient() as http:
        metrics = (await http.get(url.replace("ws://", "http://").replace("/v1/stream", "/metrics"))).text
    assert "livetranslate_sentence_latency_seconds_count" in metrics
    calls = [
        line
        for line in metrics.splitlines()
        if line.startswith("livetranslate_sentence_translation_calls_count")
    ]
    assert calls and float(calls[0].split()[-1]) == 2.0  # two sentences
    total = [
        line
        for line in metrics.splitlines()
        if line.startswith("livetranslate_sentence_translation_calls_sum")
    ]
    assert float(total[0].split()[-1]) == 2 + len(previews)


async def test_final_unit_is_the_previous_behaviour(stack: Stack) -> None:
    url = await sentence_stack(stack, translation_unit="final")
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await speak(c, [1, 2, 3], gap=0.05)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert [(t["sentenceId"], t["segmentIds"], t["text"]) for t in c.of("translation")] == [
        (i - 1, [i - 1], f"es:{MEETING[i]}") for i in (1, 2, 3)
    ]
    assert c.of("translation.partial") == []


async def test_a_speaker_who_never_pauses_gets_sentences_at_the_bound(stack: Stack) -> None:
    url = await sentence_stack(stack, sentence_max_words=6)
    stack.audio.texts = {1: "we went to the market,", 2: "then we", 3: "went home and"}
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await speak(c, [1, 2, 3, 1, 2], gap=0.05)
        first = await c.until(lambda e: e["type"] == "translation")
        assert (first["segmentIds"], first["text"]) == ([0], "es:we went to the market,")
        second = await c.until(lambda e: e["type"] == "translation")
        assert second["segmentIds"] == [1, 2, 3]  # no clause boundary inside: closed at the bound


async def test_a_pause_the_audio_service_never_reported_still_closes_the_sentence(stack: Stack) -> None:
    url = await sentence_stack(stack, sentence_idle_seconds=0.6)
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([4, 5]))  # no silence block, no flush: no utterance end
        tr = await c.until(lambda e: e["type"] == "translation", timeout=5)
        assert (tr["segmentIds"], tr["text"]) == ([0, 1], "es:Let's start with the budget")


async def test_a_failing_language_is_reported_for_the_sentence_not_dropped(stack: Stack) -> None:
    url = await sentence_stack(stack)
    stack.translation.fail_languages = {"fr"}
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es", "fr"]})
        await c.recv()
        await speak(c, [1, 2, 3], gap=0.05)
        err = await c.until(lambda e: e["type"] == "error" and e.get("language") == "fr")
        assert (err["code"], err["sentenceId"], err["segmentId"]) == ("translation_failed", 0, 2)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert [(t["sentenceId"], t["language"]) for t in c.of("translation")] == [(0, "es")]


async def test_resume_between_a_preview_and_the_sentence(stack: Stack) -> None:
    url = await sentence_stack(stack)
    a = Client(url)
    await a.__aenter__()
    await a.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await a.recv())["sessionId"]
    await speak(a, [1, 2])
    await a.until(lambda e: e["type"] == "translation.partial" and e["segmentIds"] == [0, 1])
    drop(a)  # mid-sentence: a preview shown, the sentence not closed

    b = Client(url)
    await b.__aenter__()
    ack = max(e["segmentId"] for e in a.of("transcript.final"))
    await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": ack})
    assert (await b.recv())["resumed"] is True
    await speak(b, [3, 0])
    await b.send_json({"type": "session.end"})
    await b.until(lambda e: e["type"] == "session.ended")
    await b.__aexit__()

    finals = [f["segmentId"] for c in (a, b) for f in c.of("transcript.final")]
    assert finals == sorted(set(finals))  # no final twice
    translations = [(t["sentenceId"], tuple(t["segmentIds"])) for c in (a, b) for t in c.of("translation")]
    # The drop ended the utterance (the gateway flushes the audio of a dropped connection), so the
    # sentence heard so far closed and was translated once, delivered on resume; the new audio is
    # the next sentence.
    assert translations == [(0, (0, 1)), (1, (2,))]
    assert len(set(translations)) == len(translations)


async def test_sentences_survive_the_replica_they_started_on(stack: Stack, redis_url: str) -> None:
    url_one = await sentence_stack(stack, redis_url=redis_url)
    two = await stack.make_gateway(redis_url=redis_url)
    a = Client(url_one)
    await a.__aenter__()
    await a.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await a.recv())["sessionId"]
    await speak(a, [1, 2, 3, 4])  # sentence 0 closed and translated, sentence 1 open
    await a.until(lambda e: e["type"] == "translation.partial" and e["sentenceId"] == 1)
    drop(a)
    await asyncio.sleep(0.5)
    await stack.gateways[-2].stop()  # the first replica goes away (a rollout) after its flush

    b = Client(two.url.replace("http://", "ws://") + "/v1/stream")
    await b.__aenter__()
    ack = max(e["segmentId"] for e in a.of("transcript.final"))
    await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": ack})
    assert (await b.recv())["resumed"] is True
    await speak(b, [5, 0])
    await b.send_json({"type": "session.end"})
    await b.until(lambda e: e["type"] == "session.ended")
    await b.__aexit__()

    got = [(t["sentenceId"], t["segmentIds"]) for c in (a, b) for t in c.of("translation")]
    assert got == [(0, [0, 1, 2]), (1, [3]), (2, [4])]
    # Sentence 2's context came from the log in Redis: the two sentences before it.
    last = next(r for r in stack.translation.requests if r.segmentId == 2 and not r.partial)
    assert [c.source for c in last.context] == [
        "Good morning, everyone, and thanks for joining us.",
        "Let's start",
    ]


async def test_auto_source_translates_each_sentence_from_its_detected_language(stack: Stack) -> None:
    # A bilingual meeting: English, then Spanish inside the same utterance, then English again.
    stack.audio.utterance_per_block = False
    stack.audio.texts = {1: "Good morning", 2: "buenos días a todos.", 3: "Let's begin."}
    stack.audio.languages = {1: "en", 2: "es", 3: "en"}
    server = await stack.make_gateway(source_language="auto", target_languages=["es", "en"])
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "sourceLanguage": "auto"})
        await c.recv()
        await speak(c, [1, 2, 3, 0], gap=0.7)
        await c.until(lambda e: e["type"] == "translation" and e["sentenceId"] == 2 and e["language"] == "en")
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")

    assert [(f["text"], f["language"]) for f in c.of("transcript.final")] == [
        ("Good morning", "en"),
        ("buenos días a todos.", "es"),
        ("Let's begin.", "en"),
    ]
    got = {
        (t["sentenceId"], t["language"]): (t["segmentIds"], t["text"], t["quality"])
        for t in c.of("translation")
    }
    # the language change closed the English sentence before the Spanish final joined it; each
    # sentence went to the engine from its own language, and the language it was spoken in is
    # its transcript, not a translation
    assert got == {
        (0, "es"): ([0], "es:Good morning", "ok"),
        (0, "en"): ([0], "Good morning", "source"),
        (1, "es"): ([1], "buenos días a todos.", "source"),
        (1, "en"): ([1], "en:buenos días a todos.", "ok"),
        (2, "es"): ([2], "es:Let's begin.", "ok"),
        (2, "en"): ([2], "Let's begin.", "source"),
    }
    whole = [r for r in stack.translation.requests if not r.partial]
    assert [(r.sourceLanguage, r.targetLanguages) for r in whole] == [
        ("en", ["es"]),
        ("es", ["en"]),
        ("en", ["es"]),
    ]
    assert all(r.sourceLanguage != "auto" for r in stack.translation.requests)
