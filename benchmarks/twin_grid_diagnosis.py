"""Would a wider search help the twin? Its ranking of a grid of knob settings against the truth.

    python benchmarks/twin_grid_diagnosis.py --systems 8 --first-seed 7200      # ~1 h on 2 cores
    python benchmarks/twin_grid_diagnosis.py --systems 2 --caps 1 none --k-caps 2 8 --duration 20

On each training-seed system of a distribution (seeds far below the test seeds 1e9, ...), the
plan-once twin on the measured twin alone scores every setting of a grid (the six of the shipped
portfolio first, then every mode x cap x k cap x hedging), and every setting also runs alone on
the system itself with the same seed. Per system it prints the system's goodput under the twin's
pick of the six, its pick of the grid, the six's best and the grid's best, and the Spearman
correlation of the twin's scores with the truth; then the means of the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.flags import OneLineParser, positive, positive_float, whole  # noqa: E402

DEFAULT_DIST = "training/configs/scenario-mix.yaml"


def grid(caps: list[float | None], k_caps: list[int]) -> list[dict[str, Any]]:
    """The shipped six, then every mode x cap x k cap x hedging not among them."""
    from controllers.knobs import DEFAULT_MODES, setting_key
    from controllers.lookahead import PORTFOLIO

    out = [dict(s) for s in PORTFOLIO]
    seen = {setting_key(s) for s in out}
    for m, c, k, h in itertools.product(range(len(DEFAULT_MODES)), caps, k_caps, (0, 1)):
        s = {"mode": m, "cap": c, "k_cap": k, "hedge": h}
        if setting_key(s) not in seen:
            seen.add(setting_key(s))
            out.append(s)
    return out


def run_one(job: tuple[Any, list[dict[str, Any]], int, float]) -> tuple[list[float], list[float], float]:
    """One system: the twin's score of each setting, each setting's goodput on the system, the plan's wall seconds."""
    dist, settings, seed, duration = job
    from controllers.knobs import DEFAULT_MODES, fixed_controller
    from controllers.twin import Twin
    from runtime.sim import Simulator

    scenario, rate = dist.draw(seed)
    twin = Twin(portfolio=settings, replan=0, stress=0, background=False)
    Simulator(scenario, seed, duration, rate=rate).run(twin)
    if twin.values is None:
        raise RuntimeError(f"system {seed}: the twin never planned (no arrivals in its probe)")
    truth = [float(Simulator(scenario, seed, duration, rate=rate).run(fixed_controller(s, DEFAULT_MODES))["goodput_rps"])
             for s in settings]
    return [float(v) for v in twin.values], truth, twin.plan_s


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--distribution", default=DEFAULT_DIST, help="scenario distribution YAML")
    p.add_argument("--systems", type=whole("number of systems"), default=8, help="systems (seeds --first-seed, ...)")
    p.add_argument("--first-seed", type=int, default=7200)
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals per run")
    p.add_argument("--caps", nargs="+", default=["1", "1.5", "2", "2.5", "3", "none"], help="admission caps (x max batch, or none)")
    p.add_argument("--k-caps", nargs="+", type=whole("k cap"), default=[1, 2, 4, 8], help="draft-length caps")
    p.add_argument("--workers", type=whole("number of processes"), default=2)
    a = p.parse_args(argv)
    cap = positive("admission cap (x max batch)")
    try:
        caps = [None if c == "none" else cap(c) for c in a.caps]
    except argparse.ArgumentTypeError as e:
        p.error(f"--caps: {e}")
    import numpy as np
    from scipy.stats import spearmanr

    from controllers.knobs import cap_level, k_cap_level
    from runtime.distribution import DistributionError, ScenarioDistribution
    from training.compare import pool_map

    try:
        for c in caps:
            cap_level(c)
        for k in a.k_caps:
            k_cap_level(k)
        dist = ScenarioDistribution.load(a.distribution)
    except (ValueError, DistributionError, OSError) as e:
        p.error(str(e))
    settings = grid(caps, a.k_caps)
    six = len(grid([], []))  # the shipped six come first
    seeds = range(a.first_seed, a.first_seed + a.systems)
    print(f"{len(settings)} settings on {a.systems} systems of {a.distribution}, {a.duration:g} s each", flush=True)
    rows = pool_map(run_one, [(dist, settings, seed, a.duration) for seed in seeds], a.workers, desc="systems")
    ratios = []
    for seed, (scores, truth, plan_s) in zip(seeds, rows):
        v, t = np.asarray(scores), np.asarray(truth)
        pick6, pick = int(np.argmax(v[:six])), int(np.argmax(v))
        r = (t[pick] / t[pick6], t.max() / t[:six].max(), t[pick6] / t[:six].max())
        ratios.append(r)
        print(f"{seed}: twin's pick of the six {t[pick6]:.2f} req/s, of the grid {t[pick]:.2f} {settings[pick]}; "
              f"best of the six {t[:six].max():.2f}, of the grid {t.max():.2f} {settings[int(np.argmax(t))]}; "
              f"Spearman {spearmanr(v, t).statistic:.2f}; plan {plan_s:.0f} s")
    m = np.mean(ratios, axis=0)
    print(f"means over {a.systems} systems: twin's grid pick / its pick of the six {m[0]:.3f}x; grid's best / the six's "
          f"best {m[1]:.3f}x; twin's pick of the six / the six's best {m[2]:.3f}x")


if __name__ == "__main__":
    main()
