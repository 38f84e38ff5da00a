"""Model-predictive knob selection (controllers/lookahead.py, training/lookahead.py)."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from controllers import make_controller
from controllers.lookahead import PORTFOLIO, Lookahead
from runtime.scenario import load_scenario
from runtime.sim import Simulator

SPEC = "lookahead:horizon_s=2,replan_s=3,futures=1"


def _first_point(seed: int = 7) -> tuple[Simulator, Lookahead, object]:
    sim = Simulator(load_scenario("wan-4region"), seed, 6.0, rate=20.0)
    ctl = make_controller(SPEC)
    ctl.bind(sim.info)
    return sim, ctl, sim.next_decision()


def test_a_plan_scores_every_setting_on_common_futures_without_advancing_the_simulator():
    sim, ctl, point = _first_point()
    now, arrived = sim.now, sim.metrics.arrived
    values = ctl.values(point)
    assert sim.now == now and sim.metrics.arrived == arrived  # the plan ran on forks
    assert values.shape == (len(PORTFOLIO),) and values.min() >= 0
    assert np.array_equal(values, ctl.values(point))  # the same futures every time
    # the settings differ: on common futures, only the setting can make the difference
    assert len(set(np.round(values, 9))) > 1


def test_a_planner_that_forgets_each_requests_acceptance_plans_on_redrawn_rates():
    sim, ctl, point = _first_point()
    for _ in range(200):  # into the run, where requests have drawn their acceptance rates
        sim.apply(ctl.decide(point))
        point = sim.next_decision()
    alphas = {rid: {m: st.alpha for m, st in r.acc.items()} for rid, r in sim.requests.items()}
    assert any(alphas.values())
    honest = Lookahead(horizon_s=2, replan_s=3, futures=1, known_acceptance=False)
    honest.bind(sim.info)
    forgot = honest.values(point)
    assert not np.array_equal(forgot, ctl.values(point)) and np.array_equal(forgot, honest.values(point))
    assert {rid: {m: st.alpha for m, st in r.acc.items()} for rid, r in sim.requests.items()} == alphas  # (on forks)
    fork = copy.deepcopy(sim)
    fork.resample_future(5, keep_acceptance=False)
    assert all(not r.acc for r in fork.requests.values())  # redrawn from the scenario on first use


def test_it_holds_the_best_planned_setting_replans_and_is_deterministic():
    sim, ctl, point = _first_point()
    best = int(np.argmax(ctl.values(point)))
    sim.apply(ctl.decide(point))
    assert ctl.plans == [best]
    assert list(ctl.knobs.as_action()) == list(ctl.action_for(ctl.portfolio[best]))
    p = sim.next_decision()
    while p is not None:
        sim.apply(ctl.decide(p))
        p = sim.next_decision()
    assert len(ctl.plans) >= 2  # every 3 s (the drain after the 6-s arrival window too)
    again = Simulator(load_scenario("wan-4region"), 7, 6.0, rate=20.0)
    twin = make_controller(SPEC)
    assert again.run(twin) == sim.summary() and twin.plans == ctl.plans


def test_it_refuses_a_backend_without_a_simulator_and_bad_parameters():
    from dataclasses import replace

    sim = Simulator(load_scenario("wan-4region"), 0, 1.0)
    with pytest.raises(ValueError, match="real backend"):
        make_controller("lookahead").bind(replace(sim.info, clairvoyant=None))
    with pytest.raises(ValueError, match="futures >= 1"):
        make_controller("lookahead:futures=0")


def test_an_included_spec_runs_as_itself():
    """A whole controller spec in the portfolio (e.g. the tuned baseline with its own admission
    cap) is held as it is: the knobs' cap, k cap and hedging stay out of its way."""
    spec = "wanspec:k=3+inflight-cap:max_inflight=24"
    alone = Simulator(load_scenario("wan-4region"), 3, 4.0, rate=20.0).run(make_controller(spec))
    planner = Lookahead(horizon_s=1.0, replan_s=2.0, futures=1, portfolio=(), include=(spec,))
    held = Simulator(load_scenario("wan-4region"), 3, 4.0, rate=20.0).run(planner)
    assert held == alone and set(planner.plans) == {0}
    assert set(planner.usage) == {spec}  # reported by its own spec
    with pytest.raises(ValueError, match="unknown controller"):
        Lookahead(include=("nope",))


@pytest.mark.parametrize("flag", ["--baseline", "--include"])
def test_cli_refuses_a_bad_spec_in_one_line(flag):
    args = ["--baseline", "static"] if flag == "--include" else []
    r = subprocess.run([sys.executable, "-m", "training.lookahead", "--scenario", "wan-4region", *args, flag, "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown controller 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"{flag} 'nope'" in r.stderr
