"""Gateway capacity: connections held with RSS per connection, and gateway-added latency and CPU
per frame under many live audio sessions.

Three processes, so the figures are the gateway's own: the gateway as it runs in production
(``livetranslate serve gateway``), a lightweight audio stand-in speaking the internal protocol
(a final for every second of audio, sent the moment that second arrives), and the client load in
a process of its own. Stand-in and client speak RFC 6455 directly (frames built once, binary
payloads never copied): a WebSocket library on both ends cost more CPU than the gateway itself.
The latency measured is client -> gateway -> stand-in -> gateway -> client for the frame that
completes each second of audio; the stand-in and the client share the same cores, so the figure
is an upper bound on what the gateway adds. Gateway CPU per frame is its process CPU time over
the frames sent, counted until it has caught up. ``--baseline-ref`` also runs the gateway of an
older revision in the same invocation (sequentially, and with ``--ab-rounds`` side by side, both
loaded at once so both see the same contention on shared cores).
Run: ``.venv/bin/python -P benchmarks/bench_gateway.py [--baseline-ref REV --ab-rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from livetranslate.procs import cpu_seconds, free_port, rss_mib, wait_http
from livetranslate_testing.figures import percentile, provenance, provenance_line, write_result

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_BYTES = 3200  # 100 ms of 16 kHz PCM16
SECOND = 32000
SEED = 7  # session start offsets (client_audio)


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ lean WebSocket ends
# The stand-in and the load client speak RFC 6455 directly on asyncio protocols: binary payloads
# are counted, never copied or unmasked, and the client's frames are built once (an all-zero mask
# key leaves the payload as is). A full WebSocket library on both ends cost more CPU per frame
# than the gateway itself, so on 2 shared cores it measured the load generator, not the gateway.

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def ws_frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, mask_bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload


class FrameReader:
    """Incremental frame parser: (opcode, payload, length); binary payloads are skipped (None)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes | None, int]]:
        from websockets.speedups import apply_mask  # type: ignore[import-not-found]

        buf = self._buf
        buf += data
        out: list[tuple[int, bytes | None, int]] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:
                head += 4
            if size - pos < head + n:
                break
            opcode = b0 & 0x0F
            if opcode in (OP_BINARY, 0):
                out.append((opcode, None, n))
            else:
                payload = bytes(buf[pos + head : pos + head + n])
                if b1 & 0x80:
                    payload = apply_mask(payload, bytes(buf[pos + head - 4 : pos + head]))
                out.append((opcode, payload, n))
            pos += head + n
        if pos:
            del buf[:pos]
        return out


