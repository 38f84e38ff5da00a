"""Choose the one fixed knob setting that does best over a scenario distribution.

    python -m training.mix_tune --distribution training/configs/scenario-mix.yaml

A knob policy that never switches is a heuristic with an admission cap, and which setting does
best depends on the system. Over the training mix, the hand-picked default (``wanspec``, cap 2x,
k cap 8, hedged) reached 0.77 of each system's best setting, and the mix's best single setting
0.95 (README "Knob policy results"). The knob recipe (``warm_start.tune`` in its config) starts
from the setting picked here, so the rollouts refine a strong setting instead of spending their
labels on finding one.

The search is successive halving with common random numbers. Every candidate (mode x cap x
k cap x hedge, plus the config's own setting) runs on the same first batch of systems, drawn from
the distribution with training seeds. The best ``1/keep`` of them go on to a new batch, and so on.
A candidate's score on a system is its goodput over the best goodput any candidate of that round
reached there, so a busy system does not outweigh a quiet one. Candidates are ranked by their
worst score over the systems they ran on (``objective: worst``; ties by the mean), or by the mean.
On 80 labelled systems of the mix, split into tuning and held-out systems 400 times, the worst
rule picked settings that held out better on average (0.944 against 0.938 of each system's best)
and far more steadily (sd 0.007 against 0.016): a setting that never does badly on the systems
seen is less likely to do badly on one not seen.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from controllers.knobs import setting_key
from training.common import ConfigError

#: ``warm_start.tune`` in a knob config (and this CLI's defaults).
TUNE_DEFAULTS: dict[str, Any] = {
    "systems": [6, 8, 10],  # new systems per round; the best 1/keep of the candidates go on to the next
    "keep": 3,
    # what a candidate is ranked by, over the systems it ran on: "worst", its lowest share of a
    # system's best (ties: the mean), or "mean", its mean share. Worst generalised better on
    # held-out systems of the mix (README "Tuning the warm start over the mix")
    "objective": "worst",
    "duration": 30.0,  # simulated seconds per run
    "caps": [1.0, 1.5, 2.0, 3.0],  # admission caps (x max batch) tried with every mode
    "k_caps": [3, 8],
    "hedge": [False],  # hedged backups off: [False, True] doubles the grid and the time
}


@dataclass
class TunedKnobs:
    """The chosen setting and how the candidates fared.

    ``ranking``: spec, mean and worst share, systems (survivors first, each round's best first);
    ``first_round``: each candidate's mean share of each system's best on the first round's
    systems, where every candidate ran (the only scores on common ground)."""

    knobs: dict[str, Any]
    ranking: list[tuple[str, float, float, int]]  # the chosen setting first
    first_round: dict[str, float] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return self.ranking[0][0]

    @property
    def score(self) -> float:
        """Mean share of each system's best (of the candidates left in each round)."""
        return self.ranking[0][1]

    @property
    def worst(self) -> float:
        """The lowest such share."""
        return self.ranking[0][2]

    @property
    def systems(self) -> int:
        return self.ranking[0][3]

    def table(self) -> str:
        """The ranking as markdown: each candidate's mean share of the best goodput per system."""
        rows = [f"| `{s}` | {v:.3f} | {w:.3f} | {n} | {self.first_round.get(s, math.nan):.3f} |" for s, v, w, n in self.ranking]
        return "\n".join(["| setting | mean share of each system's best goodput (of the candidates left in each round) | worst share "
                          "| systems | mean share, first round (every candidate) |", "|---|---|---|---|---|", *rows])


def check_tune_config(tune: Any, where: str) -> dict[str, Any]:
    """``tune`` (a mapping of :data:`TUNE_DEFAULTS` keys) with defaults filled in, or a
    :class:`ConfigError` that names the bad key and what it takes."""
    from controllers.knobs import cap_level, k_cap_level

    if not isinstance(tune, dict):
        raise ConfigError(f"{where}: must be a mapping of {sorted(TUNE_DEFAULTS)} (or null: no tuning), got {tune!r}")
    bad = sorted(set(tune) - set(TUNE_DEFAULTS))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; valid: {sorted(TUNE_DEFAULTS)}")
    t = {**TUNE_DEFAULTS, **tune}
    if not (isinstance(t["systems"], list) and t["systems"] and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in t["systems"])):
        raise ConfigError(f"{where}.systems: a list of systems per round, each an integer >= 1 (e.g. [4, 8, 12]), got {t['systems']!r}")
    if t["objective"] not in ("worst", "mean"):
        raise ConfigError(f"{where}.objective: 'worst' or 'mean', got {t['objective']!r}")
    if not (isinstance(t["keep"], int) and not isinstance(t["keep"], bool) and t["keep"] >= 2):
        raise ConfigError(f"{where}.keep: an integer >= 2 (the best 1/keep go on to the next round), got {t['keep']!r}")
    if not (isinstance(t["duration"], (int, float)) and not isinstance(t["duration"], bool) and t["duration"] > 0):
        raise ConfigError(f"{where}.duration: simulated seconds per run, > 0, got {t['duration']!r}")
    if not (isinstance(t["hedge"], list) and t["hedge"] and all(isinstance(h, bool) for h in t["hedge"])):
        raise ConfigError(f"{where}.hedge: a non-empty list of true/false, got {t['hedge']!r}")
    try:
        if not (t["caps"] and t["k_caps"]):
            raise ValueError("caps and k_caps must be non-empty lists")
        [cap_level(c) for c in t["caps"]]
        [k_cap_level(k) for k in t["k_caps"]]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}.caps / k_caps: {e}") from None
    return t


