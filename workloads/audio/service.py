"""The audio service's shared state: one engine, one VAD model, one diarizer, one decode queue.

Held on ``app.state.audio``. Models load in a background thread after startup so ``/healthz``
answers at once and ``/readyz`` can say "loading" or why loading failed (a model that cannot load
keeps the pod unready with the reason, rather than crash-looping without one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from livetranslate import metrics
from livetranslate.workloads.audio.capacity import CapacityEstimate
from livetranslate.workloads.audio.diarization import Diarizer
from livetranslate.workloads.audio.drain import AudioDrain
from livetranslate.workloads.audio.engines import Engine, ModelLoadError, load_engine
from livetranslate.workloads.audio.scheduler import DecodeScheduler
from livetranslate.workloads.audio.settings import AudioSettings
from livetranslate.workloads.audio.vad import SileroVad

if TYPE_CHECKING:
    from livetranslate.workloads.audio.connection import AudioConnection

log = logging.getLogger(__name__)

RTF_INTERVAL_SECONDS = 5.0


def limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS thread pool for the whole process (``AudioSettings.blas_threads``; 0
    leaves the library's default)."""
    if threads <= 0:
        return
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    now = ", ".join(
        f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info() if p["user_api"] == "blas"
    )
    log.info("BLAS threads limited to %d (%s)", threads, now or "no BLAS library loaded")


def decoder_utilisation(decode_seconds: float, wall_seconds: float, workers: int) -> float:
    """Busy decoder seconds per wall second per worker, in [0, 1]."""
    if wall_seconds <= 0 or workers <= 0:
        return 0.0
    return min(1.0, max(0.0, decode_seconds / (wall_seconds * workers)))