class StandinStream(asyncio.Protocol):
    """The audio service's /v1/audio as the gateway sees it: ready, a final per second, flushed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._frames: FrameReader | None = None
        self._offset = 0.0
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self._frames is None:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, rest = self._head.partition(b"\r\n\r\n")
            key = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self._frames = FrameReader()
            data = rest
        for opcode, payload, n in self._frames.feed(data):
            if opcode in (OP_BINARY, 0):
                before = self._received
                self._received += n
                if self._received // SECOND > before // SECOND:
                    end = self._offset + self._received // SECOND
                    # The text carries when the stand-in got the second's last byte (CLOCK_MONOTONIC
                    # is one clock for every process here), so the client can split the round trip
                    # into the gateway's way in and its way out.
                    self._send(
                        json.dumps(
                            {
                                "type": "final",
                                "text": f"second {int(end)} at {time.monotonic():.6f}",
                                "start": end - 1.0,
                                "end": end,
                            }
                        )
                    )
            elif opcode == OP_TEXT and payload is not None:
                msg = json.loads(payload)
                if msg.get("type") == "start":
                    self._offset = float(msg.get("timeOffset", 0.0))
                    self._send('{"type": "ready", "device": "cpu", "model": "stand-in"}')
                elif msg.get("type") == "flush":
                    self._send('{"type": "flushed"}')
            elif opcode == OP_PING:
                self.transport.write(ws_frame(OP_PONG, payload or b"", masked=False))
            elif opcode == OP_CLOSE:
                self.transport.write(ws_frame(OP_CLOSE, (payload or b"")[:2], masked=False))
                self.transport.close()

    def _send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(OP_TEXT, text.encode(), masked=False))


async def standin(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StandinStream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


class ClientStream(asyncio.Protocol):
    """One live-audio client session: handshake, session.start, then frames the ticker writes."""

    def __init__(self, host: str, path: str, rate: int) -> None:
        self.transport: asyncio.Transport | None = None
        self._start = json.dumps({"type": "session.start", "sampleRate": rate, "targetLanguages": []})
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._head = b""
        self._frames: FrameReader | None = None
        self.started = asyncio.get_running_loop().create_future()
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.legs: list[tuple[float, float]] = []  # (client -> stand-in, stand-in -> client)
        self.errors: list[str] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport does not subclass asyncio.Transport
        # (the check made every client connection fail under uvloop).
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.started.done():
            self.started.set_exception(ConnectionError("closed before session.started"))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        now = time.monotonic()
        if self._frames is None:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.started.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                self.transport.close()
                return
            self._frames = FrameReader()
            self.send_text(self._start)
        for opcode, payload, _n in self._frames.feed(data):
            if opcode == OP_TEXT and payload is not None:
                if b'"transcript.final"' in payload:
                    final = json.loads(payload)
                    t = self.sent_at.pop(round(final["end"]), None)
                    if t is not None:
                        self.latencies.append(now - t)
                        _, _, at = final["text"].partition(" at ")
                        if at:
                            self.legs.append((float(at) - t, now - float(at)))
                elif b'"session.started"' in payload and not self.started.done():
                    self.started.set_result(None)
                elif b'"error"' in payload:
                    self.errors.append(payload.decode(errors="replace")[:200])
            elif opcode == OP_PING:
                self.transport.write(ws_frame(OP_PONG, payload or b"", masked=True))

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(OP_TEXT, text.encode(), masked=True))


async def client_audio(
    url: str, n: int, seconds: float, frame_ms: int, rate: int, pids: dict[str, int], out: Path
) -> None:
    """``n`` real-time sessions paced by one ticker; CPU of every process over the streaming window."""
    import heapq
    from urllib.parse import urlsplit

    # Several URLs (comma-separated): gateway replicas, sessions spread over them in turn as a
    # Service would spread connections.
    targets = [urlsplit(u) for u in url.split(",")]
    loop = asyncio.get_running_loop()
    frame_bytes = rate * 2 * frame_ms // 1000
    second = rate * 2
    frame = ws_frame(OP_BINARY, b"\x00\x01" * (frame_bytes // 2), masked=True)
    streams: list[ClientStream] = []
    failures = 0
    sem = asyncio.Semaphore(100)

    async def open_one(index: int) -> None:
        nonlocal failures
        parts = targets[index % len(targets)]
        async with sem:
            try:
                _t, proto = await loop.create_connection(
                    lambda: ClientStream(parts.netloc, parts.path, rate),
                    parts.hostname or "127.0.0.1",
                    parts.port or 80,
                )
                await asyncio.wait_for(proto.started, 60)
                streams.append(proto)
                per_target[index % len(targets)] += 1
            except Exception:  # noqa: BLE001 - counted and reported
                failures += 1

    per_target = [0] * len(targets)
    await asyncio.gather(*(open_one(i) for i in range(n)))
    pids = {**pids, "client": os.getpid()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    interval = frame_ms / 1000
    # Each session starts at its own moment within a second, as independent speakers do. The
    # stand-in answers the frame completing each second of a stream with a final, so sessions
    # that all started within one frame interval would get their finals in the same 100 ms of
    # every second: a burst real traffic does not make (finals come at the ends of utterances),
    # which held the gateway's loop for tens of ms each second and measured that burst rather
    # than the gateway. Seeded, so every run and both gateways of a side-by-side round see the
    # same start pattern; the frames of all sessions fall spread over each frame interval too.
    starts = random.Random(SEED)
    due = [(t0 + starts.uniform(0.0, 1.0), i) for i in range(len(streams))]
    heapq.heapify(due)
    sent_bytes = [0] * len(streams)
    frames = late = 0
    end = t0 + seconds
    while due and due[0][0] < end:
        when, i = due[0]
        now = time.monotonic()
        if when > now + 0.002:  # frames due within 2 ms go now: one wake-up for a batch of them
            await asyncio.sleep(when - now)
            continue
        heapq.heapreplace(due, (when + interval, i))
        s = streams[i]
        if s.closed or s.transport is None:
            continue
        if now - when > interval:
            late += 1
        sent_bytes[i] += frame_bytes
        if sent_bytes[i] % second == 0:
            s.sent_at[sent_bytes[i] // second] = time.monotonic()
        s.transport.write(frame)
        frames += 1
    wall = time.monotonic() - t0
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    # CPU per frame counts until the gateway has caught up (every final is back): a gateway that
    # falls behind would otherwise look cheap, its backlog unprocessed when the window closes.
    # Resampled audio: the resampler holds back a few ms of the last second until more audio comes,
    # so the final of each stream's last second is not due.
    pending_ok = 0 if rate == 16000 else 1
    drain_deadline = time.monotonic() + 60
    while (
        any(len(s.sent_at) > pending_ok for s in streams if not s.closed)
        and time.monotonic() < drain_deadline
    ):
        await asyncio.sleep(0.1)
    drained = time.monotonic() - t0
    cpu2 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for s in streams:
        if s.transport is not None:
            s.transport.abort()
    out.write_text(
        json.dumps(
            {
                "latencies": [x for s in streams for x in s.latencies],
                "failures": failures,
                "legs": [x for s in streams for x in s.legs],
                "closed_early": sum(1 for s in streams if s.closed),
                "frames": frames,
                "late_frames": late,
                "wall_seconds": wall,
                "cpu_seconds": {k: cpu1[k] - cpu0[k] for k in pids},
                "drained_seconds": drained,
                "cpu_seconds_drained": {k: cpu2[k] - cpu0[k] for k in pids},
                "undelivered": sum(max(0, len(s.sent_at) - pending_ok) for s in streams),
                "errors": [e for s in streams for e in s.errors][:20],
                "sessions_per_url": per_target,
            }
        )
    )


# ------------------------------------------------------------------ client load process


async def client_hold(url: str, n: int, out: Path) -> None:
    from websockets.asyncio.client import connect

    conns: list[Any] = []
    began = time.monotonic()
    sem = asyncio.Semaphore(200)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with sem:
            try:
                ws = await connect(url, open_timeout=60, compression=None, max_queue=4)
                await ws.send('{"type": "session.start", "targetLanguages": []}')
                json.loads(await asyncio.wait_for(ws.recv(), 60))
                conns.append(ws)
            except Exception:  # noqa: BLE001 - counted and reported
                failures += 1

    await asyncio.gather(*(one() for _ in range(n)))
    out.write_text(
        json.dumps({"held": len(conns), "failures": failures, "seconds": time.monotonic() - began})
    )
    await asyncio.sleep(3600)  # held until the harness has measured and kills us


# ------------------------------------------------------------------ harness


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-P", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_idle(port: int, timeout: float = 300) -> None:
    """Until the gateway has finished closing the previous phase's sessions (not to measure that)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        m = re.search(r"^livetranslate_sessions_active\{[^}]*\} (\S+)$", text, re.MULTILINE)
        if m and float(m.group(1)) == 0:
            time.sleep(2.0)
            return
        time.sleep(1.0)
    raise RuntimeError("the gateway did not finish closing sessions")


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            time.sleep(0.1)
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        if proc.poll() is not None:
            raise RuntimeError("client process died")
        time.sleep(0.5)
    raise RuntimeError("client did not finish")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_gateway(
    variant: str, src: Path | None, audio_port: int, gw_port: int, tmp: Path
) -> subprocess.Popen[bytes]:
    env = {
        "LT_GATEWAY_AUDIO_URL": f"http://127.0.0.1:{audio_port}",
        "LT_GATEWAY_TRANSLATION_URL": "http://127.0.0.1:9",
        "LT_GATEWAY_MAX_SESSIONS": "100000",
        "LT_GATEWAY_PIPELINE": "bench",
        "LT_LOG_LEVEL": "warning",
        "LT_PIPELINE_CONFIG": str(tmp / "absent.json"),
    }
    if variant == "baseline":
        assert src is not None
        args = [str(Path(__file__).resolve()), "gateway-from", "--src", str(src), "--port", str(gw_port)]
    else:
        args = ["-m", "livetranslate.cli", "serve", "gateway", "--host", "127.0.0.1", "--port", str(gw_port)]
    proc = spawn(args, env)
    wait_http(f"http://127.0.0.1:{gw_port}/healthz")
    time.sleep(1.0)
    return proc


