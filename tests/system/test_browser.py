"""The captions page in a real headless Chromium.

Two ways. Against ``livetranslate up`` with a WAV of real speech as the microphone: the page
captures through its AudioWorklet at 16 kHz (Chromium resamples the microphone), or at the
browser's own rate (44.1/48 kHz, which the gateway resamples) with ``?rate=native`` or when the
browser refuses a 16 kHz microphone source; each way captions and their translations appear, one
row per sentence. The 16 kHz run goes on for a minute of speech: the page follows the live edge,
stops following when the user scrolls up, and "Jump to live" brings it back; a phone-width window
has no horizontal overflow. Against a scripted gateway (an aiohttp server on loopback that plays
protocol events the test chooses): the rendering contract, event by event (partials and
translation.partial replaced in place, finals grouped into sentences by the translations' segmentIds,
speaker badges, failed translations, upstream and reconnect states), with 1-4 target languages at
desktop and phone width. ``LT_UPDATE_DOCS=1`` refreshes docs/img/captions.png (1280x760) and
docs/img/captions-phone.png (390x844) from the 16 kHz run."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from itertools import count, pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect

from livetranslate_testing.speech import SENTENCES, Utterance, compose, write_wav
from tests.system.conftest import ROOT, Up

pytestmark = pytest.mark.slow

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,760",
    # A wheel turn lands at once instead of animating, so a snapshot never catches it half-way.
    "--disable-smooth-scrolling",
    "--remote-debugging-port=0",
]
SCREENSHOT = ROOT / "docs" / "img" / "captions.png"
PHONE_SCREENSHOT = ROOT / "docs" / "img" / "captions-phone.png"
STATIC = ROOT / "workloads" / "gateway" / "static"
# The screenshots' sizes: a laptop's browser window, and a phone held upright.
DESKTOP = {"width": 1280, "height": 760, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}


class Page:
    """Just enough of the DevTools protocol: evaluate JavaScript, take a screenshot."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]  # type: ignore[no-any-return]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 10) -> Any:
        """Polls until ``expression`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while (value := await self.eval(expression)) in (None, False, 0, ""):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            await asyncio.sleep(0.1)
        return value

    async def center(self, selector: str) -> tuple[float, float]:
        x, y = await self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        return x, y

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed and released where the element is drawn)."""
        x, y = await self.center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def wheel(self, selector: str, delta_y: float) -> None:
        """The user turns the mouse wheel over an element (negative: up)."""
        x, y = await self.center(selector)
        await self.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=delta_y)

    async def screenshot(self) -> bytes:
        shot = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        assert shot.startswith(b"\x89PNG")
        return shot


