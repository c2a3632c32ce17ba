"""HTTP face of the translation stage: ``livetranslate serve translate`` runs ``create_app()``.

Routes (API.md section 3 plus the gateway's interface):
- ``POST /v1/translate``: a TranslateRequest in; NDJSON out, one TranslateResult line per target
  language as soon as it is ready. 422 for bad or over-long input, 429 with Retry-After when the
  queue is full, 503 with Retry-After while the engine is not ready.
- ``GET /healthz``, ``GET /readyz`` (engine reachable and loaded, per-engine detail), ``GET /metrics``.
- ``GET|POST /v1/admin/model``: the model the primary engine is asked for; the autoscaler (or an
  operator by hand) switches to a ``fallbackModels`` entry here, or through the pipeline file.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from livetranslate.logs import log_context
from livetranslate.protocol import TranslateRequest

from .batching import QueueFull
from .service import ModelSwitchError, TranslationService
from .settings import TranslateSettings, load_settings

NDJSON = "application/x-ndjson"


class ModelSwitch(BaseModel):
    model: str = Field(..., min_length=1, max_length=512)


def get_service(request: Request) -> TranslationService:
    service: TranslationService = request.app.state.service
    return service


ServiceDep = Annotated[TranslationService, Depends(get_service)]


def create_app(settings: TranslateSettings | None = None) -> FastAPI:
    """Build the app; settings default to the environment merged with the pipeline file."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved_settings = settings or load_settings()
        service = TranslationService(resolved_settings)
        app.state.settings = resolved_settings
        app.state.service = service
        with log_context(pipeline=service.pipeline, stage="translation"):
            await service.start()
            try:
                yield
            finally:
                await service.close()

    app = FastAPI(title="LiveTranslate translation", lifespan=lifespan)

    def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        token = request.app.state.settings.admin_token
        if token is None:
            return
        expected = f"Bearer {token.get_secret_value()}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(status_code=401, detail="admin token required")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(service: ServiceDep) -> JSONResponse:
        await service.refresh()
        body = service.readiness()
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def metrics(service: ServiceDep) -> Response:
        service.sync_local_metrics()
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/translate", response_model=None)
    async def translate(req: TranslateRequest, service: ServiceDep) -> StreamingResponse | JSONResponse:
        limit = service.settings.max_chars
        if len(req.text) > limit:
            service.metrics.refused.labels(service.pipeline, "too_long").inc()
            return JSONResponse(
                {
                    "detail": f"text is {len(req.text)} characters; a segment may have at most "
                    f"{limit}: split it before sending"
                },
                status_code=422,
            )
        if not req.text.strip():
            return JSONResponse({"detail": "text is empty"}, status_code=422)
        if not service.accepting:
            service.metrics.refused.labels(service.pipeline, "not_ready").inc()
            return JSONResponse(
                {"detail": f"translation engine not ready: {service.primary.engine.state.detail}"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        try:
            service.admit(req)
        except QueueFull as exc:
            return JSONResponse(
                {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(int(exc.retry_after))}
            )

        async def lines() -> AsyncIterator[bytes]:
            with log_context(session_id=req.sessionId, segment_id=req.segmentId):
                async for result in service.translate(req):
                    yield (result.model_dump_json(exclude_none=True) + "\n").encode()

        return StreamingResponse(lines(), media_type=NDJSON)

    @app.get("/v1/admin/model")
    async def get_model(service: ServiceDep) -> dict[str, object]:
        engine = service.primary.engine
        return {
            "backend": engine.name,
            "model": service.model,
            "allowed": service.allowed_models,
            "served": getattr(engine, "served_models", []),
        }

    @app.post("/v1/admin/model", dependencies=[Depends(require_admin)])
    async def set_model(body: ModelSwitch, service: ServiceDep) -> dict[str, object]:
        try:
            previous = await service.set_model(body.model)
        except ModelSwitchError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return {"model": service.model, "previous": previous}

    return app
