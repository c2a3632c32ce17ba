"""How the operator logs in to the API server, for Kopf and for its own client (kube.py).

``login`` is registered as Kopf's login handler; ``configuration`` turns the ``kopf.ConnectionInfo``
it returns into kubernetes_asyncio's ``Configuration`` (server, TLS material, credentials), so both
clients reach the same server with the same credentials.
"""

from __future__ import annotations

import os
from typing import Any

import kopf
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config.kube_config import FileOrData

POOL_SIZE = 64  # connections to the API server
AUTH_SLOT = "BearerToken"  # the library's one credential slot: it sends "<prefix> <key>" as Authorization


def login(*, settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """How Kopf and this client log in: the pod's service account, else ``$KUBECONFIG``.

    Registered because installing kubernetes_asyncio changes Kopf's default: it would log in
    through that library's loader instead, which reads ``$KUBECONFIG`` once, at import (a process
    that points it elsewhere later, as the tests do for each emulator, logs in to a stale file), and
    drops the context's namespace. This is the pair of logins Kopf used before, in its order.
    """
    return kopf.login_with_service_account(settings=settings, **kwargs) or kopf.login_with_kubeconfig(
        settings=settings, **kwargs
    )


kopf.on.login(errors=kopf.ErrorsMode.IGNORED)(login)  # not as a decorator: ``login`` keeps its type


def login_now() -> kopf.ConnectionInfo | None:
    return login(settings=kopf.OperatorSettings())


def _as_file(path: Any, data: str | bytes | None) -> str | None:
    """A file for TLS material Kopf holds as a path or as base64 data: the library reads only
    files; its kubeconfig loader's helper writes the data to a temporary file removed at exit."""
    if path:
        return os.fsdecode(path)
    if data:
        found: str | None = FileOrData({"data": data}, "file", "data").as_file()
        return found
    return None


def set_credentials(config: Configuration, info: kopf.ConnectionInfo) -> bool:
    """Put the Authorization Kopf would send (basic auth, else scheme and token) into the library's
    credential slot; whether it changed. No credentials at all leave the slot as it is."""
    header = info.as_http_headers().get("Authorization")
    if not header:
        return False
    scheme, _, key = header.partition(" ")
    fresh = ({AUTH_SLOT: key}, {AUTH_SLOT: scheme}) if key else ({AUTH_SLOT: scheme}, {})
    if (config.api_key, config.api_key_prefix) == fresh:
        return False
    config.api_key, config.api_key_prefix = fresh
    return True


def configuration(info: kopf.ConnectionInfo) -> Configuration:
    """The library's settings for the server and credentials of one Kopf login."""
    config = Configuration(host=info.server.rstrip("/"))
    config.verify_ssl = not info.insecure
    config.ssl_ca_cert = _as_file(info.ca_path, info.ca_data)
    config.cert_file = _as_file(info.certificate_path, info.certificate_data)
    config.key_file = _as_file(info.private_key_path, info.private_key_data)
    config.proxy = info.proxy_url
    config.connection_pool_maxsize = POOL_SIZE
    set_credentials(config, info)
    return config
