"""Translation's refusals in the autoscaler: requests from live sessions, sized by its capacity.

The translation service publishes its measured capacity in sessions and counts each refused
request (workloads/translate/capacity.py); the policy sizes the stage from the live sessions
against that capacity, and tells the refused requests in sessions' worth of work.
"""

from __future__ import annotations

from livetranslate.operator.scaling.signals import Sample

from .test_policy import cur, healthy, make_spec, run


def test_translation_refusals_size_the_live_sessions_against_its_measured_capacity() -> None:
    spec = make_spec()  # one target language
    # 50 sessions send 25 translations a second (one every 2 s each); the two replicas sustain 25
    # sessions together, and refuse 3 requests a second: 45 in an interval, 6 sessions' worth.
    refusing = {
        "refusals": {"translation": Sample.of(3.0)},
        "capacity": {"translation": Sample.of(25.0)},
        "throughput": {"translation": Sample.of(25.0)},
    }
    decisions, current = run(spec, cur(translation=2), lambda t: healthy(t, **refusing), 3)
    stages = [d.stages["translation"] for d in decisions]
    ups = [s for s in stages if s.direction == "up"]
    assert ups and ups[0].reason == "admission_refused", stages
    assert "refused 45 requests (the work of about 6 of 50 sessions)" in ups[0].message
    # 50 sessions on replicas of 12.5 each: four, not more (the refused requests' askers are among
    # the 50; counted again they would ask for eight).
    assert current.replicas["translation"] == 4, stages
    # Without refusals nothing moves (the same signals otherwise).
    _, after = run(spec, cur(translation=2), healthy, 3)
    assert after.replicas["translation"] == 2
