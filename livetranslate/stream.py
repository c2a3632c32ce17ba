"""``livetranslate stream FILE.wav``: send a recording to a gateway and print captions as they come.

The file goes out in its own rate and channel count (the gateway resamples), as fast as the
pipeline transcribes it (a few seconds ahead of the last word heard, never slower than real time)
or, with ``--realtime``, paced like a live microphone. A dropped connection is
resumed with the session id and the last final received, so nothing is printed twice, and the audio
goes on from the second the gateway says it has, so none is lost in flight. A replica that closes
with 1012 (it drains: the operator removes it) is left at once for another one, which takes the
session over.
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
    handovers: int = 0  # connections a gateway replica closed with 1012 to hand the session over
    reconnects: int = 0  # connections lost, then tried again
    refusals: int = 0  # session.start refused (a draining replica), then tried again
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
    streamer = _Streamer(wav, url, realtime, chunk_ms, token, targets, printer, lead_seconds)
    streamer.sid = session_id
    return await streamer.run(max_reconnects)


# How one connection ended, and what the client does next.
_ENDED, _FAILED, _HANDOVER, _REFUSED, _LOST = "ended", "failed", "handover", "refused", "lost"
# A replica that drains refuses new sessions (error "draining", close 1012) until the Service
# stops sending it clients: try again soon, this many times, not counted as failures.
MAX_REFUSALS = 50


class _Streamer:
    """One session across connections: the session id, the last final received (``lastSegmentId``
    on resume) and the audio position, which a resume may move back to the second the gateway
    says it has (``audioSeconds``): audio in flight when a connection closed is sent again."""

    def __init__(
        self,
        wav: Wav,
        url: str,
        realtime: bool,
        chunk_ms: int,
        token: str | None,
        targets: list[str] | None,
        printer: Printer,
        lead_seconds: float,
    ) -> None:
        self.wav, self.url, self.realtime, self.printer = wav, url, realtime, printer
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self.targets = targets
        self.lead_seconds = lead_seconds
        frame = 2 * wav.channels
        self.frame = frame
        self.chunk = max(frame, wav.bytes_per_second * chunk_ms // 1000 // frame * frame)
        self.sid: str | None = None
        self.last_final: int | None = None
        self.pos = 0
        self.base: float | None = None  # session seconds at which the file's first sample sits
        self.clock: float | None = None  # --realtime: monotonic time of the file's first sample
        self.close_note = ""
        self.started = False  # session.started came on the current connection

    async def run(self, max_reconnects: int) -> bool:
        attempts = refusals = quick = 0
        while True:
            self.started = False
            heard = self.last_final
            outcome = await self._connection()
            if outcome == _ENDED:
                return True
            if outcome == _FAILED:
                return False
            if self.started:  # the session was live again: earlier failures are behind it
                attempts = refusals = 0
            if outcome == _HANDOVER:
                # The replica hands the session over (it drains, or restarts): come back at once,
                # unless handovers follow each other with nothing heard in between.
                self.printer.handovers += 1
                self.printer.out.write(f"gateway replica going away; resuming session {self.sid}\n")
                quick = quick + 1 if self.last_final == heard else 0
                if quick > 3:
                    await asyncio.sleep(min(2.0, 0.1 * quick))
                continue
            if outcome == _REFUSED:
                self.printer.refusals += 1
                refusals += 1
                if refusals > MAX_REFUSALS:
                    self.printer.out.write("every gateway replica refused the session\n")
                    return False
                await asyncio.sleep(min(1.0, 0.05 * 2**refusals))
                continue
            self.printer.reconnects += 1
            attempts += 1
            if attempts > max_reconnects or self.sid is None:
                self.printer.out.write(f"connection failed: {self.close_note}\n")
                return False
            self.printer.out.write(f"connection lost ({self.close_note}); resuming session {self.sid}\n")
            await asyncio.sleep(min(5.0, 0.25 * 2**attempts))

    def _start_message(self) -> dict[str, Any]:
        wav = self.wav
        start: dict[str, Any] = {
            "type": "session.start",
            "sampleRate": wav.sample_rate,
            "encoding": "pcm_s16le",
            "channels": wav.channels,
        }
        if self.targets:
            start["targetLanguages"] = self.targets
        if self.sid:
            start["sessionId"] = self.sid
            start["lastSegmentId"] = -1 if self.last_final is None else self.last_final
        return start

    async def _connection(self) -> str:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        refused = False
        try:
            async with connect(
                self.url, additional_headers=self.headers, max_size=4 * 1024 * 1024, open_timeout=10
            ) as ws:
                await ws.send(json.dumps(self._start_message()))
                sender: asyncio.Task[None] | None = None
                try:
                    async for raw in ws:
                        ev = json.loads(raw)
                        kind = ev.get("type")
                        if kind == "session.started":
                            self.started = True
                            self._started(ev)
                            sender = asyncio.create_task(self._send(ws))
                        elif kind == "transcript.final":
                            if self.last_final is not None and ev["segmentId"] <= self.last_final:
                                continue
                            self.last_final = ev["segmentId"]
                        self.printer.event(ev)
                        code = ev.get("code") if kind == "error" else None
                        if code in ("capacity_exceeded", "unsupported_language"):
                            return _FAILED
                        refused = refused or code == "draining"
                        if kind == "session.ended":
                            return _ENDED
                except ConnectionClosed:
                    pass  # the close code says what comes next
                finally:
                    if sender is not None:
                        sender.cancel()
                        await asyncio.gather(sender, return_exceptions=True)
                code, reason = ws.close_code, ws.close_reason
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (502, 503, 504):  # a proxy with no gateway behind it for a moment
                self.close_note = f"HTTP {status}"
                return _LOST
            self.printer.out.write(f"refused by the gateway: HTTP {status}\n")
            return _FAILED
        except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
            self.close_note = str(exc) or type(exc).__name__
            return _LOST
        self.close_note = f"{code} {reason}".strip()
        if code in (1008, 1013):
            self.printer.out.write(f"closed by the gateway ({code}): {reason}\n")
            return _FAILED
        if code == 1012:
            return _HANDOVER if self.started and not refused else _REFUSED
        return _REFUSED if refused else _LOST

    def _started(self, ev: dict[str, Any]) -> None:
        """Where this file's audio goes on: a resumed session says which second it has."""
        self.sid = ev["sessionId"]
        audio = ev.get("audioSeconds")
        if not ev.get("resumed") and self.last_final is not None:
            # The gateway no longer had the session (a store without it): a new one, numbered
            # from 0 again, so the finals received before say nothing about the ones to come.
            self.printer.out.write(f"session {self.sid} was not kept by the gateway; it starts again\n")
            self.last_final = None
        if not ev.get("resumed") or not isinstance(audio, int | float):
            if self.base is None:
                self.base = 0.0
            return
        if self.base is None:  # this file joins a session that had audio before it
            self.base = float(audio)
            return
        at = round((float(audio) - self.base) * self.wav.sample_rate) * self.frame
        self.pos = max(0, min(self.pos, at))

    async def _send(self, ws: Any) -> None:
        wav, printer = self.wav, self.printer
        bps = wav.bytes_per_second
        base = self.base or 0.0
        # --realtime keeps one clock for the whole session: after a reconnect the audio that a
        # live microphone would have captured meanwhile goes out at once, as a client's buffer would.
        if self.realtime and self.clock is None:
            self.clock = time.monotonic() - self.pos / bps
        paced_from = self.clock if self.realtime else time.monotonic() - self.pos / bps
        assert paced_from is not None
        while self.pos < len(wav.pcm):
            due = paced_from + self.pos / bps
            if not self.realtime and base + self.pos / bps <= printer.heard_until + self.lead_seconds:
                due = 0.0  # the transcripts keep up: send on
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.1) if not self.realtime else delay)
                continue
            await ws.send(wav.pcm[self.pos : self.pos + self.chunk])
            self.pos += self.chunk
        await ws.send('{"type": "session.end"}')


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
