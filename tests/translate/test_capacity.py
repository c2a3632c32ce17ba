"""The translation stage's capacity in sessions and its refusals, as the autoscaler reads them.

Pure: the figures (workloads/translate/capacity.py) and the shared moving average
(workloads/capacity.py). In-process: the real app against the vLLM stand-in, its /metrics
publishing the capacity from the start, lowering it under measured load, and counting each
request a full queue refuses.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from livetranslate.workloads.capacity import CapacityEstimate
from livetranslate.workloads.translate.app import create_app
from livetranslate.workloads.translate.capacity import ActiveSessions, session_ceiling, slot_utilisation

from .conftest import FakeVllm, metric_value, tr_request
from .test_vllm import vllm_settings

CAPACITY = "livetranslate_stage_capacity_sessions"
REFUSALS = "livetranslate_admission_refusals_total"
TEXT = "Where is the train station?"


def test_utilisation_is_busy_slot_time_per_slot() -> None:
    assert slot_utilisation(3.0, 2.0, 4) == 0.375  # 3 slot-seconds in 2 s on 4 slots
    assert slot_utilisation(9.0, 2.0, 4) == 1.0  # a long call ending late: no more than full
    assert slot_utilisation(1.0, 0.0, 4) == 0.0


def test_the_ceiling_is_the_sessions_the_queue_holds() -> None:
    assert session_ceiling(512, 2) == 256  # one request each in flight, a place per target
    assert session_ceiling(512, 0) == 512  # languages unknown: one place a session
    assert session_ceiling(1, 3) == 1


def test_sessions_carried_are_the_askers_in_proportion_to_what_was_admitted() -> None:
    asking = ActiveSessions(window_s=30.0)
    for i in range(15):
        asking.admit(f"s{i}", now=100.0)
    for i in range(5, 15):  # ten askers refused once each
        asking.refuse(f"s{i}", now=101.0)
    for i in range(5):
        asking.admit(f"s{i}", now=102.0)
    assert asking.carried(now=105.0) == 10.0  # 15 askers, 20 of their 30 requests admitted
    assert asking.carried(now=110.0) == 15.0  # an interval without requests: all still active
    asking.admit("s0", now=135.0)
    assert asking.carried(now=135.0) == 1.0  # the others last asked over 30 s ago


def test_capacity_follows_the_measured_cost_of_a_session() -> None:
    c = CapacityEstimate(static_cap=256)
    c.observe(0.02, 3)  # too little load to say what a session costs
    assert c.sessions == 256
    for _ in range(20):  # every slot busy carrying ten sessions' work: ten is what it sustains
        c.observe(1.0, 10.0)
    assert c.sessions == 10
    c.observe(0.5, 2.5)  # a fractional sample (part refused) moves the average, not all of it
    assert 5 <= c.sessions <= 10


def _capacity(client: TestClient) -> float:
    return metric_value(client.get("/metrics").text, CAPACITY, stage="translation", pipeline="town-hall")


def test_capacity_is_published_from_the_start_and_falls_to_what_the_engine_sustains(
    fake_vllm: FakeVllm,
) -> None:
    # One segment per engine call on four dispatch slots: four sessions, each with its next
    # request as soon as the last is answered, keep every slot busy.
    fake_vllm.delay_s = 0.3
    settings = vllm_settings(
        fake_vllm, max_batch=1, max_queue=64, target_languages=["es"], capacity_interval_s=0.1
    )
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(4) as pool:
        assert _capacity(c) == 64  # the queue's ceiling until measured

        def talk(session: str) -> None:
            deadline = time.monotonic() + 1.5
            segment = 0
            while time.monotonic() < deadline:
                segment += 1
                resp = c.post(
                    "/v1/translate", json=tr_request(TEXT, ["es"], session=session, segment=segment)
                )
                assert resp.status_code == 200

        for f in [pool.submit(talk, f"s{i}") for i in range(4)]:
            f.result()
        assert 3 <= _capacity(c) <= 5, "four sessions fill four slots: about four is what it sustains"


def test_a_full_queue_refuses_with_429_and_counts_each_refusal(fake_vllm: FakeVllm) -> None:
    fake_vllm.delay_s = 0.5
    settings = vllm_settings(fake_vllm, max_queue=2, max_batch=1, target_languages=["es"])
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(2) as pool:
        before = c.get("/metrics").text
        assert metric_value(before, REFUSALS, stage="translation", reason="queue_full") == 0
        busy = [
            pool.submit(c.post, "/v1/translate", json=tr_request(TEXT, ["es"], session=f"s{i}"))
            for i in range(2)
        ]
        time.sleep(0.15)
        refused = [c.post("/v1/translate", json=tr_request(TEXT, ["es"], session="x")) for _ in range(3)]
        assert [r.status_code for r in refused] == [429] * 3
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert all(f.result().status_code == 200 for f in busy)
        after = c.get("/metrics").text
        assert (
            metric_value(after, REFUSALS, stage="translation", reason="queue_full", pipeline="town-hall") == 3
        )
