"""The offline CPU backend: Debian's Apertium behind ``apertium-apy``, run as a child process.

A process per call costs 120-140 ms here; APy keeps each pair's pipeline warm and answers in
7-8 ms, so the service starts one APy on a free loopback port, talks HTTP to it, and restarts it
when it dies. APy has no option to choose its listen address (it binds every interface), so it is
started through a tiny launcher that binds tornado's server to 127.0.0.1 before APy's main() runs:
nothing outside the pod can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Collection

import httpx

from livetranslate.capabilities import ApertiumPairs, Route, backend_problems, installed_modes
from livetranslate.procs import free_port

from .engines import Engine, EngineError, EngineState, GarbageError, Output
from .quality import Job
from .settings import ApertiumSettings

log = logging.getLogger(__name__)

# Runs under the interpreter APy is installed for (Debian's python3), never ours.
_LAUNCHER = """
import sys
import tornado.tcpserver
from apertium_apy import apy
_bind = tornado.tcpserver.TCPServer.bind
def _loopback_bind(self, port, address=None, *args, **kwargs):
    return _bind(self, port, "127.0.0.1", *args, **kwargs)
tornado.tcpserver.TCPServer.bind = _loopback_bind
sys.argv = ["apertium-apy"] + sys.argv[1:]
apy.main()
"""


def _apy_interpreter(binary: str) -> str | None:
    path = shutil.which(binary)
    if path is None:
        return None
    with open(path, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
        return first[2:].strip().split()[0]
    return "/usr/bin/python3"


class ApertiumEngine(Engine):
    name = "apertium"
    batch_mode = "joined"
    max_inflight = 2  # APy runs one pipeline per pair: one batch in it, the next one on its way

    def __init__(
        self, settings: ApertiumSettings, source: str | None = None, targets: Collection[str] = ()
    ) -> None:
        super().__init__()
        self.settings = settings
        self.modes = installed_modes(settings.modes_dir)
        self.pairs = ApertiumPairs(self.modes)
        # The pipeline's own pairs are warmed at start; any other pair (a detected language) starts
        # its pipeline on first use and APy stops it again after ``pipe_idle_s`` unused.
        routes = [self.pairs.route(source, t) for t in targets] if source and source != "auto" else []
        self.warm_modes = sorted({m for r in routes if r is not None for m in r.modes})
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.restarts = 0
        self._up = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(settings.concurrency)
        self.client: httpx.AsyncClient | None = None

    def unsupported(self, source: str, target: str) -> str | None:
        problems = backend_problems("apertium", source, [target], installed_modes=self.modes)
        return problems[0].split(": ", 1)[1] if problems else None

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="apertium-supervisor")

    async def _spawn(self) -> None:
        interpreter = _apy_interpreter(self.settings.apy_binary)
        if interpreter is None:
            raise EngineError(f"{self.settings.apy_binary} is not installed (Debian package apertium-apy)")
        if not self.modes:
            raise EngineError(f"no Apertium modes under {self.settings.modes_dir}")
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
        self.proc = await asyncio.create_subprocess_exec(
            interpreter,
            "-I",
            "-c",
            _LAUNCHER,
            "-p",
            str(self.port),
            "-t",
            str(int(self.settings.timeout_s)),
            "-m",
            str(int(self.settings.pipe_idle_s)),
            str(self.settings.modes_dir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        if self.client is not None:
            await self.client.aclose()
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}",
            timeout=httpx.Timeout(self.settings.timeout_s, connect=2.0),
        )
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                err = (
                    (await self.proc.stderr.read()).decode(errors="replace")[-400:]
                    if self.proc.stderr
                    else ""
                )
                raise EngineError(f"apertium-apy exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(httpx.HTTPError):
                resp = await self.client.get("/listPairs", timeout=1.0)
                if resp.status_code == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            raise EngineError(f"apertium-apy did not answer within {self.settings.startup_timeout_s:g} s")
        # Warm the pipeline's pairs: the first call on a pair costs ~70 ms more. Never every
        # installed mode: each is a chain of processes holding its dictionaries (133 modes of 44
        # packages would start hundreds of processes and several GiB for pairs no one asked for).
        for mode in self.warm_modes:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.get(
                    "/translate",
                    params={"langpair": mode.replace("-", "|", 1), "q": "ok"},
                    timeout=self.settings.timeout_s,
                )

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stderr is None:
            return
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if " E " in text[:40] or "Error" in text or "Traceback" in text:
                log.warning("apertium-apy: %s", text[:300])

    async def _supervise(self) -> None:
        """Keep one APy alive: start it, wait for it to die, start it again (with backoff)."""
        backoff = self.settings.restart_backoff_s
        while not self._stopping:
            try:
                await self._spawn()
            except (EngineError, OSError) as exc:
                self.state.ready = False
                self.state.recovering = False
                self.state.detail = str(exc)
                log.error("apertium-apy failed to start", extra={"fields": {"error": str(exc)}})
                await self._kill()
                await asyncio.sleep(min(backoff, 30.0))
                backoff = max(1.0, backoff * 2)
                continue
            assert self.proc is not None
            backoff = self.settings.restart_backoff_s
            self.state.ready = True
            self.state.recovering = False
            self.state.detail = f"ok (apertium-apy pid {self.proc.pid} on 127.0.0.1:{self.port})"
            self.state.model = "apertium"
            self._up.set()
            log.info(
                "apertium-apy ready",
                extra={"fields": {"pid": self.proc.pid, "port": self.port, "modes": sorted(self.modes)}},
            )
            drain = asyncio.create_task(self._drain_stderr(self.proc))
            rc = await self.proc.wait()
            drain.cancel()
            # Its pair pipelines share its process group: none may outlive it (one busy in a long
            # translation would hold its dictionaries until it read the closed pipe).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._up.clear()
            if self._stopping:
                break
            self.restarts += 1
            self.state.ready = False
            self.state.recovering = True
            self.state.detail = f"apertium-apy exited with {rc}; restarting"
            log.error(
                "apertium-apy died; restarting",
                extra={"fields": {"returncode": rc, "restarts": self.restarts}},
            )
            await asyncio.sleep(backoff)

    async def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def close(self) -> None:
        self._stopping = True
        await self._kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if self.client is not None:
            await self.client.aclose()

    async def check(self) -> EngineState:
        if self.proc is not None and self.proc.returncode is not None and not self._stopping:
            # Died since the supervisor last looked: it is about to restart it.
            self.state.ready = False
            self.state.recovering = True
        return self.state

    async def translate(
        self, jobs: list[Job], model: str | None, *, attempt: int = 0
    ) -> list[Output | BaseException]:
        await self._wait_up()
        if len(jobs) == 1:
            return [await self._settle(self._one(jobs[0]))]
        # One APy call for the whole batch: segments joined by blank lines (Apertium keeps them as
        # formatting) cost ~3.5 ms each instead of ~20 ms per call, measured here. A reply that does
        # not split back into as many segments is not trusted: each is then asked alone.
        joined = "\n\n".join(" ".join(j.text.split()) for j in jobs)
        try:
            whole = await self._one(jobs[0], text=joined)
            parts = [p.strip() for p in whole.text.split("\n\n")]
            if len(parts) == len(jobs) and all(parts):
                return [Output(p, via=whole.via) for p in parts]
            log.warning(
                "apertium batch reply did not split back; asking per segment",
                extra={"fields": {"segments": len(jobs), "parts": len(parts)}},
            )
        except EngineError:
            pass
        results = await asyncio.gather(*(self._one(j) for j in jobs), return_exceptions=True)
        return list(results)

    @staticmethod
    async def _settle(call: Awaitable[Output]) -> Output | BaseException:
        try:
            return await call
        except Exception as exc:  # noqa: BLE001 - handed back as this job's outcome, like gather()
            return exc

    async def _wait_up(self) -> None:
        """A restart takes about a second: wait for it rather than fail the segment."""
        if self.proc is not None and self.proc.returncode is not None:
            self._up.clear()
        if self._up.is_set():
            return
        try:
            await asyncio.wait_for(self._up.wait(), timeout=min(5.0, self.settings.startup_timeout_s))
        except TimeoutError:
            raise EngineError(f"apertium-apy is down: {self.state.detail}") from None

    async def _one(self, job: Job, text: str | None = None) -> Output:
        route: Route | None = self.pairs.route(job.source, job.target)
        if route is None:
            raise EngineError(f"no apertium pair {job.source}->{job.target}")
        out = job.text if text is None else text
        for mode in route.modes:  # one mode, or two chained through the pivot language
            out = await self._mode(mode, out)
        return Output(out, via=route.via)

    async def _mode(self, mode: str, text: str) -> str:
        params = {"langpair": mode.replace("-", "|", 1), "q": text, "markUnknown": "no"}
        async with self._sem:
            for attempt in range(2):
                assert self.client is not None
                try:
                    resp = await self.client.get("/translate", params=params)
                    break
                except httpx.TimeoutException as exc:
                    raise EngineError(f"apertium: no reply within {self.settings.timeout_s:g} s") from exc
                except httpx.TransportError as exc:
                    # APy died under us: wait for the supervisor's restart, then ask once more.
                    if attempt == 0:
                        await asyncio.sleep(0.05)
                        await self._wait_up()
                        continue
                    raise EngineError(f"apertium: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise EngineError(f"apertium: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            text = resp.json()["responseData"]["translatedText"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GarbageError(f"apertium: unreadable reply {resp.text[:120]!r}") from exc
        if not isinstance(text, str):
            raise GarbageError("apertium: reply without text")
        return text
