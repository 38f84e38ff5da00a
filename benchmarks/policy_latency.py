"""Policy decision latency in the controller slot (goal: p99 <= 100 microseconds on CPU).

    python benchmarks/policy_latency.py                          # a freshly exported policy (same shapes as trained ones)
    python benchmarks/policy_latency.py --policy checkpoints/<run>/best --rate 18

Times ``controller.decide(point)`` for every decision point of a simulated run (the whole
answer: observation encoding, the forward pass for every slot chunk, decoding, the heuristic's
share) and, separately, one forward pass. The baseline in the same run is the heuristic the
policy is composed with, deciding the same kind of points alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed_run(controller, scenario, seed: int, duration: float, rate: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-point decide() latencies (ns) and the number of requests each point asked about."""
    from runtime.sim import Simulator

    sim = Simulator(scenario, seed, duration, rate=rate)
    controller.bind(sim.info)
    lat, size = [], []
    clock = time.perf_counter_ns
    point = sim.next_decision()
    while point is not None:
        t0 = clock()
        decision = controller.decide(point)
        lat.append(clock() - t0)
        size.append(len(point.plan) + len(point.admit) if point.kind == "plan" else len(point.ready))
        sim.apply(decision)
        point = sim.next_decision()
    return np.array(lat), np.array(size)


def fresh_policy(directory: Path, env_id: str, rate: float | None) -> Path:
    import gymnasium as gym
    import torch
    from sb3_contrib import MaskablePPO

    import policy_env  # noqa: F401
    from controllers.policy import export_policy

    torch.manual_seed(0)
    env = gym.make(env_id, rate=rate)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, policy_kwargs={"net_arch": [64, 64]}, seed=0)
    u = env.unwrapped
    return export_policy(model, u.codec, directory, {"base": u.base_spec, "env_id": env_id, "env_kwargs": {"rate": rate}, "algo": "maskable_ppo"})


def main() -> None:
    from controllers import make_controller
    from controllers.policy import PolicyController
    from runtime.scenario import load_scenario

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", help="policy ref (directory, runs:/..., models:/...); default: export an untrained 64x64 policy")
    p.add_argument("--env", default="specctl/SpecControl-v0", help="env shape of the fresh policy")
    p.add_argument("--scenario", default="wan-4region")
    p.add_argument("--rate", type=float, default=18.0)
    p.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    ref = args.policy or str(fresh_policy(Path(tempfile.mkdtemp()) / "policy", args.env, args.rate))
    policy = PolicyController.load(ref)
    scenario = load_scenario(args.scenario)
    base = make_controller(policy.spec["base"])
    b_lat, _ = timed_run(base, scenario, 0, args.duration, args.rate)
    p_lat, sizes = timed_run(policy, scenario, 0, args.duration, args.rate)
    obs = np.zeros(policy.codec.obs_size, dtype=np.float32)
    mask = np.ones(int(sum(policy.net.dims)), dtype=bool)
    fwd = []
    for _ in range(5000):
        t0 = time.perf_counter_ns()
        policy.net(obs, mask)
        fwd.append(time.perf_counter_ns() - t0)
    us = lambda a, q: np.percentile(a, q) / 1000.0  # noqa: E731
    n = policy.codec.n_slots
    print(f"policy {ref} (owns {', '.join(policy.codec.owns)}; base {policy.spec['base']}; {n} slots), "
          f"{args.scenario} at {args.rate:g} req/s, {args.duration:g} s simulated, {len(p_lat)} decision points")
    print(f"  one forward pass (numpy):     p50 {us(fwd, 50):6.1f} us   p99 {us(fwd, 99):6.1f} us")
    print(f"  policy decide() per point:    p50 {us(p_lat, 50):6.1f} us   p99 {us(p_lat, 99):6.1f} us   "
          f"(mean {sizes.mean():.1f} requests per point, max {sizes.max()})")
    small = p_lat[sizes <= n]
    if len(small):
        print(f"  points with <= {n} requests:  p50 {us(small, 50):6.1f} us   p99 {us(small, 99):6.1f} us   ({len(small)} points)")
    per_req = p_lat / np.maximum(sizes, 1)
    print(f"  per request decided:          p50 {us(per_req, 50):6.1f} us   p99 {us(per_req, 99):6.1f} us")
    print(f"  baseline {base.name} decide():  p50 {us(b_lat, 50):6.1f} us   p99 {us(b_lat, 99):6.1f} us   "
          f"-> policy/baseline p50 ratio {np.median(p_lat) / np.median(b_lat):.2f}x")


if __name__ == "__main__":
    main()
