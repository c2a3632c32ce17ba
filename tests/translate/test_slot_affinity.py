"""Slot affinity for llama.cpp's llama-server: each (session, language) stream of prompts keeps
one slot, so the slot's cached prompt is that session's and only the new line is processed."""

from __future__ import annotations

import pytest

from livetranslate.protocol import ContextSegment
from livetranslate.workloads.translate.engines import OpenAIEngine, SlotMap
from livetranslate.workloads.translate.quality import Job, build_prompt
from livetranslate.workloads.translate.settings import OpenAISettings

from .conftest import GEMMA_MAIN, FakeLlamaServer, LlamaServer, engine_with


def test_streams_own_a_slot_each_then_share_them_evenly() -> None:
    slots = SlotMap(3)
    first = [slots.slot(f"s{i}", "es") for i in range(3)]
    assert first == [0, 1, 2]
    assert slots.slot("s1", "es") == 1  # a known stream keeps its slot
    assert slots.slot("s1", "de") == 0  # another language is another prompt stream
    assert sorted(slots.slot(f"t{i}", "es") for i in range(2)) == [1, 2]  # the least loaded first
    with pytest.raises(ValueError):
        SlotMap(0)


def test_streams_not_heard_from_are_forgotten_and_free_their_slot() -> None:
    slots = SlotMap(2)
    for i in range(8):  # 4 x slots streams remembered
        slots.slot(f"s{i}", "es")
    slots.slot("s0", "es")  # s0 is recent again; s1 is now the oldest
    slots.slot("new", "es")  # forgets s1
    assert ("s1", "es") not in slots._of and ("s0", "es") in slots._of
    assert sum(slots._load) == 8 and max(slots._load) - min(slots._load) <= 1


async def test_requests_carry_the_sessions_slot_once_the_server_told_its_slot_count() -> None:
    server = FakeLlamaServer(slots=4)
    bodies = server.bodies
    engine = engine_with(server, slot_affinity=True)
    await engine.check()
    await engine.translate(
        [Job("Hello.", "en", "es", session_id="a"), Job("Hi.", "en", "es", session_id="b")], None
    )
    await engine.translate([Job("Again.", "en", "es", session_id="a", segment_id=1)], None)
    assert sorted(b["id_slot"] for b in bodies[:2]) == [0, 1]
    assert bodies[2]["id_slot"] == next(b["id_slot"] for b in bodies[:2] if "Hello." in b["prompt"])
    await engine.close()


async def test_a_server_without_a_slot_count_gets_unpinned_requests_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeLlamaServer(slots=None)
    engine = engine_with(server, slot_affinity=True)
    for _ in range(3):
        await engine.check()
    await engine.translate([Job("Hello.", "en", "es", session_id="a")], None)
    assert engine.slot_map is None and "id_slot" not in server.bodies[0] and server.props_asked == 1
    assert sum("slot affinity" in r.message for r in caplog.records) == 1
    off = engine_with(server)  # the default: nothing asked, nothing pinned
    await off.check()
    assert server.props_asked == 1
    await engine.close()
    await off.close()


async def test_a_server_not_up_yet_is_asked_for_its_slots_again_at_the_next_check() -> None:
    server = FakeLlamaServer(slots=2)
    server.up = False
    engine = engine_with(server, slot_affinity=True)
    state = await engine.check()
    assert not state.ready and engine.slot_map is None
    server.up = True
    state = await engine.check()
    assert state.ready and engine.slot_map is not None and engine.slot_map.slots == 2
    await engine.close()


async def test_a_restarted_server_is_asked_for_its_slots_again_and_streams_keep_theirs_if_unchanged() -> None:
    server = FakeLlamaServer(slots=4)
    bodies = server.bodies
    engine = engine_with(server, slot_affinity=True)
    await engine.check()
    first = engine.slot_map
    await engine.translate(
        [Job("Hello.", "en", "es", session_id="a"), Job("Hi.", "en", "es", session_id="b")], None
    )
    # The server goes away: a failed request; it comes back with the same slot count.
    server.up = False
    [lost] = await engine.translate([Job("Lost.", "en", "es", session_id="a", segment_id=1)], None)
    assert isinstance(lost, BaseException) and engine.slot_map is not None
    server.up = True
    await engine.check()
    assert engine.slot_map is first  # same count: assignments kept
    # Down again; back with 2 slots (another --parallel): a new map within the new count.
    server.up = False
    [lost] = await engine.translate([Job("Lost.", "en", "es", session_id="a", segment_id=2)], None)
    assert isinstance(lost, BaseException) and engine.slot_map is not None
    server.up, server.slots = True, 2
    await engine.check()
    assert engine.slot_map is not first and engine.slot_map is not None and engine.slot_map.slots == 2
    await engine.translate([Job(f"S{i}.", "en", "es", session_id=f"s{i}") for i in range(3)], None)
    assert all(0 <= b["id_slot"] < 2 for b in bodies[-3:])
    await engine.close()


async def slot_tasks(engine: OpenAIEngine) -> dict[int, int | None]:
    """The last task each llama-server slot ran (``/slots``; absent on a slot never used)."""
    resp = await engine.client.get("/slots")
    return {s["id"]: s.get("id_task") for s in resp.json()}


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_pinned_session_runs_in_its_slot_and_reuses_its_cached_prompt(llama: LlamaServer) -> None:
    engine = OpenAIEngine(
        OpenAISettings(url=llama.url, model=GEMMA_MAIN, timeout_s=120.0, slot_affinity=True), 3
    )
    await engine.check()
    slot_map = engine.slot_map
    assert slot_map is not None and slot_map.slots == llama.slots
    for i in range(llama.slots - 1):  # other streams take the lower slots: this session gets the last
        slot_map.slot(f"other-{i}", "es")
    last = llama.slots - 1
    assert slot_map.slot("pin-a", "es") == last
    # Make that slot the one the server would pick last on its own: the most recently used, with
    # a prompt nothing like a translation prompt (it chooses by prompt similarity, then LRU).
    await engine.client.post(
        "/v1/completions",
        json={"model": GEMMA_MAIN, "prompt": "Zebra quartz", "max_tokens": 1, "id_slot": last},
    )
    tasks = await slot_tasks(engine)
    first = Job("We opened a new office in Madrid.", "en", "es", session_id="pin-a", segment_id=0)
    [out_a] = await engine.translate([first], None)
    assert not isinstance(out_a, BaseException)
    ran = {slot for slot, task in (await slot_tasks(engine)).items() if task != tasks.get(slot)}
    assert ran == {last}  # the server honoured the pin; left to itself it would not pick this slot
    nxt = Job(
        "It has room for forty people.",
        "en",
        "es",
        session_id="pin-a",
        segment_id=1,
        context=(ContextSegment(source=first.text, translations={"es": out_a.text.strip()}),),
    )
    tokenized = await engine.client.post("/tokenize", json={"content": build_prompt(nxt, 3).text})
    prompt_tokens = len(tokenized.json()["tokens"])
    before = llama.metrics()["llamacpp:prompt_tokens_total"]
    [out] = await engine.translate([nxt], None)
    processed = llama.metrics()["llamacpp:prompt_tokens_total"] - before
    assert not isinstance(out, BaseException) and out.text.strip()
    # The slot held the session's previous prompt and answer: most of this prompt was cached.
    assert processed < prompt_tokens / 2, (processed, prompt_tokens)
    await engine.close()
