"""Would a wider search help the twin? Its ranking of a grid of knob settings against the truth.

    python benchmarks/twin_grid_diagnosis.py --systems 8 --first-seed 7200      # ~1 h on 2 cores
    python benchmarks/twin_grid_diagnosis.py --systems 2 --caps 1 none --k-caps 2 8 --duration 20
    python benchmarks/twin_grid_diagnosis.py --scenario edge-fleet --rate 32 --systems 4 --first-seed 7300 \
        --modes wanspec --caps 2 3 none --k-caps 2 3 --hedge false --stress 2              # the default twin's runs
    (the same with --horizon-s 60 --stress 0: 60-s twin runs)

On each training-seed system of a distribution, or seed of a scenario (seeds far below the test
seeds 1e9, ...), the plan-once twin (``--horizon-s``, ``--stress``; default: the measured twin
alone) scores every setting of a grid (the six of the shipped portfolio first, then every
mode x cap x k cap x hedging), and every setting also runs alone on the system itself with the
same seed. Per system it prints the system's goodput under the twin's
pick of the six, its pick of the grid, the six's best and the grid's best, and the Spearman
correlation of the twin's scores with the truth; then the means of the ratios.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.flags import OneLineParser, add_system_flags, positive, positive_float, whole  # noqa: E402

DEFAULT_DIST = "training/configs/scenario-mix.yaml"


def run_one(job: tuple[Any, float | None, list[dict[str, Any]], int, float, float, int]) -> tuple[list[float], list[float], float]:
    """One system: the twin's score of each setting, each setting's goodput on the system, the plan's wall seconds."""
    where, rate, settings, seed, duration, horizon_s, stress = job
    from controllers.knobs import DEFAULT_MODES, fixed_controller
    from controllers.twin import Twin
    from runtime.distribution import ScenarioDistribution
    from runtime.sim import Simulator

    scenario, rate = where.draw(seed) if isinstance(where, ScenarioDistribution) else (where, rate)
    twin = Twin(portfolio=settings, replan=0, stress=stress, horizon_s=horizon_s, background=False)
    Simulator(scenario, seed, duration, rate=rate).run(twin)
    if twin.values is None:
        raise RuntimeError(f"system {seed}: the twin never planned (no arrivals in its probe)")
    truth = [float(Simulator(scenario, seed, duration, rate=rate).run(fixed_controller(s, DEFAULT_MODES))["goodput_rps"])
             for s in settings]
    return [float(v) for v in twin.values], truth, twin.plan_s


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    add_system_flags(p, DEFAULT_DIST, 7200)
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals per run")
    p.add_argument("--caps", nargs="+", default=["1", "1.5", "2", "2.5", "3", "none"], help="admission caps (x max batch, or none)")
    p.add_argument("--k-caps", nargs="+", type=whole("k cap"), default=[1, 2, 4, 8], help="draft-length caps")
    p.add_argument("--modes", nargs="+", choices=["wanspec", "wisp", "centralized"], help="the grid's modes (default: all three)")
    p.add_argument("--hedge", nargs="+", choices=["true", "false"], default=["false", "true"], help="the grid's hedging")
    p.add_argument("--horizon-s", type=positive_float, default=30.0, help="the twin's runs (simulated s of arrivals)")
    p.add_argument("--stress", type=int, default=0, help="stressed twins per plan (the twin's default: 2)")
    p.add_argument("--workers", type=whole("number of processes"), default=2)
    a = p.parse_args(argv)
    cap = positive("admission cap (x max batch)")
    try:
        caps = [math.inf if c == "none" else cap(c) for c in a.caps]
    except argparse.ArgumentTypeError as e:
        p.error(f"--caps: {e}")
    import numpy as np
    from scipy.stats import spearmanr

    from controllers.knobs import DEFAULT_MODES, cap_level, k_cap_level
    from controllers.lookahead import PORTFOLIO
    from runtime.distribution import DistributionError, ScenarioDistribution
    from runtime.scenario import ScenarioError, load_scenario
    from training.compare import pool_map
    from training.portfolio import candidate_grid

    if a.rate is not None and not a.scenario:
        p.error("--rate applies to --scenario; a distribution draws each system's rate")
    from controllers.twin import TWIN_PROBE_S

    if a.duration <= TWIN_PROBE_S:
        p.error(f"--duration must exceed the twin's {TWIN_PROBE_S:g}-s probe, got {a.duration:g}")
    if a.stress < 0:
        p.error(f"--stress must be >= 0, got {a.stress}")
    try:
        for c in caps:
            cap_level(c)
        for k in a.k_caps:
            k_cap_level(k)
        where = load_scenario(a.scenario) if a.scenario else ScenarioDistribution.load(a.distribution or DEFAULT_DIST)
    except (ValueError, ScenarioError, DistributionError, OSError) as e:
        p.error(str(e))
    modes = [DEFAULT_MODES.index(m) for m in a.modes] if a.modes else None
    settings = candidate_grid(len(DEFAULT_MODES), caps, a.k_caps, [int(h == "true") for h in a.hedge], modes)
    six = len(PORTFOLIO)  # the shipped six come first
    seeds = range(a.first_seed, a.first_seed + a.systems)
    print(f"{len(settings)} settings on {a.systems} {'seeds of ' + a.scenario if a.scenario else 'systems of ' + (a.distribution or DEFAULT_DIST)}, "
          f"{a.duration:g} s each; twin runs of {a.horizon_s:g} s, {a.stress} stressed", flush=True)
    jobs = [(where, a.rate, settings, seed, a.duration, a.horizon_s, a.stress) for seed in seeds]
    rows = pool_map(run_one, jobs, a.workers, desc="systems")
    ratios = []
    for seed, (scores, truth, plan_s) in zip(seeds, rows):
        v, t = np.asarray(scores), np.asarray(truth)
        pick6, pick = int(np.argmax(v[:six])), int(np.argmax(v))
        r = (t[pick] / t[pick6], t.max() / t[:six].max(), t[pick6] / t[:six].max())
        ratios.append(r)
        print(f"{seed}: twin's scores {' '.join(f'{x:.0f}' for x in v)}; on the system {' '.join(f'{x:.2f}' for x in t)}")
        print(f"{seed}: twin's pick of the six {t[pick6]:.2f} req/s, of the grid {t[pick]:.2f} {settings[pick]}; "
              f"best of the six {t[:six].max():.2f}, of the grid {t.max():.2f} {settings[int(np.argmax(t))]}; "
              f"Spearman {spearmanr(v, t).statistic:.2f}; plan {plan_s:.0f} s")
    m = np.mean(ratios, axis=0)
    print(f"means over {a.systems} systems: twin's grid pick / its pick of the six {m[0]:.3f}x; grid's best / the six's "
          f"best {m[1]:.3f}x; twin's pick of the six / the six's best {m[2]:.3f}x")


if __name__ == "__main__":
    main()
