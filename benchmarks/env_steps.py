"""Env steps per second with random valid actions (goal: >= 5,000 on one core, full env).

    python benchmarks/env_steps.py                       # all registered envs, default scenario
    python benchmarks/env_steps.py --env specctl/SpecControl-v0 --steps 20000 --rate 18

Random actions are drawn from the action mask (vectorised, so the sampler costs little);
the baseline in the same run is the simulator driven by its heuristic alone (decision points
per second), which bounds what any env over it can reach.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_masked_action(mask: np.ndarray, dims: tuple[int, ...], n_slots: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random valid choice per action dimension (Gumbel-style argmax over the mask)."""
    scores = np.where(mask, rng.random(mask.size), -1.0).reshape(n_slots, sum(dims))
    out = np.empty((n_slots, len(dims)), dtype=np.int64)
    o = 0
    for d, n in enumerate(dims):
        out[:, d] = scores[:, o : o + n].argmax(1)
        o += n
    return out.reshape(-1)


def env_rate(env_id: str, steps: int, rate: float | None, seed: int) -> float:
    import gymnasium as gym

    env = gym.make(env_id, rate=rate).unwrapped
    dims, n = env.codec.dims, env.codec.n_slots
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(random_masked_action(env.action_masks(), dims, n, rng))
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def sim_points_rate(rate: float | None, seed: int) -> float:
    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    sim = Simulator(load_scenario("wan-4region"), seed, 60.0, rate=rate)
    ctl = make_controller("static")
    ctl.bind(sim.info)
    n = 0
    t0 = time.perf_counter()
    point = sim.next_decision()
    while point is not None:
        sim.apply(ctl.decide(point))
        n += 1
        point = sim.next_decision()
    return n / (time.perf_counter() - t0)


def main() -> None:
    import policy_env

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", action="append", help="env id (repeatable; default: all registered)")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rate", type=float, default=18.0, help="arrival rate (default 18 req/s, near capacity)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    base = statistics.median(sim_points_rate(args.rate, s) for s in range(args.repeats))
    print(f"baseline: simulator + static heuristic alone: {base:,.0f} decision points/s (median of {args.repeats})")
    for env_id in args.env or list(policy_env.ENV_IDS):
        rates = [env_rate(env_id, args.steps, args.rate, s) for s in range(args.repeats)]
        med = statistics.median(rates)
        print(f"{env_id:<26} {med:>8,.0f} steps/s (median of {args.repeats} x {args.steps} random masked steps)  "
              f"{med / base:.2f}x the heuristic's point rate")


if __name__ == "__main__":
    main()
