"""A closed connection leaves no cyclic garbage.

Objects in reference cycles are freed only by a full garbage collection, which walks every live
object with the event loop stopped. Each closed connection used to leave about 140 such objects
(its tasks, their tracebacks, the session, the close task wait_for made); after a surge of
sessions ends, the full collection that frees them pauses every live session at once.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from livetranslate.workloads.gateway.connection import Connection
from livetranslate.workloads.gateway.session import Session
from livetranslate.workloads.gateway.upstream import AudioLink
from tests.gateway.conftest import Client, Stack, block_audio, drop


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collection while the test runs: a cycle must not vanish before it is counted."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> dict[str, int]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    kinds = {"Connection": Connection, "Session": Session, "AudioLink": AudioLink}
    counts = {name: sum(1 for o in gc.garbage if isinstance(o, kind)) for name, kind in kinds.items()}
    gc.garbage.clear()
    gc.set_debug(0)
    return counts


async def test_closed_connections_leave_no_cycles(stack: Stack, collector_off: None) -> None:
    gw = stack.gateways[0].app.state.gateway
    audio = block_audio([2, 0, 3])
    # Ended by the client, with audio, finals and translations.
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.until(lambda e: e["type"] == "session.started")
        await c.send_audio(audio)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    # Dropped mid-session, as a network does.
    c = Client(stack.ws_url)
    await c.__aenter__()
    await c.send_json({"type": "session.start"})
    await c.until(lambda e: e["type"] == "session.started")
    await c.send_audio(audio)
    await c.until(lambda e: e["type"] == "transcript.final")
    drop(c)
    # Closed by the gateway for garbage, and one that never started a session.
    async with Client(stack.ws_url) as bad:
        for _ in range(30):
            await bad.send_json({"type": "nonsense"})
        with pytest.raises(ConnectionClosed) as closed:
            await bad.until(lambda e: False, timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with Client(stack.ws_url):
        pass
    for _ in range(200):
        if gw.connections == 0 and not gw.sessions:
            break
        await asyncio.sleep(0.05)
    assert gw.connections == 0 and not gw.sessions
    assert cyclic_garbage() == {"Connection": 0, "Session": 0, "AudioLink": 0}
