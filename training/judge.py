"""Judge a controller against a baseline and the default knob setting, on the test seeds.

    python -m training.judge --scenario training/scenarios/apac-hybrid.yaml --rate 18 \\
        --baseline "knobs:mode=1,cap=2.5,k_cap=3,hedge=false" --controller selector:model=training/models/selector-mix.json

    python -m training.judge --distribution training/configs/scenario-mix.yaml --systems 120 \\
        --baseline "knobs:mode=centralized,cap=1,k_cap=8,hedge=false" --controller selector:model=training/models/selector-mix.json

    python -m training.judge --scenario training/scenarios/us-code-edge.yaml --rate 12 --seeds 20 \\
        --baseline heuristics --controller "knobs:mode=centralized,cap=1,k_cap=8,hedge=false"

Three rows run on the final comparison's test seeds (1e9, 1e9+1, ...): the baseline (e.g. the
best tuned heuristic for the file; with several ``--baseline`` specs, the one with the highest
mean goodput on these seeds, which favours the baseline; ``heuristics``: every published
heuristic at its defaults, those that cannot run there left out), the default knob policy's
setting, and the controller. It
prints the controller's goodput against both with paired BCa CIs, and, for a knob controller,
the settings it held. With ``--distribution`` each test seed draws its own system (and rate)
from the distribution, as the knob env does for a training seed: systems of the mix no training
seed drew. ``python -m training.lookahead`` is this judge with the planner's flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from policy_env.env import TRAIN_SEED_MAX
from runtime.flags import positive, positive_float, whole

#: ``--baseline heuristics``: every published heuristic at its defaults (``controllers.registry.HEURISTICS``).
HEURISTICS_WORD = "heuristics"


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """The judge's flags (scenario, rate, baseline, seeds, duration, workers)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scenario", help="shipped scenario name or YAML path")
    where.add_argument("--distribution", help="scenario distribution YAML: each test seed draws its own system")
    p.add_argument("--rate", type=positive("arrival rate in req/s"), help="mean arrival rate (req/s; default: the scenario's)")
    p.add_argument("--baseline", required=True, nargs="+", metavar="SPEC",
                   help="controller spec to judge against (e.g. the best tuned heuristic); with several, the best of them on "
                        f"these seeds (picked on the test seeds, which favours the baseline); `{HEURISTICS_WORD}`: every "
                        "published heuristic at its defaults")
    p.add_argument("--seeds", "--systems", type=whole("number of seeds"), default=6, help="test seeds (1e9, 1e9+1, ...; the final comparison's), one system each with --distribution")
    p.add_argument("--first-seed", type=int, default=0, metavar="N",
                   help="start at test seed 1e9+N (default 0): a set disjoint from seeds an earlier judgement looked at")
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals per run")
    p.add_argument("--workers", type=whole("number of processes"), default=2, help="processes")


def judged_seeds(a: argparse.Namespace) -> list[int]:
    """The judged seeds: ``--seeds`` test seeds from 1e9 + ``--first-seed``."""
    return [TRAIN_SEED_MAX + a.first_seed + i for i in range(a.seeds)]


def checked_scenario(p: argparse.ArgumentParser, a: argparse.Namespace, specs: Sequence[tuple[str, str]] = ()) -> Any:
    """The scenario of ``a``, after checking the judge's flags and every ``(flag, spec)`` (the
    baseline's included); a bad one exits with a one-line error."""
    from controllers import ControllerError, make_controller
    from runtime.distribution import DistributionError, ScenarioDistribution
    from runtime.scenario import ScenarioError, load_scenario

    if a.seeds < 2:
        p.error("--seeds must be >= 2 (a confidence interval needs two)")
    if a.first_seed < 0:
        p.error("--first-seed must be >= 0: seeds below 1e9 are training seeds")
    if a.distribution and a.rate is not None:
        p.error("--rate applies to --scenario; a distribution draws each system's rate")
    try:
        scenario = ScenarioDistribution.load(a.distribution) if a.distribution else load_scenario(a.scenario)
    except (ScenarioError, DistributionError, OSError) as e:
        p.error(str(e))
    from controllers.registry import HEURISTICS

    wanted = [h for spec in a.baseline for h in (HEURISTICS if spec == HEURISTICS_WORD else [spec])]
    for flag, spec in [*(("--baseline", b) for b in wanted), *specs]:
        try:
            make_controller(spec)
        except (ControllerError, ValueError) as e:
            p.error(f"{flag} {spec!r}: {e}")
    a.baselines = runnable(scenario, list(dict.fromkeys(wanted)), judged_seeds(a))
    if not a.baselines:
        p.error(f"no --baseline runs on {a.scenario or a.distribution}; pass one that does")
    return scenario


