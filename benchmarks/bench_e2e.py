"""End-to-end caption latency through `livetranslate up` (real Whisper tiny.en on CPU, Apertium):
end of speech -> final caption at the client, and -> its translation, with 1, 4 and 8 sessions
streaming real speech in real time at once.

"End of speech" is the session time at which a final segment ends (``end``) on the speaker's
clock: the client paces audio like a microphone with 100 ms buffers (sample t is spoken at t0 + t
and leaves with its chunk, at most 100 ms later), so the figure includes that capture delay. The
gateway's own measure (``latency`` on the final event: arrival of that sample -> final sent) is
recorded next to it. Run: ``.venv/bin/python -P benchmarks/bench_e2e.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from livetranslate_testing.figures import percentile, provenance, provenance_line, write_result
from livetranslate_testing.speech import SENTENCES, Utterance, compose, to_pcm16, word_error_rate

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_SECONDS = 0.1


async def session(url: str, pcm: bytes, delay: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    finals: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {"final_latency": [], "translation_latency": [], "gateway_latency": [], "text": ""}
    async with connect(url, max_size=4 * 1024 * 1024) as ws:
        await ws.send(json.dumps({"type": "session.start", "sampleRate": 16000}))
        json.loads(await ws.recv())
        t0 = time.monotonic()

        async def send() -> None:
            step = int(16000 * CHUNK_SECONDS) * 2
            for k, i in enumerate(range(0, len(pcm), step)):
                # Like a microphone: a chunk leaves once its last sample has been spoken.
                await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK_SECONDS - time.monotonic()))
                await ws.send(pcm[i : i + step])
            await ws.send('{"type": "session.end"}')

        sender = asyncio.create_task(send())
        async for raw in ws:
            now = time.monotonic()
            ev = json.loads(raw)
            if ev["type"] == "transcript.final":
                finals[ev["segmentId"]] = ev
                # The speaker finished the segment at t0 + end.
                out["final_latency"].append(now - (t0 + ev["end"]))
                if ev.get("latency") is not None:
                    out["gateway_latency"].append(ev["latency"])
            elif ev["type"] == "translation" and ev["segmentId"] in finals:
                end = finals[ev["segmentId"]]["end"]
                out["translation_latency"].append(now - (t0 + end))
            elif ev["type"] == "session.ended":
                break
        await sender
    out["text"] = " ".join(finals[k]["text"] for k in sorted(finals))
    return out


async def run_sessions(url: str, pcm: bytes, n: int) -> list[dict[str, Any]]:
    return await asyncio.gather(*(session(url, pcm, i * 0.37) for i in range(n)))


def start_up(log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`livetranslate up --port 0 ARGS`, until it prints its page; its output goes to ``log``."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "livetranslate.cli", "up", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 600
    with log.open("w") as f:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            f.write(line)
            if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                return proc, f"ws://127.0.0.1:{m.group(1)}/v1/stream"
            if not line and proc.poll() is not None:
                break
    raise RuntimeError(f"livetranslate up did not get ready; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument(
        "--name",
        default="e2e",
        help="stem of the results files in benchmarks/results (the whole .md is rewritten)",
    )
    args = parser.parse_args()
    samples, _spans = compose([Utterance(t, pause_after=1.0) for t in SENTENCES[:4]])
    pcm = to_pcm16(samples)
    reference = " ".join(SENTENCES[:4])
    result: dict[str, Any] = {
        **provenance("e2e"),
        "audio_seconds": round(len(samples) / 16000, 2),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_up(Path(tmp) / "up.log")
        try:
            asyncio.run(run_sessions(url, pcm, 1))  # warm-up: first decoder passes are slower
            for n in [int(x) for x in args.sessions.split(",")]:
                load = os.getloadavg()
                outs = asyncio.run(run_sessions(url, pcm, n))
                fin = [x * 1000 for o in outs for x in o["final_latency"]]
                tr = [x * 1000 for o in outs for x in o["translation_latency"]]
                gwl = [x * 1000 for o in outs for x in o["gateway_latency"]]
                wer = sum(word_error_rate(reference, o["text"]) for o in outs) / n
                row = {
                    "sessions": n,
                    "finals": len(fin),
                    "translations": len(tr),
                    "final_p50_ms": round(percentile(fin, 0.5)),
                    "final_p95_ms": round(percentile(fin, 0.95)),
                    "translation_p50_ms": round(percentile(tr, 0.5)),
                    "translation_p95_ms": round(percentile(tr, 0.95)),
                    "gateway_measured_final_p95_ms": round(percentile(gwl, 0.95)),
                    "mean_wer": round(wer, 3),
                    "loadavg_at_start": load,
                    "loadavg_after": os.getloadavg(),
                }
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    write_result(RESULTS / f"{args.name}.json", result)
    lines = [
        "# End-to-end caption latency through `livetranslate up`",
        "",
        (
            f"{provenance_line(result)}, shared with other work; "
            f"{result['audio_seconds']} s of espeak-ng speech per session, streamed in real time; faster-whisper "
            f"tiny.en int8 on CPU, Apertium en->es. `{result['command']}`."
        ),
        "",
        "| sessions | finals | end of speech -> final p50 | p95 | -> translation p50 | p95 | gateway-measured final p95 | mean WER | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['sessions']} | {r['finals']} | {r['final_p50_ms']} ms | {r['final_p95_ms']} ms | "
            f"{r['translation_p50_ms']} ms | {r['translation_p95_ms']} ms | "
            f"{r['gateway_measured_final_p95_ms']} ms | {r['mean_wer']} | "
            f"{r['loadavg_at_start'][0]:.2f} |"
        )
    lines += ["", "Targets at 4 sessions on 2 cores: p95 final under 1.5 s, p95 translation under 2.0 s."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
