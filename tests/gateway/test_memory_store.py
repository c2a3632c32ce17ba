"""The in-memory session store: a log that is a copy, bounded, and invisible to the cyclic GC."""

from __future__ import annotations

import gc

from livetranslate.workloads.gateway.sessions import MemorySessionStore, SegmentRecord


def record(seg_id: int) -> SegmentRecord:
    return SegmentRecord(
        segmentId=seg_id,
        text=f"segment {seg_id}",
        start=float(seg_id),
        end=seg_id + 1.0,
        speaker="S1",
        translations={"es": f"segmento {seg_id}"},
    )


async def test_the_log_keeps_what_was_written_not_what_the_caller_changes_later() -> None:
    store = MemorySessionStore(max_segments=4)
    rec = record(0)
    await store.put_segment("s", rec)
    rec.translations["de"] = "Segment 0"
    rec.translationsSent.append("es")
    (stored,) = await store.segments("s")
    assert stored.translations == {"es": "segmento 0"} and stored.translationsSent == []
    stored.translations.clear()  # nor what a reader does with its copy
    assert (await store.segments("s"))[0].translations == {"es": "segmento 0"}
    # A rewrite (delivery flags) replaces the entry; the log keeps the newest max_segments.
    rec.finalSent = True
    await store.put_segment("s", rec)
    for i in range(1, 7):
        await store.put_segment("s", record(i))
    assert [s.segmentId for s in await store.segments("s")] == [3, 4, 5, 6]


async def test_a_full_log_adds_no_objects_for_the_garbage_collector_to_walk() -> None:
    # 1,000 sessions with full logs held 2 million tracked objects as models: a 0.5 s pause on
    # every full collection of a live gateway. Stored as JSON they add none per segment.
    store = MemorySessionStore(max_segments=512)
    gc.collect()
    before = len(gc.get_objects())
    for sid in range(20):
        for i in range(200):
            await store.put_segment(f"s{sid}", record(i))
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # the per-session dicts, not 4,000 segments
