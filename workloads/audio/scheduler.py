"""The shared decode queue: one loaded model, many sessions, fair turns, bounded backlog.

Every session has at most one decoder pass in flight (its streaming state asks for the next one
only after the previous result was applied), so a plain FIFO of jobs is round-robin across
sessions: a busy session cannot starve a quiet one. Worker threads run the jobs; CTranslate2
releases the GIL, so N workers use N cores (its ``num_workers`` is set to the same N so the model
really decodes N buffers at once). When the queue is full, ``submit`` refuses at once and the
session reports ``overloaded``: its audio keeps accumulating and the next pass covers it, which
sheds load as longer, rarer passes instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Overloaded(RuntimeError):
    """The shared queue is full."""


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class DecodeScheduler:
    def __init__(self, workers: int, max_queue: int,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self._on_depth = on_depth or (lambda _n: None)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lt-decode")
        self._tasks: list[asyncio.Task[None]] = []
        self.busy = 0
        self.wait_seconds_total = 0.0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i), name=f"decode-worker-{i}")
                       for i in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for a worker thread; raises Overloaded when the queue is full."""
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"decode queue full ({self.max_queue} waiting)")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(fn, future))
        self._on_depth(self._queue.qsize())
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        return await self.submit(fn)

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            self._on_depth(self._queue.qsize())
            if job.future.cancelled():
                continue
            self.wait_seconds_total += time.monotonic() - job.enqueued
            self.busy += 1
            try:
                result = await loop.run_in_executor(self._pool, job.fn)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the session that asked for it
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self.busy -= 1
