"""The gateway's process-wide state: config, session store, upstream clients, breakers, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry

from livetranslate import metrics
from livetranslate.workloads.gateway.auth import TokenAuth
from livetranslate.workloads.gateway.drain import Drain
from livetranslate.workloads.gateway.outbox import CLOSE_RESTART
from livetranslate.workloads.gateway.sessions import MemorySessionStore, RedisSessionStore, SessionStore
from livetranslate.workloads.gateway.settings import GatewayConfig
from livetranslate.workloads.gateway.upstream import TranslationClient
from livetranslate.workloads.resilience import CircuitBreaker

if TYPE_CHECKING:
    from livetranslate.workloads.gateway.session import Session

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, registry: CollectorRegistry | None = None) -> None:
        s = config.settings
        self.config = config
        self.settings = s
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.registry = registry or CollectorRegistry()
        self.store: SessionStore
        if config.redis_url:
            errors = metrics.session_store_errors(self.registry)
            redis_store = RedisSessionStore(
                config.redis_url,
                config.pipeline,
                s.session_ttl_seconds,
                s.session_log_segments,
                errors=lambda operation: errors.labels(pipeline=config.pipeline, operation=operation).inc(),
            )
            metrics.session_store_deferred(self.registry).labels(pipeline=config.pipeline).set_function(
                lambda: redis_store.deferred_writes
            )
            self.store = redis_store
        else:
            self.store = MemorySessionStore(s.session_ttl_seconds, s.session_log_segments)
        self.auth = TokenAuth(config.auth_dir)
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        )
        self.audio_breaker = CircuitBreaker("audio", s.breaker_failures, s.breaker_reset_seconds)
        self.translation_breaker = CircuitBreaker("translation", s.breaker_failures, s.breaker_reset_seconds)
        self.translation = (
            TranslationClient(config.translation_url, self.http, s.translate_timeout)
            if config.translation_url
            else None
        )
        self.sessions: set[Session] = set()
        self.connections = 0
        self.starting = 0  # connections inside session.start (claiming, loading state)

        p = config.pipeline
        self.caption_latency = metrics.caption_latency(self.registry).labels(pipeline=p)
        self.translation_latency = metrics.translation_latency(self.registry).labels(pipeline=p)
        self.sentence_latency = metrics.sentence_latency(self.registry).labels(pipeline=p)
        self.sentence_calls = metrics.sentence_translation_calls(self.registry).labels(pipeline=p)
        self.sessions_gauge = metrics.sessions_active(self.registry).labels(pipeline=p)
        self.sessions_gauge.set_function(lambda: len(self.sessions))
        depth = metrics.queue_depth(self.registry)
        depth.labels(pipeline=p, stage="gateway_send").set_function(
            lambda: sum(s.outbox.queue.depth for s in self.sessions)
        )
        depth.labels(pipeline=p, stage="gateway_translate").set_function(
            lambda: sum(s.translate_backlog for s in self.sessions)
        )

        # Admission (issue 25): the sessions this replica takes, and the ones it turned away at
        # that cap; the autoscaler counts the refused ones as demand.
        metrics.stage_capacity_sessions(self.registry).labels(pipeline=p, stage="gateway").set(
            config.max_sessions
        )
        self.refusals = metrics.admission_refusals(self.registry).labels(
            pipeline=p, stage="gateway", reason="capacity"
        )

        self._ready_cache: tuple[float, bool, dict[str, Any]] | None = None
        self.drain = Drain(self)

    @property
    def at_capacity(self) -> bool:
        return len(self.sessions) >= self.config.max_sessions

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Upstreams reachable (their own /readyz) and the session store answering; cached briefly.
        A draining replica is not ready, at once: the Service stops sending it new clients."""
        if self.drain.active:
            return False, {"draining": "this replica is shutting down; its sessions move to others"}
        now = time.monotonic()
        if self._ready_cache and now - self._ready_cache[0] < self.settings.readiness_cache_seconds:
            return self._ready_cache[1], self._ready_cache[2]
        checks: dict[str, Any] = {}

        async def probe(name: str, url: str | None) -> None:
            if not url:
                checks[name] = "not configured"
                return
            try:
                r = await self.http.get(url + "/readyz", timeout=2.0)
                checks[name] = "ok" if r.status_code == 200 else f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                checks[name] = f"unreachable: {type(exc).__name__}"

        async def store() -> None:
            checks["sessionStore"] = "ok" if await self.store.ping() else "unreachable"

        await asyncio.gather(
            probe("audio", self.config.audio_url), probe("translation", self.config.translation_url), store()
        )
        ok = all(v == "ok" for v in checks.values())
        self._ready_cache = (now, ok, checks)
        return ok, checks

    async def close(self) -> None:
        for session in list(self.sessions):
            session.outbox.close(CLOSE_RESTART, "server shutting down")
        await self.http.aclose()
        await self.store.close()
