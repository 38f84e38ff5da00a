"""Knob-env training throughput: control steps and simulated seconds per wall second.

    python benchmarks/knob_throughput.py                 # the default recipe's config (knobs.yaml)
    python benchmarks/knob_throughput.py --steps 600 --n-envs 2 --systems 2

The baseline in the same run is the same envs stepped with the warm start's fixed knobs and no
learning, so the ratio says what the policy and PPO updates cost on top of the simulation.
Rollout labelling (the default recipe's learning phase) is measured in one process against one
env stepped with fixed knobs: its simulated seconds are the policy's own run to the last
labelled moment plus every candidate's rollout, so the ratio is the cost of copying the env.
A knob step is ``interval_s`` simulated seconds (1 s by default), so steps/s x interval_s is
the simulated seconds per wall second; compare the per-request env, where one simulated second
is ~200 steps (benchmarks/train_throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import numpy as np
    import torch
    from sb3_contrib import MaskablePPO

    from training.common import build_vec_env, hyperparams, policy_class
    from training.knobs import KNOB_RUN_KEYS, load_knob_config
    from training.train import CONFIG_DIR
    from policy_env.knobs_env import gamma_for

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=CONFIG_DIR / "knobs.yaml")
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--vec-env", choices=("dummy", "subproc"), default="subproc")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--systems", type=int, default=2, help="systems labelled by rollouts (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_knob_config(args.config, "maskable_ppo", MaskablePPO)
    kw = dict(cfg["env_kwargs"])
    if kw.get("distribution"):
        kw["distribution"] = str(args.config.parent / kw["distribution"])
    interval = float(kw.get("interval_s", 1.0))
    train, fixed = [], []
    for r in range(args.repeats):
        venv = build_vec_env("specctl/SpecKnobs-v0", kw, args.n_envs, args.vec_env, seed=r)
        hp = hyperparams({k: v for k, v in cfg.items() if k not in KNOB_RUN_KEYS})
        model = MaskablePPO(policy_class(cfg["policy"], "maskable_ppo"), venv, seed=r, verbose=0,
                            gamma=gamma_for(cfg["half_life_s"], interval), **hp)
        t0 = time.perf_counter()
        model.learn(args.steps)
        train.append(model.num_timesteps / (time.perf_counter() - t0))
        venv.reset()
        action = np.tile(np.array([0, 3, 5, 1]), (args.n_envs, 1))
        t0 = time.perf_counter()
        for _ in range(args.steps // args.n_envs):
            venv.step(action)
        fixed.append(args.steps / (time.perf_counter() - t0))
        venv.close()
    tr, fx = statistics.median(train), statistics.median(fixed)
    print(f"specctl/SpecKnobs-v0 ({kw.get('distribution') or kw.get('scenario')}), {args.n_envs} {args.vec_env} envs, "
          f"interval {interval:g} s, MaskablePPO net {cfg['policy_kwargs']['net_arch']}")
    print(f"  training:    {tr:,.1f} control steps/s = {tr * interval:,.1f} simulated s per wall s (median of {args.repeats} x {args.steps})")
    print(f"  fixed knobs: {fx:,.1f} control steps/s = {fx * interval:,.1f} simulated s per wall s -> training runs at {tr / fx:.2f}x")
    if args.systems:
        rollouts(kw, cfg, args.systems)


def rollouts(kw: dict, cfg: dict, systems: int) -> None:
    """Rollout labelling in one process vs one env stepped with fixed knobs, on the same systems."""
    import tempfile

    import numpy as np
    from sb3_contrib import MaskablePPO

    from controllers.policy import export_policy
    from policy_env.knobs_env import SpecKnobsEnv
    from training.rollouts import label_episode

    ro = cfg["rollouts"]
    env = SpecKnobsEnv(**kw)
    with tempfile.TemporaryDirectory() as d:
        model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": cfg["policy_kwargs"]["net_arch"]})
        export_policy(model, env.controller.layout, Path(d), {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
        label_s, label_sim, fixed_s, fixed_sim = 0.0, 0.0, 0.0, 0.0
        for seed in range(systems):
            t0 = time.perf_counter()
            labels = label_episode((d, kw, seed, ro))
            label_s += time.perf_counter() - t0
            rollouts = sum(len(d_.values) + (not (d_.actions == d_.current).all(1).any()) for d_ in labels)
            label_sim += max(d_.time_s for d_ in labels) + rollouts * float(ro["horizon_s"])
            env.reset(options={"sim_seed": seed})
            t0 = time.perf_counter()
            done = False
            while not done:
                _, _, done, _, info = env.step(np.array([0, 3, 5, 1]))
            fixed_s += time.perf_counter() - t0
            fixed_sim += info["sim_time"]
    lab, fix = label_sim / label_s, fixed_sim / fixed_s
    print(f"  rollout labelling (1 process, {systems} systems, {len(ro['at_s'])} moments x horizon {ro['horizon_s']:g} s): "
          f"{lab:,.1f} simulated s per wall s; one env with fixed knobs {fix:,.1f} -> {lab / fix:.2f}x")


if __name__ == "__main__":
    main()
