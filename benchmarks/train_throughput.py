"""Training throughput: env steps per second while MaskablePPO learns (rollouts + updates).

    python benchmarks/train_throughput.py                      # default config's network and rollout sizes
    python benchmarks/train_throughput.py --n-envs 2 --vec-env subproc --steps 8192

The baseline in the same run is the env alone stepping with random masked actions, so the
ratio says how much of the time goes to the policy (inference, masks, PPO updates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from sb3_contrib import MaskablePPO

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from env_steps import env_rate
    from training.train import CONFIG_DIR, RUN_KEYS, build_vec_env, hyperparams, load_config, policy_class

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="specctl/SpecControl-v0", help="a per-request env (the knob env: benchmarks/knob_throughput.py)")
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--vec-env", choices=("dummy", "subproc"), default="dummy")
    p.add_argument("--steps", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(CONFIG_DIR / "maskable_ppo.yaml", args.env, "maskable_ppo")
    kw = cfg["env_kwargs"]
    rates = []
    for r in range(args.repeats):
        venv = build_vec_env(args.env, kw, args.n_envs, args.vec_env, seed=r)
        model = MaskablePPO(policy_class(cfg["policy"], "maskable_ppo"), venv, seed=r, verbose=0, **hyperparams(cfg, RUN_KEYS))
        t0 = time.perf_counter()
        model.learn(args.steps)
        rates.append(model.num_timesteps / (time.perf_counter() - t0))
        venv.close()
    base = env_rate(args.env, args.steps, kw.get("rate"), 0)
    med = statistics.median(rates)
    print(f"{args.env} ({kw.get('scenario')}, base {kw.get('base')}), MaskablePPO net {cfg['policy_kwargs']['net_arch']}, "
          f"n_steps {cfg['n_steps']} x {args.n_envs} {args.vec_env} envs")
    print(f"  training: {med:,.0f} env steps/s (median of {args.repeats} x {args.steps} steps, rollouts + updates)")
    print(f"  baseline: {base:,.0f} env steps/s with random masked actions, no learning -> training runs at {med / base:.2f}x")


if __name__ == "__main__":
    main()
