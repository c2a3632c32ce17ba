"""The shared decode queue: batching across sessions, fair turns, and refusal when full."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from livetranslate.workloads.audio.scheduler import DecodeScheduler, Overloaded


async def test_waiting_work_is_batched_and_a_lone_item_is_not_delayed() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def batch(items: list[int]) -> list[int]:
        gate.wait(5)
        calls.append(items)
        return [i * 10 for i in items]

    sizes: list[int] = []
    sched = DecodeScheduler(workers=1, max_queue=64, max_batch=4, on_batch=sizes.append)
    sched.start()
    try:
        first = asyncio.create_task(sched.run_batched(batch, "k", 0))  # occupies the only worker
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(sched.run_batched(batch, "k", i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await first == 0
        assert [await r for r in rest] == [10, 20, 30, 40, 50]
        assert calls == [[0], [1, 2, 3, 4], [5]]  # waiting items shared calls, at most max_batch
        assert sizes == [1, 4, 1]  # what livetranslate_audio_batch_size observes
        t0 = time.monotonic()
        assert await sched.run_batched(batch, "k", 7) == 70  # alone: runs at once
        assert time.monotonic() - t0 < 1.0
    finally:
        await sched.stop()


async def test_different_keys_never_share_a_call() -> None:
    seen: list[tuple[str, ...]] = []

    def batch(items: list[str]) -> list[str]:
        seen.append(tuple(items))
        time.sleep(0.05)
        return items

    sched = DecodeScheduler(workers=1, max_queue=64)
    sched.start()
    try:
        await asyncio.gather(*(sched.run_batched(batch, k, f"{k}{i}") for i in range(3) for k in ("a", "b")))
        assert all(len({x[0] for x in call}) == 1 for call in seen)
    finally:
        await sched.stop()


async def test_a_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    sched = DecodeScheduler(workers=1, max_queue=2)
    sched.start()
    try:
        busy = sched.submit(lambda: gate.wait(5))
        await asyncio.sleep(0.05)
        queued = [sched.submit(lambda: True) for _ in range(2)]
        with pytest.raises(Overloaded):
            sched.submit(lambda: True)
        gate.set()
        await busy
        assert [await q for q in queued] == [True, True]
    finally:
        await sched.stop()


async def test_an_exception_reaches_only_its_caller() -> None:
    sched = DecodeScheduler(workers=2, max_queue=8)
    sched.start()
    try:

        def boom() -> int:
            raise RuntimeError("bad buffer")

        bad = sched.submit(boom)
        good = sched.submit(lambda: 1)
        with pytest.raises(RuntimeError, match="bad buffer"):
            await bad
        assert await good == 1
    finally:
        await sched.stop()


async def test_urgent_work_goes_ahead_of_waiting_refreshes_in_its_own_order() -> None:
    order: list[str] = []
    gate = threading.Event()

    def one(name: str) -> str:
        gate.wait(5)
        order.append(name)
        return name

    sched = DecodeScheduler(workers=1, max_queue=64, max_batch=1)
    sched.start()
    try:
        busy = asyncio.create_task(sched.run_batched(lambda i: [one(i[0])], "k", "busy"))
        await asyncio.sleep(0.05)
        tasks = [
            asyncio.create_task(sched.run_batched(lambda i: [one(i[0])], "k", name, urgent=urgent))
            for name, urgent in (("p1", False), ("p2", False), ("f1", True), ("f2", True))
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(busy, *tasks)
        assert order == ["busy", "f1", "f2", "p1", "p2"]
    finally:
        await sched.stop()