def runnable(scenario: Any, specs: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The specs that bind to the system of every seed (a heuristic that needs remote sites does
    not run on a single site); the others are named on stderr and left out."""
    from controllers import refusal
    from runtime.distribution import ScenarioDistribution
    from runtime.sim import Simulator

    systems = [scenario.draw(seed)[0] for seed in seeds] if isinstance(scenario, ScenarioDistribution) else [scenario]
    infos = [Simulator(sc, 0, 1.0).info for sc in systems]
    out = []
    for spec in specs:
        why = next((w for info in infos if (w := refusal(spec, info)) is not None), None)
        if why is None:
            out.append(spec)
        else:
            print(f"baseline {spec!r} left out: it does not run here ({why})", file=sys.stderr)
    return out


def with_baselines(a: argparse.Namespace, scenario: Any, rows: dict[str, Any], seeds: Sequence[int]) -> tuple[Any, str]:
    """Every ``--baseline`` and ``rows`` on ``seeds``; returns the comparison, with the baseline
    that scored the highest mean goodput there also under the name ``baseline``, and a line naming it."""
    from training.compare import evaluate_controllers

    names = {f"baseline {spec}": spec for spec in a.baselines}
    cmp = evaluate_controllers(scenario, {**names, **rows}, seeds, a.duration, a.rate, a.workers, desc="runs")
    ranked = sorted(names, key=lambda n: -cmp.mean(n))  # (stable: ties go to the first given)
    line = f"baseline {names[ranked[0]]}: {cmp.mean(ranked[0]):.3f} req/s"
    if len(ranked) > 1:
        line += (f" (the best of {len(ranked)} on these seeds; "
                 + ", ".join(f"{names[n]} {cmp.mean(n):.3f}" for n in ranked[1:]) + ")")
    cmp.rows = {"baseline": cmp.rows[ranked[0]], **{k: v for k, v in cmp.rows.items() if k not in names}}
    return cmp, line


def judge(a: argparse.Namespace, scenario: Any, name: str, make: Any) -> None:
    """Run the baseline, the default setting and ``make`` (a spec or a picklable factory, shown
    as ``name``) on the test seeds, and print the comparison."""
    from controllers.knobs import DEFAULT_MODES
    from controllers.lookahead import PORTFOLIO
    from training.compare import ratio_ci
    from training.knobs import settings_line
    from training.mix_tune import spec_of

    default = spec_of(PORTFOLIO[0], DEFAULT_MODES)
    seeds = judged_seeds(a)
    cmp, baseline = with_baselines(a, scenario, {"default": default, "judged": make}, seeds)
    base, fixed, judged = cmp.values("baseline"), cmp.values("default"), cmp.values("judged")

    def show(x, y) -> str:
        r, lo, hi = ratio_ci(x, y)
        return f"{r:.3f}x [{lo:.3f}, {hi:.3f}]"

    from_ = f" from 1e9+{a.first_seed}" if a.first_seed else ""
    if a.distribution:
        print(f"{len(seeds)} systems of {a.distribution} (test seeds{from_}), {a.duration:g} s each:")
    else:
        print(f"{a.scenario} at {a.rate or 'its'} req/s, {len(seeds)} test seeds{from_} x {a.duration:g} s:")
    print(f"  {baseline}")
    print(f"  default setting {default}: {fixed.mean():.3f} req/s, {show(fixed, base)} the baseline")
    print(f"  {name}: {judged.mean():.3f} req/s, {show(judged, base)} the baseline, {show(judged, fixed)} the default setting")
    shares = cmp.knob_shares("judged")
    if shares:
        print(f"  settings it held (share of control intervals): {settings_line(shares)}")


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser

    p = OneLineParser(prog="python -m training.judge", description=__doc__.split("\n")[0])
    add_judge_args(p)
    p.add_argument("--controller", required=True, help="the controller spec to judge")
    a = p.parse_args(argv)
    scenario = checked_scenario(p, a, [("--controller", a.controller)])
    judge(a, scenario, a.controller, a.controller)
    return 0


if __name__ == "__main__":
    sys.exit(main())