def serve_from(src: Path, port: int) -> None:
    """Run the gateway package and serve.py of an exported older revision (the baseline)."""
    import livetranslate.workloads.gateway as pkg

    pkg.__path__[:] = [str(src / "workloads" / "gateway")]
    load_file(src / "livetranslate" / "serve.py", "baseline_serve").main(
        ["gateway", "--host", "127.0.0.1", "--port", str(port)]
    )


def load_file(path: Path, name: str) -> Any:
    """A module from a file of an exported older revision (the baseline)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def audio_phase(
    url: str, n: int, seconds: float, frame_ms: int, rate: int, pids: dict[str, int], tmp: Path
) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    out = tmp / f"audio-{n}-{frame_ms}-{rate}-{time.monotonic_ns()}.json"
    client = spawn(
        [
            me,
            "client-audio",
            "--url",
            url,
            "-n",
            str(n),
            "--seconds",
            str(seconds),
            "--frame-ms",
            str(frame_ms),
            "--rate",
            str(rate),
            "--pids",
            ",".join(f"{k}={v}" for k, v in pids.items()),
            "--out",
            str(out),
        ]
    )
    data = wait_file(out, client, seconds + 300)
    stop(client)
    for key in ("cpu_seconds", "cpu_seconds_drained"):  # replicas "gateway-0", "gateway-1": summed
        cpu_by = data[key]
        cpu_by["gateway"] = sum(v for k, v in list(cpu_by.items()) if k.split("-")[0] == "gateway")
    lat = [x * 1000 for x in data["latencies"]]
    cpu, wall, frames = data["cpu_seconds"], data["wall_seconds"], max(1, data["frames"])
    return {
        "sessions": n,
        "frame_ms": frame_ms,
        "sample_rate": rate,
        "frames": data["frames"],
        "samples": len(lat),
        "failures": data["failures"],
        "closed_early": data["closed_early"],
        "late_frames": data["late_frames"],
        "client_errors": data["errors"],
        "sessions_per_gateway": data["sessions_per_url"],
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p95_ms": round(percentile(lat, 0.95), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        **legs_ms(data.get("legs", [])),
        "gateway_cpu_us_per_frame": round(data["cpu_seconds_drained"]["gateway"] * 1e6 / frames, 1),
        "cores": {k: round(v / wall, 2) for k, v in cpu.items()},
        "catch_up_seconds": round(data["drained_seconds"] - wall, 1),
        "undelivered_finals": data["undelivered"],
        # Real-time sessions one fully used core would carry at this per-frame cost.
        "sessions_per_gateway_core": round(
            frames / max(1e-9, data["cpu_seconds_drained"]["gateway"]) / (1000 / frame_ms)
        ),
        "loadavg": os.getloadavg(),
    }


def legs_ms(legs: list[list[float]]) -> dict[str, float]:
    """p50/p99 of each half of the round trip: client -> gateway -> stand-in ("in") and stand-in ->
    gateway -> client ("out"), in ms."""
    if not legs:
        return {}
    inbound, outbound = [x[0] * 1000 for x in legs], [x[1] * 1000 for x in legs]
    return {
        "in_p50_ms": round(percentile(inbound, 0.5), 1),
        "in_p99_ms": round(percentile(inbound, 0.99), 1),
        "out_p50_ms": round(percentile(outbound, 0.5), 1),
        "out_p99_ms": round(percentile(outbound, 0.99), 1),
    }


def ab_rounds(
    args: argparse.Namespace, src: Path, audio_port: int, standin_pid: int, tmp: Path
) -> list[dict[str, Any]]:
    """Baseline and current gateways loaded at the same time, each by its own client process.

    Other work on these shared cores moves CPU-per-frame figures by more than the change being
    measured when the two run minutes apart; side by side, both see the same contention.
    """
    me = str(Path(__file__).resolve())
    ports = {"baseline": free_port(), "current": free_port()}
    gws = {v: start_gateway(v, src if v == "baseline" else None, audio_port, ports[v], tmp) for v in ports}
    rows: list[dict[str, Any]] = []
    try:
        for i in range(args.ab_rounds):
            for frame_ms, rate in ((args.frame_ms, 16000), (40, 48000)):
                outs = {v: tmp / f"ab-{v}-{i}-{rate}.json" for v in ports}
                clients = {
                    v: spawn(
                        [
                            me,
                            "client-audio",
                            "--url",
                            f"ws://127.0.0.1:{ports[v]}/v1/stream",
                            "-n",
                            str(args.ab_sessions),
                            "--seconds",
                            str(args.seconds),
                            "--frame-ms",
                            str(frame_ms),
                            "--rate",
                            str(rate),
                            "--pids",
                            f"gateway={gws[v].pid},standin={standin_pid}",
                            "--out",
                            str(outs[v]),
                        ]
                    )
                    for v in ports
                }
                row: dict[str, Any] = {
                    "round": i + 1,
                    "sessions": args.ab_sessions,
                    "frame_ms": frame_ms,
                    "sample_rate": rate,
                }
                for v in ports:
                    data = wait_file(outs[v], clients[v], args.seconds + 300)
                    stop(clients[v])
                    lat = sorted(x * 1000 for x in data["latencies"])
                    row[v] = {
                        "gateway_cpu_us_per_frame": round(
                            data["cpu_seconds_drained"]["gateway"] * 1e6 / max(1, data["frames"]), 1
                        ),
                        "p50_ms": round(percentile(lat, 0.5), 1),
                        "p99_ms": round(percentile(lat, 0.99), 1),
                        "undelivered_finals": data["undelivered"],
                    }
                row["loadavg"] = os.getloadavg()
                rows.append(row)
                print(
                    f"[a/b {i + 1}] {args.ab_sessions} sessions, {frame_ms} ms at {rate} Hz: gateway CPU per "
                    f"frame baseline {row['baseline']['gateway_cpu_us_per_frame']} us, current "
                    f"{row['current']['gateway_cpu_us_per_frame']} us (load {row['loadavg'][0]:.2f})",
                    flush=True,
                )
                for port in ports.values():
                    wait_idle(port)
    finally:
        for gw in gws.values():
            stop(gw)
    return rows


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    audio_port = free_port()
    standin_proc = spawn([str(Path(__file__).resolve()), "standin", "--port", str(audio_port)])
    result: dict[str, Any] = {
        **provenance("gateway"),
        "latency": [],
        "session_starts": f"random within one second (seed {SEED})",
    }
    variants: list[tuple[str, Path | None]] = [("current", None)]
    if args.baseline_ref:
        src = tmp / "baseline"
        src.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.baseline_ref, "workloads/gateway", "livetranslate/serve.py"],
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        variants.insert(0, ("baseline", src))
        result["baseline_ref"] = args.baseline_ref
    phases = [(int(n), args.frame_ms, 16000) for n in args.sessions.split(",") if n and int(n) > 0]
    phases += [(int(n), 40, 48000) for n in args.browser_sessions.split(",") if n and int(n) > 0]
    try:
        if args.ab_rounds:
            assert args.baseline_ref, "--ab-rounds needs --baseline-ref"
            result["ab"] = ab_rounds(args, variants[0][1], audio_port, standin_proc.pid, tmp)  # type: ignore[arg-type]
        if args.log_sessions:
            result["store_gc"] = [
                store_gc_phase(variant, tree, args.log_sessions, tmp) for variant, tree in variants
            ]
        for variant, tree in variants:
            if not phases and not (variant == "current" and args.connections):
                continue
            gw_port = free_port()
            url = f"ws://127.0.0.1:{gw_port}/v1/stream"
            gw = start_gateway(variant, tree, audio_port, gw_port, tmp)
            try:
                if variant == "current" and args.connections:
                    result["gateway_rss_idle_mib"] = round(rss_mib(gw.pid), 1)
                    result["hold"] = hold_phase(
                        url, args.connections, gw.pid, tmp, result["gateway_rss_idle_mib"]
                    )
                    wait_idle(gw_port)
                for n, frame_ms, rate in phases:
                    row = audio_phase(
                        url,
                        n,
                        args.seconds,
                        frame_ms,
                        rate,
                        {"gateway": gw.pid, "standin": standin_proc.pid},
                        tmp,
                    )
                    row["gateway"] = variant
                    result["latency"].append(row)
                    print(
                        f"[{variant}] {n} sessions, {frame_ms} ms frames at {rate} Hz: p50 {row['p50_ms']} ms "
                        f"p99 {row['p99_ms']} ms (in p50/p99 {row.get('in_p50_ms')}/{row.get('in_p99_ms')}, "
                        f"out {row.get('out_p50_ms')}/{row.get('out_p99_ms')}); "
                        f"gateway {row['gateway_cpu_us_per_frame']} us CPU/frame, cores {row['cores']}, late frames {row['late_frames']}, load {row['loadavg'][0]:.2f}",
                        flush=True,
                    )
                    wait_idle(gw_port)
            finally:
                stop(gw)
        if args.replicas > 1:
            result["latency"] += replica_phases(
                args.replicas, phases, args.seconds, audio_port, standin_proc.pid, tmp
            )
    finally:
        stop(standin_proc)
    return result


def replica_phases(
    replicas: int,
    phases: list[tuple[int, int, int]],
    seconds: float,
    audio_port: int,
    standin_pid: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    """The same phases against several gateway processes (one per core, as replicas of a
    Deployment would run), the client spreading its sessions over them."""
    ports = [free_port() for _ in range(replicas)]
    gws = [start_gateway("current", None, audio_port, port, tmp) for port in ports]
    rows = []
    try:
        url = ",".join(f"ws://127.0.0.1:{port}/v1/stream" for port in ports)
        pids = {f"gateway-{i}": gw.pid for i, gw in enumerate(gws)} | {"standin": standin_pid}
        for n, frame_ms, rate in phases:
            row = audio_phase(url, n, seconds, frame_ms, rate, pids, tmp)
            row["gateway"] = f"current, {replicas} replicas"
            rows.append(row)
            print(
                f"[{replicas} replicas] {n} sessions, {frame_ms} ms frames at {rate} Hz: p50 {row['p50_ms']} ms "
                f"p99 {row['p99_ms']} ms; gateways {row['gateway_cpu_us_per_frame']} us CPU/frame, "
                f"cores {row['cores']}, load {row['loadavg'][0]:.2f}",
                flush=True,
            )
            for port in ports:
                wait_idle(port)
    finally:
        for gw in gws:
            stop(gw)
    return rows


def store_gc(src: Path | None, sessions: int, out: Path) -> None:
    """Fill the in-memory session store (``src``'s, or this tree's) with ``sessions`` full segment
    logs and measure what the cyclic garbage collector then walks: tracked objects added, and the
    pause of a full collection (the gateway's event loop stops for it)."""
    import gc
    import statistics

    import livetranslate.workloads.gateway.sessions as sessions_mod
    from livetranslate.workloads.gateway.settings import GatewaySettings

    if src is not None:
        sessions_mod = load_file(src / "workloads" / "gateway" / "sessions.py", "baseline_sessions")
    per_session = GatewaySettings().session_log_segments
    store = sessions_mod.MemorySessionStore(max_segments=per_session)

    async def fill() -> None:
        for sid in range(sessions):
            for i in range(per_session):
                rec = sessions_mod.SegmentRecord(
                    segmentId=i,
                    text="a final caption of about ten words, as speech gives them",
                    start=float(i),
                    end=i + 1.0,
                    speaker="SPEAKER_00",
                    finalSent=True,
                    translations={"es": "un subtítulo final de unas diez palabras"},
                    translationsSent=["es"],
                )
                await store.put_segment(f"session-{sid}", rec)

    gc.collect()
    objects0, rss0 = len(gc.get_objects()), rss_mib(os.getpid())
    asyncio.run(fill())
    gc.collect()
    objects1, rss1 = len(gc.get_objects()), rss_mib(os.getpid())
    pauses = []
    for _ in range(5):
        t = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - t) * 1000)
    out.write_text(
        json.dumps(
            {
                "sessions": sessions,
                "segments_per_session": per_session,
                "tracked_objects_added": objects1 - objects0,
                "full_collection_ms": round(statistics.median(pauses), 1),
                "rss_added_mib": round(rss1 - rss0, 1),
            }
        )
    )


