"""Model-predictive knob selection (controllers/lookahead.py, training/lookahead.py)."""

from __future__ import annotations

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


def test_cli_refuses_a_bad_baseline_in_one_line():
    r = subprocess.run([sys.executable, "-m", "training.lookahead", "--scenario", "wan-4region", "--baseline", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown controller 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
