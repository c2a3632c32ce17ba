"""Operator chaos and API faults (issue 6, items 1 and 2), small enough for CI.

The emulator's fault injection answers like kube-apiserver (Status objects, Retry-After, a watch
cut mid-stream); the operator's client retries transient answers a bounded number of times; and
the real operator process (``livetranslate operator``), SIGKILLed mid-reconcile and restarted or
run against a faulty API server, leaves every pipeline with exactly its children and a true
status: nothing orphaned, duplicated, lost or stuck. benchmarks/bench_chaos.py runs the same
harness at 50 pipelines and 100 kills.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import kmock
import pytest

from livetranslate.crd import build_crd
from livetranslate.operator import resync
from livetranslate.operator.kube import ApiError, KubeClient
from livetranslate_testing.chaos import (
    OPERATOR_AGENT,
    KillSwitch,
    OperatorSubprocess,
    Workload,
    converge,
    inspect,
)
from livetranslate_testing.kube_emulator import Call, Faults, KubeEmulator

NS = "chaos"


@dataclass
class Api:
    emulator: KubeEmulator
    kubeconfig: Path
    url: str


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """The emulator on loopback with the CRD installed; its kubeconfig in $KUBECONFIG."""
    emulator = KubeEmulator(auto_ready_deployments=True)
    emulator.install_crd(build_crd())
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        kubeconfig = emulator.kubeconfig(url, tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield Api(emulator, kubeconfig, url)


@pytest.fixture
async def operator(api: Api, tmp_path: Path) -> AsyncIterator[OperatorSubprocess]:
    """``livetranslate operator`` in its own process (killed by pid at teardown)."""
    op = OperatorSubprocess(
        api.emulator,
        api.kubeconfig,
        tmp_path / "operator.log",
        env={"LT_OPERATOR_RESYNC_SECONDS": "5", "LT_OPERATOR_RETRY_DELAY_SECONDS": "1"},
    )
    try:
        yield op
    finally:
        op.kill()


def client_calls(emulator: KubeEmulator, agent: str) -> int:
    return sum(1 for c in emulator.calls if c.agent == agent)


# ------------------------------------------------------------------------ the faults themselves


async def test_faults_answer_like_the_api_server(api: Api) -> None:
    emulator = api.emulator
    emulator.create("v1/configmaps", {"metadata": {"name": "c", "namespace": NS}, "data": {}})
    url = f"{api.url}/api/v1/namespaces/{NS}/configmaps/c"
    async with aiohttp.ClientSession(headers={"User-Agent": "probe"}) as http:
        emulator.faults = Faults(throttle=1.0, retry_after_s=3)
        async with http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 429 and resp.headers["Retry-After"] == "3"
            assert body["kind"] == "Status" and body["reason"] == "TooManyRequests"
            assert body["details"]["retryAfterSeconds"] == 3
        emulator.faults = Faults(server_error=1.0)
        async with http.get(url) as resp:
            assert resp.status == 500 and (await resp.json())["reason"] == "InternalError"
        emulator.faults = Faults(conflict=1.0)
        async with http.get(url) as resp:
            assert resp.status == 200, "a read never conflicts"
        async with http.patch(
            url, json={"data": {"a": "b"}}, headers={"Content-Type": "application/merge-patch+json"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 409 and body["reason"] == "Conflict"
            assert 'configmaps "c"' in body["message"]
        assert (emulator.read("v1/configmaps", NS, "c") or {})["data"] == {}, (
            "a refused write changes nothing"
        )
        emulator.faults = Faults(server_error=1.0)
        async with http.get(url, headers={"User-Agent": "test-kubectl"}) as resp:
            assert resp.status == 200, "the test's own client is spared"
    assert emulator.injected == {"throttle": 1, "server_error": 1, "conflict": 1}


async def test_a_doomed_watch_is_cut_mid_stream(api: Api) -> None:
    emulator = api.emulator
    emulator.faults = Faults(drop_watch=1.0, drop_within_s=0.5)
    url = f"{api.url}/api/v1/namespaces/{NS}/configmaps?watch=true&timeoutSeconds=30"
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                assert resp.status == 200
                async for _ in resp.content:
                    emulator.create("v1/configmaps", {"metadata": {"generateName": "w-", "namespace": NS}})
    assert time.monotonic() - started < 10, "cut long before the watch's own timeout"
    assert emulator.injected["drop_watch"] >= 1


async def test_the_client_retries_transient_answers_a_bounded_number_of_times(api: Api) -> None:
    emulator = api.emulator
    emulator.create("v1/configmaps", {"metadata": {"name": "c", "namespace": NS}, "data": {}})
    kube = await KubeClient.connect(user_agent="retry-probe")
    try:
        emulator.faults = Faults(server_error=1.0)
        with pytest.raises(ApiError) as err:
            await kube.get("v1", "ConfigMap", NS, "c")
        assert err.value.status == 500
        assert client_calls(emulator, "retry-probe") == 1 + len(kube.retry_backoffs), "bounded retries"

        # Throttled: the client waits at least the Retry-After the server asked for.
        emulator.faults = Faults(throttle=1.0, retry_after_s=1)
        released = asyncio.get_running_loop().call_later(1.5, setattr, emulator, "faults", None)
        started = time.monotonic()
        assert await kube.get("v1", "ConfigMap", NS, "c") is not None
        assert time.monotonic() - started >= 1.0
        released.cancel()

        # A merge patch that lost a race is sent again; most of them get through.
        emulator.faults = Faults(conflict=0.5, seed=3)
        for i in range(10):
            await kube.patch("v1", "ConfigMap", NS, "c", {"data": {f"k{i}": "v"}})
        assert len((emulator.read("v1/configmaps", NS, "c") or {})["data"]) == 10
        assert emulator.injected["conflict"] > 0
    finally:
        await kube.close()


# ------------------------------------------------------------------------ the operator process


@pytest.mark.slow
async def test_operator_killed_at_random_points_converges_every_time(
    api: Api, operator: OperatorSubprocess
) -> None:
    emulator = api.emulator
    rng = random.Random(61)
    work = Workload(emulator, NS, size=8, rng=rng)
    switch = KillSwitch(operator)
    emulator.gate = switch
    operator.spawn()
    await operator.wait_watching()
    work.fill()
    _, found = await converge(emulator, NS, timeout=60)
    assert found.converged, found.summary()
    mid_reconcile = 0
    for _ in range(5):
        work.step(rng.randint(2, 5))
        switch.arm(rng.randint(1, 40))
        try:
            await asyncio.wait_for(switch.fired.wait(), timeout=5)
            mid_reconcile += switch.tripped_by is not None
        except TimeoutError:
            switch.remaining = None
            operator.kill()
        work.step(rng.randint(0, 2))  # while it is down
        operator.spawn()
        await operator.wait_watching()
        _, found = await converge(emulator, NS, timeout=60)
        assert found.converged, f"after kill #{operator.starts - 1}: {found.summary()}"
    assert work.ops["delete"] > 0 and work.ops["update"] > 0
    # Most kills must land on a request of the operator's (mid-reconcile), not between reconciles.
    assert mid_reconcile >= 3, f"only {mid_reconcile} of 5 kills landed mid-reconcile"
    assert operator.crashes() == []


@pytest.mark.slow
async def test_operator_converges_under_api_faults_without_duplicates_or_a_retry_storm(
    api: Api, operator: OperatorSubprocess
) -> None:
    emulator = api.emulator
    rng = random.Random(62)
    work = Workload(emulator, NS, size=6, rng=rng, unservable_rate=0.0)
    operator.spawn()
    await operator.wait_watching()
    emulator.faults = Faults(conflict=0.15, throttle=0.15, server_error=0.15, drop_watch=0.3, seed=62)
    work.fill()
    for name in work.names()[:3]:
        work.update(name)
    work.delete(work.names()[-1])
    _, found = await converge(emulator, NS, timeout=90)
    assert found.converged, found.summary()
    assert set(emulator.injected) >= {"conflict", "throttle", "server_error"}

    # An outage: every request fails while changes are pending. Retries back off: the operator
    # sends a handful of requests per pipeline, not a storm.
    emulator.faults = Faults(server_error=1.0)
    for name in work.names():
        work.update(name)
    before = sum(1 for c in emulator.calls if c.agent.startswith((OPERATOR_AGENT, "kopf")))
    await asyncio.sleep(5)
    during = sum(1 for c in emulator.calls if c.agent.startswith((OPERATOR_AGENT, "kopf"))) - before
    assert during <= 40 * len(work.names()), f"{during} requests in a 5 s outage"
    emulator.faults = None
    _, found = await converge(emulator, NS, timeout=90)
    assert found.converged, found.summary()
    final = inspect(emulator, NS)
    assert final.orphans == final.duplicates == final.stuck_finalizers == []
    assert operator.crashes() == []


async def test_the_resync_sweep_nudges_only_pipelines_lagging_for_a_whole_interval(api: Api) -> None:
    """Kopf drops an event whose processing failed on an API error and waits for the next one;
    the sweep turns a pipeline that stayed behind its spec (or its deletion) into a new event."""
    emulator = api.emulator
    tp = "livetranslate.io/v1alpha1/translationpipelines"
    for name in ("behind", "current", "deleting"):
        emulator.create(tp, {"metadata": {"name": name, "namespace": NS}, "spec": {}})
    # What the operator writes through /status once it has reconciled generation 1.
    obj = emulator.read(tp, NS, "current") or {}
    emulator._write(
        (_tp_key(), NS, "current"), {**obj, "status": {"observedGeneration": 1}}, subresource="status"
    )
    emulator.patch_object(tp, NS, "deleting", {"metadata": {"finalizers": ["livetranslate.io/finalizer"]}})
    emulator.delete_object(tp, NS, "deleting")
    kube = await KubeClient.connect(user_agent="resync-probe")
    lagging: dict[str, tuple[str, int, bool]] = {}
    try:
        assert await resync.resync_once(kube, [NS], lagging) == 0, "first seen: left to the normal path"
        assert set(lagging) == {f"{NS}/behind", f"{NS}/deleting"}
        assert await resync.resync_once(kube, [NS], lagging) == 2
        for name in ("behind", "deleting"):
            annotations = (emulator.read(tp, NS, name) or {})["metadata"].get("annotations") or {}
            assert resync.RESYNC_ANNOTATION in annotations
        assert resync.RESYNC_ANNOTATION not in (
            (emulator.read(tp, NS, "current") or {})["metadata"].get("annotations") or {}
        )
        # A spec change restarts the clock: the normal path gets a whole interval again.
        emulator.patch_object(tp, NS, "behind", {"spec": {"audio": {"vad": False}}})
        assert await resync.resync_once(kube, [NS], lagging) == 1, "only the deletion is still stuck"
    finally:
        await kube.close()


def _tp_key() -> tuple[str, str, str]:
    return ("livetranslate.io", "v1alpha1", "translationpipelines")


async def test_a_request_the_server_does_not_answer_in_time_is_an_api_error(api: Api) -> None:
    """So the handler retries the reconcile after its own delay, not Kopf's 60 s crash backoff."""
    emulator = api.emulator

    async def stall(call: Call) -> None:
        if call.agent == "slow-probe":
            await asyncio.sleep(2)

    emulator.gate = stall
    session = aiohttp.ClientSession(
        headers={"User-Agent": "slow-probe"}, timeout=aiohttp.ClientTimeout(total=0.3)
    )
    kube = KubeClient(api.url, session)
    try:
        with pytest.raises(ApiError) as err:
            await kube.get("v1", "ConfigMap", NS, "anything")
        assert err.value.status == 504
    finally:
        await kube.close()
