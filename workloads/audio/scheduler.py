"""The shared decode queue: one loaded model, many sessions, fair turns, bounded backlog.

Every session has at most one decoder pass in flight (its streaming state asks for the next one
only after the previous result was applied), so a plain FIFO of jobs is round-robin across
sessions: a busy session cannot starve a quiet one. Worker threads run the jobs; CTranslate2
releases the GIL, so N workers use N cores (its ``num_workers`` is set to the same N so the model
really decodes N buffers at once). When the queue is full, ``submit`` refuses at once and the
session reports ``overloaded``: its audio keeps accumulating and the next pass covers it, which
sheds load as longer, rarer passes instead of an unbounded queue. A free worker takes every
waiting pass that can share its call (same engine, same prompt) up to ``max_batch``: batching
across sessions appears exactly when load makes it pay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Overloaded(RuntimeError):
    """The shared queue is full."""


@dataclass
class _Job:
    fn: Callable[[], Any] | None
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    # Batchable jobs: batch_fn(items) -> results, for jobs with an equal batch_fn and key.
    batch_fn: Callable[[list[Any]], list[Any]] | None = None
    key: Hashable = None
    item: Any = None
    urgent: bool = False


class DecodeScheduler:
    def __init__(
        self,
        workers: int,
        max_queue: int,
        max_batch: int = 8,
        on_depth: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._on_depth = on_depth or (lambda _n: None)
        self._on_batch = on_batch or (lambda _n: None)
        self._jobs: deque[_Job] = deque()
        self._ready = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lt-decode")
        self._tasks: list[asyncio.Task[None]] = []
        self.busy = 0
        self.batches = 0
        self.batched_items = 0

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"decode-worker-{i}") for i in range(self.workers)
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _enqueue(self, job: _Job) -> None:
        if len(self._jobs) >= self.max_queue:
            raise Overloaded(f"decode queue full ({self.max_queue} waiting)")
        if job.urgent:
            # Ahead of every waiting job that is not urgent, behind the urgent ones (FIFO).
            at = next((i for i, j in enumerate(self._jobs) if not j.urgent), len(self._jobs))
            self._jobs.insert(at, job)
        else:
            self._jobs.append(job)
        self._ready.set()
        self._on_depth(len(self._jobs))

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for a worker thread; raises Overloaded when the queue is full."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Job(fn, future))
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        return await self.submit(fn)

    async def run_batched(
        self, batch_fn: Callable[[list[Any]], list[T]], key: Hashable, item: Any, urgent: bool = False
    ) -> T:
        """Run ``batch_fn`` over this item and any others queued with the same function and key.

        Batches form only from work that is already waiting, so a lone session never waits for
        company: under light load every pass runs alone at once, under heavy load passes share
        one encoder/decoder call (dynamic batching). ``urgent`` work (a pass that finalises an
        utterance someone finished saying) goes ahead of refreshes of partials: under load
        those only get a little staler, while a final waited for is latency a user sees.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Job(None, future, batch_fn=batch_fn, key=key, item=item, urgent=urgent))
        return await future

    def _take(self) -> list[_Job]:
        job = self._jobs.popleft()
        batch = [job]
        if job.batch_fn is not None:
            for other in list(self._jobs):
                if len(batch) >= self.max_batch:
                    break
                if other.batch_fn == job.batch_fn and other.key == job.key:
                    self._jobs.remove(other)
                    batch.append(other)
        if not self._jobs:
            self._ready.clear()
        self._on_depth(len(self._jobs))
        return [j for j in batch if not j.future.cancelled()]

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            if not self._jobs:
                self._ready.clear()
                continue
            batch = self._take()
            if not batch:
                continue
            head = batch[0]
            self.busy += 1
            try:
                if head.batch_fn is not None:
                    fn = head.batch_fn
                    items = [j.item for j in batch]
                    results = await loop.run_in_executor(self._pool, lambda f=fn, i=items: f(i))  # type: ignore[misc]
                    self.batches += 1
                    self.batched_items += len(batch)
                    self._on_batch(len(batch))
                else:
                    assert head.fn is not None
                    results = [await loop.run_in_executor(self._pool, head.fn)]
            except asyncio.CancelledError:
                for j in batch:
                    if not j.future.done():
                        j.future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the sessions that asked for it
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
            else:
                for j, r in zip(batch, results, strict=True):
                    if not j.future.done():
                        j.future.set_result(r)
            finally:
                self.busy -= 1
