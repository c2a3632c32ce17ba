"""`livetranslate bench autoscaling`: the user-facing command, its trace format and its honesty."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from pathlib import Path

import pytest

from livetranslate import bench, bench_traces
from livetranslate.bench_policies import Observed
from livetranslate.cli import main as cli


def test_user_trace_gives_a_table_a_plot_and_the_summary_as_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "my-event.csv"
    trace.write_text("t_seconds,active_sessions\n0,20\n120,180\n420,30\n600,30\n")
    plot = tmp_path / "plot.png"
    rc = cli(
        [
            "bench",
            "autoscaling",
            "--trace",
            str(trace),
            "--plot",
            str(plot),
            "--results-dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"slo_violation_ratio_vs_hpa=\d+\.\d+ replica_seconds_ratio_vs_hpa=\d+\.\d+", out[-1])
    rows = [line.split() for line in out if line.startswith("my-event ")]
    assert sorted(r[1] for r in rows) == ["hpa", "keda", "livetranslate"]
    assert plot.stat().st_size > 10_000
    assert (tmp_path / "out.json").exists()


def test_trace_csv_needs_its_header(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,sessions\n0,1\n")
    with pytest.raises(ValueError, match="t_seconds,active_sessions"):
        bench.load_trace(str(bad))


def test_trace_is_held_between_points(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("t_seconds,active_sessions\n0,5\n3,9\n")
    assert bench.load_trace(str(path)) == [5.0, 5.0, 5.0, 9.0]


def test_every_policy_sees_the_same_load_and_metric_noise() -> None:
    spec = bench.bench_spec()
    params = bench.default_params(spec)
    trace = [50.0] * 200 + [150.0] * 400
    runs = [
        bench.simulate(trace, p, params, spec, noise_seed=5)
        for p in (bench.LiveTranslatePolicy(spec), bench.HpaPolicy(spec), bench.KedaPolicy(spec))
    ]
    assert {tuple(r.series["sessions"]) for r in runs} == {tuple(runs[0].series["sessions"])}
    # A constant policy gives the same figures twice: the noise is seeded per trace, not per run.
    again = bench.simulate(trace, bench.HpaPolicy(spec), params, spec, noise_seed=5)
    assert (
        again.slo_violation_s == runs[1].slo_violation_s and again.replica_seconds == runs[1].replica_seconds
    )


def test_hpa_scale_up_is_limited_like_kubernetes() -> None:
    spec = bench.bench_spec()
    hpa = bench.HpaPolicy(spec)
    obs = Observed(
        time=0,
        caption_p95=9,
        translation_p95=1,
        queue={"audio": 0, "translation": 0, "gateway": 0},
        util={"audio": 9, "translation": 1, "gateway": 0.1},
        cpu={"audio": 1.0, "translation": 1.0, "gateway": 0.1},
        demand={"audio": 90, "translation": 9, "gateway": 0.1},
        sessions=100,
    )
    reps = {"audio": 10, "translation": 2, "gateway": 1}
    out = hpa.decide(0.0, obs, reps, dict(reps))
    # CPU saturates at 100%: ceil(10 x 1.0 / 0.7) = 15, whatever the real overload.
    assert out["audio"] == 15
    keda = bench.KedaPolicy(spec)
    out = keda.decide(0.0, obs, reps, dict(reps))
    # A demand query does not saturate, but HPA's max(4 pods, 100%) per minute still applies.
    assert out["audio"] == 20


def test_trace_families_are_seeded_draws_of_distinct_shapes() -> None:
    bt = bench_traces
    assert set(bt.DEV_SEEDS).isdisjoint(bt.REPORT_SEEDS) and len(bt.REPORT_SEEDS) >= 30
    for family in bt.FAMILIES:
        a, b = bt.generate(family, 1000), bt.generate(family, 1001)
        assert a == bt.generate(family, 1000), f"{family}: a seed is one trace"
        assert a != b, f"{family}: another seed, another draw"
        assert min(a) >= 0 and len(a) >= 1800 and max(a) > 50, family
    flash = bt.generate("flash_crowd", 1000)
    jump = max(flash[t + 30] - flash[t] for t in range(len(flash) - 30))
    assert jump > 100, "a flash crowd arrives within half a minute"
    night = bt.generate("quiet_night", 1000)
    assert max(night[: 5 * 3600]) < 40 < max(night[5 * 3600 :]), "quiet for hours, then the morning"


def test_families_report_the_distribution_of_the_ratios(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "a.json"
    rc = cli(["bench", "autoscaling", "--families", "2", "--plot", "", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trace families, 2 report seeds each" in printed and "working_day" in printed
    families = json.loads(out.read_text())["families"]
    assert [f["family"] for f in families] == list(bench_traces.FAMILIES)
    for f in families:
        assert f["seeds"] == [1000, 1001] and len(f["per_seed"]) == 2
        for key in ("slo_vs_hpa", "slo_vs_keda", "replicas_vs_hpa", "replicas_vs_keda"):
            values = sorted(s[key] for s in f["per_seed"])
            assert values[0] <= f["summary"][key]["median"] <= f["summary"][key]["p90"] <= values[-1]


def test_a_noisy_family_draws_its_noise_around_a_course_it_can_name() -> None:
    """The frontier needs the demand without its per-second noise: the course is recorded beside
    the same draw (``generate`` is unchanged), and the noise is all that separates them."""
    bt = bench_traces
    for family in bt.FAMILIES:
        trace, course = bt.generate_with_course(family, 1000)
        assert trace == bt.generate(family, 1000) and len(course) == len(trace), family
        if family not in bt.NOISY:
            assert course == trace, family
    trace, course = bt.generate_with_course("noisy_plateau", 1000)
    spread = statistics.pstdev(t / c - 1 for t, c in zip(trace, course, strict=True) if c > 0)
    assert 0.12 < spread < 0.18, "15% noise around the course"
    assert statistics.pstdev(b - a for a, b in itertools.pairwise(course)) < 4, (
        "the course itself walks slowly"
    )


def test_the_frontier_sweeps_an_oracle_that_costs_more_with_more_headroom(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "a.json"
    rc = cli(["bench", "autoscaling", "--families", "2", "--frontier", "--plot", "", "--json", str(out)])
    assert rc == 0
    assert "reactive oracle" in capsys.readouterr().out
    frontier = json.loads(out.read_text())["frontier"]
    assert [f["family"] for f in frontier] == list(bench_traces.FAMILIES)
    for f in frontier:
        costs = [r["replicas_vs_hpa"]["median"] for r in f["rows"]]
        assert costs == sorted(costs), f"{f['family']}: more headroom never costs less"
        cheapest = f["cheapest_slo_met"]
        assert f["met"] == (cheapest is not None and cheapest["replicas_vs_hpa"]["median"] <= 1.0)