def devtools_port(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
            return int(m.group(1))
        if not line and proc.poll() is not None:
            break
    raise AssertionError("chromium did not start its DevTools server")


def end(proc: subprocess.Popen[str], timeout: float = 10) -> None:
    """End Chromium and every helper process it started (renderer, GPU, crashpad). They share its
    session, and they keep writing into the profile after the browser process exits, so the profile
    can be removed only once the whole group is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
    proc.wait()


def launch(chromium: str, profile: str, wav: Path | None, url: str) -> tuple[subprocess.Popen[str], str]:
    """Chromium on the page, its microphone fed from ``wav`` (Chromium loops the file; without
    one, its fake device beeps); returns it and the page's DevTools URL."""
    mic = [f"--use-file-for-fake-audio-capture={wav}"] if wav else []
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *mic, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        port = devtools_port(proc)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
    except BaseException:
        end(proc)
        raise
    [target] = [t for t in targets if t["type"] == "page"]
    return proc, target["webSocketDebuggerUrl"]


# What a user would see, read in one evaluation: the rows, the newest row's place against the
# captions viewport (below its sticky column heads), and every final translation checked against
# its row (one row per sentence; the cell holds that text, not a grey partial).
SNAPSHOT = """(() => {
  const lt = window.__livetranslate;
  if (!lt) return null;  // not loaded yet
  const captions = document.getElementById('captions');
  const rows = [...document.querySelectorAll('#rows .row')];
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.top, r.bottom]; };
  const sids = rows.filter((r) => r.dataset.sentence !== undefined).map((r) => r.dataset.sentence);
  const stale = [];
  for (const [lang, list] of Object.entries(lt.translations)) {
    for (const ev of list) {
      const found = document.querySelectorAll(`#rows .row[data-sentence="${ev.sentenceId}"]`);
      const cell = found.length === 1 && found[0].querySelector(`.tr[data-lang="${lang}"]`);
      if (!cell || cell.classList.contains('pending') || !cell.textContent.startsWith(ev.text)) {
        stale.push({ sentenceId: ev.sentenceId, lang, rows: found.length,
                     cell: cell ? cell.className + ': ' + cell.textContent : null });
      }
    }
  }
  return JSON.parse(JSON.stringify({
    state: lt.state, finals: lt.finals.length, errors: lt.errors, following: lt.following,
    translations: Object.fromEntries(Object.entries(lt.translations).map(([k, v]) => [k, v.length])),
    partials: lt.partials, rows: rows.length, duplicates: sids.length - new Set(sids).size, stale,
    open: document.querySelectorAll('#rows .row.open').length,
    overflow: captions.scrollHeight - captions.clientHeight, scrollTop: captions.scrollTop,
    view: box(captions), heads: box(document.getElementById('heads')),
    last: rows.length ? box(rows[rows.length - 1]) : null,
    jump: !document.getElementById('live').hidden,
    hint: document.getElementById('hint').hidden ? null : document.getElementById('hint').textContent,
    heads_text: [...document.querySelectorAll('#heads .head')].map((h) => h.textContent),
    state_text: document.getElementById('state').textContent,
    message: document.getElementById('message').textContent,
    rate: document.getElementById('rate').textContent,
    latency: document.getElementById('latency').textContent,
    empty_badges: [...document.querySelectorAll('.speaker')].filter((b) => !b.textContent.trim()).length,
    page_width: document.documentElement.scrollWidth, window_width: window.innerWidth,
    captions_overflow_x: captions.scrollWidth - captions.clientWidth,
  }));
})()"""


async def snap_until(page: Page, condition: str, timeout: float = 10) -> dict[str, Any]:
    """Polls the snapshot until ``condition`` (JavaScript over it, named ``s``) holds; returns it."""
    return await page.until(
        f"(() => {{ const s = {SNAPSHOT}; return s && ({condition}) && s; }})()",  # type: ignore[no-any-return]
        timeout,
    )


def newest_in_view(snap: dict[str, Any]) -> bool:
    """The newest row is drawn inside the captions viewport, below the column heads."""
    if not snap["last"]:
        return False
    top, bottom = snap["last"]
    return bool(top >= snap["heads"][1] - 1 and bottom <= snap["view"][1] + 1)


# Rows seen with a grey translation.partial, remembered as DOM nodes: once the sentence's final
# translation has arrived, its row must be the same node (replaced in place, not appended).
REMEMBER_PENDING = """(() => {
  const seen = window.__pendingRows = window.__pendingRows || new Map();
  for (const row of document.querySelectorAll('#rows .row[data-sentence]')) {
    if (row.querySelector('.tr.pending') && !seen.has(row.dataset.sentence)) seen.set(row.dataset.sentence, row);
  }
  return seen.size;
})()"""
SAME_ROWS = """(() => {
  const seen = window.__pendingRows || new Map();
  const finals = new Set(Object.values(window.__livetranslate.translations).flat().map((t) => String(t.sentenceId)));
  let same = 0; const moved = [];
  for (const [sid, row] of seen) {
    if (!finals.has(sid)) continue;
    const now = document.querySelectorAll(`#rows .row[data-sentence="${sid}"]`);
    if (now.length === 1 && now[0] === row && row.isConnected) same++; else moved.push(sid);
  }
  return { same, moved };
})()"""


# A browser that will not feed a microphone into a context of another rate (Firefox has thrown
# NotSupportedError for it): the page must fall back to the device rate, not fail to start.
REFUSE_16K = """(() => {
  const Native = window.AudioContext;
  window.AudioContext = class extends Native {
    createMediaStreamSource(stream) {
      if (this.sampleRate === 16000) {
        throw new DOMException('cannot connect nodes of different sample rates', 'NotSupportedError');
      }
      return super.createMediaStreamSource(stream);
    }
  };
})();"""
NATIVE_RATES = ("44.1 kHz", "48.0 kHz")
LIVE_SECONDS = 60  # of speech before the live-edge checks


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return chromium


@pytest.fixture(scope="module")
def long_speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All eight test sentences, about 30 s; Chromium loops it, so a minute is every one twice."""
    samples, _ = compose([Utterance(t, pause_after=1.0) for t in SENTENCES])
    return write_wav(tmp_path_factory.mktemp("speech") / "long.wav", samples)


@pytest.mark.parametrize(
    ("query", "before_load", "rates"),
    [("", None, ("16.0 kHz",)), ("&rate=native", None, NATIVE_RATES), ("", REFUSE_16K, NATIVE_RATES)],
    ids=["16k", "native-rate", "16k-refused"],
)
async def test_captions_page_in_chromium(
    up: Up,
    speech_wav: tuple[Path, str],
    long_speech_wav: Path,
    query: str,
    before_load: str | None,
    rates: tuple[str, ...],
) -> None:
    chromium = chromium_or_skip()
    live = not query and not before_load  # the full run: a minute of speech, scrolling, phone width
    wav = long_speech_wav if live else speech_wav[0]
    with tempfile.TemporaryDirectory() as profile:
        url = up.page_url + "?autostart=1" + query
        proc, devtools = launch(chromium, profile, wav, "about:blank" if before_load else url)
        try:
            async with connect(devtools, max_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                await page.call("Emulation.setDeviceMetricsOverride", **DESKTOP)
                if before_load:
                    await page.call("Page.enable")
                    await page.call("Page.addScriptToEvaluateOnNewDocument", source=before_load)
                    await page.call("Page.navigate", url=url)
                # Before the first word: the language columns and the hint.
                snap = await snap_until(page, "s.state === 'live'", 60)
                assert snap["heads_text"][0] == "Transcript" and any(
                    "es" in h for h in snap["heads_text"][1:]
                ), snap
                assert snap["rows"] == 0 and "captions appear here" in (snap["hint"] or ""), snap
                started = time.monotonic()
                deadline = started + 90
                while time.monotonic() < deadline:
                    snap = await page.eval(SNAPSHOT) or {}
                    await page.eval(REMEMBER_PENDING)
                    if snap["finals"] >= 3 and snap["translations"].get("es", 0) >= 3:
                        break
                    await asyncio.sleep(0.5)
                assert snap["state"] == "live", snap
                assert snap["finals"] >= 3 and snap["translations"].get("es", 0) >= 3, snap
                assert snap["rate"] in rates, snap
                # The DOM shows them: a sentence's transcript and its Spanish beside it, grouped into
                # fewer rows than finals, and a measured latency.
                first = await page.eval(
                    "(() => { const r = document.querySelector('#rows .row:not(.open)');"
                    " return r && [r.querySelector('.src').textContent,"
                    " r.querySelector('.tr[data-lang=es]').textContent]; })()"
                )
                assert first, snap
                source, spanish = first
                assert source.strip() and spanish.strip() and spanish != source
                assert re.match(r"latency \d+\.\d\d s", snap["latency"]), snap
                words = (await page.eval("document.getElementById('rows').textContent")).lower()
                assert any(w in words for w in ("meeting", "minutes", "report", "project")), words
                assert not snap["stale"] and not snap["duplicates"] and not snap["empty_badges"], snap
                # The gateway translated the open sentence as it was heard; those grey partials were
                # replaced by the final translation in the same row.
                assert snap["partials"].get("es", 0) >= 1, snap
                if live:
                    await follows_live_speech(page, started)
        finally:
            end(proc)


async def follows_live_speech(page: Page, started: float) -> None:
    """A minute of real speech: every check a reader of the page would make."""
    deadline = started + LIVE_SECONDS + 120
    while True:
        await page.eval(REMEMBER_PENDING)
        snap = await page.eval(SNAPSHOT)
        if time.monotonic() - started >= LIVE_SECONDS and snap["overflow"] > 0:
            break
        assert time.monotonic() < deadline, f"no overflow after {LIVE_SECONDS} s of speech: {snap}"
        assert not snap["stale"] and not snap["duplicates"], snap
        await asyncio.sleep(0.5)
    # The captions overflow their viewport and the page followed: the newest sentence is in view.
    assert snap["following"] and not snap["jump"] and newest_in_view(snap), snap
    assert not snap["stale"] and not snap["duplicates"] and not snap["empty_badges"], snap
    same = await page.eval(SAME_ROWS)
    assert same["same"] >= 1 and not same["moved"], same

    # Scrolling up stops following: new sentences arrive below, the view stays where the user put it.
    # The page stops following on the first scroll event; wait for the turn to reach the top.
    await page.wheel("#captions", -100000)
    snap = await snap_until(page, "!s.following && s.jump && s.scrollTop < 5", 10)
    rows_before = snap["rows"]
    snap = await snap_until(page, f"s.rows >= {rows_before + 1}", 60)
    assert snap["scrollTop"] < 5 and not snap["following"] and not newest_in_view(snap), snap

    # "Jump to live" brings the newest sentence back, and the page follows again.
    await page.click("#live")
    snap = await snap_until(page, "s.following", 10)
    assert newest_in_view(snap) and not snap["jump"], snap
    rows_before = snap["rows"]
    snap = await snap_until(page, f"s.rows >= {rows_before + 1}", 60)
    assert snap["following"] and newest_in_view(snap), snap
    shot = await page.screenshot()

    # Phone width: the sentence and its translation stack; nothing overflows sideways.
    await page.call("Emulation.setDeviceMetricsOverride", **PHONE)
    await asyncio.sleep(1)
    rows_before = (await page.eval(SNAPSHOT))["rows"]
    snap = await snap_until(page, f"s.rows >= {rows_before + 1}", 60)
    assert snap["window_width"] == PHONE["width"], snap
    assert snap["page_width"] <= PHONE["width"] and snap["captions_overflow_x"] <= 0, snap
    assert snap["following"] and newest_in_view(snap), snap
    phone = await page.screenshot()
    # The docs keep them; refresh them on purpose only, so test runs leave the tree clean.
    if os.environ.get("LT_UPDATE_DOCS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)
        PHONE_SCREENSHOT.write_bytes(phone)


# ---------------------------------------------------------------- the page against a scripted gateway


class PageGateway:
    """Serves the captions page as the gateway does; subclasses answer ``/v1/stream``."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/v1/stream", self.stream)
        self.app.router.add_static("/static", STATIC)

    async def index(self, request: web.Request) -> web.Response:
        html = (STATIC / "index.html").read_text().replace("<!--BASE-->", '<base href="/">')
        return web.Response(text=html, content_type="text/html")

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        raise NotImplementedError


