"""Sim-to-real: the same workload through the real runtime and through the calibrated simulator.

Profiles this host (``python -m runtime profile``), replays the tiny-local scenario's arrivals
through the real multi-process runtime (tiny models, emulated WAN), then simulates the same
arrivals calibrated to what that run measured (``runtime.real.replay.measure_run``): the
drafter's acceptance by position in its run since the last rejection (``--iid``: one rate),
each site's draft round trip beyond compute, and each site's
forward speed against the profiles (on one host the emulated sites share the target's cores, so
its forwards run slower than profiled while they draft). Both sides offer draft-ahead, so
``wanspec`` streams on both and ``wanspec:ahead=false`` drafts round by round on both.
With ``--repeats N`` each controller runs N times; the errors compare the medians.
Prints mean TPOT and throughput of both and the relative errors (goal: within 10%).

    python benchmarks/real_sim_vs_real.py --duration 10 --rate 8 --controllers static:k=4 wanspec wanspec:ahead=false
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from controllers import make_controller
from runtime.real.profile import profile
from runtime.real.deploy import load_deployment
from runtime.real.replay import calibrated_scenario, mean_tpot, measure_run, replay, with_rate
from runtime.real.runtime import RealRuntime, SiteProcesses
from runtime.sim import Simulator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="tiny-local")
    p.add_argument("--models", help="tiny-model directory (default: the cache)")
    p.add_argument("--duration", type=float, default=10.0, help="arrival window, seconds")
    p.add_argument("--rate", type=float, default=30.0, help="arrival rate, requests/s (default 30: near saturation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="real runs per controller (errors compare medians)")
    p.add_argument("--iid", action="store_true",
                   help="give the simulator the i.i.d. per-token acceptance, not acceptance by position in the run")
    p.add_argument("--controllers", nargs="+", default=["no-spec", "static:k=4", "wanspec", "wanspec:ahead=false"])
    args = p.parse_args()
    torch.set_num_threads(1)
    dep = load_deployment(scenario=args.scenario, models_dir=args.models)
    out = tempfile.mkdtemp(prefix="specctl-profile-")
    profiles = profile(dep, out, repeats=5, max_context=4096, quiet=True)
    procs = SiteProcesses()
    remote = [s.name for s in dep.scenario.sites if s.role != "target" and s.drafter]
    addrs = procs.launch({n: dep.drafter_for(n) for n in remote}, args={n: dep.site_args(n, args.seed) for n in remote})
    dep = load_deployment(scenario=args.scenario, models_dir=args.models, sites={n: {"address": a} for n, a in addrs.items()})
    dep.scenario = with_rate(dep.scenario, args.rate)
    rows = []
    try:
        for spec in args.controllers:
            runs = []
            for r in range(args.repeats):
                rt = RealRuntime(dep, seed=args.seed, ignore_eos=True)
                with rt:
                    replay(rt, make_controller(spec), args.duration, args.seed)
                real = rt.summary()
                measured = measure_run(rt, profiles)
                sim = Simulator(calibrated_scenario(rt.scenario, profiles, measured.alpha, measured.round_trip_s,
                                                    measured.speed, None if args.iid else measured.table),
                                args.seed, args.duration)
                s = sim.run(make_controller(spec))
                # throughput over the makespan (first arrival to last completion): at a saturating
                # rate it measures capacity rather than the offered load
                runs.append({
                    "real_tpot": mean_tpot(rt.metrics.records), "sim_tpot": mean_tpot(sim.metrics.records),
                    "real_tps": real["throughput_tps"] * args.duration / real["sim_time_s"],
                    "sim_tps": s["throughput_tps"] * args.duration / s["sim_time_s"],
                    "requests": real["requests_completed"], "measured": measured,
                    "real_streamed": real["stream_rounds"] / max(rt.metrics.spec_rounds, 1),
                    "sim_streamed": s["stream_rounds"] / max(sim.metrics.spec_rounds, 1),
                })
            med = {k: statistics.median(r[k] for r in runs) for k in ("real_tpot", "sim_tpot", "real_tps", "sim_tps")}
            row = {
                "controller": spec, "repeats": len(runs), "requests": runs[0]["requests"],
                "alpha": [round(r["measured"].alpha, 3) for r in runs],
                "acceptance_by_run": [[round(x, 2) for x in r["measured"].table] for r in runs],
                "speed": [{f"{site}/{model}": round(v, 2) for site, by_model in r["measured"].speed.items()
                           for model, v in by_model.items()} for r in runs],
                "control": [round(r["measured"].control, 3) for r in runs],
                "round_trip_ms": [{k: round(v * 1e3, 1) for k, v in r["measured"].round_trip_s.items()} for r in runs],
                "real_tpot_ms": [round(r["real_tpot"] * 1e3, 2) for r in runs],
                "sim_tpot_ms": [round(r["sim_tpot"] * 1e3, 2) for r in runs],
                "streamed_rounds_real_sim": [(round(r["real_streamed"], 2), round(r["sim_streamed"], 2)) for r in runs],
                "tpot_error": round(med["sim_tpot"] / med["real_tpot"] - 1, 3),
                "real_throughput_tps": round(med["real_tps"], 1), "sim_throughput_tps": round(med["sim_tps"], 1),
                "throughput_error": round(med["sim_tps"] / med["real_tps"] - 1, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        procs.stop()
    worst = max(max(abs(r["tpot_error"]), abs(r["throughput_error"])) for r in rows)
    print(f"worst relative error of the medians: {worst:.1%} (goal: within 10%)")


if __name__ == "__main__":
    main()
