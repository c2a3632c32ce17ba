"""Structured logging: JSON lines with logger, level, pipeline and session ids, ready for Loki.

Library code logs with ``logging.getLogger(__name__)`` and passes ids through ``extra=`` (or binds
them with ``log_context``); only entry points call ``configure_logging``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter as JsonLines

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lt_log_context", default={})  # noqa: B039 (never mutated)

# Keys copied from a record's extra= into the JSON line.
CONTEXT_KEYS = ("pipeline", "namespace", "session_id", "segment_id", "stage", "component", "language")
_SECRET_HINTS = ("token", "authorization", "api_key", "apikey", "password", "secret")


# Credentials in free text: query parameters (browsers send ?token=...; uvicorn logs every
# WebSocket request line with its query string at INFO) and HTTP header lines (uvicorn's debug
# level logs each request header). A value runs to the next separator, quote or backslash, so the
# same patterns work on a JSON-escaped line.
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:access_?token|token|api_?key|apikey|key|password|secret|sig|signature)=)[^&\s\"'\\]+"
)
_SECRET_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|api-key|sec-websocket-protocol)"
    r"(\s*[:=]\s*)[^\"\\\r\n]+"
)
_REDACTED = "[redacted]"
# Literal secrets registered by the process that loaded them (the gateway's accepted tokens):
# replaced wherever they appear, however they got into a line (a client sending its token in the
# wrong header, an exception quoting a URL).
_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()
_MIN_SECRET_LENGTH = 6  # shorter values would blank out ordinary words


def register_secrets(values: Iterable[str]) -> None:
    """Never log these strings (added to what is registered already)."""
    global _secrets
    fresh = {v for v in values if len(v) >= _MIN_SECRET_LENGTH}
    if not fresh - _secrets:
        return
    with _secrets_lock:
        _secrets = _secrets | fresh


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[redacted]``; cheap when there are none."""
    if "=" in text:
        text = _SECRET_QUERY.sub(lambda m: m.group(1) + _REDACTED, text)
    if ":" in text or "=" in text:
        text = _SECRET_HEADER.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message without credentials before any formatter sees it.

    Installed on the handler (not a logger), so records from every library (uvicorn, websockets,
    httpx) pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class RedactingTextFormatter(logging.Formatter):
    """The plain-text format, with tracebacks redacted too (they may quote a URL)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields (pipeline=..., session_id=...) to every log line in this task/context."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Bind fields for the rest of the current context (for example a connection's task)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(JsonLines):
    """One JSON object per line (python-json-logger): ``ts``, ``level``, ``logger``, ``msg``, any
    extra the record carries (a ``fields`` dict flattened into the line), the fields bound with
    ``log_context`` where the record does not set them, ``exc`` for a traceback; a key that names a
    secret is redacted, and so is every secret in values and tracebacks."""

    def __init__(self) -> None:
        super().__init__(
            "%(name)s %(message)s",
            rename_fields={"name": "logger", "message": "msg", "exc_info": "exc"},
            json_default=str,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        )
        log_data["level"] = record.levelname.lower()
        super().add_fields(log_data, record, message_dict)
        for key, value in _context.get().items():
            log_data.setdefault(key, value)
        extra = log_data.pop("fields", None)
        if isinstance(extra, dict):
            log_data.update(extra)
        for key in list(log_data):
            if any(h in key.lower() for h in _SECRET_HINTS):
                log_data[key] = _REDACTED

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        # Extra fields and tracebacks were not covered by RedactingFilter (it sees the message).
        return redact(super().serialize_log_record(log_data))


def configure_logging(level: str | None = None, component: str | None = None) -> None:
    """Send JSON lines to stderr. ``LT_LOG_LEVEL`` and ``LT_LOG_FORMAT=text`` override."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if os.environ.get("LT_LOG_FORMAT", "json") == "text":
        handler.setFormatter(RedactingTextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LT_LOG_LEVEL") or "INFO").upper())
    if component:
        bind_log_context(component=component)
    # Access logs carry query strings (browsers send ?token=...): keep uvicorn's off by default.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The Kubernetes client logs every response body at debug (Secrets' data included).
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)
