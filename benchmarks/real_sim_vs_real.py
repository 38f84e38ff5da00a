"""Sim-to-real: the same workload through the real runtime and through the calibrated simulator.

Profiles this host (``python -m runtime profile``), replays the tiny-local scenario's arrivals
through the real multi-process runtime (tiny models, emulated WAN), then simulates the same
arrivals with the measured profiles and the measured acceptance rate, for each controller.
Prints mean TPOT and throughput of both and the relative error (goal: within 25%). Both sides
offer the same draft-ahead support (``RuntimeInfo.draft_ahead``; both have it now), so
``wanspec`` streams on both and ``wanspec:ahead=false`` drafts round by round on both.

    python benchmarks/real_sim_vs_real.py --duration 10 --controllers static:k=4 wanspec wanspec:ahead=false
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile

import torch

from controllers import make_controller
from runtime.real.profile import profile
from runtime.real.deploy import load_deployment
from runtime.real.replay import calibrated_scenario, mean_tpot, replay, with_rate
from runtime.real.runtime import RealRuntime, SiteProcesses
from runtime.sim import Simulator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="tiny-local")
    p.add_argument("--models", help="tiny-model directory (default: the cache)")
    p.add_argument("--duration", type=float, default=10.0, help="arrival window, seconds")
    p.add_argument("--rate", type=float, default=30.0, help="arrival rate, requests/s (default 30: near saturation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--controllers", nargs="+", default=["no-spec", "static:k=4", "wanspec", "wanspec:ahead=false"])
    args = p.parse_args()
    torch.set_num_threads(1)
    dep = load_deployment(scenario=args.scenario, models_dir=args.models)
    out = tempfile.mkdtemp(prefix="specctl-profile-")
    profiles = profile(dep, out, repeats=5, max_context=4096, quiet=True)
    procs = SiteProcesses()
    remote = [s.name for s in dep.scenario.sites if s.role != "target" and s.drafter]
    addrs = procs.launch({n: dep.drafter_for(n) for n in remote})
    dep = load_deployment(scenario=args.scenario, models_dir=args.models, sites={n: {"address": a} for n, a in addrs.items()})
    dep.scenario = with_rate(dep.scenario, args.rate)
    rows = []
    try:
        for spec in args.controllers:
            rt = RealRuntime(dep, seed=args.seed, ignore_eos=True)
            with rt:
                replay(rt, make_controller(spec), args.duration, args.seed)
            real = rt.summary()
            real_tpot = mean_tpot(rt.metrics.records)
            alpha = real["acceptance_rate"] or 0.5
            round_trip = {site: statistics.median(v) for site, v in rt.transport_overhead_s.items() if v}
            sim = Simulator(calibrated_scenario(rt.scenario, profiles, alpha, round_trip), args.seed, args.duration)
            # the simulator offers only what the real runtime can do (both honour draft-ahead now);
            # a site drafted at only through streams has no measured round trip: it keeps its nominal RTT
            sim.info = dataclasses.replace(sim.info, draft_ahead=rt.info.draft_ahead)
            s = sim.run(make_controller(spec))
            sim_tpot = mean_tpot(sim.metrics.records)
            # throughput over the makespan (first arrival to last completion): at a saturating
            # rate it measures capacity rather than the offered load
            real_tps = real["throughput_tps"] * args.duration / real["sim_time_s"]
            sim_tps = s["throughput_tps"] * args.duration / s["sim_time_s"]
            row = {
                "controller": spec, "requests": real["requests_completed"], "alpha": round(alpha, 3),
                "real_mean_tpot_ms": round(real_tpot * 1e3, 3), "sim_mean_tpot_ms": round(sim_tpot * 1e3, 3),
                "tpot_error": round(sim_tpot / real_tpot - 1, 3),
                "real_throughput_tps": round(real_tps, 1), "sim_throughput_tps": round(sim_tps, 1),
                "throughput_error": round(sim_tps / real_tps - 1, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        procs.stop()
    worst = max(max(abs(r["tpot_error"]), abs(r["throughput_error"])) for r in rows)
    print(f"worst relative error: {worst:.1%} (goal: within 25%)")


if __name__ == "__main__":
    main()