def store_gc_phase(variant: str, src: Path | None, sessions: int, tmp: Path) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    out = tmp / f"store-gc-{variant}.json"
    args = [me, "store-gc", "--sessions", str(sessions), "--out", str(out)]
    if src is not None:
        args += ["--src", str(src)]
    proc = spawn(args)
    row = {"gateway": variant, **wait_file(out, proc, 600), "loadavg": os.getloadavg()}
    stop(proc)
    print(
        f"[{variant}] {sessions} full session logs in memory: {row['tracked_objects_added']:,} tracked objects, "
        f"full collection {row['full_collection_ms']} ms",
        flush=True,
    )
    return row


def hold_phase(url: str, connections: int, pid: int, tmp: Path, idle_mib: float) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    out = tmp / "hold.json"
    client = spawn([me, "client-hold", "--url", url, "-n", str(connections), "--out", str(out)])
    held = wait_file(out, client, 600)
    time.sleep(2.0)
    rss = rss_mib(pid)
    hold = {
        "connections_requested": connections,
        "sessions_held": held["held"],
        "failures": held["failures"],
        "open_seconds": round(held["seconds"], 1),
        "gateway_rss_mib": round(rss, 1),
        "rss_per_connection_kib": round((rss - idle_mib) * 1024 / max(1, held["held"]), 1),
        "loadavg": os.getloadavg(),
    }
    print(
        f"held {held['held']}/{connections} sessions: gateway RSS {rss:.0f} MiB "
        f"({hold['rss_per_connection_kib']} KiB per connection)",
        flush=True,
    )
    stop(client)
    return hold


