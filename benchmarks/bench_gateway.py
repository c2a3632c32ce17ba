"""Gateway capacity: connections held with RSS per connection, and gateway-added latency under
many live audio sessions.

Three processes, so the figures are the gateway's own: the gateway as it runs in production
(``livetranslate serve gateway``), a lightweight audio stand-in speaking the internal protocol
(a final for every second of audio, sent the moment that second arrives), and the client load in
a process of its own. The latency measured is client -> gateway -> stand-in -> gateway -> client
for the chunk that completes each second of audio; the stand-in and the client share the same
2 cores, so the figure is an upper bound on what the gateway adds. A 1-session run in the same
invocation is the baseline. Run: ``.venv/bin/python -P benchmarks/bench_gateway.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_BYTES = 3200  # 100 ms of 16 kHz PCM16
SECOND = 32000


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------ audio stand-in process


async def standin(port: int) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        start = json.loads(await ws.recv())
        offset = float(start.get("timeOffset", 0.0))
        await ws.send(json.dumps({"type": "ready", "device": "cpu", "model": "stand-in"}))
        received = 0
        async for msg in ws:
            if isinstance(msg, bytes):
                before = received
                received += len(msg)
                if received // SECOND > before // SECOND:
                    end = offset + (received // SECOND)
                    await ws.send(json.dumps({"type": "final", "text": f"second {int(end)}",
                                              "start": end - 1.0, "end": end}))
            elif json.loads(msg).get("type") == "flush":
                await ws.send('{"type": "flushed"}')

    async with serve(handler, "127.0.0.1", port, max_size=4 * 1024 * 1024, compression=None):
        await asyncio.Future()


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
    out.write_text(json.dumps({"held": len(conns), "failures": failures,
                               "seconds": time.monotonic() - began}))
    await asyncio.sleep(3600)  # held until the harness has measured and kills us


async def client_audio(url: str, n: int, seconds: float, out: Path) -> None:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    errors = 0

    async def session(i: int) -> None:
        nonlocal errors
        await asyncio.sleep(i * 1.0 / max(1, n))  # spread the chunk phases over 100 ms... and 1 s
        try:
            async with connect(url, open_timeout=60, compression=None) as ws:
                await ws.send('{"type": "session.start", "targetLanguages": []}')
                await ws.recv()
                sent_at: dict[int, float] = {}

                async def reader() -> None:
                    async for raw in ws:
                        ev = json.loads(raw)
                        if ev["type"] == "transcript.final":
                            t = sent_at.pop(round(ev["end"]), None)
                            if t is not None:
                                latencies.append(time.monotonic() - t)

                task = asyncio.create_task(reader())
                chunk = b"\x00\x01" * (CHUNK_BYTES // 2)
                t0 = time.monotonic()
                total = 0
                k = 0
                while time.monotonic() - t0 < seconds:
                    due = t0 + k * 0.1
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    total += CHUNK_BYTES
                    if total % SECOND == 0:
                        sent_at[total // SECOND] = time.monotonic()
                    await ws.send(chunk)
                    k += 1
                await asyncio.sleep(2.0)
                task.cancel()
        except Exception:  # noqa: BLE001 - counted and reported
            errors += 1

    await asyncio.gather(*(session(i) for i in range(n)))
    out.write_text(json.dumps({"latencies": latencies, "errors": errors}))


# ------------------------------------------------------------------ harness


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-P", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


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


def run(connections: int, audio_sessions: list[int], seconds: float, tmp: Path) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    audio_port, gw_port = free_port(), free_port()
    standin_proc = spawn([me, "standin", "--port", str(audio_port)])
    gw_env = {"LT_GATEWAY_AUDIO_URL": f"http://127.0.0.1:{audio_port}",
              "LT_GATEWAY_TRANSLATION_URL": "http://127.0.0.1:9", "LT_GATEWAY_MAX_SESSIONS": "100000",
              "LT_GATEWAY_PIPELINE": "bench", "LT_LOG_LEVEL": "warning",
              "LT_PIPELINE_CONFIG": str(tmp / "absent.json")}
    gw = spawn(["-m", "livetranslate.cli", "serve", "gateway", "--host", "127.0.0.1", "--port", str(gw_port)],
               gw_env)
    url = f"ws://127.0.0.1:{gw_port}/v1/stream"
    result: dict[str, Any] = {"loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        time.sleep(1.0)
        base = rss_mib(gw.pid)
        result["gateway_rss_idle_mib"] = round(base, 1)

        out = tmp / "hold.json"
        client = spawn([me, "client-hold", "--url", url, "-n", str(connections), "--out", str(out)])
        held = wait_file(out, client, 600)
        time.sleep(2.0)
        rss = rss_mib(gw.pid)
        result["hold"] = {
            "connections_requested": connections, "sessions_held": held["held"],
            "failures": held["failures"], "open_seconds": round(held["seconds"], 1),
            "gateway_rss_mib": round(rss, 1),
            "rss_per_connection_kib": round((rss - base) * 1024 / max(1, held["held"]), 1),
            "loadavg": os.getloadavg(),
        }
        print(f"held {held['held']}/{connections} sessions: gateway RSS {rss:.0f} MiB "
              f"({result['hold']['rss_per_connection_kib']} KiB per connection)", flush=True)
        stop(client)
        wait_idle(gw_port)

        result["latency"] = []
        for n in audio_sessions:
            out = tmp / f"audio-{n}.json"
            client = spawn([me, "client-audio", "--url", url, "-n", str(n), "--seconds", str(seconds),
                            "--out", str(out)])
            data = wait_file(out, client, seconds + 300)
            stop(client)
            lat = [x * 1000 for x in data["latencies"]]
            row = {"sessions": n, "samples": len(lat), "errors": data["errors"],
                   "p50_ms": round(percentile(lat, 0.50), 1), "p95_ms": round(percentile(lat, 0.95), 1),
                   "p99_ms": round(percentile(lat, 0.99), 1), "loadavg": os.getloadavg()}
            result["latency"].append(row)
            print(f"{n} live audio sessions: round trip through the gateway p50 {row['p50_ms']} ms, "
                  f"p99 {row['p99_ms']} ms ({len(lat)} samples, {row['errors']} errors)", flush=True)
            wait_idle(gw_port)
    finally:
        stop(gw)
        stop(standin_proc)
    return result


def write(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    h = result["hold"]
    lines = [
        "# Gateway capacity and added latency",
        "",
        (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {result['cpus']} shared cores "
         f"(load average before: {', '.join(f'{x:.2f}' for x in result['loadavg_before'])}); gateway, "
         "audio stand-in and client load in three processes. `benchmarks/bench_gateway.py`."),
        "",
        "| connections held (session started) | failures | gateway RSS | RSS per connection | target |",
        "| --- | --- | --- | --- | --- |",
        (f"| {h['sessions_held']:,} of {h['connections_requested']:,} | {h['failures']} | "
         f"{h['gateway_rss_mib']:.0f} MiB (idle {result['gateway_rss_idle_mib']:.0f} MiB) | "
         f"{h['rss_per_connection_kib']} KiB | 10,000 under 1 GiB |"),
        "",
        "| live audio sessions (100 ms chunks, real time) | round trip p50 | p95 | p99 | samples | load avg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["latency"]:
        lines.append(f"| {r['sessions']} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['p99_ms']} ms | "
                     f"{r['samples']} | {r['loadavg'][0]:.2f} |")
    lines += ["", ("Round trip = client sends the chunk completing a second of audio -> gateway -> stand-in "
                   "-> final -> gateway -> client: an upper bound on gateway-added latency (target p99 under "
                   "20 ms at 1,000 sessions), since client and stand-in share the same cores.")]
    (RESULTS / f"{result['name']}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("standin")
    p.add_argument("--port", type=int, required=True)
    for name in ("client-hold", "client-audio"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("-n", type=int, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--sessions", default="1,1000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--name", default="gateway", help="results file name under benchmarks/results")
    args = parser.parse_args()
    if args.cmd == "standin":
        raise_fd_limit()
        asyncio.run(standin(args.port))
    elif args.cmd == "client-hold":
        asyncio.run(client_hold(args.url, args.n, args.out))
    elif args.cmd == "client-audio":
        asyncio.run(client_audio(args.url, args.n, args.seconds, args.out))
    else:
        import tempfile

        raise_fd_limit()  # the children inherit it
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.connections, [int(x) for x in args.sessions.split(",")], args.seconds, Path(tmp))
        result["name"] = args.name
        write(result)
        print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
