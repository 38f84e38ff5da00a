"""Learn which knob settings a planner should consider, from training systems of a distribution.

    python -m training.portfolio --distribution training/configs/scenario-mix.yaml --size 6 --out portfolio.yaml
    python -m runtime simulate --controller lookahead:portfolio=portfolio.yaml --scenario edge-fleet --rate 32

The ``lookahead`` planner (:mod:`controllers.lookahead`) can only hold a setting it simulates,
and each setting it simulates costs a fork per plan. Its shipped portfolio was picked by hand;
on edge-fleet and us-code-edge the tuned heuristics draft 2 and 6 tokens, which none of its
settings do. This command chooses the portfolio from data instead:

1. every setting of a grid (mode x admission cap x k cap x hedging, like ``training.mix_tune``)
   runs on the same ``--systems`` training systems of the distribution (common random numbers);
   its score on a system is its share of the best goodput any setting reached there;
2. settings are added greedily, each time the one that most raises the mean over systems of
   the best share among those chosen (facility location; greedy is within 1 - 1/e of the best
   portfolio of that size). The first is the best single setting by mean share.

It prints each pick with the coverage it brings, and writes the portfolio as YAML (the modes and
the settings), which ``lookahead:portfolio=FILE`` reads. Training seeds only: the held-out
scenario files and the test seeds are never drawn.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training.common import ConfigError

#: The grid searched by default: every mode at these caps (x max batch; inf: none) and k caps.
GRID_DEFAULTS: dict[str, Any] = {
    "caps": [1.0, 1.5, 2.0, 3.0, math.inf],
    "k_caps": [2, 3, 6, 8],
    "hedge": [False],
}


def greedy_portfolio(shares: np.ndarray, size: int) -> tuple[list[int], list[float]]:
    """Columns of ``shares`` (systems x settings, each a share of the system's best) chosen
    greedily to maximise the mean over systems of the best chosen share; and that mean after
    each pick. Ties go to the earlier column; it stops early once no setting adds coverage."""
    if shares.ndim != 2 or shares.shape[1] == 0:
        raise ValueError(f"shares must be systems x settings with at least one setting, got shape {shares.shape}")
    chosen: list[int] = []
    coverage: list[float] = []
    best = np.zeros(shares.shape[0])
    for _ in range(min(size, shares.shape[1])):
        gains = np.maximum(shares, best[:, None]).mean(axis=0)
        gains[chosen] = -np.inf
        pick = int(np.argmax(gains))
        if chosen and gains[pick] <= coverage[-1]:
            break  # every system's best is covered: a larger portfolio only costs forks
        chosen.append(pick)
        best = np.maximum(best, shares[:, pick])
        coverage.append(float(best.mean()))
    return chosen, coverage


def candidate_grid(n_modes: int, caps: Sequence[float], k_caps: Sequence[int], hedges: Sequence[int],
                   modes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The shipped portfolio's settings, then every mode (of ``modes``, default all) x cap (inf:
    none) x k cap x hedging not among them: the shipped six always compete, so what is learned
    or measured over the grid is judged against them."""
    from controllers.knobs import setting_key
    from controllers.lookahead import PORTFOLIO
    from training.mix_tune import candidates

    grid = [dict(k) for k in PORTFOLIO]
    seen = {setting_key(g) for g in grid}
    for g in candidates(n_modes, {"caps": caps, "k_caps": k_caps, "hedge": hedges}):
        if setting_key(g) not in seen and (modes is None or g["mode"] in modes):
            seen.add(setting_key(g))
            grid.append(g)
    return grid


def _setting_yaml(knobs: dict[str, Any]) -> dict[str, Any]:
    cap = knobs["cap"]
    return {"mode": int(knobs["mode"]), "cap": "none" if cap is None or math.isinf(float(cap)) else float(cap),
            "k_cap": int(knobs["k_cap"]), "hedge": bool(knobs["hedge"])}


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    from controllers.lookahead import PORTFOLIO
    from policy_env.knobs_env import SpecKnobsEnv
    from runtime.flags import OneLineParser
    from training.compare import pool_map
    from training.mix_tune import setting_goodput, shares_of_best, spec_of, tuning_seeds

    p = OneLineParser(prog="python -m training.portfolio", description=__doc__.split("\n")[0])
    p.add_argument("--distribution", default="training/configs/scenario-mix.yaml", help="scenario distribution YAML")
    p.add_argument("--systems", type=int, default=24, help="training systems every setting runs on")
    p.add_argument("--size", type=int, default=6, help="settings in the portfolio")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds per run")
    p.add_argument("--caps", type=float, nargs="+", default=GRID_DEFAULTS["caps"], help="admission caps x max batch (inf: none)")
    p.add_argument("--k-caps", type=int, nargs="+", default=GRID_DEFAULTS["k_caps"], help="draft-length caps")
    p.add_argument("--hedge", choices=["off", "on", "both"], default="off", help="hedged backups in the grid")
    p.add_argument("--seed", type=int, default=0, help="which training systems are drawn")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--out", help="write the portfolio here (YAML, for lookahead:portfolio=FILE or twin:portfolio=FILE)")
    p.add_argument("--save-scores", help="also write the systems x settings goodput matrix here (.npz)")
    a = p.parse_args(argv)
    for flag, value in (("--systems", a.systems), ("--size", a.size), ("--duration", a.duration), ("--workers", a.workers)):
        if value <= 0:
            p.error(f"{flag} must be > 0")
    try:
        env_kwargs = {"distribution": a.distribution, "duration": a.duration}
        modes = SpecKnobsEnv(**env_kwargs).modes
        from controllers.knobs import cap_level, k_cap_level

        for c in a.caps:
            cap_level(c)
        for k in a.k_caps:
            k_cap_level(k)
    except (ConfigError, ValueError, OSError) as e:
        p.error(str(e))
    hedges = {"off": [0], "on": [1], "both": [0, 1]}[a.hedge]
    grid = candidate_grid(len(modes), a.caps, a.k_caps, hedges)
    seeds = tuning_seeds(a.seed, a.systems)
    print(f"{len(grid)} settings x {len(seeds)} training systems of {a.distribution}, {a.duration:g} s each", flush=True)
    jobs = [(env_kwargs, s, a.duration, g) for g in grid for s in seeds]
    got = np.array(pool_map(setting_goodput, jobs, a.workers, desc="portfolio runs")).reshape(len(grid), len(seeds)).T
    shares = shares_of_best(got)
    chosen, coverage = greedy_portfolio(shares, a.size)
    shipped = shares[:, :len(PORTFOLIO)].max(axis=1).mean()
    print(f"the shipped portfolio ({len(PORTFOLIO)} settings) covers {shipped:.3f} of each system's best (mean)")
    for n, (i, cov) in enumerate(zip(chosen, coverage), 1):
        print(f"  {n}. {spec_of(grid[i], modes)}: alone {shares[:, i].mean():.3f}, portfolio of {n} covers {cov:.3f}")
    if a.save_scores:
        Path(a.save_scores).parent.mkdir(parents=True, exist_ok=True)
        np.savez(a.save_scores, goodput=got, seeds=np.array(seeds), settings=np.array([spec_of(g, modes) for g in grid]))
    if a.out:
        out = {"modes": list(modes), "settings": [_setting_yaml(grid[i]) for i in chosen],
               "source": {"distribution": a.distribution, "systems": len(seeds), "seed": a.seed,
                          "duration": a.duration, "coverage": round(coverage[-1], 4)}}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(yaml.safe_dump(out, sort_keys=False))
        print(f"wrote {a.out} (lookahead:portfolio={a.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
