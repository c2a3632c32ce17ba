"""A small client of the internal ``/v1/audio`` protocol: used by the audio tests and benchmark.

It paces audio like a live source and timestamps every event it receives, which is what latency
measurements need.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

SAMPLE_RATE = 16000


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


@dataclass
class StreamResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    # Wall time (relative to the first audio frame) at which each event arrived.
    arrival: list[float] = field(default_factory=list)
    # Audio seconds already sent when each event arrived.
    sent_audio: list[float] = field(default_factory=list)
    closed_code: int | None = None
    closed_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return self.of("final")

    @property
    def text(self) -> str:
        return " ".join(e["text"] for e in self.finals)


async def stream_audio(
    url: str,
    samples: np.ndarray,
    *,
    session_id: str = "s1",
    speed: float = 1.0,
    chunk_seconds: float = 0.1,
    diarization: bool = False,
    max_speakers: int = 4,
    time_offset: float = 0.0,
    flush: bool = True,
    timeout: float = 120.0,
    start_extra: dict[str, Any] | None = None,
) -> StreamResult:
    """Send ``samples`` paced at ``speed`` x real time; collect events until ``flushed``."""
    result = StreamResult()
    chunk = int(chunk_seconds * SAMPLE_RATE)
    async with websockets.connect(url, max_size=None) as ws:
        start = {
            "type": "start",
            "sessionId": session_id,
            "diarization": diarization,
            "maxSpeakers": max_speakers,
            "timeOffset": time_offset,
            **(start_extra or {}),
        }
        await ws.send(json.dumps(start))
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))
        result.events.append(ready)
        result.arrival.append(0.0)
        result.sent_audio.append(0.0)
        if ready["type"] != "ready":
            return result
        t0 = time.perf_counter()
        sent = 0.0

        async def receive() -> None:
            try:
                async for msg in ws:
                    ev = json.loads(msg)
                    result.events.append(ev)
                    result.arrival.append(time.perf_counter() - t0)
                    result.sent_audio.append(sent)
                    if ev["type"] == "flushed":
                        return
            except websockets.ConnectionClosed as exc:
                result.closed_code = exc.rcvd.code if exc.rcvd else None
                result.closed_reason = exc.rcvd.reason if exc.rcvd else ""

        receiver = asyncio.create_task(receive())
        for i in range(0, len(samples), chunk):
            part = samples[i : i + chunk]
            await ws.send(to_pcm16(part))
            sent += len(part) / SAMPLE_RATE
            delay = t0 + sent / speed - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if flush:
            await ws.send(json.dumps({"type": "flush"}))
        await asyncio.wait_for(receiver, timeout=timeout)
    return result
