"""Model-predictive knob selection (training/lookahead.py): common futures, argmax plans, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from training.lookahead import PORTFOLIO, lookahead_episode, plan_values

SEED = 7
TINY = {"portfolio": PORTFOLIO[:3], "horizon_s": 2.0, "replan_s": 3.0, "futures": 1}


def _env():
    from policy_env.knobs_env import SpecKnobsEnv
    from training.knobs import teacher_action

    env = SpecKnobsEnv(scenario="wan-4region", rate=20.0, duration=6.0)
    env.reset(options={"sim_seed": SEED})
    return env, [teacher_action(env, k) for k in TINY["portfolio"]]


def test_plans_compare_candidates_on_common_futures_without_advancing_the_env():
    env, actions = _env()
    now = env.sim.now
    first = plan_values(env, actions, horizon_steps=2, futures=1, key=1)
    assert env.sim.now == now  # the plan ran on forks
    assert np.array_equal(first, plan_values(env, actions, horizon_steps=2, futures=1, key=1))
    assert first.min() > 0 and not np.array_equal(first, plan_values(env, actions, horizon_steps=2, futures=1, key=2))


def test_an_episode_holds_the_best_planned_setting_and_its_default_row_is_the_fixed_setting():
    from runtime.scenario import load_scenario
    from training.compare import run_controller
    from training.mix_tune import fixed_controller

    env, actions = _env()
    values = plan_values(env, actions, horizon_steps=2, futures=1, key=SEED * 100_003)
    goodput, picks = lookahead_episode(("wan-4region", 20.0, SEED, 6.0, TINY, True))
    assert len(picks) == 2 and picks[0] == int(np.argmax(values))
    assert lookahead_episode(("wan-4region", 20.0, SEED, 6.0, TINY, True)) == (goodput, picks)  # deterministic
    fixed, none = lookahead_episode(("wan-4region", 20.0, SEED, 6.0, TINY, False))
    assert none == []
    alone = run_controller(load_scenario("wan-4region"), fixed_controller(PORTFOLIO[0], env.modes), SEED, 6.0, 20.0)
    assert fixed == alone["goodput_rps"]


def test_cli_refuses_a_bad_baseline_in_one_line():
    r = subprocess.run([sys.executable, "-m", "training.lookahead", "--scenario", "wan-4region", "--baseline", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown controller 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
