"""Micro-batching, backpressure and the circuit breaker, with an engine that records its calls."""

from __future__ import annotations

import asyncio

import pytest

from livetranslate.workloads.resilience import CircuitBreaker
from livetranslate.workloads.translate.batching import CircuitOpen, MicroBatcher, QueueFull
from livetranslate.workloads.translate.engines import Engine, EngineError, Output
from livetranslate.workloads.translate.quality import Job


class Recorder(Engine):
    name = "recorder"

    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[list[Job]] = []
        self.delay = delay
        self.fail = fail

    async def translate(
        self, jobs: list[Job], model: str | None, *, attempt: int = 0
    ) -> list[Output | BaseException]:
        self.calls.append(jobs)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise EngineError("engine down")
        return [Output(f"{j.target}:{j.text}") for j in jobs]


def batcher(engine: Engine, **kw: float) -> MicroBatcher:
    return MicroBatcher(
        engine,
        window_ms=kw.get("window_ms", 20),
        max_batch=int(kw.get("max_batch", 8)),
        max_queue=int(kw.get("max_queue", 100)),
        max_inflight=2,
        breaker=CircuitBreaker("recorder", 2, 60),
    )


async def test_segments_from_many_sessions_share_batches_per_language() -> None:
    engine = Recorder()
    b = batcher(engine, max_batch=8)
    b.start()
    try:
        futs = [
            b.submit(Job(f"s{i}", "en", lang, session_id=f"sess{i}"), None)
            for i in range(20)
            for lang in ("es", "de")
        ]
        outs = await asyncio.gather(*futs)
    finally:
        await b.close()
    assert [o.text for o in outs if isinstance(o, Output)] == [
        f"{lang}:s{i}" for i in range(20) for lang in ("es", "de")
    ]
    assert all(len({j.target for j in call}) == 1 for call in engine.calls)  # one language per batch
    assert max(len(c) for c in engine.calls) == 8 and len(engine.calls) == 6
    assert b.depth == 0


async def test_bounded_queue_refuses_instead_of_growing() -> None:
    engine = Recorder(delay=0.2)
    b = batcher(engine, max_queue=4)
    b.start()
    try:
        futs = [b.submit(Job("x", "en", "es"), None) for _ in range(4)]
        with pytest.raises(QueueFull) as err:
            b.submit(Job("y", "en", "es"), None)
        assert err.value.retry_after >= 1
        await asyncio.gather(*futs)
        b.submit(Job("z", "en", "es"), None)  # room again once drained
    finally:
        await b.close()


async def test_breaker_opens_after_failures_and_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker("e", failures=2, reset_seconds=10, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 11
    assert breaker.state == "half_open" and breaker.allow() and not breaker.allow()
    breaker.failure()  # the trial failed: open again for another reset period
    assert breaker.state == "open"
    now[0] = 22
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"


async def test_failing_engine_trips_the_breaker_for_later_batches() -> None:
    engine = Recorder(fail=True)
    b = batcher(engine, window_ms=0)
    b.start()
    try:
        for _ in range(2):
            out = await b.submit(Job("x", "en", "es"), None)
            assert isinstance(out, EngineError) and not isinstance(out, CircuitOpen)
        out = await b.submit(Job("x", "en", "es"), None)
        assert isinstance(out, CircuitOpen)
        assert len(engine.calls) == 2
    finally:
        await b.close()


async def test_waiters_wake_when_a_trial_closes_the_circuit_not_a_period_later() -> None:
    breaker = CircuitBreaker("e", failures=1, reset_seconds=0.3)
    breaker.failure()
    assert breaker.state == "open" and 0.2 < breaker.retry_in() <= 0.3
    loop = asyncio.get_running_loop()
    began = loop.time()
    await breaker.wait_ready()  # nobody closes it: wakes when the trial is due
    assert breaker.allow() and 0.25 <= loop.time() - began < 1.0
    assert not breaker.allow() and breaker.retry_in() > 0.2  # the trial is out; others wait
    waiter = asyncio.create_task(breaker.wait_ready())
    await asyncio.sleep(0.05)
    began = loop.time()
    breaker.success()  # the trial succeeded: the waiter goes at once
    await waiter
    assert loop.time() - began < 0.1 and breaker.retry_in() == 0.0 and breaker.allow()


async def test_a_caller_backing_off_wakes_when_another_call_succeeds() -> None:
    # A session that failed once (circuit still closed, or a failed trial) backs off; it must not
    # sleep out its whole backoff once another session's call gets through.
    breaker = CircuitBreaker("e", failures=3, reset_seconds=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await breaker.pause(0.2, jitter=0.0)  # nobody succeeds: the whole backoff
    assert 0.19 <= loop.time() - began < 0.5
    breaker.failure()
    backing_off = [asyncio.create_task(breaker.pause(30.0, jitter=0.01)) for _ in range(3)]
    await asyncio.sleep(0.05)
    began = loop.time()
    breaker.success()
    await asyncio.gather(*backing_off)
    assert loop.time() - began < 0.5
    breaker.success()  # a success with no failure before it wakes nothing, and later pauses wait
    began = loop.time()
    await breaker.pause(0.1, jitter=0.0)
    assert loop.time() - began >= 0.09
