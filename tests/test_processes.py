"""Stochastic building blocks: arrivals, background load, acceptance, links."""

from __future__ import annotations

import random
import statistics

import pytest

from controllers import make_controller
from runtime.sim.acceptance import AcceptanceState
from runtime.load import LoadProcess
from runtime.network import Link
from runtime.scenario import (
    DiurnalLoad, DriftAcceptance, IIDAcceptance, MarkovLoad, NetworkSpec, PositionAcceptance, load_scenario,
)
from runtime.sim import Simulator
from runtime.workload import arrivals
from tests.helpers import base_spec, scenario


@pytest.mark.parametrize("kind", [
    {"kind": "poisson", "rate": 20.0},
    {"kind": "bursty", "rate": 20.0, "burst_factor": 5.0, "mean_burst_s": 2.0, "mean_calm_s": 6.0},
    {"kind": "diurnal", "rate": 20.0, "amplitude": 0.8, "period_s": 50.0},
])
def test_arrival_processes_keep_their_mean_rate(kind):
    spec = base_spec()
    spec["workload"]["arrivals"] = kind
    times = [a.time for a in arrivals(scenario(spec), seed=1, duration=1000.0)]
    assert times == sorted(times)
    assert len(times) / 1000.0 == pytest.approx(20.0, rel=0.1)


def test_bursty_arrivals_are_burstier_than_poisson():
    def cv_of_counts(kind):
        spec = base_spec()
        spec["workload"]["arrivals"] = kind
        counts = [0] * 500
        for a in arrivals(scenario(spec), seed=2, duration=500.0):
            counts[int(a.time)] += 1
        return statistics.pstdev(counts) / statistics.fmean(counts)

    assert cv_of_counts({"kind": "bursty", "rate": 10.0, "burst_factor": 6.0}) > 1.5 * cv_of_counts({"kind": "poisson", "rate": 10.0})


def test_trace_replay_and_rate_override():
    sc = load_scenario("colocated")
    replay = list(arrivals(sc, seed=0, duration=60.0, trace="azure_conv_sample.csv"))
    assert replay and replay[0].time == 0.0 and replay[0].prompt_tokens == 374 and replay[0].output_tokens == 44
    faster = list(arrivals(sc, seed=0, duration=60.0, trace="azure_conv_sample.csv", rate=20.0))
    assert len(faster) / 60.0 == pytest.approx(20.0, rel=0.2)


def test_edge_requests_come_from_edge_devices():
    sc = load_scenario("edge-fleet")
    origins = {a.origin for a in arrivals(sc, seed=0, duration=30.0)}
    assert len(origins) > 10 and all(o.startswith("edge-") for o in origins)


def test_load_processes():
    d = LoadProcess(DiurnalLoad(kind="diurnal", mean=0.4, amplitude=0.3, period_s=100.0), random.Random(0))
    levels = [d.level(t) for t in range(0, 100)]
    assert max(levels) == pytest.approx(0.7, abs=0.01) and min(levels) == pytest.approx(0.1, abs=0.01)
    m = LoadProcess(MarkovLoad(kind="markov", levels=[0.1, 0.8], mean_dwell_s=[10.0, 5.0]), random.Random(0))
    seen = [m.level(t * 0.5) for t in range(4000)]
    assert set(seen) == {0.1, 0.8}
    assert seen.count(0.1) / len(seen) == pytest.approx(2 / 3, abs=0.1)  # dwell-weighted
    assert m.slowdown(0.0) in (1 / 0.9, 1 / 0.2)


def test_acceptance_models():
    iid = AcceptanceState(IIDAcceptance(alpha_mean=0.7, alpha_std=0.0), random.Random(1), cap=64)
    runs = [iid.run_length() for _ in range(20000)]
    assert statistics.fmean(runs) == pytest.approx(0.7 / 0.3, rel=0.05)  # geometric mean
    table = PositionAcceptance(kind="position", table=[0.9, 0.5, 0.1], scale_std=0.0)
    pos = AcceptanceState(table, random.Random(1), cap=8)
    runs = [pos.run_length() for _ in range(20000)]
    assert sum(r >= 1 for r in runs) / len(runs) == pytest.approx(0.9, abs=0.02)
    assert sum(r >= 2 for r in runs) / sum(r >= 1 for r in runs) == pytest.approx(0.5, abs=0.02)
    drift = AcceptanceState(DriftAcceptance(kind="drift", alpha_mean=0.7, alpha_std=0.0, drift_std=0.1), random.Random(1), cap=8)
    alphas = []
    for _ in range(200):
        drift.run_length()
        alphas.append(drift.alpha)
    assert statistics.pstdev(alphas) > 0.03 and 0.4 < statistics.fmean(alphas) < 0.95


