"""The emulator behaves like kube-apiserver where an operator can tell the difference."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from livetranslate_testing.kube_emulator import match_labels
from livetranslate_testing.kube_operator import NS, Cluster, pipeline

TP_URL = f"/apis/livetranslate.io/v1alpha1/namespaces/{NS}/translationpipelines"
CM_URL = f"/api/v1/namespaces/{NS}/configmaps"


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cluster.url) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = json.dumps(body) if body is not None else None
    async with http.request(method, url, data=data, headers={"Content-Type": content_type}) as resp:
        return resp.status, await resp.json(content_type=None)


def cm(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        **extra,
    }


async def test_create_fills_server_fields_and_refuses_duplicates(http: aiohttp.ClientSession) -> None:
    status, obj = await call(http, "POST", CM_URL, cm("a", data={"k": "v"}))
    assert status == 201
    meta = obj["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert obj["apiVersion"] == "v1" and obj["kind"] == "ConfigMap" and meta["generation"] == 1
    assert (await call(http, "POST", CM_URL, cm("a")))[0] == 409
    assert (await call(http, "POST", CM_URL, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}))[
        0
    ] == 422


async def test_custom_resources_are_defaulted_and_validated(http: aiohttp.ClientSession) -> None:
    status, obj = await call(http, "POST", TP_URL, pipeline("tp", {}))
    assert status == 201 and obj["spec"]["translation"]["replicas"] == {"min": 1, "max": 8}
    status, err = await call(http, "POST", TP_URL, pipeline("bad", {"targetLanguages": []}))
    assert status == 422 and "targetLanguages" in err["message"]


async def test_status_subresource_and_generation(http: aiohttp.ClientSession) -> None:
    _, obj = await call(http, "POST", TP_URL, pipeline("tp", {}))
    url = f"{TP_URL}/tp"
    merge = "application/merge-patch+json"
    # Status through the main resource is ignored; through /status nothing else changes.
    _, after = await call(
        http, "PATCH", url, {"status": {"phase": "Ready"}, "metadata": {"labels": {"x": "1"}}}, merge
    )
    assert "status" not in after and after["metadata"]["generation"] == 1
    _, after = await call(
        http,
        "PATCH",
        f"{url}/status",
        {"status": {"phase": "Ready"}, "spec": {"sourceLanguage": "de"}},
        merge,
    )
    assert after["status"]["phase"] == "Ready" and after["spec"]["sourceLanguage"] == "en"
    assert after["metadata"]["generation"] == 1
    _, after = await call(http, "PATCH", url, {"spec": {"sourceLanguage": "de"}}, merge)
    assert after["metadata"]["generation"] == 2
    # A write that changes nothing does not bump resourceVersion.
    _, same = await call(http, "PATCH", url, {"spec": {"sourceLanguage": "de"}}, merge)
    assert same["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    # Optimistic concurrency: a stale resourceVersion is 409; a failed JSON-patch test is 422.
    stale = {
        **after,
        "metadata": {**after["metadata"], "resourceVersion": obj["metadata"]["resourceVersion"]},
    }
    assert (await call(http, "PUT", url, stale))[0] == 409
    test = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/labels/y", "value": "2"},
    ]
    assert (await call(http, "PATCH", url, test, "application/json-patch+json"))[0] == 422


async def test_watch_replays_from_resource_version_with_selectors(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    _, listing = await call(http, "GET", CM_URL)
    since = listing["metadata"]["resourceVersion"]
    # Written after the list and before the watch: must not be lost.
    await call(http, "POST", CM_URL, cm("x", {"app": "lt"}))
    await call(http, "POST", CM_URL, cm("y", {"app": "other"}))
    events: list[dict[str, Any]] = []
    async with http.get(
        CM_URL,
        params={
            "watch": "true",
            "resourceVersion": since,
            "labelSelector": "app in (lt)",
            "timeoutSeconds": "2",
        },
    ) as resp:
        async for line in resp.content:
            events.append(json.loads(line))
            if len(events) == 1:
                await call(http, "DELETE", f"{CM_URL}/x")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "x"),
        ("DELETED", "x"),
    ]


async def test_delete_honours_finalizers_and_collects_garbage(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    _, owner = await call(
        http,
        "POST",
        TP_URL,
        {**pipeline("tp", {}), "metadata": {"name": "tp", "finalizers": ["example.com/hold"]}},
    )
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": "tp",
        "uid": owner["metadata"]["uid"],
    }
    await call(http, "POST", CM_URL, {**cm("child"), "metadata": {"name": "child", "ownerReferences": [ref]}})
    _, marked = await call(http, "DELETE", f"{TP_URL}/tp")
    assert marked["metadata"]["deletionTimestamp"], "finalizer holds the object"
    assert cluster.api.read("v1/configmaps", NS, "child") is not None
    await call(
        http, "PATCH", f"{TP_URL}/tp", {"metadata": {"finalizers": None}}, "application/merge-patch+json"
    )
    await asyncio.sleep(0)
    assert cluster.tp("tp") is None and cluster.api.read("v1/configmaps", NS, "child") is None


@pytest.mark.parametrize(
    ("selector", "ok"),
    [
        ("a=1", True),
        ("a==1", True),
        ("a!=1", False),
        ("a", True),
        ("!a", False),
        ("a in (1, 2)", True),
        ("a notin (1,2)", False),
        ("a=1,b=2", True),
        ("a=1,c", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, ok: bool) -> None:
    assert match_labels(selector, {"a": "1", "b": "2"}) is ok
