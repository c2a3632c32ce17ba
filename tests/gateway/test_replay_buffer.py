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
            del model[: min(n, len(model))]
        assert len(buf) == len(model)
        offset = rng.randrange(0, len(model) + 1)
        assert buf.read(offset, 4096) == bytes(model[offset : offset + 4096])
    # Dropping more than is held empties it; reading past the end gives nothing.
    buf.drop_front(len(buf) + 10)
    assert len(buf) == 0 and not buf and buf.read(0, 100) == b""
    buf.append(b"\x01\x02")
    assert buf.read(0, 10) == b"\x01\x02"


def test_frames_a_drop_covers_are_released_and_appends_keep_references() -> None:
    buf = ReplayBuffer()
    frames = [bytes([i]) * 3200 for i in range(10)]
    for frame in frames:
        buf.append(frame)
    assert buf._frames[0] is frames[0]  # appending copies nothing
    buf.drop_front(3 * 3200 + 100)  # three whole frames and the start of the fourth
    assert len(buf._frames) == 7 and len(buf) == 7 * 3200 - 100
    assert buf.read(0, 200) == bytes([3]) * 200 and buf.read(3100, 2) == bytes([4]) * 2
    # A read within one frame returns a slice of it; across frames, the joined bytes.
    assert buf.read(3000, 200) == bytes([3]) * 100 + bytes([4]) * 100
    buf.append(b"")  # an empty conversion (a resampler still filling) adds no frame
    assert len(buf._frames) == 7
