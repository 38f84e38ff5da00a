"""``python -m runtime``: simulate a scenario with a controller, or check a scenario file.

    python -m runtime simulate --scenario wan-4region --controller static --duration 60 --seed 0
    python -m runtime simulate --scenario my.yaml --controller static:k=6 --json
    python -m runtime scenarios            # list shipped scenarios
    python -m runtime check my.yaml        # validate a scenario file
    python -m runtime check-dist training/configs/scenario-mix.yaml   # validate a scenario distribution

Errors in flags, scenarios or controllers print one line (``error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from typing import Sequence

from runtime.flags import OneLineParser, positive, positive_float, whole


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m runtime", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    s = sub.add_parser("simulate", help="run one simulated experiment and print its metrics")
    s.add_argument("--scenario", default="wan-4region", help="shipped scenario name or YAML path (default: wan-4region)")
    s.add_argument("--controller", default="static", help="controller NAME[:key=value,...] or policy:<checkpoint> (default: static)")
    s.add_argument("--duration", type=positive_float, default=60.0, help="arrival window in simulated seconds (default: 60)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--trace", help="replay arrivals from a CSV with the Azure trace columns")
    s.add_argument("--rate", type=positive("rate in requests/s"), help="override the arrival rate (requests/s)")
    s.add_argument("--json", action="store_true", help="print one JSON object (keys: runtime.metrics.KEYS)")

    sub.add_parser("scenarios", help="list the shipped scenarios")
    c = sub.add_parser("check", help="validate a scenario file")
    c.add_argument("scenario")
    d = sub.add_parser("check-dist", help="validate a scenario distribution and summarise systems drawn from it")
    d.add_argument("distribution")
    d.add_argument("--samples", type=whole("number"), default=200, help="systems to draw and validate (default: 200)")

    from runtime.real.profile import add_parser as add_profile_parser

    add_profile_parser(sub)
    return p


def _fmt(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_simulate(args: argparse.Namespace) -> int:
    from controllers import make_controller
    from runtime.metrics import KEYS
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    scenario = load_scenario(args.scenario)
    controller = make_controller(args.controller)
    sim = Simulator(scenario, args.seed, args.duration, trace=args.trace, rate=args.rate, progress=not args.json)
    t0 = time.perf_counter()
    summary = sim.run(controller)
    wall = time.perf_counter() - t0
    result: dict[str, float | int | str] = {
        "scenario": scenario.name, "controller": controller.name, "seed": args.seed,
        "duration_s": args.duration, **summary, "wall_s": wall, "events": sim.events_processed,
    }
    if args.json:
        print(json.dumps(result, allow_nan=False, default=str) if _finite(result) else json.dumps(_nan_to_none(result)))
        return 0
    print(f"{scenario.name} | controller {controller.name} | seed {args.seed} | {args.duration:g} s of arrivals")
    width = max(len(k) for k in KEYS)
    for key in KEYS:
        print(f"  {key:<{width}}  {_fmt(summary[key])}")
    print(f"  ({sim.events_processed} events in {wall:.2f} s wall)")
    return 0


def cmd_check_dist(args: argparse.Namespace) -> int:
    """Draw ``--samples`` systems (seeds 0..n-1, as training episodes do) and summarise them, so
    a range that yields invalid systems fails here, not an hour into training."""
    from collections import Counter

    from runtime.distribution import ScenarioDistribution

    dist = ScenarioDistribution.load(args.distribution)
    n = args.samples
    bases: Counter[str] = Counter()
    gpus: dict[str, Counter[str]] = {}
    loads: dict[str, list[float]] = {}  # per role, each system's mean long-run load over its sites
    rates, prompts, ttfts, tpots = [], [], [], []
    for i in range(n):
        sc, rate = dist.draw(i)
        bases[sc.name.removesuffix(f"~{dist.name}")] += 1
        rates.append(rate)
        prompts.append(sc.spec.workload.prompt_tokens.mean)
        ttfts += [c.ttft_s for c in sc.spec.workload.slo_classes]
        tpots += [c.tpot_s for c in sc.spec.workload.slo_classes]
        for site in sc.sites:
            gpus.setdefault(site.role, Counter())[site.gpu.name] += 1
        for role in {s.role for s in sc.sites}:
            levels = [s.load.long_run_mean if s.load is not None else 0.0 for s in sc.sites if s.role == role]
            loads.setdefault(role, []).append(sum(levels) / len(levels))
    print(f"ok: {dist.name}: {n} systems drawn and validated")
    print(f"  fingerprint: {dist.fingerprint()} (recorded with selector labels drawn from it)")
    print("  bases:  " + ", ".join(f"{b} {c / n:.0%}" for b, c in bases.most_common()))
    print(f"  rate:   {min(rates):.1f}-{max(rates):.1f} req/s; mean prompt {min(prompts):.0f}-{max(prompts):.0f} tokens")
    print(f"  SLOs:   TTFT {min(ttfts):.2f}-{max(ttfts):.2f} s, TPOT {1e3 * min(tpots):.0f}-{1e3 * max(tpots):.0f} ms")
    for role, counts in gpus.items():
        print(f"  {role + ' GPUs:':<14}" + ", ".join(f"{g} {c}" for g, c in counts.most_common()))
    for role, means in loads.items():
        means.sort()
        print(f"  {role + ' load:':<14}mean background load {means[0]:.2f}-{means[-1]:.2f} (median {means[len(means) // 2]:.2f})")
    return 0


def _finite(d: dict) -> bool:
    return all(not (isinstance(v, float) and not math.isfinite(v)) for v in d.values())


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def main(argv: Sequence[str] | None = None) -> int:
    from controllers import ControllerError
    from runtime.contract import InvalidDecision
    from runtime.scenario import ScenarioError, load_scenario, shipped_scenarios

    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return cmd_simulate(args)
        if args.command == "scenarios":
            for name in shipped_scenarios():
                sc = load_scenario(name)
                summary = textwrap.shorten(" ".join(sc.spec.description.split()), 100, placeholder=" ...")
                print(f"{name:<14} {len(sc.sites):>3} sites  {summary}")
            return 0
        if args.command == "profile":
            from runtime.real.profile import cmd_profile

            return cmd_profile(args)
        if args.command == "check-dist":
            return cmd_check_dist(args)
        if args.command == "check":
            sc = load_scenario(args.scenario)
            print(f"ok: {sc.name}: {len(sc.sites)} sites, target {sc.target.name}, drafters {sorted(sc.spec.drafters)}")
            return 0
    except (ScenarioError, ControllerError, InvalidDecision, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