def test_position_acceptance_across_rounds_goes_on_where_a_full_round_ended():
    """With ``across_rounds`` a round after a fully accepted one drafts deeper into the table (as
    a draft-ahead stream does); a rejection starts again at its head. Without it every round
    starts at the head, as before."""
    spec = PositionAcceptance(kind="position", table=[0.95, 0.95, 0.2], scale_std=0.0, across_rounds=True)
    carry = AcceptanceState(spec, random.Random(2), cap=4)
    fresh = AcceptanceState(spec.model_copy(update={"across_rounds": False}), random.Random(2), cap=4)
    assert carry.carry and not fresh.carry
    carry.after_round(1, 1)  # one token drafted and accepted: the run is 2 (with the bonus)
    assert carry.run == 2
    deep = [carry.run_length() for _ in range(4000)]  # every position here accepts with 0.2
    assert sum(r >= 1 for r in deep) / len(deep) == pytest.approx(0.2, abs=0.03)
    carry.after_round(4, 2)  # a rejection: back to the head of the table
    assert carry.run == 0 and sum(carry.run_length() >= 1 for _ in range(4000)) / 4000 == pytest.approx(0.95, abs=0.02)
    carry.run = 50  # beyond the table its last entry repeats
    assert max(carry.run_length() for _ in range(2000)) <= 4
    fresh.after_round(1, 1)
    assert sum(fresh.run_length() >= 1 for _ in range(4000)) / 4000 == pytest.approx(0.95, abs=0.02)


def test_simulated_runs_across_rounds_accept_less_deep_in_a_run():
    """In the simulator, streams draft deep into runs: with acceptance falling along a run, the
    same table counted across rounds accepts fewer of wanspec's drafts than counted per round."""
    raw = load_scenario("wan-4region").spec.model_dump(mode="json", exclude_none=True)
    rates = {}
    for across in (False, True):
        for d in raw["drafters"].values():
            d["acceptance"] = {"kind": "position", "table": [0.95, 0.9, 0.6, 0.4], "scale_std": 0.0,
                               "across_rounds": across}
        s = Simulator(scenario(raw), seed=3, duration=20.0, rate=10.0).run(make_controller("wanspec"))
        rates[across] = s["acceptance_per_token"]
    assert rates[True] < rates[False] - 0.03


def test_link_delay_and_peek():
    sc = load_scenario("wan-4region")
    site = sc.site("us-west-2")
    link = Link(site, NetworkSpec(spike_prob=0.0), random.Random(0))
    peeked = link.peek_delay(1000)
    assert link.send(1000) == peeked  # the oracle sees exactly what the next message takes
    delays = [link.send(0) for _ in range(2000)]
    assert min(delays) >= site.rtt_ms / 2000
    assert statistics.fmean(delays) == pytest.approx(site.rtt_ms / 2000, rel=0.05)
    slow = Link(site.model_copy(update={"bandwidth_mbps": 8.0}), NetworkSpec(), random.Random(0))
    assert slow.send(1_000_000) >= 1.0  # 1 MB over 8 Mbit/s


def test_an_emulated_load_stretches_a_forward_by_other_tenants_share_and_reads_like_a_scenarios_load():
    import time as _time

    from runtime.load import EmulatedLoad, emulates_nothing, parse_load
    from runtime.scenario import ConstantLoad, MarkovLoad

    assert parse_load("{kind: constant, level: 0.5}") == ConstantLoad(level=0.5)
    assert isinstance(parse_load('{"kind": "markov", "levels": [0.05, 0.8], "mean_dwell_s": [10, 10]}'), MarkovLoad)
    with pytest.raises(ValueError, match="level.*e.g."):
        parse_load("{kind: constant, level: 1.5}")
    with pytest.raises(ValueError, match="not YAML"):
        parse_load("{kind: [")
    assert emulates_nothing(ConstantLoad()) and not emulates_nothing(ConstantLoad(level=0.1))
    load = EmulatedLoad(ConstantLoad(level=0.75), seed=0)
    assert load.level() == 0.75
    t0 = _time.perf_counter()
    assert load.stretch(0.75, 0.01) == pytest.approx(0.04)  # compute / (1 - u)
    assert _time.perf_counter() - t0 >= 0.03  # it held the GPU (slept) for the tenants' share
    assert load.stretch(0.0, 0.01) == 0.01
