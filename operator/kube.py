"""The operator's small Kubernetes client: apply manifests idempotently, read Deployments, post Events.

The transport is ``kubernetes_asyncio`` (the official client's asyncio build): a ``Configuration``
built from the ``kopf.ConnectionInfo`` Kopf itself logged in with (in-cluster service account,
else ``$KUBECONFIG``), so both clients reach the same server with the same credentials, and one
``ApiClient`` per ``KubeClient`` that sends every request (TLS, CA and client certificates, the
Authorization header, JSON). The autoscaler (operator/scaling/) uses the same module to read and
patch Deployments and to post its Events.

Kept hand-written on top of it, each for a reason the library does not cover:

- The retry wrapper (``request``): the library sends each request once. A reconcile wants
  throttling (429, Retry-After honoured), a failing API server, a dropped connection and a merge
  patch that lost a race retried in place, briefly, and everything else reported at once.
- Paths and plain dicts (``resource_url``, ``PLURALS``) through ``ApiClient.call_api``, not the
  generated typed APIs (``CoreV1Api`` ...): one generic path serves core and apps kinds, our CRD
  and PodMonitor alike, manifests stay the dicts ``manifests.build_*`` return, and the verbs and
  paths are the ones the RBAC audit (tests/reliability/test_security.py) checks. The dynamic
  client would add a discovery sweep of every API group before the first request.
- ``apply``: create-or-merge-patch with adoption and fields another component owns. Children are
  never deleted and recreated, so a restart never duplicates or restarts anything; on 409 (it
  exists, perhaps created by a previous operator process that died mid-reconcile) the object is
  merge-patched to the desired state and adopted with an ownerReference.
- Re-reading the credentials once on a 401: projected service-account tokens rotate.
- ``login``, the Kopf login handler both clients use, and the ``Configuration`` built from it
  (kube_login.py).
"""

from __future__ import annotations

import asyncio
import datetime
import json as jsonlib
import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration

from livetranslate.operator import manifests
from livetranslate.operator.kube_login import AUTH_SLOT, configuration, login_now, set_credentials

log = logging.getLogger(__name__)

# apiVersion -> URL prefix; kind -> plural (the resources the operator and autoscaler touch).
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "Event": "events",
    "Secret": "secrets",
    "Node": "nodes",
    "Pod": "pods",
    "TranslationPipeline": "translationpipelines",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "PodMonitor": "podmonitors",
    "NetworkPolicy": "networkpolicies",
    "Job": "jobs",
    "PersistentVolumeClaim": "persistentvolumeclaims",
}
CLUSTER_SCOPED = {"Node"}

# Answers worth retrying in place, briefly, before a handler gives up on the whole reconcile (and
# Kopf retries it after OperatorSettings.retry_delay_seconds): throttling (429, its Retry-After
# honoured), a failing API server or etcd (500, 502-504), a dropped connection, and a merge patch
# that lost a race with another writer (409 Conflict: kube-apiserver gives up after a few internal
# retries under contention; a merge patch states the desired fields, so sending it again is
# safe). A create's 409 means AlreadyExists and is ``apply``'s business, not a retry.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_BACKOFFS: tuple[float, ...] = (0.25, 0.5, 1.0)  # seconds, each scaled by a random 0.5-1.5
RETRY_AFTER_CAP_S = 10.0  # a longer Retry-After is left to the handler's own (slower) retry

USER_AGENT = "livetranslate-operator"
# The library's per-request default is no limit at all; a stalled API server must become an
# ApiError the handler retries later (see KubeClient.request).
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
# Every 2xx answer is handed back as the parsed JSON (dicts and lists), never as model classes.
_AS_JSON = {status: "object" for status in range(200, 300)}


class ApiError(Exception):
    """A Kubernetes API error with its HTTP status (404, 409, 422, ...)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body
        self.retry_after: float | None = None  # seconds, from a 429's Retry-After

    @classmethod
    def from_api_exception(cls, e: ApiException) -> ApiError:
        """The library's error as ours: the Status object parsed, its message, the Retry-After."""
        raw = e.body.decode(errors="replace") if isinstance(e.body, bytes) else e.body or ""
        try:
            body = jsonlib.loads(raw)
            message = body.get("message", "") if isinstance(body, dict) else str(body)
        except ValueError:
            body, message = None, raw
        error = cls(int(e.status or 0), message or e.reason or "", body)
        headers: Mapping[str, str] = e.headers or {}
        error.retry_after = _retry_after(headers.get("Retry-After"), body)
        return error


