"""The client layer against the emulator and bare HTTP(S) servers: apply, adoption, re-login, TLS."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
import pytest
import yaml
from kubernetes_asyncio.client import ApiException

from livetranslate.operator.kube import ApiError, KubeClient, configuration
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


# ------------------------------------------------------------- the library transport (kubernetes_asyncio)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_the_library_configuration_carries_what_kopf_logged_in_with(tmp_path: Path) -> None:
    ca, cert, key = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"
    info = kopf.ConnectionInfo(
        server="https://api.example:6443/",
        ca_data=b64(ca),
        insecure=True,
        token="t0ken",
        certificate_data=b64(cert),
        private_key_data=b64(key).encode(),  # Kopf may hold either str or bytes
        default_namespace="team",
    )
    config = configuration(info)
    assert config.host == "https://api.example:6443"
    assert config.verify_ssl is False, "insecure-skip-tls-verify"
    # The library reads TLS material from files only: the data arrives decoded in temporary files.
    assert Path(config.ssl_ca_cert).read_bytes() == ca
    assert Path(config.cert_file).read_bytes() == cert
    assert Path(config.key_file).read_bytes() == key
    assert (await config.auth_settings())["BearerToken"]["value"] == "Bearer t0ken"

    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca)
    basic = configuration(
        kopf.ConnectionInfo(server="https://api.example", ca_path=ca_file, username="u", password="p")
    )
    assert basic.ssl_ca_cert == str(ca_file) and basic.verify_ssl is True
    assert basic.cert_file is None and basic.key_file is None
    auth = (await basic.auth_settings())["BearerToken"]
    assert auth["key"] == "authorization" and auth["value"] == f"Basic {b64(b'u:p')}"

    client = await KubeClient.connect(
        kopf.ConnectionInfo(server="http://127.0.0.1:1/", default_namespace="team")
    )
    try:
        assert client.default_namespace == "team" and client.server == "http://127.0.0.1:1"
    finally:
        await client.close()
    assert client.session.closed


class _Answer:
    """What the library's REST layer hands an ApiException: status, reason, body, headers."""

    def __init__(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.status, self.reason, self.data, self._headers = status, "Too Many Requests", data, headers

    def getheaders(self) -> dict[str, str]:
        return self._headers


def test_a_library_error_becomes_an_api_error_with_its_retry_after() -> None:
    status = {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"}
    throttled = ApiException(http_resp=_Answer(429, json.dumps(status).encode(), {"Retry-After": "3"}))
    error = ApiError.from_api_exception(throttled)
    assert (error.status, error.message, error.retry_after) == (429, "slow down", 3.0)
    assert error.body["reason"] == "TooManyRequests"

    # No header: the Status object's details.retryAfterSeconds (the library hands the body as text).
    details = {**status, "details": {"retryAfterSeconds": 2}}
    from_body = ApiException(http_resp=_Answer(429, json.dumps(details).encode(), {}))
    from_body.body = from_body.body.decode()
    assert ApiError.from_api_exception(from_body).retry_after == 2.0

    # A proxy's HTML page is no Status object: its text is the message, with no retry hint.
    html = ApiError.from_api_exception(ApiException(http_resp=_Answer(502, b"<html>bad gateway</html>", {})))
    assert (html.status, html.body, html.retry_after) == (502, None, None)
    assert "bad gateway" in html.message


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_tls_with_ca_data_and_a_client_certificate(tmp_path: Path) -> None:
    """The server is verified against the CA Kopf holds as data, and the client certificate is
    presented: a server that requires one answers, and sees who called and with which token."""
    _pki(tmp_path)
    seen: list[tuple[str, str]] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(field[0] for field in (peer or {}).get("subject", ()))
        seen.append((subject.get("commonName", ""), request.headers.get("Authorization", "")))
        return aiohttp.web.json_response({"kind": "ConfigMap", "metadata": {"name": "x"}})

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server_tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_tls.verify_mode = ssl.CERT_REQUIRED
    app = aiohttp.web.Application()
    app.router.add_get("/api/v1/namespaces/demo/configmaps/x", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    server = f"https://127.0.0.1:{runner.addresses[0][1]}"

    def info(**tls: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, token="t", **tls)

    client_cert = {
        "certificate_data": b64((tmp_path / "client.crt").read_bytes()),
        "private_key_data": b64((tmp_path / "client.key").read_bytes()),
    }
    verified = await KubeClient.connect(info(ca_data=b64((tmp_path / "ca.crt").read_bytes()), **client_cert))
    unverified = await KubeClient.connect(info(insecure=True, **client_cert))
    untrusted = await KubeClient.connect(info(**client_cert))
    untrusted.retry_backoffs = ()
    try:
        assert await verified.get("v1", "ConfigMap", NS, "x") is not None
        assert await unverified.get("v1", "ConfigMap", NS, "x") is not None, "insecure: no CA needed"
        with pytest.raises(ApiError) as err:  # the server's CA is not a system one
            await untrusted.get("v1", "ConfigMap", NS, "x")
        assert err.value.status == 503 and "CERTIFICATE_VERIFY_FAILED" in err.value.message
    finally:
        for client in (verified, unverified, untrusted):
            await client.close()
        await runner.cleanup()
    assert seen == [("client", "Bearer t"), ("client", "Bearer t")]
