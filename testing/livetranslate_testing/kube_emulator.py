"""A Kubernetes API emulator for running the real operator (Kopf) in tests, built on kmock.

kmock 0.8 gives the HTTP server, request parsing, API discovery and the bundled built-in resource
list. Its stock ``KubernetesEmulator`` is too loose for an operator's correctness tests, so this
class keeps kmock's scaffold and replaces the object store with one that behaves like
kube-apiserver where an operator can tell the difference:

- create fills ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation``,
  ``apiVersion``/``kind`` and ``namespace``; a duplicate name is 409; a missing name is 422;
- one global resourceVersion; watches honour ``resourceVersion`` (replay from the event log, so
  nothing written between a list and its watch is lost), ``labelSelector``, ``fieldSelector``
  and ``timeoutSeconds``; an expired resourceVersion is 410 Gone;
- PATCH as merge (RFC 7386), JSON patch (RFC 6902, a failed ``test`` is 422) and strategic merge
  (handled as merge); PUT replaces; a stale ``metadata.resourceVersion`` is 409;
- with a status subresource, writes to the main resource ignore ``status`` and writes to
  ``/status`` change nothing else; ``generation`` bumps only when the spec changes; a write that
  changes nothing does not bump resourceVersion or emit an event;
- DELETE honours finalizers (deletionTimestamp first) and then garbage-collects dependents through
  ``ownerReferences`` (background cascade); an object written later with owners that are all
  gone (a write that raced the deletion) is collected too, shortly after;
- custom resources are defaulted, pruned and validated against their CRD schema (422 with the
  field, like the API server), using kube_schema;
- Deployments get a ``scale`` subresource; tests mark Deployments ready and add/remove Nodes;
- every API call is recorded as (verb, apiGroup, resource[/subresource]) in ``calls`` so RBAC
  rules can be checked against what the operator really does;
- faults can be injected at run time (``faults = Faults(...)``): 409 conflicts on writes, 429
  throttling with Retry-After, 500s and watch streams cut mid-stream, each at its own rate from a
  seeded generator, answered with the Status objects a real API server sends; ``injected`` counts
  them by kind.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import functools
import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from livetranslate_testing.kube_schema import admit

ResourceKey = tuple[str, str, str]  # group, version, plural
ObjectKey = tuple[ResourceKey, str | None, str]  # resource, namespace, name
Admission = Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]

LOG_LIMIT = 200_000


@dataclass(frozen=True)
class Call:
    """One API request, in RBAC terms."""

    verb: str  # get, list, watch, create, update, patch, delete
    group: str
    resource: str  # plural, or plural/subresource
    namespace: str | None
    name: str | None
    agent: str = ""  # the client's User-Agent


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: ResourceKey
    type: str
    obj: dict[str, Any]


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class Faults:
    """What the emulator gets wrong on purpose, per request, for reliability tests and benchmarks.

    Each rate is the probability that one request meets that fault; the kinds are drawn in the
    order 429, 500, 409 from one ``random.Random(seed)``, so a run is reproducible for a given
    request order. A real API server answers 409 to writes racing with another writer, 429 from
    API Priority and Fairness (always with Retry-After), 500 when etcd or a webhook fails, and
    ends watch streams whenever its connection or the server goes away: the operator must ride
    out all four without duplicating children or storming the server with retries.
    """

    conflict: float = 0.0  # 409 Conflict on update/patch (writes that raced another writer)
    throttle: float = 0.0  # 429 TooManyRequests with Retry-After, any verb
    server_error: float = 0.0  # 500 InternalError, any verb
    # A watch stream is cut (connection closed mid-stream): a new stream is doomed to be cut
    # within ``drop_within_s`` with this probability, and before each event it sends it is cut
    # with this probability, halfway through that event's line.
    drop_watch: float = 0.0
    retry_after_s: int = 1  # the Retry-After a 429 carries
    drop_within_s: float = 3.0  # a doomed watch is cut after uniform(0, drop_within_s) seconds
    seed: int = 0
    # Requests from clients with these User-Agents are never faulted (a test's own kubectl).
    spare_agents: frozenset[str] = frozenset({"test-kubectl"})
    rng: random.Random = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """``"conflict=0.1,throttle=0.1,server_error=0.1,drop_watch=0.1,seed=7"`` (a CLI flag)."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            kind = cls.__dataclass_fields__[name.strip()].type
            values[name.strip()] = int(value) if kind in ("int", int) else float(value)
        return cls(**values)

    def draw(self, call: Call) -> str | None:
        """The fault this request meets, if any: "throttle", "server_error", "conflict", "drop_watch"."""
        if call.agent in self.spare_agents:
            return None
        x = self.rng.random()
        for kind, rate in (("throttle", self.throttle), ("server_error", self.server_error)):
            if x < rate:
                return kind
            x -= rate
        if call.verb in ("update", "patch") and x < self.conflict:
            return "conflict"
        if call.verb == "watch" and self.rng.random() < self.drop_watch:
            return "drop_watch"
        return None


