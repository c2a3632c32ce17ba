"""Admission by measured capacity (workloads/audio/capacity.py): pure, from utilisation samples."""

from __future__ import annotations

from livetranslate.workloads.audio.capacity import CapacityEstimate


def test_until_measured_only_the_configured_cap_applies() -> None:
    c = CapacityEstimate(static_cap=64)
    assert c.sessions == 64
    c.observe(0.02, 3)  # too little load to say what a session costs
    c.observe(0.9, 0)  # nobody connected: nothing to divide by
    assert c.sessions == 64 and "at most 64 sessions" in c.refusal()


def test_capacity_is_what_the_decoders_sustain_in_real_time() -> None:
    c = CapacityEstimate(static_cap=64)
    c.observe(0.5, 4)  # each session costs an eighth of the decoders
    assert c.sessions == 8
    assert c.refusal() == (
        "this replica sustains about 8 real-time streams (its decoders were 50% busy with 4); try another"
    )
    for _ in range(20):  # saturated with 6: six is all it sustains
        c.observe(1.0, 6)
    assert c.sessions == 6
    c.observe(0.1, 1)  # one light interval moves the average, not the whole estimate
    assert 6 <= c.sessions <= 8


def test_never_above_the_cap_nor_below_one() -> None:
    c = CapacityEstimate(static_cap=10)
    c.observe(0.1, 8)  # cheap sessions: 80 would fit, the cap says 10
    assert c.sessions == 10
    c = CapacityEstimate(static_cap=10)
    c.observe(1.0, 1)
    c.observe(1.0, 1)
    assert c.sessions == 1
