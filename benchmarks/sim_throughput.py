"""Simulator speed: simulated output tokens, events and simulated seconds per wall-clock second.

Each scenario runs with the static controller at an arrival rate that keeps about
``--concurrency`` requests in flight (found by Little's law: rate = N / mean latency), which
is near capacity for the shipped scenarios. Prints medians over ``--repeats`` runs.

    python benchmarks/sim_throughput.py                    # all scenarios, 64 concurrent
    python benchmarks/sim_throughput.py --scenario wan-4region --profile   # + cProfile top 15
    python benchmarks/sim_throughput.py --controller wanspec --compare static   # + ratio to static

``--compare`` runs a second controller (each at its own rate) alternately with the first, seed
by seed, so a busy machine slows both alike, and prints the ratio of their tokens/wall-s medians.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from controllers import make_controller, refusal
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


def measure(name: str, controller: str, rate: float, duration: float, seed: int) -> tuple[float, float, float, float]:
    """One run: (tokens, events and simulated seconds per wall second, mean requests in flight)."""
    _, sim, wall = run_once(name, controller, rate, duration, seed)
    return (sim.metrics.tokens_committed / wall, sim.events_processed / wall, sim.metrics.sim_time / wall,
            mean_in_flight(sim))


def print_row(name: str, controller: str, rate: float, runs: list[tuple[float, float, float, float]]) -> float:
    """Print the medians of ``runs``; returns the tokens/wall-s median."""
    toks, evs, speed, conc = (statistics.median(col) for col in zip(*runs))
    print(f"{name:<13} {controller:<10} {rate:>7.1f} {conc:>9.1f} {toks:>14,.0f} {evs:>14,.0f} {speed:>12.1f}")
    return toks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", action="append", help="scenario (repeatable; default: all shipped)")
    p.add_argument("--controller", default="static")
    p.add_argument("--compare", metavar="CONTROLLER", help="also run this controller, alternating, and print the ratio")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = p.parse_args()
    controllers = [args.controller] + ([args.compare] if args.compare else [])
    print(f"{'scenario':<13} {'controller':<10} {'rate/s':>7} {'in-flight':>9} {'tokens/wall-s':>14} "
          f"{'events/wall-s':>14} {'sim-s/wall-s':>12}")
    for name in args.scenario or shipped_scenarios():
        info = Simulator(load_scenario(name), duration=1.0).info
        refused = [(c, why) for c in controllers if (why := refusal(c, info)) is not None]
        if refused:
            for c, why in refused:
                print(f"{name:<13} {c:<10} skipped: {why}")
            continue
        rates = {c: rate_for(name, c, args.concurrency, args.duration) for c in controllers}
        runs: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in controllers}
        for seed in range(args.repeats):
            for c in controllers if seed % 2 == 0 else controllers[::-1]:
                runs[c].append(measure(name, c, rates[c], args.duration, seed))
        toks = [print_row(name, c, rates[c], runs[c]) for c in controllers]
        if args.compare:
            print(f"{name:<13} {args.controller} / {args.compare}: {toks[0] / toks[1]:.3f}x tokens/wall-s")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run_once(name, args.controller, rates[args.controller], args.duration, 0)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
