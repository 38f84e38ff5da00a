"""Sim-to-real: the profiler's CSVs drive the simulator's latency model; workload replay helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controllers import make_controller
from runtime.latency import ProfileTable
from runtime.real.profile import profile, verify_seqs
from runtime.real.deploy import load_deployment
from runtime.real.replay import acceptance_by_run, calibrated_scenario, mean_tpot, measure_run, replay
from runtime.real.runtime import RealRuntime
from runtime.sim import Simulator
from tests.real_fixtures import tiny_dir  # noqa: F401
from tests.test_real_runtime import _target_only


def test_grid_points_fit_the_model_positions():
    assert verify_seqs(256, 0, 1024) == 1
    assert verify_seqs(4, 4096, 1024) is None  # would need 8 sequences of context but only 4 tokens
    seqs = verify_seqs(64, 4096, 1024)
    assert seqs is not None and 4096 / seqs <= 512 and 64 / seqs >= 1


@pytest.fixture(scope="module")
def profiles(tiny_dir, tmp_path_factory):
    dep = load_deployment(models_dir=tiny_dir)
    return profile(dep, tmp_path_factory.mktemp("prof"), repeats=1, max_context=256, max_new=32, quiet=True)


def test_profile_writes_tables_the_simulator_reads(profiles):
    assert set(profiles) == {"tiny-target", "tiny-draft"}
    target = ProfileTable.from_csv(profiles["tiny-target"])
    draft = ProfileTable.from_csv(profiles["tiny-draft"])
    assert target.contexts == [0, 64, 256]
    assert 0 < draft.forward_time(1, 1, 64) < 1.0 and 0 < target.forward_time(4, 20, 256) < 1.0
    assert target.forward_time(1, 32, 0) > 0


@pytest.mark.slow
def test_same_workload_through_real_runtime_and_calibrated_simulator(profiles, tiny_dir, tmp_path):
    dep = load_deployment(scenario=str(_target_only(tmp_path)), models_dir=tiny_dir)
    rt = RealRuntime(dep, ignore_eos=True)
    with rt:
        reqs = replay(rt, make_controller("static:k=3"), duration=2.0, seed=1)
    real = rt.summary()
    assert real["requests_completed"] == len(reqs) > 0
    assert all(len(r.output) == r.max_tokens for r in reqs)  # EOS ignored: lengths as drawn
    measured = measure_run(rt, profiles)
    assert measured.alpha == real["acceptance_per_token"] and 0 < measured.alpha < 1
    # every speculative round logged at its place in its run; acceptance fitted along runs
    assert len(rt.round_log) == rt.metrics.spec_rounds > 0 and all(k <= 3 for _, k, _ in rt.round_log)
    assert measured.table and all(0 < p < 1 for p in measured.table)
    carried = calibrated_scenario(rt.scenario, profiles, measured.alpha, table=measured.table)
    acc = carried.spec.drafters["tiny-draft"].acceptance
    assert acc.kind == "position" and acc.across_rounds and acc.table == measured.table
    # every forward of the run held against its profile: the target's verifications and drafts
    assert set(measured.speed) == {"dc"} and set(measured.speed["dc"]) == {"tiny-target", "tiny-draft"}
    assert all(0.1 < f < 20 for f in measured.speed["dc"].values())
    sc = calibrated_scenario(rt.scenario, profiles, measured.alpha, measured.round_trip_s, measured.speed)
    for model, path in sc.target.profiles.items():  # profiles scaled by the measured speeds
        assert ProfileTable.from_csv(path).forward_time(2, 8, 64) == pytest.approx(
            ProfileTable.from_csv(profiles[model]).forward_time(2, 8, 64) * measured.speed["dc"][model], rel=1e-3)
    sim = Simulator(sc, 1, 2.0)
    s = sim.run(make_controller("static:k=3"))
    assert s["requests_completed"] == real["requests_completed"]
    assert sum(r.output_tokens for r in sim.metrics.records) == sum(len(r.output) for r in reqs)
    assert mean_tpot(sim.metrics.records) > 0 and mean_tpot(rt.metrics.records) > 0


def test_acceptance_by_run_counts_trials_at_each_position_of_a_run():
    # (run, k, accepted): positions run..run+k-1 are tried up to the first rejection
    rounds = [(0, 2, 2)] * 40 + [(0, 2, 1)] * 40 + [(3, 1, 0)] * 10 + [(4, 1, 1)] * 10
    table = acceptance_by_run(rounds, min_trials=30)
    # position 0: 80 trials, all accepted; position 1: 80 trials, 40 accepted; positions 2 and
    # up have fewer than 30 trials each, so they share one (position 3: 0 of 10, 4: 10 of 10)
    assert table[:2] == [0.99, 0.5]  # clipped to 0.99
    assert len(table) == 3 and table[2] == pytest.approx(10 / 20)
    assert acceptance_by_run([]) == []


def test_profile_cli_reports_bad_flags_in_one_line():
    p = subprocess.run([sys.executable, "-m", "runtime", "profile", "--repeats", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == "error: --repeats must be >= 1"