def candidates(n_modes: int, tune: dict[str, Any], first: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every setting of the grid as a ``warm_start.knobs`` mapping; ``first`` (the config's own
    setting) leads, so it wins ties and is always measured."""
    grid = [{"mode": m, "cap": float(c), "k_cap": int(k), "hedge": int(h)}
            for m, c, k, h in itertools.product(range(n_modes), tune["caps"], tune["k_caps"], tune["hedge"])]
    if first is not None:
        from controllers.knobs import knob_setting

        lead = knob_setting(first)
        grid = [lead] + [g for g in grid if setting_key(g) != setting_key(lead)]
    return grid


def shares_of_best(goodput: np.ndarray, axis: int = 1) -> np.ndarray:
    """Each run's goodput as a share of the best on its system (``axis``: the settings); 1 where
    nothing met its SLOs anywhere there (no preference)."""
    top = goodput.max(axis=axis, keepdims=True)
    return np.where(top > 0, goodput / np.maximum(top, 1e-12), 1.0)


def spec_of(knobs: dict[str, Any], modes: Sequence[str]) -> str:
    """A setting as the fixed-knob controller spec that runs it alone."""
    from controllers.knobs import fixed_controller

    ctl = fixed_controller(knobs, modes)
    return ctl.spec(ctl.knobs)


def setting_goodput(job: tuple[dict[str, Any], int, float, dict[str, Any]]) -> float:
    """One setting held for a whole run on one system of the distribution (a worker process's job)."""
    from controllers.knobs import fixed_controller
    from policy_env.knobs_env import SpecKnobsEnv
    from training.compare import run_controller

    env_kwargs, sim_seed, duration, knobs = job
    env = SpecKnobsEnv(**env_kwargs)
    scenario, rate = env.draw(sim_seed)
    return run_controller(scenario, fixed_controller(knobs, env.modes, env.interval_s), sim_seed, duration, rate)["goodput_rps"]


def tuning_seeds(seed: int, n: int) -> list[int]:
    """The training seeds of the ``n`` systems a tuning with ``seed`` runs on, in round order."""
    from policy_env import TRAIN_SEED_MAX

    return np.random.default_rng([seed, 0x7A5E]).integers(0, TRAIN_SEED_MAX, n).tolist()


def tune_fixed_knobs(env_kwargs: dict[str, Any], tune: dict[str, Any], first: dict[str, Any] | None = None,
                     seed: int = 0, workers: int = 2) -> TunedKnobs:
    """Successive halving over :func:`candidates` on systems of ``env_kwargs``'s distribution
    (training seeds drawn from ``seed``); see the module docstring."""
    from policy_env.knobs_env import SpecKnobsEnv
    from training.compare import pool_map

    def rank(v: list[float]) -> tuple[float, ...]:
        return (-min(v), -float(np.mean(v))) if tune["objective"] == "worst" else (-float(np.mean(v)),)

    modes = SpecKnobsEnv(**env_kwargs).modes
    alive = candidates(len(modes), tune, first)
    scores: dict[int, list[float]] = {i: [] for i in range(len(alive))}
    live = list(range(len(alive)))
    sim_seeds = tuning_seeds(seed, sum(tune["systems"]))
    start = 0
    for r, n in enumerate(tune["systems"]):
        batch, start = sim_seeds[start:start + n], start + n
        jobs = [(env_kwargs, s, float(tune["duration"]), alive[i]) for i in live for s in batch]
        got = np.array(pool_map(setting_goodput, jobs, workers, desc=f"warm start: tune round {r + 1}/{len(tune['systems'])} "
                                f"({len(live)} settings x {n} systems)")).reshape(len(live), n)
        share = shares_of_best(got, axis=0)
        for row, i in enumerate(live):
            scores[i] += share[row].tolist()
        if r == 0:
            first_round = {spec_of(alive[i], modes): float(share[row].mean()) for row, i in enumerate(live)}
        live.sort(key=lambda i: rank(scores[i]))  # stable: the config's own setting wins ties
        if r + 1 < len(tune["systems"]):
            live = live[:max(1, -(-len(live) // int(tune["keep"])))]
    # the winner first (on an exact tie it is the one the rounds kept ahead), then by systems run and rank
    order = [live[0], *sorted((i for i in scores if i != live[0]), key=lambda i: (-len(scores[i]), *rank(scores[i])))]
    ranking = [(spec_of(alive[i], modes), float(np.mean(scores[i])), min(scores[i]), len(scores[i])) for i in order]
    return TunedKnobs(alive[live[0]], ranking, first_round)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the ranking (survivors first), then the best setting's spec alone (last line)."""
    from runtime.flags import OneLineParser, positive, whole

    p = OneLineParser(prog="python -m training.mix_tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--distribution", required=True, help="a scenario distribution YAML (e.g. training/configs/scenario-mix.yaml)")
    p.add_argument("--systems", type=whole("systems"), nargs="+", default=TUNE_DEFAULTS["systems"],
                   help="new systems per round (default: %(default)s)")
    p.add_argument("--keep", type=whole("keep"), default=TUNE_DEFAULTS["keep"], help="the best 1/KEEP go on (default: %(default)s)")
    p.add_argument("--objective", choices=("worst", "mean"), default=TUNE_DEFAULTS["objective"],
                   help="rank by the worst or the mean share of each system's best goodput (default: %(default)s)")
    p.add_argument("--duration", type=positive("duration (simulated seconds)"), default=TUNE_DEFAULTS["duration"], help="simulated seconds per run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the systems (training seeds)")
    p.add_argument("--workers", type=whole("workers"), default=2)
    args = p.parse_args(argv)
    from runtime.distribution import ScenarioDistribution

    try:
        tune = check_tune_config({"systems": args.systems, "keep": args.keep, "duration": args.duration,
                                  "objective": args.objective}, "flags")
        ScenarioDistribution.load(args.distribution)
        result = tune_fixed_knobs({"distribution": args.distribution}, tune, None, args.seed, args.workers)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"best over {result.systems} systems of {args.distribution} by the {tune['objective']} share of each system's best "
          f"goodput: mean {result.score:.3f}, worst {result.worst:.3f}; {result.first_round[result.spec]:.3f} on the first "
          f"{tune['systems'][0]}, where every candidate ran")
    print(result.spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