class ScriptedGateway(PageGateway):
    """Answers /v1/stream with the events a test sends."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[dict[str, Any]] = []
        self.queries: list[dict[str, str]] = []
        self.frames = 0
        self.sent = 0
        self.session_id = "scripted-1"  # what session.started says; change it to lose a session
        self.ws: web.WebSocketResponse | None = None

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.queries.append(dict(request.query))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                self.frames += 1
            elif msg.type == WSMsgType.TEXT:
                start = json.loads(msg.data)
                self.starts.append(start)
                if start.get("type") == "session.start":
                    self.ws = ws
                    await self.send(
                        {
                            "type": "session.started",
                            "sessionId": self.session_id,
                            "resumed": start.get("sessionId") == self.session_id,
                            "sampleRate": start["sampleRate"],
                            "targetLanguages": start.get("targetLanguages") or ["es"],
                        }
                    )
        return ws

    async def send(self, *events: dict[str, Any]) -> None:
        assert self.ws is not None
        for ev in events:
            await self.ws.send_json(ev)
            self.sent += 1

    async def play(self, page: Page, *events: dict[str, Any]) -> dict[str, Any]:
        """Sends the events, waits until the page has handled them, returns its snapshot."""
        await self.send(*events)
        await page.until(f"window.__livetranslate.received >= {self.sent}")
        return await page.eval(SNAPSHOT)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def scripted_page(query: str, metrics: dict[str, Any] | None = None) -> Any:
    chromium = chromium_or_skip()
    gateway = ScriptedGateway()
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with tempfile.TemporaryDirectory() as profile:
            proc, devtools = launch(chromium, profile, None, "about:blank")
            try:
                async with connect(devtools, max_size=64 * 1024 * 1024) as ws:
                    page = Page(ws)
                    await page.call("Emulation.setDeviceMetricsOverride", **(metrics or DESKTOP))
                    await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/?autostart=1{query}")
                    await page.until("window.__livetranslate && window.__livetranslate.state === 'live'", 30)
                    yield gateway, page
            finally:
                end(proc)
    finally:
        await runner.cleanup()


def partial(seg: int, text: str) -> dict[str, Any]:
    return {"type": "transcript.partial", "segmentId": seg, "text": text, "start": seg, "end": seg + 1.0}


def final(seg: int, text: str, speaker: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": "transcript.final",
        "segmentId": seg,
        "text": text,
        "start": seg,
        "end": seg + 1.0,
        "latency": 0.4,
    }
    if speaker:
        ev["speaker"] = speaker
    return ev


def tpartial(sid: int, segs: list[int], lang: str, text: str) -> dict[str, Any]:
    return {
        "type": "translation.partial",
        "sentenceId": sid,
        "segmentIds": segs,
        "language": lang,
        "text": text,
    }


def translation(sid: int, segs: list[int], lang: str, text: str, quality: str = "ok") -> dict[str, Any]:
    return {
        "type": "translation",
        "sentenceId": sid,
        "segmentIds": segs,
        "segmentId": segs[-1],
        "language": lang,
        "text": text,
        "quality": quality,
    }


ROWS = """[...document.querySelectorAll('#rows .row')].map((r) => ({
  sentence: r.dataset.sentence ?? null, segments: r.dataset.segments, open: r.classList.contains('open'),
  source: r.querySelector('.src').textContent, partial: [...r.querySelectorAll('.seg.partial')].map((s) => s.textContent),
  badges: [...r.querySelectorAll('.speaker')].map((b) => b.textContent),
  cells: Object.fromEntries([...r.querySelectorAll('.tr')].map((c) => [c.dataset.lang, [c.className, c.textContent]])),
}))"""


async def test_scripted_gateway_rendering() -> None:
    """Event by event, the page against the protocol (API.md section 2): what a reader sees."""
    async with scripted_page("&targets=es,fr&token=s3cret") as (gw, page):
        first = gw.starts[0]
        assert first["targetLanguages"] == ["es", "fr"] and first["sampleRate"] == 16000, first
        assert gw.queries[0].get("token") == "s3cret"
        snap = await page.eval(SNAPSHOT)
        # Before the first word: the columns, the hint, a live state; no row, no badge.
        assert [h.split()[-1] for h in snap["heads_text"]] == ["Transcript", "es", "fr"], snap
        assert snap["hint"] == "Speak — captions appear here" and snap["rows"] == 0, snap
        assert snap["state_text"] == "live", snap

        # Partials replace each other in one grey row; the final takes their place.
        await gw.play(page, partial(0, "The meet"))
        await gw.play(page, partial(0, "The meeting will"))
        [row] = await page.eval(ROWS)
        assert (
            row["source"] == "The meeting will" and row["partial"] == ["The meeting will"] and row["open"]
        ), row
        snap = await gw.play(page, final(0, "The meeting will start"))
        assert snap["hint"] is None
        [row] = await page.eval(ROWS)
        assert row["source"] == "The meeting will start" and row["partial"] == [] and row["open"], row
        assert row["badges"] == [], row  # no speaker, no badge
        # translation.partial: the open sentence translated as far as heard, grey, replaced in place.
        await gw.play(page, tpartial(0, [0], "es", "La reunión comenzará"))
        await gw.play(page, partial(1, "in five"))
        [row] = await page.eval(ROWS)
        assert row["sentence"] == "0" and row["source"] == "The meeting will start in five", row
        assert row["cells"]["es"] == ["cell tr pending", "La reunión comenzará"], row
        await gw.play(
            page,
            final(1, "in five minutes."),
            tpartial(0, [0, 1], "es", "La reunión comenzará en cinco minutos"),
        )
        [row] = await page.eval(ROWS)
        assert row["cells"]["es"] == ["cell tr pending", "La reunión comenzará en cinco minutos"], row
        # The sentence ended on its full stop: the next partial opens the next row.
        await gw.play(page, partial(2, "Please"))
        rows = await page.eval(ROWS)
        assert [r["segments"] for r in rows] == ["0 1", "2"], rows
        # Final translations replace the partial; the row turns from grey once every language has one.
        await gw.play(page, translation(0, [0, 1], "es", "La reunión comenzará en cinco minutos."))
        row = (await page.eval(ROWS))[0]
        assert row["cells"]["es"] == ["cell tr", "La reunión comenzará en cinco minutos."] and row["open"], (
            row
        )
        snap = await gw.play(
            page, translation(0, [0, 1], "fr", "La réunion commencera dans cinq minutes.", quality="pivot:en")
        )
        row = (await page.eval(ROWS))[0]
        assert not row["open"] and row["cells"]["fr"][0] == "cell tr", row
        assert row["cells"]["fr"][1].startswith("La réunion commencera dans cinq minutes."), row
        assert not snap["stale"] and not snap["duplicates"] and snap["rows"] == 2, snap
        assert (
            await page.eval(
                "document.querySelectorAll('#rows .row:not(.open) .pending, "
                "#rows .row:not(.open) .partial').length"
            )
            == 0
        )

        # Finals join the open sentence of their speaker until a translation names its segmentIds;
        # finals it does not cover move on to the next row. A badge wherever the speaker changes.
        await gw.play(
            page,
            final(2, "Please open", "Ana"),
            final(3, "the report", "Ana"),
            final(4, "and then", "Ana"),
            partial(5, "we"),
        )
        rows = await page.eval(ROWS)
        assert [r["segments"] for r in rows] == ["0 1", "2 3 4 5"] and rows[1]["badges"] == ["Ana"], rows
        await gw.play(
            page,
            translation(1, [2, 3], "es", "Abran el informe"),
            translation(1, [2, 3], "fr", "Ouvrez le rapport"),
        )
        rows = await page.eval(ROWS)
        assert [(r["sentence"], r["segments"], r["open"]) for r in rows] == [
            ("0", "0 1", False),
            ("1", "2 3", False),
            (None, "4 5", True),
        ], rows
        # Another speaker's final opens a row of its own, until the sentence says otherwise.
        await gw.play(page, final(5, "we go", "Ben"))
        rows = await page.eval(ROWS)
        assert [(r["segments"], r["badges"]) for r in rows[2:]] == [("4", ["Ana"]), ("5", ["Ben"])], rows
        await gw.play(page, tpartial(2, [4, 5], "es", "y luego"))
        rows = await page.eval(ROWS)
        assert [(r["sentence"], r["segments"], r["badges"]) for r in rows[2:]] == [
            ("2", "4 5", ["Ana", "Ben"])
        ], rows
        snap = await gw.play(
            page,
            translation(2, [4, 5], "es", "y luego vamos"),
            translation(2, [4, 5], "fr", "et puis on y va"),
        )
        assert snap["rows"] == 3 and snap["open"] == 0 and not snap["empty_badges"], snap

        # A translation that failed says so in its cell; the sentence is done all the same.
        await gw.play(
            page,
            final(6, "Thank you all."),
            translation(3, [6], "es", "Gracias a todos."),
            {
                "type": "error",
                "code": "translation_failed",
                "message": "backend timed out",
                "segmentId": 6,
                "sentenceId": 3,
                "language": "fr",
            },
        )
        row = (await page.eval(ROWS))[-1]
        assert row["cells"]["fr"] == ["cell tr failed", "translation unavailable"] and not row["open"], row

        # The audio service away: a legible state, and live again when captions flow.
        snap = await gw.play(
            page,
            {
                "type": "error",
                "code": "upstream_unavailable",
                "message": "audio service unavailable (connect refused); audio is "
                "buffered and replayed when it returns",
            },
        )
        assert snap["state_text"] == "upstream unavailable" and "audio service" in snap["message"], snap
        snap = await gw.play(page, partial(7, "We are back"))
        assert snap["state_text"] == "live", snap

        # A minute of captions: more than the viewport holds; the page follows the newest.
        seg, sid = 7, 4
        for i in range(30):
            await gw.send(
                partial(seg, f"Sentence number {i}"),
                final(seg, f"Sentence number {i} is here."),
                tpartial(sid, [seg], "es", f"Frase número {i}"),
                translation(sid, [seg], "es", f"La frase número {i} está aquí."),
                translation(sid, [seg], "fr", f"La phrase numéro {i} est ici."),
            )
            seg, sid = seg + 1, sid + 1
        snap = await gw.play(page)
        assert snap["overflow"] > 200 and snap["following"] and newest_in_view(snap), snap
        assert not snap["jump"] and not snap["stale"] and not snap["duplicates"], snap

        # The user scrolls up to read: the page stays there while captions keep coming.
        await page.wheel("#captions", -600)
        snap = await snap_until(page, "!s.following")
        assert snap["jump"], snap
        top = snap["scrollTop"]
        snap = await gw.play(
            page, partial(seg, "More"), final(seg, "More words."), tpartial(sid, [seg], "es", "Más")
        )
        assert snap["scrollTop"] == top and not newest_in_view(snap) and snap["jump"], snap
        # Jump to live: the newest sentence in view, following again, the button gone.
        await page.click("#live")
        snap = await snap_until(page, "s.following")
        assert newest_in_view(snap) and not snap["jump"], snap
        snap = await gw.play(
            page, translation(sid, [seg], "es", "Más palabras."), partial(seg + 1, "And a long partial " * 6)
        )
        assert snap["following"] and newest_in_view(snap), snap
        # Scrolling back down to the newest also resumes following.
        await page.wheel("#captions", -600)
        await page.until("!window.__livetranslate.following")
        await page.wheel("#captions", 100000)
        await page.until("window.__livetranslate.following")

        # A dropped connection: "reconnecting", then resumed with the session and the last final.
        assert gw.ws is not None
        starts = len(gw.starts)
        await gw.ws.close()
        await page.until("window.__livetranslate.state === 'reconnecting'", 5)
        deadline = time.monotonic() + 15
        while len(gw.starts) == starts:
            assert time.monotonic() < deadline, "the page did not reconnect"
            await asyncio.sleep(0.1)
        await page.until("window.__livetranslate.state === 'live'", 10)
        resume = gw.starts[-1]
        assert resume["sessionId"] == "scripted-1" and resume["lastSegmentId"] == seg, resume
        assert resume["targetLanguages"] == ["es", "fr"] and gw.queries[-1].get("token") == "s3cret", resume
        assert gw.frames > 0  # the worklet's audio reached the socket
        assert not (await page.eval(SNAPSHOT))["duplicates"]


async def test_scripted_four_languages_desktop_and_phone() -> None:
    """1-4 target languages side by side at 1280 px; stacked, labelled and never wider than a
    390 px phone."""
    langs = ["es", "fr", "de", "ja"]
    async with scripted_page("&targets=" + ",".join(langs)) as (gw, page):
        events: list[dict[str, Any]] = []
        for i in range(6):
            events += [
                final(
                    i,
                    f"Sentence {i}: internationalization-and-localization-considerations "
                    "for the quarterly report are on the agenda.",
                    speaker=f"S{i % 2}",
                )
            ]
            events += [
                translation(
                    i,
                    [i],
                    lang,
                    f"[{lang}] traducción número {i} bastante larga para "
                    "ocupar dos líneas en una columna estrecha",
                )
                for lang in langs
            ]
        events += [partial(6, "and one more sentence"), tpartial(6, [6], "es", "y una frase más")]
        snap = await gw.play(page, *events)
        assert [h.split()[-1] for h in snap["heads_text"]] == ["Transcript", *langs], snap
        heads = await page.eval(
            "[...document.querySelectorAll('#heads .head')].map((h) => "
            "{ const r = h.getBoundingClientRect(); return [r.left, r.right, r.top]; })"
        )
        assert len({round(h[2]) for h in heads}) == 1, heads  # one line: side by side
        assert all(a[1] <= b[0] for a, b in pairwise(heads)) and heads[-1][1] <= 1280, heads
        assert snap["page_width"] <= 1280 and snap["captions_overflow_x"] <= 0, snap

        await page.call("Emulation.setDeviceMetricsOverride", **PHONE)
        snap = await snap_until(page, "s.window_width === 390")
        # The page scrolls back to the live edge on the frame after the resize reflows the rows:
        # wait for it (a snapshot taken in between saw the old scroll position once in a full run).
        # The same test of newest_in_view, polled up to 5 s.
        if not newest_in_view(snap):
            snap = await snap_until(
                page,
                "s.window_width === 390 && s.last && s.last[0] >= s.heads[1] - 1 "
                "&& s.last[1] <= s.view[1] + 1",
                5,
            )
        assert snap["page_width"] <= 390 and snap["captions_overflow_x"] <= 0, snap
        assert snap["following"] and newest_in_view(snap), snap
        # Each translation sits under its sentence, labelled with its language.
        layout = await page.eval("""(() => { const r = document.querySelectorAll('#rows .row')[0];
          const src = r.querySelector('.src').getBoundingClientRect();
          return [...r.querySelectorAll('.tr')].map((c) => { const b = c.getBoundingClientRect();
            return [c.dataset.lang, b.top >= src.bottom - 1, b.right <= 390,
                    getComputedStyle(c, '::before').content]; }); })()""")
        assert layout == [[lang, True, True, f'"{lang}"'] for lang in langs], layout
        bar = await page.eval(
            "(() => { const b = document.querySelector('.bar'); return b.scrollWidth - b.clientWidth; })()"
        )
        assert bar <= 0


async def test_finals_in_a_script_without_spaces_read_as_one_text() -> None:
    """Whisper's Japanese finals may end inside a word: the page joins them without the space it
    puts between English finals (the gateway joins the sentence it translates the same way)."""
    async with scripted_page("&targets=es") as (gw, page):
        await gw.play(page, final(0, "みなさん、おは"), final(1, "ようございます。"))
        await gw.play(page, final(2, "Good morning"), final(3, "everyone."))
        rows = await page.eval(ROWS)
        assert [r["source"] for r in rows] == ["みなさん、おはようございます。", "Good morning everyone."], (
            rows
        )


async def test_a_session_the_gateway_could_not_resume_continues_below_the_old_rows() -> None:
    """A replica goes (1012) and the session cannot be resumed (its state expired): the gateway
    starts a new one, numbered from 0 again. Its captions follow the old ones; none is dropped as
    a repeat of an old id, nor written into an old row."""
    async with scripted_page("&targets=es") as (gw, page):
        await gw.play(
            page,
            final(0, "First sentence."),
            translation(0, [0], "es", "Primera frase."),
            final(1, "Second one"),
        )
        gw.session_id = "scripted-2"
        assert gw.ws is not None
        await gw.ws.close(code=1012, message=b"replica draining, resume elsewhere")
        await page.until("window.__livetranslate.sessionId === 'scripted-2'", 10)
        assert gw.starts[-1]["sessionId"] == "scripted-1" and gw.starts[-1]["lastSegmentId"] == 1
        await gw.play(
            page,
            final(0, "A new start."),
            translation(0, [0], "es", "Un nuevo comienzo."),
            final(1, "And more."),
        )
        rows = await page.eval(ROWS)
        assert [r["source"] for r in rows] == [
            "First sentence.",
            "Second one",
            "A new start.",
            "And more.",
        ], rows
        assert (
            rows[0]["cells"]["es"][1] == "Primera frase."
            and rows[2]["cells"]["es"][1] == "Un nuevo comienzo."
        )
        # A later resume asks for the new session with its own numbering.
        await gw.ws.close(code=1012, message=b"replica draining, resume elsewhere")
        await page.until(f"window.__livetranslate.received >= {gw.sent + 1}", 10)
        assert gw.starts[-1]["sessionId"] == "scripted-2" and gw.starts[-1]["lastSegmentId"] == 1
