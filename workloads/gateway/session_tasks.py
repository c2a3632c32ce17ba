"""A session's background tasks, under one ``asyncio.TaskGroup`` (``SessionTasks``).

A session starts in one call (``Session.start``, from its connection's receive loop) and ends in
another (``finish`` or ``abort``, after a ``session.end`` or a dropped socket), so no single
``async with`` spans its life. A task of its own, made in the connection's TaskGroup, holds the
session's group open between the two. So a task that fails is not lost: the group cancels its
siblings and the session hears of it (``on_failure``); and no task outlives the session, nor the
session its connection, whose group waits for this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

OnFailure = Callable[[BaseExceptionGroup[Exception]], None]


def _ignore(failure: BaseExceptionGroup[Exception]) -> None:
    return None


class SessionTasks:
    """The tasks of session ``sid``, each named ``<role>-<sid>``, in one TaskGroup."""

    def __init__(self, sid: str, on_failure: OnFailure) -> None:
        self.sid = sid
        self._on_failure = on_failure
        self._group: asyncio.TaskGroup | None = None  # while tasks may still join it
        self._holder: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._closing = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def get(self, role: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(role)

    async def open(self, parent: asyncio.TaskGroup, work: dict[str, Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` (role -> coroutine) in the session's group; returns once its tasks exist."""
        self._holder = parent.create_task(self._hold(work), name=f"session-{self.sid}")
        await self._opened.wait()

    async def _hold(self, work: dict[str, Coroutine[Any, Any, None]]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for role, coro in work.items():
                    self._tasks[role] = group.create_task(coro, name=f"{role}-{self.sid}")
                self._opened.set()
                await self._closing.wait()
                self._group = None
                for task in self._tasks.values():
                    task.cancel()
        except* Exception as failure:  # noqa: BLE001 - any failure ends the session, not the server
            self._on_failure(failure)
        finally:
            self._group = None
            self._opened.set()
            for coro in work.values():
                coro.close()  # any the group never got to start (a no-op for the others)

    def spawn(self, role: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """One more task in the group; None (and ``coro`` closed) once the group is ending."""
        try:
            if self._group is None:
                raise RuntimeError("the session's tasks are ending")
            task = self._group.create_task(coro, name=f"{role}-{self.sid}")
        except RuntimeError:  # ending, or the group is cancelling its tasks after a failure
            coro.close()
            return None
        self._tasks[role] = task
        return task

    async def close(self, timeout: float | None = None) -> bool:
        """Cancel every task and wait for the group to end, ``timeout`` at most: False if it has not
        (its connection's group still waits for it)."""
        holder = self._holder
        if holder is None:
            return True
        self._group = None
        self._closing.set()
        if asyncio.current_task() in self._tasks.values():
            return holder.done()  # one of ours: waiting here would wait for ourselves
        return bool((await asyncio.wait({holder}, timeout=timeout))[0])

    def release(self) -> None:
        """After the session ended: forget the finished tasks (a task that failed holds a traceback
        whose frames hold the session; see ``Connection._release``)."""
        self._tasks = {}
        self._holder = None
        self._on_failure = _ignore
