"""The gateway service: ``/v1/stream`` (API.md section 2), the captions page, health and metrics.

``POST /v1/admin/drain`` (bearer ``LT_GATEWAY_ADMIN_TOKEN``; off without one) drains the replica
as SIGTERM does (drain.py): its sessions move to other replicas, then it exits.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livetranslate.protocol import GATEWAY_DEPENDENCY_CHECKS
from livetranslate.workloads.gateway.auth import bearer_token, origin_allowed
from livetranslate.workloads.gateway.connection import Connection
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.settings import GatewayConfig, load_config
from livetranslate.workloads.shutdown import install_sigterm

log = logging.getLogger(__name__)

STATIC = resources.files("livetranslate.workloads.gateway") / "static"


def create_app(config: GatewayConfig | None = None) -> FastAPI:
    cfg = config or load_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = Gateway(cfg)
        app.state.gateway = gw
        log.info(
            "gateway ready",
            extra={
                "fields": {
                    "pipeline": cfg.pipeline,
                    "audio": cfg.audio_url,
                    "translation": cfg.translation_url,
                    "sessionStore": "redis" if cfg.redis_url else "memory",
                    "auth": gw.auth.enabled,
                    "maxSessions": cfg.max_sessions,
                }
            },
        )
        restore = install_sigterm(gw.drain) if cfg.settings.drain_on_sigterm else None
        try:
            yield
        finally:
            if restore is not None:
                restore()
            await gw.close()

    app = FastAPI(
        title="LiveTranslate gateway",
        lifespan=lifespan,
        root_path=cfg.settings.root_path,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    index_html = (STATIC / "index.html").read_text()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request, exclude: Annotated[list[str] | None, Query()] = None) -> JSONResponse:
        """Ready: this replica serves, and (unless named in ``exclude``, as kube-apiserver's
        ``/readyz?exclude=``) its upstreams and session store answer. The pod's readiness probe
        excludes them: a dependency every replica shares being down would take every replica out
        of the Service at once, and clients would meet a refused connection instead of the clear
        ``upstream_unavailable`` a session gets from a replica that stays in."""
        gw: Gateway = request.app.state.gateway
        ok, checks = await gw.readiness()
        skip = set(exclude or ())
        unknown = sorted(skip - set(checks) - set(GATEWAY_DEPENDENCY_CHECKS))
        if unknown:
            return JSONResponse(
                {
                    "error": f"exclude={unknown[0]}: not a check; these are {', '.join(GATEWAY_DEPENDENCY_CHECKS)}"
                },
                status_code=400,
            )
        if skip and not gw.drain.active:
            ok = all(v == "ok" for k, v in checks.items() if k not in skip)
        body = {"ready": ok, "checks": checks, **({"excluded": sorted(skip)} if skip else {})}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.gateway.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/drain")
    async def drain(request: Request) -> JSONResponse:
        token = cfg.settings.admin_token
        if token is None:
            raise HTTPException(status_code=404, detail="Not Found")
        expected = f"Bearer {token.get_secret_value()}"
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, expected.encode()):
            raise HTTPException(status_code=401, detail="admin token required")
        gw: Gateway = request.app.state.gateway
        gw.drain.start("admin request")
        return JSONResponse(gw.drain.status(), status_code=202)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a path prefix, relative URLs resolve against this base, so
        # the page, its scripts and its WebSocket all stay under the prefix.
        prefix = request.headers.get("x-forwarded-prefix") or request.scope.get("root_path") or ""
        base = prefix.rstrip("/") + "/"
        return HTMLResponse(
            index_html.replace("<!--BASE-->", f'<base href="{_attr(base)}">'),
            # Opened as /?token=...: no Referer may carry that URL elsewhere.
            headers={"cache-control": "no-cache", "referrer-policy": "no-referrer"},
        )

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        gw: Gateway = ws.app.state.gateway
        token = bearer_token(ws.headers.get("authorization"), ws.query_params.get("token"))
        if not gw.auth.check(token):
            log.info("refused: bad or missing token", extra={"fields": {"client": _client(ws)}})
            await _deny(ws, 401, "a valid bearer token is required")
            return
        if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"), cfg.allowed_origins):
            log.info("refused: origin not allowed", extra={"fields": {"origin": ws.headers.get("origin")}})
            await _deny(ws, 403, "origin not allowed")
            return
        await Connection(ws, gw).run()

    return app


async def _deny(ws: WebSocket, status: int, message: str) -> None:
    """Refuse before accept: an HTTP status where the server can send one, else close 1008."""
    try:
        await ws.send_denial_response(JSONResponse({"error": message}, status_code=status))
    except RuntimeError:
        await ws.close(code=1008, reason=message)


def _client(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "?"


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
