"""A session task that fails unexpectedly ends its own session, and nothing else.

A session's tasks (its audio stream with the stream's writer and reader, its translator, its lease,
a handover) run in one TaskGroup (workloads/gateway/session_tasks.py). A bug in one of them must
neither vanish (a session left running without, say, its lease) nor reach the server: the client
gets ``internal_error`` and a close, the session is saved for a resume, every task of the session
is gone, and the other sessions on the replica go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from livetranslate.protocol import ERR_INTERNAL
from livetranslate.workloads.gateway.session import Session
from livetranslate.workloads.gateway.translator import SentenceTranslator
from tests.gateway.conftest import Client, Stack, block_audio

DOOMED, HEALTHY = "doomed-session", "healthy-session"


class Injected(RuntimeError):
    """The bug a test plants in one session's task."""


def plant(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the DOOMED session's ``where`` task fail; every other session runs as it would."""
    if where == "lease":
        lease_loop = Session._lease_loop

        async def failing_lease(self: Session) -> None:
            if self.sid != DOOMED:
                return await lease_loop(self)
            await asyncio.sleep(0.3)
            raise Injected("lease loop bug")

        monkeypatch.setattr(Session, "_lease_loop", failing_lease)
    elif where == "translate":
        run = SentenceTranslator.run

        async def failing_run(self: SentenceTranslator) -> None:
            if self.state.sessionId != DOOMED:
                return await run(self)
            await asyncio.sleep(0.3)
            raise Injected("translator bug")

        monkeypatch.setattr(SentenceTranslator, "run", failing_run)
    else:  # the audio stream's reader, inside the stream's own TaskGroup
        on_final = Session._on_final

        async def failing_final(self: Session, event: Any) -> None:
            if self.sid == DOOMED:
                raise Injected("final handling bug")
            await on_final(self, event)

        monkeypatch.setattr(Session, "_on_final", failing_final)


def pending(sid: str) -> set[str]:
    """Names of the tasks of session ``sid`` that are still there (named ``<role>-<sid>``)."""
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().endswith(f"-{sid}") and not t.done()}


@pytest.mark.parametrize("where", ["lease", "translate", "audio-read"])
async def test_failed_task_ends_its_session_only(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    plant(monkeypatch, where)
    gw = stack.gateways[0].app.state.gateway
    caplog.set_level(logging.ERROR, logger="livetranslate.workloads.gateway.session")
    async with Client(stack.ws_url) as healthy, Client(stack.ws_url) as doomed:
        await healthy.send_json({"type": "session.start", "sessionId": HEALTHY, "targetLanguages": ["es"]})
        await healthy.until(lambda e: e["type"] == "session.started")
        await doomed.send_json({"type": "session.start", "sessionId": DOOMED, "targetLanguages": ["es"]})
        await doomed.until(lambda e: e["type"] == "session.started")
        await doomed.send_audio(block_audio([1, 2]))
        await healthy.send_audio(block_audio([1]))
        await healthy.until(lambda e: e["type"] == "translation")

        error = await doomed.until(lambda e: e["type"] == "error" and e["code"] == ERR_INTERNAL)
        assert "resume" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await doomed.until(lambda e: False, timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        for _ in range(100):
            if not any(s.sid == DOOMED for s in gw.sessions) and not pending(DOOMED):
                break
            await asyncio.sleep(0.05)
        assert not any(s.sid == DOOMED for s in gw.sessions)
        assert pending(DOOMED) == set()
        failures = [r for r in caplog.records if r.getMessage() == "session task failed; ending the session"]
        assert [getattr(r, "session_id", None) for r in failures] == [DOOMED]
        assert failures[0].exc_info is not None and "Injected" in repr(failures[0].exc_info[1])

        # The other session and the server go on as if nothing happened.
        assert {f"{role}-{HEALTHY}" for role in ("session", "audio", "translate", "lease")} <= pending(
            HEALTHY
        )
        await healthy.send_audio(block_audio([0, 3]))
        await healthy.until(lambda e: e["type"] == "translation" and e["text"] == "es:block 3")
        await healthy.send_json({"type": "session.end"})
        await healthy.until(lambda e: e["type"] == "session.ended")
        async with httpx.AsyncClient() as http:
            assert (await http.get(stack.gateways[0].url + "/healthz")).status_code == 200
    for _ in range(100):
        if not pending(HEALTHY) and gw.connections == 0:
            break
        await asyncio.sleep(0.05)
    assert pending(HEALTHY) == set() and gw.connections == 0

    # The failed session was saved, not lost: the client resumes it.
    monkeypatch.undo()
    async with Client(stack.ws_url) as again:
        await again.send_json({"type": "session.start", "sessionId": DOOMED, "lastSegmentId": -1})
        started = await again.until(lambda e: e["type"] == "session.started")
        assert started["resumed"] is True


async def test_failed_cleanup_leaves_no_task(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose end fails half-way (here its translator's) still takes its tasks with it:
    the lease loop, say, must not go on refreshing the lease of a session nobody holds."""
    finish = SentenceTranslator.finish

    async def failing_finish(self: SentenceTranslator) -> Any:
        if self.state.sessionId == DOOMED:
            raise Injected("finish bug")
        return await finish(self)

    monkeypatch.setattr(SentenceTranslator, "finish", failing_finish)
    gw = stack.gateways[0].app.state.gateway
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "sessionId": DOOMED})
        await c.until(lambda e: e["type"] == "session.started")
        await c.send_audio(block_audio([1]))
        await c.until(lambda e: e["type"] == "transcript.final")
    for _ in range(100):
        if not pending(DOOMED) and gw.connections == 0:
            break
        await asyncio.sleep(0.05)
    assert pending(DOOMED) == set() and gw.connections == 0 and not gw.sessions
