"""Knob-env training throughput: control steps and simulated seconds per wall second.

    python benchmarks/knob_throughput.py                 # the default recipe's config (knobs.yaml)
    python benchmarks/knob_throughput.py --steps 600 --n-envs 2

The baseline in the same run is the same envs stepped with the warm start's fixed knobs and no
learning, so the ratio says what the policy and PPO updates cost on top of the simulation.
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


if __name__ == "__main__":
    main()
