"""The audio service: ``/v1/audio`` (the gateway's per-session stream) plus health and metrics.

``livetranslate serve audio`` runs ``create_app()`` under uvicorn. The internal protocol is in
``livetranslate.protocol``: a ``start`` text frame, PCM s16le mono 16 kHz binary frames, a
``flush`` text frame; the service answers ``ready``, ``partial``/``final`` events and ``flushed``.
On SIGTERM it drains (drain.py): its live streams resume on other replicas, then it exits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livetranslate.workloads.audio.connection import AudioConnection
from livetranslate.workloads.audio.service import AudioService
from livetranslate.workloads.audio.settings import AudioSettings, load_settings
from livetranslate.workloads.shutdown import install_sigterm

log = logging.getLogger(__name__)


def create_app(settings: AudioSettings | None = None) -> FastAPI:
    cfg = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = AudioService(cfg)
        app.state.audio = service
        await service.start()
        log.info(
            "audio service started",
            extra={
                "fields": {
                    "pipeline": cfg.pipeline,
                    "model": cfg.model or "tiny.en",
                    "device": cfg.device,
                    "workers": cfg.worker_count(),
                    "vad": cfg.vad,
                    "diarization": cfg.diarization,
                }
            },
        )
        restore = install_sigterm(service.drain) if cfg.drain_on_sigterm else None
        try:
            yield
        finally:
            if restore is not None:
                restore()
            await service.close()

    app = FastAPI(
        title="LiveTranslate audio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ok, checks = request.app.state.audio.readiness()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.audio.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/v1/audio")
    async def audio(ws: WebSocket) -> None:
        await AudioConnection(ws, ws.app.state.audio).run()

    return app
