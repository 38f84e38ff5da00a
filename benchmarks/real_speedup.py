"""Tokens/s and latency of speculative decoding vs plain target decoding, real runtime, tiny models.

Replays the same arrivals (the scenario's workload at ``--rate`` over ``--duration`` s) through
the real multi-process runtime once per controller, with fixed output lengths (EOS ignored),
and prints throughput over the makespan, mean TPOT, p50 end-to-end latency and acceptance,
with ratios against ``no-spec`` from the same run.

    python benchmarks/real_speedup.py --rate 8 --duration 8 --controllers no-spec static:k=2 static:k=4 centralized wanspec
"""

from __future__ import annotations

import argparse

import torch

from controllers import make_controller
from runtime.real.deploy import load_deployment
from runtime.real.replay import mean_tpot, replay, with_rate
from runtime.real.runtime import RealRuntime, SiteProcesses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="tiny-local")
    p.add_argument("--models", help="tiny-model directory (default: the cache)")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=8.0, help="arrivals per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wan-emulation", action="store_true")
    p.add_argument("--controllers", nargs="+", default=["no-spec", "static:k=2", "static:k=4", "centralized", "wanspec"])
    args = p.parse_args()
    torch.set_num_threads(1)
    dep = load_deployment(scenario=args.scenario, models_dir=args.models)
    procs = SiteProcesses()
    remote = [s.name for s in dep.scenario.sites if s.role != "target" and s.drafter]
    addrs = procs.launch({n: dep.drafter_for(n) for n in remote}, args={n: dep.site_args(n, args.seed) for n in remote})
    dep = load_deployment(scenario=args.scenario, models_dir=args.models, emulate_wan=not args.no_wan_emulation,
                          sites={n: {"address": a} for n, a in addrs.items()})
    dep.scenario = with_rate(dep.scenario, args.rate)
    base = None
    w = max(14, *(len(c) for c in args.controllers))  # rows print as each finishes: size the column first
    print(f"{'controller':<{w}} {'tok/s':>8} {'x':>6} {'TPOT ms':>8} {'x':>6} {'e2e p50 s':>10} {'accept':>7} {'tgt drafts':>10}")
    try:
        for spec in args.controllers:
            rt = RealRuntime(dep, seed=args.seed, ignore_eos=True)
            with rt:
                replay(rt, make_controller(spec), args.duration, args.seed)
            s = rt.summary()
            tps = s["throughput_tps"] * args.duration / s["sim_time_s"]
            tpot = mean_tpot(rt.metrics.records) * 1e3
            base = base or (tps, tpot)
            print(f"{spec:<{w}} {tps:>8.1f} {tps / base[0]:>6.2f} {tpot:>8.3f} {base[1] / tpot:>6.2f} "
                  f"{s['e2e_p50_s']:>10.3f} {s['acceptance_rate']:>7.2f} {s['target_draft_forward_passes']:>10}", flush=True)
    finally:
        procs.stop()
    print("(x: ratio vs the first controller; TPOT x > 1 means faster per token)")


if __name__ == "__main__":
    main()
