"""Structured logging: JSON lines with logger, level, pipeline and session ids, ready for Loki.

Library code logs with ``logging.getLogger(__name__)`` and passes ids through ``extra=`` (or binds
them with ``log_context``); only entry points call ``configure_logging``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lt_log_context", default={})  # noqa: B039 (never mutated)

# Keys copied from a record's extra= into the JSON line.
CONTEXT_KEYS = ("pipeline", "namespace", "session_id", "segment_id", "stage", "component", "language")
_SECRET_HINTS = ("token", "authorization", "api_key", "apikey", "password", "secret")


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_context.get())
        for key in CONTEXT_KEYS:
            if key in record.__dict__:
                line[key] = record.__dict__[key]
        extra = record.__dict__.get("fields")
        if isinstance(extra, dict):
            line.update(extra)
        for key in list(line):
            if any(h in key.lower() for h in _SECRET_HINTS):
                line[key] = "[redacted]"
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str | None = None, component: str | None = None) -> None:
    """Send JSON lines to stderr. ``LT_LOG_LEVEL`` and ``LT_LOG_FORMAT=text`` override."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LT_LOG_FORMAT", "json") == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LT_LOG_LEVEL") or "INFO").upper())
    if component:
        bind_log_context(component=component)
    # Access logs carry query strings (browsers send ?token=...): keep uvicorn's off by default.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
