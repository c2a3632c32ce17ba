"""What a client's events wait in, and the one way a session reaches its client's socket.

``SendQueue`` holds events until the socket takes them: partials are superseded by newer ones,
nothing else is dropped. ``Outbox`` is what a ``Session`` (and its translator) may do to the
client: queue an event, or ask for the connection to close. The ``Connection`` owns both and
does the sending; neither holds a reference to it beyond a close hook it clears when done.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from livetranslate.protocol import ERR_UPSTREAM, ErrorEvent

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_RESTART = 1012
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013

OnSent = Callable[[], Awaitable[None]] | None


class SendQueue:
    """Events waiting for a client. Partials are superseded by newer ones; nothing else is dropped.

    ``limit`` bounds what a slow client can make us hold: past it, queued partials go first; if
    finals and translations alone still exceed ``hard_limit`` the client is declared stuck.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.hard_limit = limit * 4
        self._items: collections.deque[tuple[str, str, OnSent]] = collections.deque()
        self._ready = asyncio.Event()
        self._busy = False  # an event taken by the sender and not yet done (sent, on_sent run)
        self.dropped_partials = 0

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, kind: str, text: str, on_sent: OnSent = None) -> bool:
        """False when the client is stuck (too many events it must not lose are waiting)."""
        if kind.startswith("partial"):
            kept = [item for item in self._items if item[0] != kind]
            self.dropped_partials += len(self._items) - len(kept)
            self._items = collections.deque(kept)
        self._items.append((kind, text, on_sent))
        if len(self._items) > self.limit:
            kept = [item for item in self._items if not item[0].startswith("partial")]
            self.dropped_partials += len(self._items) - len(kept)
            self._items = collections.deque(kept)
        self._ready.set()
        return len(self._items) <= self.hard_limit

    async def get(self) -> tuple[str, str, OnSent]:
        """The next event; the sender calls ``done`` once it is sent and its ``on_sent`` ran."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._busy = True
        return self._items.popleft()

    def done(self) -> None:
        self._busy = False

    def clear(self) -> None:
        """Forget what a closed connection can no longer be sent (the session log keeps the
        finals and translations for a resume)."""
        self._items.clear()

    async def drained(self, timeout: float) -> bool:
        """Until every queued event is sent and recorded as sent (a handover must not leave the
        next replica to guess whether the last one reached the client), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while (self._items or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not (self._items or self._busy)


class Outbox:
    """A session's narrow way to its client: ``send`` an event, ``close`` the connection."""

    def __init__(self, limit: int, on_close: Callable[[], None] | None = None) -> None:
        self.queue = SendQueue(limit)
        self.close_request: tuple[int, str] | None = None  # the first reason given wins
        self.on_close = on_close

    def send(self, kind: str, event: BaseModel, on_sent: OnSent = None) -> None:
        """Queue an event; ``kind`` "partial" (a transcript) and "partial:<lang>" (a sentence's
        translation so far) are superseded by the next event of the same kind."""
        if not self.queue.put(kind, event.model_dump_json(exclude_none=True), on_sent):
            self.close(CLOSE_POLICY, "client too slow: send queue full")

    def close(self, code: int, reason: str) -> None:
        if self.close_request is None:
            self.close_request = (code, reason)
            log.info("closing connection", extra={"fields": {"code": code, "reason": reason}})
        if self.on_close is not None:
            self.on_close()


class Outages:
    """Tells a session's client once that an upstream is away, not on every retry; logs its return."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._reported = {"audio": False, "translation": False}

    def report(self, upstream: str, detail: str) -> None:
        if not self._reported[upstream]:
            self._reported[upstream] = True
            log.warning("upstream unavailable", extra={"fields": {"upstream": upstream, "error": detail}})
            what = (
                "audio is buffered and replayed when it returns"
                if upstream == "audio"
                else "translations are retried when it returns"
            )
            self.outbox.send(
                "error",
                ErrorEvent(code=ERR_UPSTREAM, message=f"{upstream} service unavailable ({detail}); {what}"),
            )

    def recovered(self, upstream: str) -> None:
        if self._reported[upstream]:
            self._reported[upstream] = False
            log.info("upstream recovered", extra={"fields": {"upstream": upstream}})
