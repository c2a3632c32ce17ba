"""``livetranslate stream FILE.wav``: send a recording to a gateway and print captions as they come.

The file goes out in its own rate and channel count (the gateway resamples), as fast as the
gateway reads it or, with ``--realtime``, paced like a live microphone. A dropped connection is
resumed with the session id and the last final received, so nothing is printed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "ws://127.0.0.1:8080/v1/stream"


@dataclass
class Wav:
    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * 2

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.bytes_per_second


def read_wav(path: Path) -> Wav:
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise SystemExit(f"{path}: only 16-bit PCM WAV is supported "
                                 f"(convert with: sox IN -b 16 OUT.wav)")
            return Wav(w.readframes(w.getnframes()), w.getframerate(), w.getnchannels())
    except (wave.Error, EOFError) as exc:
        raise SystemExit(f"{path}: not a WAV file ({exc})") from exc


@dataclass
class Printer:
    out: TextIO
    as_json: bool
    partials: bool
    finals: list[dict[str, Any]] = field(default_factory=list)
    translations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    _partial_shown: bool = False

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "transcript.final":
            self.finals.append(ev)
        elif kind == "translation":
            self.translations.append(ev)
        elif kind == "error":
            self.errors.append(ev)
        if self.as_json:
            self.out.write(json.dumps(ev) + "\n")
            self.out.flush()
            return
        tty = self.out.isatty()
        if kind == "transcript.partial":
            if self.partials or tty:
                line = f"  … {ev['text']}"
                self.out.write(("\r\033[K" + line) if tty else line + "\n")
                self._partial_shown = tty
            self.out.flush()
            return
        if self._partial_shown:
            self.out.write("\r\033[K")
            self._partial_shown = False
        if kind == "transcript.final":
            who = f" {ev['speaker']}:" if ev.get("speaker") else ""
            lat = f"  ({ev['latency']:.2f} s)" if isinstance(ev.get("latency"), float) else ""
            self.out.write(f"[{ev['start']:7.2f}-{ev['end']:7.2f}] #{ev['segmentId']}{who} {ev['text']}{lat}\n")
        elif kind == "translation":
            self.out.write(f"{'':>19}{ev['language']}: {ev['text']}\n")
        elif kind == "error":
            where = f" (segment {ev['segmentId']}, {ev.get('language')})" if ev.get("segmentId") is not None else ""
            self.out.write(f"error {ev['code']}{where}: {ev['message']}\n")
        elif kind == "session.started":
            self.out.write(f"session {ev['sessionId']}{' resumed' if ev.get('resumed') else ''}\n")
        elif kind == "session.ended":
            self.out.write(f"session {ev['sessionId']} ended\n")
        self.out.flush()


async def stream_file(wav: Wav, url: str, *, realtime: bool, chunk_ms: int, token: str | None,
                      targets: list[str] | None, printer: Printer, max_reconnects: int = 5,
                      session_id: str | None = None) -> bool:
    """Stream ``wav`` through one session; True once ``session.ended`` arrived."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    headers = {"Authorization": f"Bearer {token}"} if token else None
    chunk = max(2 * wav.channels, wav.bytes_per_second * chunk_ms // 1000 // (2 * wav.channels) * 2 * wav.channels)
    pos = 0
    last_final: int | None = None
    sid = session_id
    attempts = 0
    while True:
        try:
            async with connect(url, additional_headers=headers, max_size=4 * 1024 * 1024,
                               open_timeout=10) as ws:
                start: dict[str, Any] = {"type": "session.start", "sampleRate": wav.sample_rate,
                                         "encoding": "pcm_s16le", "channels": wav.channels}
                if targets:
                    start["targetLanguages"] = targets
                if sid:
                    start["sessionId"] = sid
                    start["lastSegmentId"] = -1 if last_final is None else last_final
                await ws.send(json.dumps(start))

                async def send() -> None:
                    nonlocal pos
                    paced_from = time.monotonic() - pos / wav.bytes_per_second
                    while pos < len(wav.pcm):
                        if realtime:
                            due = paced_from + pos / wav.bytes_per_second
                            delay = due - time.monotonic()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        await ws.send(wav.pcm[pos:pos + chunk])
                        pos += chunk
                    await ws.send('{"type": "session.end"}')

                sender = asyncio.create_task(send())
                try:
                    async for raw in ws:
                        ev = json.loads(raw)
                        if ev.get("type") == "session.started":
                            sid = ev["sessionId"]
                            attempts = 0
                        if ev.get("type") == "transcript.final":
                            if last_final is not None and ev["segmentId"] <= last_final:
                                continue
                            last_final = ev["segmentId"]
                        printer.event(ev)
                        if ev.get("type") == "error" and ev.get("code") in ("capacity_exceeded",
                                                                            "unsupported_language"):
                            return False
                        if ev.get("type") == "session.ended":
                            return True
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                if ws.close_code in (1008, 1013):
                    printer.out.write(f"closed by the gateway ({ws.close_code}): {ws.close_reason}\n")
                    return False
        except InvalidStatus as exc:
            printer.out.write(f"refused by the gateway: HTTP {exc.response.status_code}\n")
            return False
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            if attempts >= max_reconnects or sid is None:
                printer.out.write(f"connection failed: {exc}\n")
                return False
            printer.out.write(f"connection lost ({exc}); resuming session {sid}\n")
        attempts += 1
        if attempts > max_reconnects:
            return False
        await asyncio.sleep(min(5.0, 0.25 * 2 ** attempts))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livetranslate stream", description=__doc__)
    parser.add_argument("file", type=Path, help="16-bit PCM WAV, any rate from 8 to 48 kHz, mono or stereo")
    parser.add_argument("--url", default=os.environ.get("LT_GATEWAY_URL", DEFAULT_URL),
                        help=f"gateway WebSocket (default {DEFAULT_URL})")
    parser.add_argument("--realtime", action="store_true", help="pace the audio like a live microphone")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per frame (default 100 ms)")
    parser.add_argument("--token", default=os.environ.get("LT_TOKEN"), help="bearer token (or $LT_TOKEN)")
    parser.add_argument("--lang", action="append", dest="targets",
                        help="target language (repeatable); default: the pipeline's")
    parser.add_argument("--session-id", help="resume or name a session")
    parser.add_argument("--json", action="store_true", help="print every event as one JSON line")
    parser.add_argument("--partials", action="store_true", help="print partials on their own lines")
    args = parser.parse_args(argv)

    wav = read_wav(args.file)
    printer = Printer(sys.stdout, args.json, args.partials)
    try:
        ok = asyncio.run(stream_file(wav, args.url, realtime=args.realtime, chunk_ms=args.chunk_ms,
                                     token=args.token, targets=args.targets, printer=printer,
                                     session_id=args.session_id))
    except KeyboardInterrupt:
        return 130
    if not args.json:
        lats = [f["latency"] for f in printer.finals if isinstance(f.get("latency"), float)]
        summary = (f"{len(printer.finals)} finals, {len(printer.translations)} translations, "
                   f"{len(printer.errors)} errors")
        if lats:
            summary += f", median caption latency {sorted(lats)[len(lats) // 2]:.2f} s"
        print(summary, file=sys.stderr)
    return 0 if ok else 1
