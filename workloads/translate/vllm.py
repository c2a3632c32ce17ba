"""vLLM's OpenAI-compatible server in the same pod: its metrics and its sleep mode."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .engine_metrics import STAT_GPU_RESERVED, VLLM_STATS, engine_stats, metric_samples
from .engines import EngineError, EngineState, OpenAIEngine, Output
from .quality import Job
from .settings import VllmSettings

log = logging.getLogger(__name__)


class VllmEngine(OpenAIEngine):
    """vLLM's OpenAI-compatible server in the same pod, with its metrics and sleep mode.

    Written against vLLM's documented interface: /health, /v1/models, /v1/completions (a prompt
    list is one batch), /metrics (``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
    ``vllm:cache_config_info``), and sleep mode (``POST /sleep?level=N``, ``POST /wake_up``,
    ``GET /is_sleeping``; present when vLLM runs with --enable-sleep-mode and
    VLLM_SERVER_DEV_MODE=1).
    """

    def __init__(self, settings: VllmSettings, context_segments: int) -> None:
        super().__init__(settings, context_segments, name="vllm")
        self.vsettings = settings
        self._last_activity = time.monotonic()
        self._wake_lock = asyncio.Lock()
        self._inflight = 0
        self.sleep_count = 0
        self.wake_count = 0

    def note_activity(self) -> None:
        self._last_activity = time.monotonic()

    async def check(self) -> EngineState:
        try:
            health = await self.client.get("/health", timeout=3.0)
            if health.status_code != 200:
                raise EngineError(f"/health answered {health.status_code}")
            await self._probe()
            if not self.state.ready:
                return self.state
            metrics = await self.client.get("/metrics", timeout=3.0)
            if metrics.status_code == 200:
                stats = engine_stats(metrics.text, VLLM_STATS)
                info = next(
                    (x.labels for x in metric_samples(metrics.text) if x.name == "vllm:cache_config_info"), {}
                )
                if "gpu_memory_utilization" in info:
                    try:
                        stats[STAT_GPU_RESERVED] = float(info["gpu_memory_utilization"])
                    except ValueError:
                        pass
                self.state.stats = stats
            sleeping = await self.client.get("/is_sleeping", timeout=3.0)
            if sleeping.status_code == 200:
                self.state.sleeping = bool(sleeping.json().get("is_sleeping", False))
            self.state.detail = "sleeping" if self.state.sleeping else "ok"
        except (httpx.HTTPError, EngineError, ValueError) as exc:
            self.state.ready = False
            self.state.detail = f"vLLM at {self.base} not healthy: {type(exc).__name__}: {exc}"
        return self.state

    async def before_request(self) -> None:
        if self.state.sleeping:
            await self.wake()

    async def translate(
        self, jobs: list[Job], model: str | None, *, attempt: int = 0
    ) -> list[Output | BaseException]:
        self._inflight += 1
        try:
            return await super().translate(jobs, model, attempt=attempt)
        finally:
            self._inflight -= 1
            self._last_activity = time.monotonic()

    async def wake(self) -> None:
        """Wake the engine (once, whoever asks first); requests wait for it rather than fail."""
        async with self._wake_lock:
            if not self.state.sleeping:
                return
            log.info("waking the vLLM engine", extra={"fields": {"engine": self.base}})
            started = time.monotonic()
            try:
                resp = await self.client.post("/wake_up", timeout=self.vsettings.wake_timeout_s)
            except httpx.HTTPError as exc:
                raise EngineError(f"vllm: wake_up failed: {exc}") from exc
            if resp.status_code >= 400:
                raise EngineError(f"vllm: wake_up answered HTTP {resp.status_code}")
            self.state.sleeping = False
            self.wake_count += 1
            log.info("vLLM engine awake", extra={"fields": {"seconds": round(time.monotonic() - started, 3)}})

    async def maybe_sleep(self) -> bool:
        """Sleep after the configured idle time; never while a batch is in flight."""
        idle_after = self.vsettings.sleep_after_idle_s
        if not idle_after or self.state.sleeping or self._inflight or not self.state.ready:
            return False
        if time.monotonic() - self._last_activity < idle_after:
            return False
        async with self._wake_lock:
            if self._inflight or self.state.sleeping:
                return False
            try:
                resp = await self.client.post(
                    "/sleep", params={"level": self.vsettings.sleep_level}, timeout=60.0
                )
            except httpx.HTTPError as exc:
                log.warning("vLLM sleep failed", extra={"fields": {"error": str(exc)}})
                return False
            if resp.status_code >= 400:
                log.warning(
                    "vLLM refused to sleep (is --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 set?)",
                    extra={"fields": {"status": resp.status_code}},
                )
                self.vsettings.sleep_after_idle_s = 0.0  # do not ask again every poll
                return False
            self.state.sleeping = True
            self.sleep_count += 1
            log.info(
                "vLLM engine put to sleep after idle time",
                extra={"fields": {"idle_s": idle_after, "level": self.vsettings.sleep_level}},
            )
            return True
