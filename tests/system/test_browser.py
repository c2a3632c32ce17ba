"""The captions page in a real headless Chromium whose microphone is a WAV of real speech: the
page captures through its AudioWorklet at 16 kHz (Chromium resamples the microphone), or at the
browser's own rate (44.1/48 kHz, which the gateway resamples) with ``?rate=native`` or when the
browser refuses a 16 kHz microphone source; each way captions and translations appear in their
columns. ``LT_UPDATE_DOCS=1`` refreshes the screenshot
in docs/img/captions.png (from the 16 kHz run)."""

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
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.system.conftest import ROOT, Up

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
         "--window-size=1280,760", "--remote-debugging-port=0"]
SCREENSHOT = ROOT / "docs" / "img" / "captions.png"


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
        return result["result"].get("value")


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


def launch(chromium: str, profile: str, wav: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    """Chromium on the page, its microphone fed from ``wav``; returns it and the page's DevTools URL."""
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}",
                             f"--use-file-for-fake-audio-capture={wav}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        port = devtools_port(proc)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
    except BaseException:
        end(proc)
        raise
    [target] = [t for t in targets if t["type"] == "page"]
    return proc, target["webSocketDebuggerUrl"]


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


@pytest.mark.parametrize(("query", "before_load", "rates"),
                         [("", None, ("16.0 kHz",)), ("&rate=native", None, NATIVE_RATES),
                          ("", REFUSE_16K, NATIVE_RATES)],
                         ids=["16k", "native-rate", "16k-refused"])
async def test_captions_page_in_chromium(up: Up, speech_wav: tuple[Path, str], query: str,
                                         before_load: str | None, rates: tuple[str, ...]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    wav, _ = speech_wav
    with tempfile.TemporaryDirectory() as profile:
        url = up.page_url + "?autostart=1" + query
        proc, devtools = launch(chromium, profile, wav, "about:blank" if before_load else url)
        try:
            async with connect(devtools, max_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                if before_load:
                    await page.call("Page.enable")
                    await page.call("Page.addScriptToEvaluateOnNewDocument", source=before_load)
                    await page.call("Page.navigate", url=url)
                state: dict[str, Any] = {}
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    state = await page.eval(
                        "JSON.parse(JSON.stringify({state: window.__livetranslate.state, "
                        "finals: window.__livetranslate.finals.length, "
                        "es: (window.__livetranslate.translations.es || []).length, "
                        "errors: window.__livetranslate.errors, "
                        "rate: document.getElementById('rate').textContent}))") or {}
                    if state.get("finals", 0) >= 3 and state.get("es", 0) >= 3:
                        break
                    await asyncio.sleep(0.5)
                assert state.get("state") == "live", state
                assert state["finals"] >= 3 and state["es"] >= 3, state
                assert state["rate"] in rates, state
                # The DOM shows them: a transcript row and its Spanish row, and a measured latency.
                source = await page.eval("document.querySelector('#col-source li').textContent")
                spanish = await page.eval("document.querySelector('#col-es li').textContent")
                latency = await page.eval("document.getElementById('latency').textContent")
                assert source.strip() and spanish.strip() and spanish != source
                assert re.match(r"latency \d+\.\d\d s", latency), latency
                words = (await page.eval("document.getElementById('col-source').textContent")).lower()
                assert any(w in words for w in ("meeting", "minutes", "report", "project")), words
                shot = base64.b64decode((await page.call("Page.captureScreenshot", format="png"))["data"])
                assert shot.startswith(b"\x89PNG")
                # The docs keep one; refresh it on purpose only, so test runs leave the tree clean.
                if os.environ.get("LT_UPDATE_DOCS") == "1" and not query and not before_load:
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    SCREENSHOT.write_bytes(shot)
        finally:
            end(proc)
