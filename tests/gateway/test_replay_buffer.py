"""The session's replay buffer: bytes kept in order across appends, drops and compactions."""

from __future__ import annotations

import random

from livetranslate.workloads.gateway.audio import ReplayBuffer


def test_reads_see_exactly_the_bytes_not_yet_dropped_across_compactions() -> None:
    rng = random.Random(7)
    buf, model = ReplayBuffer(), bytearray()
    for step in range(3000):
        frame = rng.randbytes(rng.choice((2, 640, 3200, 9600)))
        buf.append(frame)
        model += frame
        if step % 7 == 6:  # a final covers some of what was sent
            n = rng.randrange(0, len(model) + 100)
            buf.drop_front(n)
            del model[:min(n, len(model))]
        assert len(buf) == len(model)
        offset = rng.randrange(0, len(model) + 1)
        assert buf.read(offset, 4096) == bytes(model[offset:offset + 4096])
    # Dropping more than is held empties it; reading past the end gives nothing.
    buf.drop_front(len(buf) + 10)
    assert len(buf) == 0 and not buf and buf.read(0, 100) == b""
    buf.append(b"\x01\x02")
    assert buf.read(0, 10) == b"\x01\x02"


def test_dropped_bytes_are_released_once_they_are_half_the_buffer() -> None:
    buf = ReplayBuffer()
    buf.append(bytes(200_000))
    buf.drop_front(50_000)  # under half: only the head moves
    assert len(buf._data) == 200_000
    buf.drop_front(60_000)  # 110,000 of 200,000 dropped: compacted
    assert len(buf._data) == len(buf) == 90_000
