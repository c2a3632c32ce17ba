"""``livetranslate stream FILE.wav``: send a recording to a gateway and print captions as they come.

The file goes out in its own rate and channel count (the gateway resamples), as fast as the
pipeline transcribes it (a few seconds ahead of the last word heard, never slower than real time)
or, with ``--realtime``, paced like a live microphone. A dropped connection is
resumed with the session id and the last final received, so nothing is printed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from livetranslate.text import join_texts

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
                raise SystemExit(
                    f"{path}: only 16-bit PCM WAV is supported (convert with: sox IN -b 16 OUT.wav)"
                )
            return Wav(w.readframes(w.getnframes()), w.getframerate(), w.getnchannels())
    except (wave.Error, EOFError) as exc:
        raise SystemExit(f"{path}: not a WAV file ({exc})") from exc
    except OSError as exc:  # missing, a directory, unreadable
        raise SystemExit(f"livetranslate stream: cannot read {path}: {exc.strerror or exc}") from exc


@dataclass
class Printer:
    """Prints what a listener reads: each sentence's transcript with its translations under it.

    On a terminal the sentence being spoken is one live line at the bottom (its finals, the
    current partial and its translation so far), rewritten in place; piped output gets plain
    lines only, one per sentence and one per translation. Finals of a pipeline without target
    languages (or with ``--finals``) are printed as they come.
    """

    out: TextIO
    as_json: bool
    partials: bool
    show_finals: bool = False
    finals: list[dict[str, Any]] = field(default_factory=list)
    translations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    heard_until: float = 0.0  # session seconds the transcripts have reached (flow control)
    _by_segment: dict[int, dict[str, Any]] = field(default_factory=dict)
    _printed_sentences: set[int] = field(default_factory=set)
    _open_text: str = ""
    _partial_text: str = ""
    _translation_partial: str = ""
    _targets: bool = True
    _live_shown: bool = False

    @property
    def sentences(self) -> int:
        return len(self._printed_sentences)

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind in ("transcript.partial", "transcript.final") and isinstance(ev.get("end"), int | float):
            self.heard_until = max(self.heard_until, float(ev["end"]))
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
        if kind == "session.started":
            self._targets = bool(ev.get("targetLanguages", True))
        if kind == "transcript.partial":
            self._partial_text = ev.get("text", "")
            if self.partials and not self.out.isatty():
                self._line(f"  … {self._partial_text}")
        elif kind == "transcript.final":
            self._by_segment[ev["segmentId"]] = ev
            self._partial_text = ""
            if self.show_finals or not self._targets:
                who = f" {ev['speaker']}:" if ev.get("speaker") else ""
                lat = f"  ({ev['latency']:.2f} s)" if isinstance(ev.get("latency"), float) else ""
                self._line(f"[{ev['start']:7.2f}-{ev['end']:7.2f}] #{ev['segmentId']}{who} {ev['text']}{lat}")
            else:
                self._open_text = join_texts([self._open_text, ev["text"]])
        elif kind == "translation.partial":
            self._translation_partial = f"{ev['language']}: {ev['text']}"
        elif kind == "translation":
            self._sentence_header(ev)
            self._line(f"    {ev['language']}: {ev['text']}" + _quality_note(ev.get("quality")))
        elif kind == "error":
            if ev.get("sentenceId") is not None:
                self._sentence_header(ev)
            where = f" ({ev.get('language')})" if ev.get("language") else ""
            self._line(f"error {ev['code']}{where}: {ev['message']}")
        elif kind == "session.started":
            self._line(f"session {ev['sessionId']}{' resumed' if ev.get('resumed') else ''}")
        elif kind == "session.ended":
            self._line(f"session {ev['sessionId']} ended")
        self._live()

    def _sentence_header(self, ev: dict[str, Any]) -> None:
        """The sentence's transcript, once, before its first translation (or error)."""
        sid = ev.get("sentenceId")
        if sid is None or sid in self._printed_sentences:
            return
        self._printed_sentences.add(sid)
        finals = [self._by_segment.pop(i) for i in ev.get("segmentIds", []) if i in self._by_segment]
        if not finals:
            return
        text = join_texts([f["text"] for f in finals])
        who = f" {finals[0]['speaker']}:" if finals[0].get("speaker") else ""
        if not self.show_finals:
            self._line(f"[{finals[0]['start']:7.2f}-{finals[-1]['end']:7.2f}]{who} {text}")
        done = text
        if self._open_text.startswith(done):
            self._open_text = self._open_text[len(done) :].strip()
        else:
            self._open_text = ""
        self._translation_partial = ""

    def _line(self, text: str) -> None:
        if self._live_shown:
            self.out.write("\r\033[K")
            self._live_shown = False
        self.out.write(text + "\n")

    def _live(self) -> None:
        """On a terminal: the sentence being spoken, rewritten in place on the last line."""
        if self.out.isatty():
            heard = join_texts([self._open_text, self._partial_text])
            line = f"  … {heard}" + (f"  ⟶  {self._translation_partial}" if self._translation_partial else "")
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r\033[K" + (line if len(line) <= width else "…" + line[-(width - 1) :]))
            self._live_shown = bool(heard or self._translation_partial)
        self.out.flush()


def _quality_note(quality: Any) -> str:
    return f"  [{quality}]" if isinstance(quality, str) and quality not in ("ok", "") else ""


# Without --realtime, audio goes out as fast as the transcripts follow it: at most this many seconds
# ahead of the last word transcribed, and never slower than real time (a long pause in the file
# gives no transcripts to follow). The audio service reports "overloaded" once 20 s of speech
# wait for its decoder (LT_AUDIO_LIMITS__MAX_BACKLOG_SECONDS); this keeps a file well below that.
LEAD_SECONDS = 8.0


async def stream_file(
    wav: Wav,
    url: str,
    *,
    realtime: bool,
    chunk_ms: int,
    token: str | None,
    targets: list[str] | None,
    printer: Printer,
    max_reconnects: int = 5,
    session_id: str | None = None,
    lead_seconds: float = LEAD_SECONDS,
) -> bool:
    """Stream ``wav`` through one session; True once ``session.ended`` arrived."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    headers = {"Authorization": f"Bearer {token}"} if token else None
    chunk = max(
        2 * wav.channels, wav.bytes_per_second * chunk_ms // 1000 // (2 * wav.channels) * 2 * wav.channels
    )
    pos = 0
    last_final: int | None = None
    sid = session_id
    attempts = 0
    while True:
        try:
            async with connect(
                url, additional_headers=headers, max_size=4 * 1024 * 1024, open_timeout=10
            ) as ws:
                start: dict[str, Any] = {
                    "type": "session.start",
                    "sampleRate": wav.sample_rate,
                    "encoding": "pcm_s16le",
                    "channels": wav.channels,
                }
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
                        due = paced_from + pos / wav.bytes_per_second
                        if not realtime and pos / wav.bytes_per_second <= printer.heard_until + lead_seconds:
                            due = 0.0  # the transcripts keep up: send on
                        delay = due - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(min(delay, 0.1) if not realtime else delay)
                            continue
                        await ws.send(wav.pcm[pos : pos + chunk])
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
                        if ev.get("type") == "error" and ev.get("code") in (
                            "capacity_exceeded",
                            "unsupported_language",
                        ):
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
        await asyncio.sleep(min(5.0, 0.25 * 2**attempts))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate stream",
        description="Send a WAV recording to a LiveTranslate gateway and print the captions and "
        "translations as they come. A dropped connection resumes where it left off.",
    )
    parser.add_argument("file", type=Path, help="16-bit PCM WAV, any rate from 8 to 48 kHz, mono or stereo")
    parser.add_argument(
        "--url",
        default=os.environ.get("LT_GATEWAY_URL", DEFAULT_URL),
        help=f"gateway WebSocket (default {DEFAULT_URL})",
    )
    parser.add_argument("--realtime", action="store_true", help="pace the audio like a live microphone")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per frame (default 100 ms)")
    parser.add_argument("--token", default=os.environ.get("LT_TOKEN"), help="bearer token (or $LT_TOKEN)")
    parser.add_argument(
        "--lang",
        action="append",
        dest="targets",
        help="target language (repeatable); default: the pipeline's",
    )
    parser.add_argument("--session-id", help="resume or name a session")
    parser.add_argument("--json", action="store_true", help="print every event as one JSON line")
    parser.add_argument("--partials", action="store_true", help="print partials on their own lines")
    parser.add_argument(
        "--finals", action="store_true", help="print every final as it comes, not only whole sentences"
    )
    args = parser.parse_args(argv)

    wav = read_wav(args.file)
    printer = Printer(sys.stdout, args.json, args.partials, show_finals=args.finals)
    try:
        ok = asyncio.run(
            stream_file(
                wav,
                args.url,
                realtime=args.realtime,
                chunk_ms=args.chunk_ms,
                token=args.token,
                targets=args.targets,
                printer=printer,
                session_id=args.session_id,
            )
        )
    except KeyboardInterrupt:
        return 130
    if not args.json:
        lats = [f["latency"] for f in printer.finals if isinstance(f.get("latency"), float)]
        summary = (
            f"{len(printer.finals)} finals, {printer.sentences} sentences, "
            f"{len(printer.translations)} translations, {len(printer.errors)} errors"
        )
        if lats:
            summary += f", median caption latency {sorted(lats)[len(lats) // 2]:.2f} s"
        print(summary, file=sys.stderr)
    return 0 if ok else 1