def _has_precondition(body: Any) -> bool:
    """Whether a request body pins the object's resourceVersion (optimistic concurrency)."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    return isinstance(metadata, dict) and metadata.get("resourceVersion") is not None


def _retry_after(header: str | None, body: Any) -> float | None:
    """Retry-After (seconds form), else the Status object's details.retryAfterSeconds."""
    try:
        if header:
            return max(0.0, float(header))
        details = body.get("details") if isinstance(body, dict) else None
        if isinstance(details, dict) and details.get("retryAfterSeconds") is not None:
            return max(0.0, float(details["retryAfterSeconds"]))
    except (TypeError, ValueError):
        pass
    return None


def resource_url(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix]
    if namespace and kind not in CLUSTER_SCOPED:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    """One authenticated ``ApiClient`` to the API server. Create with ``await KubeClient.connect()``.

    ``session`` replaces the aiohttp session under the library's client, its User-Agent and
    timeout included (a test's own probe); otherwise the library's session is used with
    ``user_agent`` and REQUEST_TIMEOUT.
    """

    def __init__(
        self,
        config: Configuration | str,
        session: aiohttp.ClientSession | None = None,
        default_namespace: str | None = None,
        *,
        user_agent: str = USER_AGENT,
        retry_backoffs: Sequence[float] = RETRY_BACKOFFS,
    ) -> None:
        self.configuration = (
            config if isinstance(config, Configuration) else Configuration(host=config.rstrip("/"))
        )
        self.api = ApiClient(self.configuration)
        self.api.user_agent = user_agent
        self.timeout = REQUEST_TIMEOUT
        self._unused_session: aiohttp.ClientSession | None = None
        if session is not None:
            self._unused_session = self.api.rest_client.pool_manager
            self.api.rest_client.pool_manager = session
            self.api.user_agent = session.headers.get("User-Agent", user_agent)
            self.timeout = session.timeout
        self.server = self.configuration.host
        self.default_namespace = default_namespace
        self.retry_backoffs = tuple(retry_backoffs)

    @classmethod
    async def connect(
        cls, info: kopf.ConnectionInfo | None = None, *, user_agent: str = USER_AGENT
    ) -> KubeClient:
        info = info or login_now()
        if info is None:
            raise kopf.LoginError("no service account and no kubeconfig: cannot reach a cluster")
        return cls(configuration(info), default_namespace=info.default_namespace, user_agent=user_agent)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session the library sends on (``closed`` once this client is closed)."""
        session: aiohttp.ClientSession = self.api.rest_client.pool_manager
        return session

    def _relogin(self) -> bool:
        info = login_now()
        return info is not None and set_credentials(self.configuration, info)

    async def close(self) -> None:
        await self.api.close()
        if self._unused_session is not None:
            await self._unused_session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
        _retried: bool = False,
    ) -> Any:
        """One API call; transient failures are retried a bounded number of times with jittered
        backoff (see RETRY_STATUSES), then raised as ApiError for the caller's slower retry."""
        for attempt, backoff in enumerate((*self.retry_backoffs, None)):
            try:
                return await self._request_once(
                    method, path, json=json, params=params, content_type=content_type, _retried=_retried
                )
            except ApiError as e:
                delay = self._retry_delay(method, e, backoff, _has_precondition(json))
                if delay is None:
                    raise
                log.debug("%s %s: HTTP %d, retry %d in %.2fs", method, path, e.status, attempt + 1, delay)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                if backoff is None:
                    raise ApiError(503, f"connection to the API server failed: {e!r}") from e
                delay = backoff * random.uniform(0.5, 1.5)
                log.debug("%s %s: %r, retry %d in %.2fs", method, path, e, attempt + 1, delay)
            except TimeoutError as e:
                # The server is overloaded (or the network partitioned): sending it the same
                # request again at once would add to the load. An ApiError lets the handler retry
                # the reconcile later, with its growing delay (found by the chaos benchmark on a
                # saturated machine: a bare TimeoutError made Kopf wait its 60 s default backoff).
                raise ApiError(504, f"{method} {path}: no answer from the API server in time") from e
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _retry_delay(
        method: str, error: ApiError, backoff: float | None, precondition: bool = False
    ) -> float | None:
        """Seconds to wait before sending the request again, or None to give up now. A patch that
        carries ``metadata.resourceVersion`` is a precondition: its 409 means the object moved on,
        and the same body can never succeed, so the caller (who must re-read) hears of it at once."""
        if backoff is None:
            return None
        reason = error.body.get("reason") if isinstance(error.body, dict) else None
        if error.status == 409 and method == "PATCH" and reason == "Conflict":
            return None if precondition else backoff * random.uniform(0.5, 1.5)
        if error.status not in RETRY_STATUSES:
            return None
        delay = backoff * random.uniform(0.5, 1.5)
        if error.status == 429:
            retry_after = error.retry_after
            if retry_after is not None:
                if retry_after > RETRY_AFTER_CAP_S:
                    return None
                delay = max(delay, retry_after)
        return delay

    async def _request_once(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: Mapping[str, str] | None,
        content_type: str | None,
        _retried: bool,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type  # the library sends application/json otherwise
        try:
            return await self.api.call_api(
                path,
                method,
                query_params=dict(params) if params else None,
                header_params=headers,
                body=json,
                auth_settings=[AUTH_SLOT],
                response_types_map=_AS_JSON,
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            if e.status == 401 and not _retried and self._relogin():
                # Projected service-account tokens rotate: read the credentials again, once.
                return await self._request_once(
                    method, path, json=json, params=params, content_type=content_type, _retried=True
                )
            raise ApiError.from_api_exception(e) from e

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery; needs no RBAC rule)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            found = await self.request("GET", prefix)
        except ApiError as e:
            if e.status in (404, 503):
                return False
            raise
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    # ------------------------------------------------------------------------------ plain verbs

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request(
                "GET", resource_url(api_version, kind, namespace, name)
            )
            return result
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", resource_url(api_version, kind, namespace), params=params)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        result: dict[str, Any] = await self.request(
            "POST",
            resource_url(manifest["apiVersion"], manifest["kind"], meta.get("namespace")),
            json=manifest,
        )
        return result

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """RFC 7386 merge patch (lists replaced whole, which is what desired-state apply wants)."""
        result: dict[str, Any] = await self.request(
            "PATCH",
            resource_url(api_version, kind, namespace, name, subresource),
            json=patch,
            content_type="application/merge-patch+json",
        )
        return result

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(api_version, kind, namespace, name, {"status": status}, subresource="status")

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        try:
            await self.request(
                "DELETE",
                resource_url(api_version, kind, namespace, name),
                json={"propagationPolicy": "Background"},
            )
        except ApiError as e:
            if e.status != 404:
                raise

    # ------------------------------------------------------------------------ idempotent apply

    async def apply(
        self,
        manifest: Mapping[str, Any],
        owner: Mapping[str, Any] | None = None,
        *,
        keep_on_update: Sequence[tuple[str, ...]] = (),
        likely_new: bool = False,
    ) -> dict[str, Any]:
        """Create, or merge-patch to ``manifest``; adopt it under ``owner``.

        Read first: most applies (updates, resumes, resync sweeps) find the object there and
        unchanged, which then costs one GET and no write, rather than a create refused with 409
        (an error on the API server's dashboards) and a GET. ``likely_new`` (the owner was never
        reconciled) creates first instead, saving the GET that would answer 404. Either way a
        create that loses a race to another writer (409) falls back to the patch.

        ``keep_on_update`` lists field paths written only at creation: after that another
        component owns them (``("spec", "replicas")`` belongs to the autoscaler).
        """
        desired = manifests.with_owner(manifest, owner)
        meta = desired["metadata"]
        api_version, kind, namespace, name = (
            desired["apiVersion"],
            desired["kind"],
            meta.get("namespace"),
            meta["name"],
        )
        existing = None if likely_new else await self.get(api_version, kind, namespace, name)
        if existing is None:
            try:
                return await self.create(desired)
            except ApiError as e:
                if e.status != 409:
                    raise
            existing = await self.get(api_version, kind, namespace, name)
        patch = manifests.without(desired, keep_on_update)
        if existing is not None:
            patch["metadata"]["ownerReferences"] = manifests.merged_owners(
                existing.get("metadata", {}).get("ownerReferences") or [], meta.get("ownerReferences") or []
            )
            manifests.drop_extra_keys(patch, existing, manifests.OWNED_MAPS)
            if manifests.contains(existing, patch):
                return existing  # nothing to change: no write, no new resourceVersion, no rollout
        return await self.patch(api_version, kind, namespace, name, patch)

    # ----------------------------------------------------------------------------------- events

    async def post_event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "livetranslate-operator",
    ) -> None:
        """A core/v1 Event on ``involved`` (what ``kubectl describe`` shows). Never raises."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or self.default_namespace or "default"
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'unknown')}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", resource_url("v1", "Event", namespace), json=event)
        except (TimeoutError, ApiError, aiohttp.ClientError) as e:
            log.warning("could not post event %s: %s", reason, e)
