"""Simulator speed: simulated output tokens, events and simulated seconds per wall-clock second.

Each scenario runs with the static controller at an arrival rate that keeps about
``--concurrency`` requests in flight (found by Little's law: rate = N / mean latency), which
is near capacity for the shipped scenarios. Prints medians over ``--repeats`` runs.

    python benchmarks/sim_throughput.py                    # all scenarios, 64 concurrent
    python benchmarks/sim_throughput.py --scenario wan-4region --profile   # + cProfile top 15
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from controllers import make_controller
from runtime.scenario import load_scenario, shipped_scenarios
from runtime.sim import Simulator


def run_once(name: str, controller: str, rate: float, duration: float, seed: int) -> tuple[dict, Simulator, float]:
    sim = Simulator(load_scenario(name), seed=seed, duration=duration, rate=rate)
    t0 = time.perf_counter()
    out = sim.run(make_controller(controller))
    return out, sim, time.perf_counter() - t0


def mean_in_flight(sim: Simulator) -> float:
    """Time-averaged requests in flight (Little's law: total latency / time)."""
    return sum(r.finish - r.arrival for r in sim.metrics.records) / sim.metrics.sim_time


def rate_for(name: str, controller: str, concurrency: int, duration: float) -> float:
    """Arrival rate that keeps about ``concurrency`` requests in flight (bisection on the rate)."""
    lo, hi = 0.5, 200.0
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        _, sim, _ = run_once(name, controller, mid, duration, seed=99)
        lo, hi = (mid, hi) if mean_in_flight(sim) < concurrency else (lo, mid)
    return (lo * hi) ** 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", action="append", help="scenario (repeatable; default: all shipped)")
    p.add_argument("--controller", default="static")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = p.parse_args()
    print(f"{'scenario':<13} {'rate/s':>7} {'in-flight':>9} {'tokens/wall-s':>14} {'events/wall-s':>14} {'sim-s/wall-s':>12}")
    for name in args.scenario or shipped_scenarios():
        rate = rate_for(name, args.controller, args.concurrency, args.duration)
        toks, evs, speed, conc = [], [], [], []
        for seed in range(args.repeats):
            out, sim, wall = run_once(name, args.controller, rate, args.duration, seed)
            toks.append(sim.metrics.tokens_committed / wall)
            evs.append(sim.events_processed / wall)
            speed.append(sim.metrics.sim_time / wall)
            conc.append(mean_in_flight(sim))
        print(f"{name:<13} {rate:>7.1f} {statistics.median(conc):>9.1f} {statistics.median(toks):>14,.0f} "
              f"{statistics.median(evs):>14,.0f} {statistics.median(speed):>12.1f}")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run_once(name, args.controller, rate, args.duration, 0)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
