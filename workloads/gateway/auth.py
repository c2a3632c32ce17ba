"""Bearer tokens and browser origins, both checked before the WebSocket is accepted.

Tokens are the files of a mounted Secret (one per key). Kubernetes swaps the mount atomically
when the Secret changes, so the directory is re-read every few seconds: a rotated token works
without a restart. Comparison is constant-time against every token; tokens are never logged.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

from livetranslate.logs import register_secrets

log = logging.getLogger(__name__)

_RELOAD_SECONDS = 5.0


class TokenAuth:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._tokens: list[bytes] = []
        self._loaded_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def _tokens_now(self) -> list[bytes]:
        if self.directory is None:
            return []
        now = time.monotonic()
        if now - self._loaded_at >= _RELOAD_SECONDS or not self._loaded_at:
            self._loaded_at = now
            tokens: list[bytes] = []
            try:
                for entry in sorted(self.directory.iterdir()):
                    # Secret mounts hold ..data and timestamped dirs next to the key symlinks.
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    value = entry.read_bytes().strip()
                    if value:
                        tokens.append(value)
            except OSError as exc:
                log.error(
                    "cannot read auth tokens; refusing every client",
                    extra={"fields": {"dir": str(self.directory), "error": str(exc)}},
                )
            self._tokens = tokens
            # Whatever path a token takes into a log line (a header logged by a library at
            # debug level, a client sending it where it does not belong), it is redacted.
            register_secrets(t.decode(errors="replace") for t in tokens)
        return self._tokens

    def check(self, token: str | None) -> bool:
        """True for an accepted token. With auth enabled and no tokens readable, nothing passes."""
        if self.directory is None:
            return True
        if not token:
            return False
        given = token.encode()
        ok = False
        for candidate in self._tokens_now():
            ok |= hmac.compare_digest(given, candidate)
        return ok


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Browsers always send Origin; other clients usually do not and are not subject to it.

    An empty allow-list means same origin only (the captions page the gateway serves itself).
    """
    if not origin:
        return True
    if "*" in allowed:
        return True
    if origin.rstrip("/") in (a.rstrip("/") for a in allowed):
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()