class AudioService:
    def __init__(self, settings: AudioSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.m_processing = metrics.audio_processing(self.registry)
        self.m_rtf = metrics.audio_realtime_factor(self.registry)
        self.capacity = CapacityEstimate(static_cap=self.settings.limits.max_sessions)
        self.m_capacity = metrics.stage_capacity_sessions(self.registry)
        self.m_capacity.labels(pipeline=self.settings.pipeline, stage="audio").set(self.capacity.sessions)
        self.m_refusals = metrics.admission_refusals(self.registry)
        self.m_batch = metrics.audio_batch_size(self.registry)
        self.m_queue = metrics.queue_depth(self.registry).labels(pipeline=settings.pipeline, stage="audio")
        self.m_sessions = metrics.sessions_active(self.registry).labels(pipeline=settings.pipeline)
        self.engine: Engine | None = None
        self.vad: SileroVad | None = None
        self.diarizer: Diarizer | None = None
        self.load_error: str | None = None
        self.loading = True
        self.sessions: set[str] = set()
        self.connections: set[AudioConnection] = set()  # live streams, for the drain
        self.scheduler = DecodeScheduler(
            settings.worker_count(),
            settings.limits.max_queue,
            max_batch=settings.max_batch,
            on_depth=self.m_queue.set,
            on_batch=self._record_batch,
        )
        self.decode_seconds_total = 0.0
        self._diarizer_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.drain = AudioDrain(self)

    @property
    def device(self) -> str:
        return self.engine.device if self.engine else self.settings.device

    @property
    def model(self) -> str:
        return self.engine.model if self.engine else (self.settings.model or "tiny.en")

    async def start(self) -> None:
        self.scheduler.start()
        self._tasks.append(asyncio.create_task(self._load(), name="audio-model-load"))
        self._tasks.append(asyncio.create_task(self._rtf_loop(), name="audio-rtf"))

    async def close(self) -> None:
        await self.drain.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.scheduler.stop()

    async def _load(self) -> None:
        t0 = time.perf_counter()
        limit_blas_threads(self.settings.blas_threads)
        try:
            self.vad = await asyncio.to_thread(SileroVad)
            engine = await asyncio.to_thread(load_engine, self.settings)
            # Warm-up pass: the first CTranslate2 call allocates its buffers.
            await asyncio.to_thread(engine.transcribe, np.zeros(16000, dtype=np.float32))
            self.engine = engine
            if self.settings.diarization:
                await self.get_diarizer()
        except ModelLoadError as exc:
            self.load_error = str(exc)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
        finally:
            self.loading = False
        if self.load_error:
            log.error("audio model not loaded", extra={"fields": {"reason": self.load_error}})
        else:
            # Publish the labelled series from the start, so dashboards and the autoscaler see
            # zeros rather than "no data" before the first session.
            self.m_processing.labels(pipeline=self.settings.pipeline, device=self.device)
            self.m_batch.labels(pipeline=self.settings.pipeline, device=self.device)
            self.m_rtf.labels(pipeline=self.settings.pipeline, device=self.device).set(0)
            self.m_queue.set(0)
            self.m_sessions.set(0)
            log.info(
                "audio model loaded",
                extra={
                    "fields": {
                        "engine": getattr(self.engine, "name", "?"),
                        "device": self.device,
                        "model": self.model,
                        "seconds": round(time.perf_counter() - t0, 2),
                        "workers": self.scheduler.workers,
                    }
                },
            )

    async def get_diarizer(self) -> Diarizer:
        """The shared diarizer, loaded on first use when the pipeline did not enable it up front."""
        async with self._diarizer_lock:
            if self.diarizer is None:
                diarizer = await asyncio.to_thread(Diarizer, self.settings.diarizer)
                await asyncio.to_thread(diarizer.warm_up)
                self.diarizer = diarizer
            return self.diarizer

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.drain.active:  # not ready at once: the Service stops sending it new streams
            return False, {"draining": "this replica is shutting down; its streams move to others"}
        if self.loading:
            return False, {"model": "loading", "device": self.device, "modelName": self.model}
        if self.load_error or self.engine is None:
            return False, {
                "model": "failed",
                "reason": self.load_error,
                "device": self.device,
                "modelName": self.model,
            }
        return True, {
            "model": "loaded",
            "engine": self.engine.name,
            "device": self.device,
            "modelName": self.model,
            "sessions": len(self.sessions),
            "queueDepth": self.scheduler.depth,
            "workers": self.scheduler.workers,
        }

    def _record_batch(self, size: int) -> None:
        self.m_batch.labels(pipeline=self.settings.pipeline, device=self.device).observe(size)

    def record_pass(self, decode_seconds: float) -> None:
        self.decode_seconds_total += decode_seconds
        self.m_processing.labels(pipeline=self.settings.pipeline, device=self.device).observe(decode_seconds)

    async def _rtf_loop(self) -> None:
        """The pod's real-time factor: decoder seconds per wall-clock second, per worker.

        For one real-time stream this is the classic real-time factor (decode time over audio
        time). Across sessions it is the decoders' utilisation: it grows with the sessions the pod
        serves and reaches 1 where the pod stops keeping up, which is how the autoscaler and the
        dashboards read it. Decode seconds over *audio* seconds would instead stay flat as sessions
        are added (it is the cost of one session) and would never show a pod falling behind. A
        batched pass counts its wall time once (split between its sessions), so the sum is the
        workers' busy time. Idle intervals publish 0, never the last busy value.
        """
        last_decode, last_at = self.decode_seconds_total, time.monotonic()
        while True:
            await asyncio.sleep(RTF_INTERVAL_SECONDS)
            now = time.monotonic()
            d_decode = self.decode_seconds_total - last_decode
            last_decode, elapsed, last_at = self.decode_seconds_total, now - last_at, now
            utilisation = decoder_utilisation(d_decode, elapsed, self.scheduler.workers)
            self.m_rtf.labels(pipeline=self.settings.pipeline, device=self.device).set(utilisation)
            self.capacity.observe(utilisation, len(self.sessions))
            self.m_capacity.labels(pipeline=self.settings.pipeline, stage="audio").set(self.capacity.sessions)