def fault_status(kind: str, call: Call, faults: Faults) -> tuple[dict[str, Any], dict[str, str]]:
    """The Status body and headers kube-apiserver sends for an injected fault."""
    group_resource = f"{call.resource.split('/')[0]}{'.' + call.group if call.group else ''}"
    if kind == "throttle":
        return (
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": "Too many requests, please try again later.",
                "reason": "TooManyRequests",
                "details": {"retryAfterSeconds": faults.retry_after_s},
                "code": 429,
            },
            {"Retry-After": str(faults.retry_after_s)},
        )
    if kind == "conflict":
        return (
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": f'Operation cannot be fulfilled on {group_resource} "{call.name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                "reason": "Conflict",
                "details": {"name": call.name, "group": call.group, "kind": call.resource.split("/")[0]},
                "code": 409,
            },
            {},
        )
    return (
        {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": "Internal error occurred: etcdserver: request timed out (injected fault)",
            "reason": "InternalError",
            "details": {"causes": [{"message": "etcdserver: request timed out"}]},
            "code": 500,
        },
        {},
    )


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------ patching


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch; raises ApiStatus(422) when an op cannot apply (as kube-apiserver does)."""
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        if not parts:
            raise ApiStatus(422, "Invalid", f"cannot address the root with {path!r}")
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node = doc
        for part in _pointer(path):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        try:
            if kind == "test":
                if get(path) != op.get("value"):
                    raise ApiStatus(422, "Invalid", f"the test of {path} failed: the object has changed")
            elif kind in ("add", "replace"):
                node, last = parent(path)
                if isinstance(node, list):
                    if last == "-":
                        node.append(copy.deepcopy(op["value"]))
                    elif kind == "add":
                        node.insert(int(last), copy.deepcopy(op["value"]))
                    else:
                        node[int(last)] = copy.deepcopy(op["value"])
                else:
                    if kind == "replace" and last not in node:
                        raise ApiStatus(422, "Invalid", f"replace: {path} does not exist")
                    node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                node, last = parent(path)
                if isinstance(node, list):
                    node.pop(int(last))
                else:
                    del node[last]
            elif kind in ("move", "copy"):
                value = get(op["from"])
                if kind == "move":
                    src, last = parent(op["from"])
                    if isinstance(src, list):
                        src.pop(int(last))
                    else:
                        del src[last]
                doc = json_patch(doc, [{"op": "add", "path": path, "value": value}])
            else:
                raise ApiStatus(422, "Invalid", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiStatus(422, "Invalid", f"JSON patch {kind} {path}: {e!r}") from e
    return doc


# ---------------------------------------------------------------------------------- selectors

_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def match_labels(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector syntax: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _SET_TERM.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            ok = labels.get(key) in values if op == "in" else labels.get(key) not in values
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def match_fields(selector: str | None, obj: Mapping[str, Any]) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        negate = "!=" in term
        path, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == value) == negate:
            return False
    return True


# ------------------------------------------------------------------------------------- emulator


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesScaffold):
    """The API server. ``async with KubeEmulator() as api, kmock.Server(api) as server: ...``."""

    objects: dict[ObjectKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    calls: list[Call] = attrs.field(factory=list, init=False)
    admission: dict[ResourceKey, Admission] = attrs.field(factory=dict, init=False)
    # Simulate the Deployment controller: a written Deployment soon reports its replicas ready.
    auto_ready_deployments: bool = False
    # Awaited before each API call is served: tests hold a call to kill a client mid-flight.
    gate: Callable[[Call], Awaitable[None]] | None = None
    # Called with (event type, resource, object) on every stored change (benchmarks time them).
    listeners: list[Callable[[str, ResourceKey, dict[str, Any]], None]] = attrs.field(factory=list)
    # Fault injection, switchable at any time (None = a healthy server); counts by kind.
    faults: Faults | None = None
    injected: Counter[str] = attrs.field(factory=Counter, init=False)
    # (loop time, fault kind, call) of every injected fault, for backoff measurements.
    fault_log: list[tuple[float, str, Call]] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _log: list[_Event] = attrs.field(factory=list, init=False)
    _log_floor: int = attrs.field(default=0, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _info_cache: dict[ResourceKey, kmock.ResourceInfo | None] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()

    # ---------------------------------------------------------------------------- set-up API

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CustomResourceDefinition: discovery, storage and schema admission."""
        spec = crd["spec"]
        self._info_cache.clear()
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"].get("singular"),
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
                shortnames=set(spec["names"].get("shortNames", [])),
                categories=set(spec["names"].get("categories", [])),
                subresources=set((version.get("subresources") or {}).keys()),
            )
            schema = version["schema"]["openAPIV3Schema"]
            self.admission[(spec["group"], version["name"], spec["names"]["plural"])] = functools.partial(
                admit, schema=schema
            )

    def kubeconfig(self, server_url: str, path: Path) -> Path:
        """Write a kubeconfig pointing at this emulator (Kopf and KubeClient read $KUBECONFIG)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": server_url.rstrip("/")}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
                }
            ],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _info(self, key: ResourceKey) -> kmock.ResourceInfo | None:
        if key not in self._info_cache:
            self._info_cache[key] = next(
                (
                    self.resources[r]
                    for r in self.resources  # type: ignore[misc]
                    if (r.group, r.version, r.plural) == key
                ),
                None,
            )
        return self._info_cache[key]

    def _events_after(self, rv: int) -> list[_Event]:
        """Log entries newer than ``rv`` (the log is ordered by resourceVersion)."""
        start = bisect.bisect_right(self._log, rv, key=lambda e: e.rv)
        return self._log[start:]

    def find(
        self, group_version_plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored objects of a resource ("apps/v1/deployments", "v1/nodes"), for assertions."""
        key = _key(group_version_plural)
        return [
            copy.deepcopy(o)
            for (r, ns, _), o in self.objects.items()
            if r == key
            and (namespace is None or ns == namespace)
            and match_labels(label_selector, o.get("metadata", {}).get("labels") or {})
        ]

    def read(self, group_version_plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((_key(group_version_plural), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, group_version_plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as a client would (defaults, uid, events), bypassing HTTP."""
        key = _key(group_version_plural)
        return self._create(key, obj.get("metadata", {}).get("namespace"), copy.deepcopy(obj))

    def patch_object(
        self, group_version_plural: str, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch an object as a client would (kubectl edit), bypassing HTTP and faults."""
        key = (_key(group_version_plural), namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise ApiStatus(404, "NotFound", f'{key[0][2]} "{name}" not found')
        return self._write(key, merge_patch(old, dict(patch)))

    def delete_object(self, group_version_plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete as a client would (finalizers honoured, dependents collected), bypassing HTTP."""
        return self._delete(_key(group_version_plural), namespace, name)

    def add_node(
        self,
        name: str,
        *,
        allocatable: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[Mapping[str, str]] = (),
        unschedulable: bool = False,
    ) -> dict[str, Any]:
        alloc = {"cpu": "8", "memory": "32Gi", "pods": "110", **(allocatable or {})}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": list(taints), "unschedulable": unschedulable},
            "status": {
                "allocatable": alloc,
                "capacity": dict(alloc),
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        return self._create(("", "v1", "nodes"), None, node)

    def remove_node(self, name: str) -> None:
        self._delete(("", "v1", "nodes"), None, name)

    def set_deployment_ready(self, namespace: str, name: str, ready: bool | int = True) -> None:
        """What the Deployment controller writes once pods are (not) ready."""
        key = (("apps", "v1", "deployments"), namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise KeyError(f"no deployment {namespace}/{name}")
        desired = int(obj.get("spec", {}).get("replicas", 1))
        n = desired if ready is True else (0 if ready is False else int(ready))
        status = {
            "observedGeneration": obj["metadata"].get("generation", 1),
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": n,
            "availableReplicas": n,
            "unavailableReplicas": max(0, desired - n),
        }
        if obj.get("status") != status:
            self._write(key, {**obj, "status": status}, subresource="status")

    def set_status(
        self, group_version_plural: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What a controller or the kubelet writes through /status (a Job's progress, a Pod's
        container states): the main resource's writes leave status alone, as on a real server."""
        key = (_key(group_version_plural), namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiStatus(404, "NotFound", f'{key[0][2]} "{name}" not found')
        return self._write(
            key, {**obj, "status": merge_patch(obj.get("status") or {}, dict(status))}, subresource="status"
        )

    # -------------------------------------------------------------------------------- storage

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, resource: ResourceKey, type_: str, obj: dict[str, Any], rv: int) -> None:
        self._log.append(_Event(rv, resource, type_, copy.deepcopy(obj)))
        for listener in self.listeners:
            listener(type_, resource, obj)
        if len(self._log) > LOG_LIMIT:
            drop = len(self._log) - LOG_LIMIT // 2
            self._log_floor = self._log[drop - 1].rv
            del self._log[:drop]
        self._changed.set()
        self._changed = asyncio.Event()

    def _create(self, resource: ResourceKey, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        info = self._info(resource)
        if info is None:
            raise ApiStatus(404, "NotFound", f"the server could not find the resource {resource}")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiStatus(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, namespace):
                raise ApiStatus(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        key = (resource, namespace, name)
        if key in self.objects:
            raise ApiStatus(409, "AlreadyExists", f'{resource[2]} "{name}" already exists')
        obj = self._admit(resource, obj)
        group, version, _ = resource
        obj["apiVersion"] = f"{group}/{version}" if group else version
        obj["kind"] = info.kind
        meta = obj["metadata"]
        rv = self._next_rv()
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(rv), creationTimestamp=_now(), generation=1)
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(k, None)
        if resource in self.admission:
            obj.pop("status", None)  # custom resources: status is only written through /status
        self.objects[key] = obj
        self._emit(resource, "ADDED", obj, rv)
        self._after_write(key)
        return copy.deepcopy(obj)

    def _admit(self, resource: ResourceKey, obj: dict[str, Any]) -> dict[str, Any]:
        check = self.admission.get(resource)
        if check is None:
            return obj
        stored, errors = check(obj)
        if errors:
            raise ApiStatus(422, "Invalid", "; ".join(errors))
        return stored

    def _write(
        self,
        key: ObjectKey,
        new: dict[str, Any],
        *,
        subresource: str | None = None,
        precondition_rv: str | None = None,
    ) -> dict[str, Any]:
        """Store an update of an existing object with apiserver semantics."""
        resource = key[0]
        old = self.objects.get(key)
        if old is None:
            raise ApiStatus(404, "NotFound", f'{resource[2]} "{key[2]}" not found')
        if precondition_rv and precondition_rv != old["metadata"]["resourceVersion"]:
            raise ApiStatus(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        info = self._info(resource)
        has_status = info is not None and "status" in info.subresources
        new = copy.deepcopy(new)
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        # Server-owned metadata.
        meta = new.setdefault("metadata", {})
        for field in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "namespace",
            "name",
            "deletionGracePeriodSeconds",
        ):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if subresource != "status":
            new = self._admit(resource, new)
            meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no event
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.objects[key]
            self._emit(resource, "DELETED", new, rv)
            self._collect_garbage(meta["uid"])
            return copy.deepcopy(new)
        self.objects[key] = new
        self._emit(resource, "MODIFIED", new, rv)
        self._after_write(key)
        return copy.deepcopy(new)

    def _delete(self, resource: ResourceKey, namespace: str | None, name: str) -> dict[str, Any]:
        key = (resource, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiStatus(404, "NotFound", f'{resource[2]} "{name}" not found')
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                rv = self._next_rv()
                obj["metadata"]["resourceVersion"] = str(rv)
                self.objects[key] = obj
                self._emit(resource, "MODIFIED", obj, rv)
            return copy.deepcopy(obj)
        del self.objects[key]
        rv = self._next_rv()
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(resource, "DELETED", gone, rv)
        self._collect_garbage(meta["uid"])
        return gone

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background cascade: dependents whose every owner is gone are deleted too."""
        live_uids = {o["metadata"]["uid"] for o in self.objects.values()}
        for key, obj in list(self.objects.items()):
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            orphaned = (
                owners
                and any(o.get("uid") == owner_uid for o in owners)
                and not any(o.get("uid") in live_uids for o in owners)
            )
            if orphaned and key in self.objects:
                self._delete(*key)

    def _after_write(self, key: ObjectKey) -> None:
        if self.auto_ready_deployments and key[0] == ("apps", "v1", "deployments"):
            asyncio.get_running_loop().call_later(0.01, self._auto_ready, key)
        if (self.objects.get(key) or {}).get("metadata", {}).get("ownerReferences"):
            asyncio.get_running_loop().call_later(0.05, self._collect_if_dangling, key)

    def _collect_if_dangling(self, key: ObjectKey) -> None:
        """An object written with owners that no longer exist (a controller's write that raced
        its owner's deletion) is collected as the API server's garbage collector does: shortly
        after, in the background."""
        obj = self.objects.get(key)
        owners = {o.get("uid") for o in (obj or {}).get("metadata", {}).get("ownerReferences") or []}
        if not owners:
            return
        if not any(o.get("metadata", {}).get("uid") in owners for o in self.objects.values()):
            self._delete(*key)

    def _auto_ready(self, key: ObjectKey) -> None:
        if key in self.objects:
            self.set_deployment_ready(key[1] or "", key[2], True)

    # ------------------------------------------------------------------------------- HTTP layer

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        raw = request._raw_request
        if res is None or res.plural is None or raw is None or res.group is None or res.version is None:
            return await super()._handle(request)
        key: ResourceKey = (res.group, res.version, res.plural)
        method = raw.method.upper()
        params = dict(raw.query)
        verb = {
            "GET": "get" if request.name else ("watch" if params.get("watch") in ("true", "1") else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(method, method.lower())
        if method == "GET" and request.name and params.get("watch") in ("true", "1"):
            verb = "watch"
        call = Call(
            verb,
            res.group,
            res.plural + (f"/{request.subresource}" if request.subresource else ""),
            request.namespace,
            request.name,
            raw.headers.get("User-Agent", ""),
        )
        self.calls.append(call)
        if self.gate is not None:
            await self.gate(call)
        faults = self.faults
        fault = faults.draw(call) if faults is not None else None
        if fault is not None and faults is not None:
            self.injected[fault] += 1
            self.fault_log.append((asyncio.get_running_loop().time(), fault, call))
            if fault != "drop_watch":
                body, headers = fault_status(fault, call, faults)
                return aiohttp.web.json_response(body, status=body["code"], headers=headers)
        try:
            if self._info(key) is None:
                raise ApiStatus(404, "NotFound", f"the server could not find the requested resource {key}")
            if verb == "watch":
                cut_after = (
                    faults.rng.uniform(0.0, faults.drop_within_s)
                    if fault == "drop_watch" and faults is not None
                    else None
                )
                return await self._watch(
                    raw, key, request.namespace, params, request.name, cut_after=cut_after, call=call
                )
            if verb == "list":
                return aiohttp.web.json_response(self._list(key, request.namespace, params))
            if request.name is None and method != "POST":
                raise ApiStatus(405, "MethodNotAllowed", f"{method} on a collection is not supported")
            body = request.data
            if method == "POST":
                if request.name is not None:
                    raise ApiStatus(405, "MethodNotAllowed", "POST to a named object")
                if not isinstance(body, dict):
                    raise ApiStatus(400, "BadRequest", "the body is not a JSON object")
                return aiohttp.web.json_response(self._create(key, request.namespace, body), status=201)
            assert request.name is not None
            okey: ObjectKey = (key, request.namespace if self._namespaced(key) else None, request.name)
            if request.subresource == "scale" and key == ("apps", "v1", "deployments"):
                return aiohttp.web.json_response(self._scale(okey, method, body, raw.content_type))
            if request.subresource not in (None, "status"):
                raise ApiStatus(404, "NotFound", f"subresource {request.subresource} is not served")
            if method == "GET":
                obj = self.objects.get(okey)
                if obj is None:
                    raise ApiStatus(404, "NotFound", f'{key[2]} "{request.name}" not found')
                return aiohttp.web.json_response(obj)
            if method == "DELETE":
                return aiohttp.web.json_response(self._delete(*okey))
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiStatus(400, "BadRequest", "the body is not a JSON object")
                rv = (body.get("metadata") or {}).get("resourceVersion")
                if not rv:
                    raise ApiStatus(
                        422,
                        "Invalid",
                        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                    )
                return aiohttp.web.json_response(
                    self._write(okey, body, subresource=request.subresource, precondition_rv=rv)
                )
            if method == "PATCH":
                old = self.objects.get(okey)
                if old is None:
                    raise ApiStatus(404, "NotFound", f'{key[2]} "{request.name}" not found')
                new = self._patched(old, body, raw.content_type)
                rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
                return aiohttp.web.json_response(
                    self._write(okey, new, subresource=request.subresource, precondition_rv=rv)
                )
            raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported")
        except ApiStatus as e:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "code": e.code,
                    "reason": e.reason,
                    "message": e.message,
                },
                status=e.code,
            )

    def _namespaced(self, key: ResourceKey) -> bool:
        info = self._info(key)
        return bool(info and info.namespaced)

    @staticmethod
    def _patched(old: dict[str, Any], body: Any, content_type: str) -> dict[str, Any]:
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiStatus(400, "BadRequest", "a JSON patch must be a list of operations")
            result: dict[str, Any] = json_patch(old, body)
            return result
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiStatus(400, "BadRequest", "a merge patch must be a JSON object")
            merged: dict[str, Any] = merge_patch(old, body)
            return merged
        raise ApiStatus(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")

    def _scale(self, key: ObjectKey, method: str, body: Any, content_type: str) -> dict[str, Any]:
        obj = self.objects.get(key)
        if obj is None:
            raise ApiStatus(404, "NotFound", f'deployments "{key[2]}" not found')
        if method in ("PATCH", "PUT"):
            scale = self._scale_view(obj)
            new_scale = self._patched(scale, body, content_type) if method == "PATCH" else body
            replicas = int((new_scale.get("spec") or {}).get("replicas", scale["spec"]["replicas"]))
            obj = self._write(key, merge_patch(obj, {"spec": {"replicas": replicas}}))
        elif method != "GET":
            raise ApiStatus(405, "MethodNotAllowed", f"{method} on scale")
        return self._scale_view(obj)

    @staticmethod
    def _scale_view(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0)},
        }

    def _matches(
        self,
        key: ResourceKey,
        namespace: str | None,
        params: Mapping[str, str],
        resource: ResourceKey,
        obj: Mapping[str, Any],
        name: str | None = None,
    ) -> bool:
        meta = obj.get("metadata", {})
        return (
            resource == key
            and (namespace is None or meta.get("namespace") == namespace)
            and (name is None or meta.get("name") == name)
            and match_labels(params.get("labelSelector"), meta.get("labels") or {})
            and match_fields(params.get("fieldSelector"), obj)
        )

    def _list(self, key: ResourceKey, namespace: str | None, params: Mapping[str, str]) -> dict[str, Any]:
        info = self._info(key)
        items = [o for (r, _, _), o in self.objects.items() if self._matches(key, namespace, params, r, o)]
        return {
            "apiVersion": "v1",
            "kind": f"{info.kind if info else ''}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        key: ResourceKey,
        namespace: str | None,
        params: Mapping[str, str],
        name: str | None,
        cut_after: float | None = None,
        call: Call | None = None,
    ) -> aiohttp.web.StreamResponse:
        since_text = params.get("resourceVersion") or "0"
        since = int(since_text) if since_text.isdigit() else 0
        timeout = float(params.get("timeoutSeconds") or 1800)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        # Snapshot and log position are taken without an await in between: nothing slips through.
        if since and since < self._log_floor:
            pending: list[dict[str, Any]] = [
                {
                    "type": "ERROR",
                    "object": {
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "code": 410,
                        "reason": "Expired",
                        "message": f"too old resource version: {since} ({self._log_floor})",
                    },
                }
            ]
            cursor = None
        elif since:
            pending = [
                {"type": e.type, "object": e.obj}
                for e in self._events_after(since)
                if self._matches(key, namespace, params, e.resource, e.obj, name)
            ]
            cursor = self._rv
        else:
            pending = [
                {"type": "ADDED", "object": copy.deepcopy(o)}
                for (r, _, _), o in self.objects.items()
                if self._matches(key, namespace, params, r, o, name)
            ]
            cursor = self._rv
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cut_at = loop.time() + cut_after if cut_after is not None else None
        try:
            while True:
                for event in pending:
                    line = json.dumps(event).encode() + b"\n"
                    faults = self.faults
                    if (
                        faults is not None
                        and faults.drop_watch
                        and call is not None
                        and call.agent not in faults.spare_agents
                        and faults.rng.random() < faults.drop_watch
                    ):
                        # Cut halfway through an event: the client holds a partial line.
                        self.injected["drop_watch"] += 1
                        self.fault_log.append((loop.time(), "drop_watch", call))
                        await response.write(line[: len(line) // 2])
                        cut_at = loop.time()
                    if cut_at is not None and loop.time() >= cut_at:
                        # A dropped connection: no terminating chunk, the client sees the
                        # stream break (half an event list delivered, perhaps).
                        if raw.transport is not None:
                            raw.transport.abort()
                        return response
                    await response.write(line)
                if cursor is None or loop.time() >= deadline:
                    break
                if cut_at is not None and loop.time() >= cut_at:
                    if raw.transport is not None:
                        raw.transport.abort()
                    return response
                if self._rv == cursor:
                    wake = deadline if cut_at is None else min(deadline, cut_at)
                    try:
                        await asyncio.wait_for(
                            self._changed.wait(), timeout=min(1.0, max(0.0, wake - loop.time()))
                        )
                    except TimeoutError:
                        if raw.transport is None or raw.transport.is_closing():
                            break
                pending = [
                    {"type": e.type, "object": e.obj}
                    for e in self._events_after(cursor)
                    if self._matches(key, namespace, params, e.resource, e.obj, name)
                ]
                cursor = self._rv
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


def _key(group_version_plural: str) -> ResourceKey:
    parts = group_version_plural.split("/")
    if len(parts) == 2:
        return ("", parts[0], parts[1])
    return (parts[0], parts[1], parts[2])


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
