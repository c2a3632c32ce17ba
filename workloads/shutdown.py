"""Drain on SIGTERM, then exit: shared by the services whose replicas hand live streams over.

Kubernetes removes a pod by sending SIGTERM and killing it ``terminationGracePeriodSeconds``
later. Uvicorn's own handler closes every socket at once, cutting each stream wherever its speaker
is; a service that can hand its streams to another replica installs this instead, and exits when
its drain says it has finished.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol


class Drainable(Protocol):
    """A replica's drain: started once, telling its listeners when it has finished."""

    def start(self, reason: str) -> bool: ...

    def on_finished(self, callback: Callable[[], None]) -> None: ...


def install_sigterm(drain: Drainable) -> Callable[[], None]:
    """Drain on SIGTERM, then exit; returns what undoes it (at the app's shutdown).

    Installed from the app's lifespan, that is after uvicorn's own handler, which it keeps: when
    the drain has finished, the uvicorn server it belongs to is told to exit (its shutdown then
    finds no connection left). A second SIGTERM exits at once. Outside uvicorn, the previous
    handler (or the default action) runs once the drain has finished.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    got_signal = False

    def exit_now() -> None:
        server = getattr(previous, "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True  # uvicorn.Server: a graceful shutdown, exit status 0
            return
        if not got_signal:
            return  # drained by request under some other server: stay up, not ready
        restore()
        if callable(previous):
            previous(signal.SIGTERM, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal got_signal
        if loop.is_closed():  # left behind by a server that is gone: act as if never installed
            signal.signal(signal.SIGTERM, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGTERM)
            return
        again, got_signal = got_signal, True
        loop.call_soon_threadsafe(exit_now if again else lambda: drain.start("SIGTERM"))

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    drain.on_finished(exit_now)
    signal.signal(signal.SIGTERM, on_sigterm)
    return restore
