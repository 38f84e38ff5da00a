"""The Gymnasium environment can run its episodes on the real runtime."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.real.deploy import load_deployment
from tests.real_fixtures import tiny_dir  # noqa: F401


@pytest.mark.slow
def test_real_env_steps_with_the_same_spaces_as_the_simulated_one(tiny_dir):
    from policy_env.env import SpecControlEnv
    from runtime.real.gym import RealSpecControlEnv

    dep = load_deployment(scenario="tiny-local", models_dir=tiny_dir)
    env = RealSpecControlEnv(dep, duration=1.0, rate=6.0, n_slots=4)
    try:
        sim_env = SpecControlEnv(dep.scenario, duration=1.0, n_slots=4)
        assert env.observation_space == sim_env.observation_space and env.action_space == sim_env.action_space
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs)
        total, steps, done = 0.0, 0, False
        while not done and steps < 5000:
            action = env.expert_action()
            obs, reward, terminated, truncated, info = env.step(action)
            assert env.observation_space.contains(obs) and np.isfinite(reward)
            total += reward
            steps += 1
            done = terminated or truncated
        assert steps > 10 and total > 0
        assert env.sim.metrics.tokens_committed > 0
    finally:
        env.close()
