"""The client layer against the emulator and a bare HTTP server: apply, adoption, re-login."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
import yaml

from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate_testing.kube_operator import NS, Cluster


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect()
    try:
        yield client
    finally:
        await client.close()


def configmap(data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": NS, "labels": {"a": "1"}},
        "data": data,
    }


OWNER = {
    "apiVersion": "livetranslate.io/v1alpha1",
    "kind": "TranslationPipeline",
    "metadata": {"name": "p", "namespace": NS, "uid": "uid-p"},
}


async def test_apply_creates_then_patches_then_does_nothing(cluster: Cluster, kube: KubeClient) -> None:
    first = await kube.apply(configmap({"k": "v1"}), OWNER)
    assert first["metadata"]["ownerReferences"][0]["uid"] == "uid-p"
    again = await kube.apply(configmap({"k": "v1"}), OWNER)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"], "no-op: no write"
    changed = await kube.apply(configmap({"k": "v2"}), OWNER)
    assert changed["data"] == {"k": "v2"} and changed["metadata"]["uid"] == first["metadata"]["uid"]
    calls = [c.verb for c in cluster.api.calls if c.resource == "configmaps"]
    # Read first: the unchanged apply is one GET and no write; no create is ever refused.
    assert calls == ["get", "create", "get", "get", "patch"]


async def test_apply_that_loses_a_create_race_patches_instead(cluster: Cluster, kube: KubeClient) -> None:
    class Racing(KubeClient):
        async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
            await kube.create(configmap({"k": "theirs"}))  # another writer got there first
            return await super().create(obj)

    racer = await Racing.connect()
    try:
        won = await racer.apply(configmap({"k": "ours"}), OWNER)
    finally:
        await racer.close()
    assert won["data"] == {"k": "ours"} and won["metadata"]["ownerReferences"][0]["uid"] == "uid-p"
    verbs = [c.verb for c in cluster.api.calls if c.resource == "configmaps"]
    assert verbs == ["get", "create", "create", "get", "patch"]  # theirs, ours refused (409), patch


async def test_apply_adopts_without_dropping_other_owners(cluster: Cluster, kube: KubeClient) -> None:
    other = {"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "uid-other"}
    cluster.api.create(
        "v1/configmaps",
        {**configmap({"k": "v"}), "metadata": {"name": "cm", "namespace": NS, "ownerReferences": [other]}},
    )
    adopted = await kube.apply(configmap({"k": "v"}), OWNER)
    assert [o["uid"] for o in adopted["metadata"]["ownerReferences"]] == ["uid-other", "uid-p"]


async def test_apply_keeps_fields_another_component_owns(cluster: Cluster, kube: KubeClient) -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {}},
    }
    await kube.apply(dep, OWNER)
    await kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/d/scale",
        json={"spec": {"replicas": 5}},
        content_type="application/merge-patch+json",
    )
    after = await kube.apply(dep, OWNER, keep_on_update=[("spec", "replicas")])
    assert after["spec"]["replicas"] == 5


async def test_api_errors_carry_the_status(cluster: Cluster, kube: KubeClient) -> None:
    assert await kube.get("v1", "ConfigMap", NS, "absent") is None
    with pytest.raises(ApiError) as err:
        await kube.patch("v1", "ConfigMap", NS, "absent", {"data": {}})
    assert err.value.status == 404


async def test_rotated_token_is_picked_up_on_401(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.headers.get("Authorization") != "Bearer new":
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401
            )
        return aiohttp.web.json_response({"kind": "ConfigMap", "metadata": {"name": "x"}})

    app = aiohttp.web.Application()
    app.router.add_get("/api/v1/namespaces/demo/configmaps/x", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"

    def write(token: str) -> None:
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "current-context": "c",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                }
            )
        )

    write("old")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = await KubeClient.connect()
    try:
        write("new")  # rotated on disk after the client logged in
        got = await client.get("v1", "ConfigMap", NS, "x")
        assert got is not None and got["metadata"]["name"] == "x"
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_stale_precondition_is_reported_at_once_not_resent(
    cluster: Cluster, kube: KubeClient
) -> None:
    """A patch pinned to a resourceVersion that has moved on cannot succeed when sent again: the
    caller hears of the 409 after one request and re-reads, instead of waiting out the backoffs."""
    created = await kube.apply(configmap({"k": "v1"}), OWNER)
    stale = created["metadata"]["resourceVersion"]
    await kube.patch("v1", "ConfigMap", NS, "cm", {"data": {"k": "v2"}})
    before = len(cluster.api.calls)
    with pytest.raises(ApiError) as err:
        await kube.patch(
            "v1", "ConfigMap", NS, "cm", {"metadata": {"resourceVersion": stale}, "data": {"k": "v3"}}
        )
    assert err.value.status == 409
    patches = [c for c in cluster.api.calls[before:] if c.verb == "patch"]
    assert len(patches) == 1


async def test_apply_of_a_likely_new_object_creates_first(cluster: Cluster, kube: KubeClient) -> None:
    await kube.apply(configmap({"k": "v1"}), OWNER, likely_new=True)
    again = await kube.apply(configmap({"k": "v2"}), OWNER, likely_new=True)  # the hint was wrong
    assert again["data"] == {"k": "v2"}
    assert [c.verb for c in cluster.api.calls if c.resource == "configmaps"] == [
        "create",
        "create",
        "get",
        "patch",
    ]
