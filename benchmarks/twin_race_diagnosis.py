"""Does a race pick what the twin's full plan picks, and at what share of its cost?

    python benchmarks/twin_race_diagnosis.py --systems 16 --first-seed 7600        # ~35 min on 2 cores
    python benchmarks/twin_race_diagnosis.py --systems 2 --race 2 4 --horizon-s 20   # a quick look
    python benchmarks/twin_race_diagnosis.py --portfolio default --horizon-s 30 --stress 0 --race 2 3   # the quickstart's twin

On each system of a distribution (or seed of a scenario), the twin probes as it does
(``twin:portfolio=FILE,horizon_s=...``, default: the 18-setting capped grid with 60-s runs;
``--portfolio default``: the twin's own six settings) and
builds its plan's twins. Every setting then runs on every twin workload, each run timed: the
full plan. From that table, for each ``--race`` value, the raced plan (:func:`plan_settings`
with ``race``: every setting on the heats, the best ``race`` on the rest) is replayed without
running anything again: whether it picks the full plan's best, the twin score of its pick against
the best's, and its runs' wall time against the full plan's. Also the rank, on the heats alone,
of the full plan's best: how close a race comes to dropping it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.flags import OneLineParser, add_system_flags, positive_float, whole  # noqa: E402

DEFAULT_DIST = "training/configs/scenario-mix.yaml"
DEFAULT_PORTFOLIO = "training/configs/twin-capped-grid.yaml"


def full_plan(job: tuple[Any, float | None, str, int, float, float, int, int]) -> tuple[list[list[float]], list[list[float]]]:
    """One system: each setting's SLO-met requests on each twin workload of the twin's first
    plan, and each run's wall seconds (rows: settings; columns: :func:`twin_workloads`' order)."""
    where, rate, portfolio, seed, duration, horizon_s, seeds, stress = job
    from controllers.lookahead import PORTFOLIO
    from controllers.twin import Twin, slo_met, twin_workloads
    from runtime.distribution import ScenarioDistribution
    from runtime.sim import Simulator

    class Probe(Twin):
        """The twin up to its first plan: keeps the plan's arguments instead of planning."""

        args: tuple[Any, ...] | None = None

        def pick(self, point: Any) -> int | None:
            self.args = self.plan_args(point) if self.seen.arrivals else None
            return None

    scenario, rate = where.draw(seed) if isinstance(where, ScenarioDistribution) else (where, rate)
    probe = Probe(portfolio=PORTFOLIO if portfolio == "default" else portfolio, horizon_s=horizon_s, seeds=seeds, stress=stress, replan=0, background=False)
    Simulator(scenario, seed, duration, rate=rate).run(probe)
    if probe.args is None:
        raise RuntimeError(f"system {seed}: the twin never planned (no arrivals in its probe)")
    twin, verify, drafts, settings, modes, horizon, n_seeds, _, stressed, _, _ = probe.args
    met, wall = [], []
    for setting in settings:
        met.append([]), wall.append([])
        for run in twin_workloads(twin, n_seeds, stressed):
            t0 = time.perf_counter()
            met[-1].append(slo_met(setting, modes, [run], horizon, verify, drafts))
            wall[-1].append(time.perf_counter() - t0)
    return met, wall


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    add_system_flags(p, DEFAULT_DIST, 7600, "choose a race size on seeds below the test seeds (1e9); check it on those")
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals per system")
    p.add_argument("--portfolio", default=DEFAULT_PORTFOLIO,
                   help="the twin's portfolio file (python -m training.portfolio format), or `default` for the twin's own six settings")
    p.add_argument("--horizon-s", type=positive_float, default=60.0, help="the twin's runs (simulated s of arrivals)")
    p.add_argument("--seeds", type=whole("number of workloads"), default=2, help="measured-twin workloads per setting")
    p.add_argument("--stress", type=int, default=2, help="stressed twins per plan (0: none)")
    p.add_argument("--race", nargs="+", type=whole("number of settings"), default=[3, 4, 6], help="race sizes to replay")
    p.add_argument("--workers", type=whole("number of processes"), default=2)
    a = p.parse_args(argv)
    if a.rate is not None and not a.scenario:
        p.error("--rate applies to --scenario; a distribution draws each system's rate")
    if a.stress < 0:
        p.error(f"--stress must be >= 0, got {a.stress}")
    import numpy as np

    from controllers.lookahead import PORTFOLIO, load_portfolio
    from controllers.twin import TWIN_PROBE_S, race_heats, race_leaders
    from runtime.distribution import DistributionError, ScenarioDistribution
    from runtime.scenario import ScenarioError, load_scenario
    from training.compare import pool_map

    if a.duration <= TWIN_PROBE_S:
        p.error(f"--duration must exceed the twin's {TWIN_PROBE_S:g}-s probe, got {a.duration:g}")
    try:
        n_settings = len(PORTFOLIO if a.portfolio == "default" else load_portfolio(a.portfolio)[1])
        where = load_scenario(a.scenario) if a.scenario else ScenarioDistribution.load(a.distribution or DEFAULT_DIST)
    except (ValueError, ScenarioError, DistributionError, OSError) as e:
        p.error(str(e))
    seeds = range(a.first_seed, a.first_seed + a.systems)
    print(f"{n_settings} settings ({a.portfolio}) on {a.systems} "
          f"{'seeds of ' + a.scenario if a.scenario else 'systems of ' + (a.distribution or DEFAULT_DIST)}: twin runs of "
          f"{a.horizon_s:g} s, {a.seeds} measured + {a.stress} stressed workloads per setting", flush=True)
    jobs = [(where, a.rate, a.portfolio, seed, a.duration, a.horizon_s, a.seeds, a.stress) for seed in seeds]
    tables = [(np.asarray(m), np.asarray(w)) for m, w in pool_map(full_plan, jobs, a.workers, desc="systems")]
    heats = race_heats(a.seeds, a.stress)
    rest = [j for j in range(a.seeds + a.stress) if j not in heats]
    for seed, (met, wall) in zip(seeds, tables):
        total = met.sum(1)
        best = int(np.argmax(total))
        rank = race_leaders(met[:, heats].sum(1), n_settings).index(best)
        print(f"{seed}: full plan's best {best} ({total[best]:.0f} SLOs met), rank {rank + 1} on the heats; "
              f"runner-up at {np.sort(total)[-2] / total[best]:.4f}x; plan {wall.sum():.0f} s of one core")
    for race in a.race:
        agree, value, cost = 0, [], []
        for met, wall in tables:
            total = met.sum(1)
            leaders = race_leaders(met[:, heats].sum(1), race)
            pick = max(leaders, key=lambda i: (total[i], -i))  # plan_settings' nanargmax: the earliest of ties
            agree += total[pick] == total.max()
            value.append(total[pick] / total.max())
            cost.append((wall[:, heats].sum() + wall[np.ix_(leaders, rest)].sum()) / wall.sum())
        print(f"race={race}: picks the full plan's best (or a tie) on {agree}/{len(tables)} systems; its pick's twin "
              f"score {min(value):.4f}x the best's at worst (mean {np.mean(value):.4f}x); wall time {np.median(cost):.3f}x "
              f"the full plan's (median; {min(cost):.3f}-{max(cost):.3f}x)")


if __name__ == "__main__":
    main()