def keep_unmeasured_phases(result: dict[str, Any], path: Path) -> None:
    """A run that skipped a phase keeps that phase's figures from the results it replaces, each
    with when it was measured (``*_measured_at``); the phases it ran are dated by its own ``time``."""
    previous: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "hold" not in result and previous:  # a run with --connections 0 keeps the last hold figures
        for key in ("hold", "gateway_rss_idle_mib"):
            if key in previous:
                result[key] = previous[key]
        result["hold_measured_at"] = previous.get("hold_measured_at")
    else:
        result["hold_measured_at"] = result["time"]
    if not result["latency"] and previous:  # an A/B-only run keeps the last sequential rows
        result["latency"] = previous.get("latency", [])
        result["latency_measured_at"] = previous.get("latency_measured_at")
        result.setdefault("baseline_ref", previous.get("baseline_ref"))
    else:
        result["latency_measured_at"] = result["time"]
    if "store_gc" not in result and "store_gc" in previous:  # --log-sessions 0 keeps the last GC figures
        result["store_gc"] = previous["store_gc"]
        result["store_gc_measured_at"] = previous.get("store_gc_measured_at")
    elif "store_gc" in result:
        result["store_gc_measured_at"] = result["time"]


def write(result: dict[str, Any], name: str) -> None:
    write_result(RESULTS / f"{name}.json", result)
    lines = [
        "# Gateway capacity and added latency",
        "",
        (
            f"{provenance_line(result)}, shared with other work; gateway, audio stand-in and client load "
            f"in three processes. `{result['command']}`."
        ),
        "",
    ]
    if "hold" in result:
        h = result["hold"]
        lines += [
            f"Connections held (measured {result['hold_measured_at']}):",
            "",
            "| connections held (session started) | failures | gateway RSS | RSS per connection | target |",
            "| --- | --- | --- | --- | --- |",
            (
                f"| {h['sessions_held']:,} of {h['connections_requested']:,} | {h['failures']} | "
                f"{h['gateway_rss_mib']:.0f} MiB (idle {result['gateway_rss_idle_mib']:.0f} MiB) | "
                f"{h['rss_per_connection_kib']} KiB | 10,000 under 1 GiB |"
            ),
            "",
        ]
    lines += [
        f"Live audio sessions (measured {result.get('latency_measured_at', result['time'])}):",
        "",
        (
            "| gateway | live sessions | frames | round trip p50 | p95 | p99 | way in p50 / p99 | way out p50 / p99 | "
            "gateway CPU per frame | cores used: gateway / stand-in / client | sessions per gateway core | "
            "catch-up after the window | load avg |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["latency"]:
        c = r["cores"]
        if r.get("undelivered_finals"):  # it never caught up: CPU per frame would flatter it
            r = {
                **r,
                "gateway_cpu_us_per_frame": f"n/a ({r['undelivered_finals']} finals still due)",
                "sessions_per_gateway_core": "n/a",
            }
        lines.append(
            f"| {r['gateway']} | {r['sessions']} | {r['frame_ms']} ms @ {r['sample_rate'] // 1000} kHz | "
            f"{r['p50_ms']} ms | {r['p95_ms']} ms | {r['p99_ms']} ms | {_legs(r, 'in')} | {_legs(r, 'out')} | "
            f"{_us(r['gateway_cpu_us_per_frame'])} | "
            f"{c['gateway']} / {c['standin']} / {c['client']} | {_n(r['sessions_per_gateway_core'])} | "
            f"{r['catch_up_seconds']} s | {r['loadavg'][0]:.2f} |"
        )
    lines += [
        "",
        (
            "Round trip = the client writes the frame completing a second of audio -> gateway -> stand-in -> "
            "final -> gateway -> client: an upper bound on gateway-added latency (target p99 under 20 ms at "
            "1,000 sessions), since client and stand-in run on the same cores. Way in = client write -> the "
            "stand-in reading that frame; way out = the stand-in writing the final -> the client reading it "
            "(one CLOCK_MONOTONIC for all three processes). Gateway CPU per frame = the "
            "gateway process's CPU time over the streaming window / frames sent in it; sessions per gateway "
            "core = the real-time sessions one fully used core carries at that cost. `baseline` is the "
            f"gateway of `{result.get('baseline_ref', '-')}` run in the same invocation. 100 ms frames at "
            "16 kHz are what `livetranslate stream` sends; the captions page sends 40 ms frames, at 16 kHz "
            "where the browser captures at that rate (Chromium does) and at 48 kHz from a typical "
            "microphone where it does not (resampled by the gateway). "
            + (
                f"Session starts: {result['session_starts']}, as independent speakers start, so each "
                "second's finals are spread over the second."
                if result.get("session_starts")
                else "These sessions all started within one frame interval, so every session's final came in "
                "the same 100 ms of each second (a burst real traffic does not make)."
            )
        ),
    ]
    if result.get("ab"):
        lines += [
            "",
            (
                "Baseline and current side by side (both gateways loaded at the same time by their "
                "own client process, so both see the same contention):"
            ),
            "",
            (
                "| round | sessions | frames | gateway CPU per frame: baseline | current | current / baseline "
                "| p99 baseline | p99 current | load avg |"
            ),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["ab"]:
            b, c = r["baseline"], r["current"]
            ratio = c["gateway_cpu_us_per_frame"] / max(1e-9, b["gateway_cpu_us_per_frame"])
            lines.append(
                f"| {r['round']} | {r['sessions']} | {r['frame_ms']} ms @ {r['sample_rate'] // 1000} kHz | "
                f"{b['gateway_cpu_us_per_frame']} us | {c['gateway_cpu_us_per_frame']} us | {ratio:.2f} | "
                f"{b['p99_ms']} ms | {c['p99_ms']} ms | {r['loadavg'][0]:.2f} |"
            )
    if result.get("store_gc"):
        lines += [
            "",
            (
                f"Session logs in the in-memory store (measured {result['store_gc_measured_at']}; a "
                "single-replica gateway keeps each session's last finals for resume). A full "
                "garbage collection walks every tracked object and stops the event loop while it "
                "does; full collections come whenever the old generation has grown by a quarter, "
                "which it does while logs fill:"
            ),
            "",
            (
                "| gateway | sessions x finals logged | tracked objects added | full collection pause | "
                "RSS added | load avg |"
            ),
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["store_gc"]:
            lines.append(
                f"| {r['gateway']} | {r['sessions']:,} x {r['segments_per_session']} | "
                f"{r['tracked_objects_added']:,} | {r['full_collection_ms']} ms | {r['rss_added_mib']} MiB | "
                f"{r['loadavg'][0]:.2f} |"
            )
    if result.get("notes"):
        lines += ["", result["notes"]]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def _legs(row: dict[str, Any], way: str) -> str:
    if f"{way}_p50_ms" not in row:  # recorded before the round trip was split
        return "-"
    return f"{row[f'{way}_p50_ms']} / {row[f'{way}_p99_ms']} ms"


def _us(value: Any) -> str:
    return f"{value} us" if isinstance(value, (int, float)) else str(value)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("standin")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("gateway-from")
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("client-hold")
    p.add_argument("--url", required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("store-gc")
    p.add_argument("--src", type=Path, default=None)
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("client-audio")
    p.add_argument("--url", required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--frame-ms", type=int, default=100)
    p.add_argument("--rate", type=int, default=16000)
    p.add_argument("--pids", default="")
    parser.add_argument("--connections", type=int, default=10000, help="0 skips the hold phase")
    parser.add_argument("--sessions", default="1,100,1000", help="live sessions, 100 ms frames at 16 kHz")
    parser.add_argument("--browser-sessions", default="100", help="live sessions, 40 ms frames at 48 kHz")
    parser.add_argument("--frame-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--log-sessions",
        type=int,
        default=1000,
        help="sessions whose full segment logs fill the in-memory store for the GC figure (0 skips)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="also run the live-session phases against this many gateway processes",
    )
    parser.add_argument("--baseline-ref", default="", help="also run the gateway of this git revision")
    parser.add_argument("--name", default="gateway", help="results file name under benchmarks/results")
    parser.add_argument(
        "--ab-rounds",
        type=int,
        default=0,
        help="rounds of baseline and current loaded side by side (needs --baseline-ref)",
    )
    parser.add_argument("--ab-sessions", type=int, default=100)
    parser.add_argument("--notes", default=None, help="a paragraph for the .md (kept in the JSON)")
    parser.add_argument("--rewrite", action="store_true", help="only regenerate the .md from the JSON")
    args = parser.parse_args()
    if args.rewrite:
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
        if args.notes is not None:
            result["notes"] = args.notes
        write(result, args.name)
        print((RESULTS / f"{args.name}.md").read_text())
        return
    if args.cmd == "standin":
        raise_fd_limit()
        _run_loop(standin(args.port))
    elif args.cmd == "gateway-from":
        serve_from(args.src, args.port)
    elif args.cmd == "client-hold":
        asyncio.run(client_hold(args.url, args.n, args.out))
    elif args.cmd == "store-gc":
        store_gc(args.src, args.sessions, args.out)
    elif args.cmd == "client-audio":
        raise_fd_limit()
        pids = {k: int(v) for k, v in (x.split("=") for x in args.pids.split(",") if x)}
        _run_loop(client_audio(args.url, args.n, args.seconds, args.frame_ms, args.rate, pids, args.out))
    else:
        import tempfile

        raise_fd_limit()  # the children inherit it
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
        result["name"] = args.name
        if args.notes:
            result["notes"] = args.notes
        keep_unmeasured_phases(result, RESULTS / f"{args.name}.json")
        write(result, args.name)
        print((RESULTS / f"{args.name}.md").read_text())


def _run_loop(coro: Any) -> None:
    """uvloop where installed (as uvicorn picks it for the gateway), so the load costs less CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


if __name__ == "__main__":
    main()
