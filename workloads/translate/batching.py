"""Micro-batching with a bounded queue, and a circuit breaker per engine.

Segments from many sessions arrive one by one; an engine is far cheaper per segment when it gets
several at once (vLLM batches a prompt list on the GPU; a one-at-a-time server reads one shared
prompt). The batcher holds each segment for at most a short window, groups what arrived by
(source, target, model), and sends groups of up to ``max_batch``. The queue is bounded: when it is
full the service says so (HTTP 429 with Retry-After) instead of letting latency grow without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..resilience import CircuitBreaker
from .engines import Engine, EngineError, Output
from .quality import Job

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"translation queue full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class CircuitOpen(EngineError):
    pass


@dataclass
class _Item:
    job: Job
    model: str | None
    attempt: int
    future: asyncio.Future[Output | BaseException]
    enqueued: float = field(default_factory=time.monotonic)


BatchObserver = Callable[[str, int, float], None]


class MicroBatcher:
    """Groups jobs for one engine into batches; one instance per engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        window_ms: float,
        max_batch: int,
        max_queue: int,
        max_inflight: int,
        breaker: CircuitBreaker,
        on_batch: BatchObserver | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.breaker = breaker
        self.max_inflight = max_inflight
        self.on_batch = on_batch
        self.on_depth = on_depth
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending = 0  # queued + waiting for a dispatch slot
        self._slots = asyncio.Semaphore(max_inflight)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._batch_seconds = 0.5  # running estimate, for Retry-After
        self._busy_done = 0.0  # slot-seconds of finished engine calls
        self._busy_since: dict[object, float] = {}  # calls in flight: when each started

    @property
    def depth(self) -> int:
        return self._pending

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.engine.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._inflight):
            t.cancel()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_result(EngineError("service shutting down"))

    def busy_seconds(self, now: float) -> float:
        """Slot-seconds spent in engine calls so far, those still running counted up to ``now``
        (so an interval's utilisation does not wait for a long call to end)."""
        return self._busy_done + sum(max(0.0, now - t) for t in self._busy_since.values())

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained enough to take new work."""
        batches = self._pending / max(1, self.max_batch)
        return max(1.0, round(batches * self._batch_seconds))

    def reserve(self, n: int) -> None:
        """Admission control for a whole request: all its targets are admitted or none."""
        if self._pending + n > self.max_queue:
            raise QueueFull(self.retry_after())

    def submit(
        self, job: Job, model: str | None, attempt: int = 0, *, admitted: bool = False
    ) -> Awaitable[Output | BaseException]:
        if not admitted:
            self.reserve(1)
        fut: asyncio.Future[Output | BaseException] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._report_depth()
        self._queue.put_nowait(_Item(job, model, attempt, fut))
        return fut

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self._pending)

    def _add(self, groups: dict[tuple[str, str, str | None, int], list[_Item]], item: _Item) -> bool:
        """Put an item in its group; True when that group is a full batch."""
        key = (item.job.source, item.job.target, item.model, item.attempt)
        group = groups.setdefault(key, [])
        group.append(item)
        return len(group) >= self.max_batch

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            # Wait for engine capacity before forming the batch: while every slot is busy, segments
            # keep queueing and the next batch grows with the load (adaptive batching).
            await self._slots.acquire()
            groups: dict[tuple[str, str, str | None, int], list[_Item]] = {}

            full = self._add(groups, first)
            deadline = time.monotonic() + self.window
            while not full:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                full = self._add(groups, item)
            # Drain what is already queued without waiting: under load the window never idles.
            while not self._queue.empty():
                self._add(groups, self._queue.get_nowait())
            chunks = [
                items[i : i + self.max_batch]
                for items in groups.values()
                for i in range(0, len(items), self.max_batch)
            ]
            for n, chunk in enumerate(chunks):
                if n > 0:
                    await self._slots.acquire()
                task = asyncio.create_task(self._dispatch(chunk))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _dispatch(self, items: list[_Item]) -> None:
        started = time.monotonic()
        call = object()
        self._busy_since[call] = started
        try:
            if not self.breaker.allow():
                outcomes: list[Output | BaseException] = [
                    CircuitOpen(f"{self.engine.name}: circuit open after repeated failures")
                ] * len(items)
            else:
                try:
                    outcomes = await self.engine.translate(
                        [i.job for i in items], items[0].model, attempt=items[0].attempt
                    )
                except BaseException as exc:  # delivered to each waiter
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    outcomes = [exc] * len(items)
                if any(isinstance(o, Output) for o in outcomes) or not outcomes:
                    self.breaker.success()
                elif all(isinstance(o, EngineError) for o in outcomes):
                    self.breaker.failure()
            elapsed = time.monotonic() - started
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
            if self.on_batch is not None:
                self.on_batch(self.engine.name, len(items), elapsed)
            for item, outcome in zip(items, outcomes, strict=False):
                if not item.future.done():
                    item.future.set_result(outcome)
        finally:
            del self._busy_since[call]
            self._busy_done += time.monotonic() - started
            for item in items:
                if not item.future.done():
                    item.future.set_result(EngineError("batch dispatch was interrupted"))
            self._pending -= len(items)
            self._report_depth()
            self._slots.release()
