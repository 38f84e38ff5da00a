"""The oracle's rule for edge requests: drafting on the user's own device only where that device
keeps the request's SLO pace, against always drafting there (the rule before 2026-12-07).

    python benchmarks/oracle_edge_rule.py                      # the README's table (~2 min on 2 cores)
    python benchmarks/oracle_edge_rule.py --seeds 2 --duration 30 --case training/scenarios/us-code-edge.yaml@12=wanspec

Each case is ``SCENARIO[@RATE]=HEURISTIC`` (as in ``ab_commits.py``): the oracle, the oracle with the old pin, and the
heuristic (the file's best published one) run on the same test seeds; the table gives mean
goodput. A rule that only moves requests off devices too slow for their pace leaves files whose
devices keep it (edge-fleet's Jetsons) exactly as they were.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.flags import OneLineParser, positive_float, whole  # noqa: E402

CASES = [
    "training/scenarios/us-code-edge.yaml@12=wanspec",
    "training/scenarios/eu-jetson-fleet.yaml@4=centralized",
    "training/scenarios/apac-hybrid.yaml@18=wisp",
    "edge-fleet@32=wisp",
    "training/scenarios/eu-3region-bursty.yaml@8=wisp",
]
FIRST_TEST_SEED = 1_000_000_001
ROWS = ("oracle before", "oracle now")


def goodput(job: tuple[str, str | None, str, int, float]) -> float:
    """One run's goodput (req/s): ``which`` is one of :data:`ROWS` or a controller spec."""
    scenario, rate, which, seed, duration = job
    from controllers import make_controller
    from controllers.oracle import Oracle
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    class Pinned(Oracle):
        """The rule before: an edge request always drafts on its own device."""

        def _keeps_pace(self, req, sys, device):  # type: ignore[no-untyped-def]
            return True

    ctl = Pinned() if which == ROWS[0] else make_controller("oracle" if which == ROWS[1] else which)
    return float(Simulator(load_scenario(scenario), seed, duration, rate=None if rate is None else float(rate)).run(ctl)["goodput_rps"])


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", help="SCENARIO[@RATE]=HEURISTIC (repeatable; default: the README's five)")
    p.add_argument("--seeds", type=whole("number of seeds"), default=6, help="test seeds from 1000000001 (default 6)")
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals")
    p.add_argument("--workers", type=whole("number of workers"), default=2)
    args = p.parse_args(argv)
    from controllers import ControllerError, make_controller
    from runtime.scenario import ScenarioError, load_scenario
    from training.backend import map_jobs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ab_commits import parse_case  # the other benchmark's SCENARIO[@RATE]=CONTROLLER cases

    try:
        cases = [parse_case(c) for c in (args.case or CASES)]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for scenario, _, heuristic in cases:
        try:  # a bad file or controller stops here, before any run
            load_scenario(scenario)
            make_controller(heuristic)
        except (ScenarioError, ControllerError) as e:
            raise SystemExit(f"error: {e}") from None
    seeds = range(FIRST_TEST_SEED, FIRST_TEST_SEED + args.seeds)
    jobs = [(s, r, w, seed, args.duration) for s, r, h in cases for w in (*ROWS, h) for seed in seeds]
    out = iter(map_jobs(goodput, jobs, workers=args.workers, desc="runs", unit="run"))
    print(f"| file (rate) | {' | '.join(ROWS)} | best published heuristic |")
    print("|---|---|---|---|")
    for scenario, rate, heuristic in cases:
        means = [statistics.mean(next(out) for _ in seeds) for _ in range(3)]
        print(f"| {Path(scenario).stem} ({rate or 'its own rate'}) | {means[0]:.3f} req/s | {means[1]:.3f} | `{heuristic}` {means[2]:.3f} |")


if __name__ == "__main__":
    main()
