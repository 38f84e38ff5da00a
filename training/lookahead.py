"""Model-predictive knob selection: hold the portfolio setting whose simulated future is best.

    python -m training.lookahead --scenario training/scenarios/apac-hybrid.yaml --rate 18 \\
        --baseline "knobs:mode=1,cap=2.5,k_cap=3,hedge=false"

At t=0 and every ``replan_s`` it forks the knob env (``specctl/SpecKnobsEnv``). It then
resamples the fork's future ``futures`` times, the same draws for every candidate (common random
numbers), so candidates differ only by their settings. It holds each portfolio setting for
``horizon_s`` in every draw, scored by :func:`training.rollouts.rollout_value` (SLO-met
completions plus credit for what is on track), and runs the best until the next plan.

This is a planner, not a learned policy. It needs a simulator of the system it runs on (here,
the scenario it is judged on), so, like the oracle, it runs in the simulator only. It learns
nothing across systems: it measures, on each system, what the knob policy's features failed to
predict, namely which heuristic setting fits that system. The portfolio and the horizons below
were fixed before any held-out run, and the README gives the figures.

It prints, over the final comparison's test seeds, the goodput ratio of the lookahead and of the
default policy's setting (the portfolio's first) against ``--baseline``, and of the lookahead
against that setting. Each ratio carries a paired bootstrap CI.
"""

from __future__ import annotations

import copy
import sys
import zlib
from typing import Any, Sequence

import numpy as np

from policy_env.env import TRAIN_SEED_MAX

#: Knob settings (``warm_start.knobs`` mappings; modes index ``SpecKnobsEnv``'s default
#: ``("wanspec", "wisp", "centralized")``). The first is the default policy's tuned setting;
#: the others give each mode a tight and a loose admission cap.
PORTFOLIO: tuple[dict[str, Any], ...] = (
    {"mode": 2, "cap": 1.0, "k_cap": 8, "hedge": 0},
    {"mode": 2, "cap": 2.0, "k_cap": 8, "hedge": 0},
    {"mode": 0, "cap": 1.0, "k_cap": 3, "hedge": 0},
    {"mode": 0, "cap": 2.0, "k_cap": 8, "hedge": 1},
    {"mode": 1, "cap": 1.5, "k_cap": 8, "hedge": 0},
    {"mode": 1, "cap": 2.5, "k_cap": 3, "hedge": 0},
)
LOOKAHEAD_DEFAULTS: dict[str, Any] = {"horizon_s": 20.0, "replan_s": 15.0, "futures": 2}


def plan_values(env: Any, actions: Sequence[np.ndarray], horizon_steps: int, futures: int, key: int) -> np.ndarray:
    """Each action's value summed over ``futures`` resampled futures of ``env``'s current state
    (future ``j`` is the same draw for every action); ``env`` itself is not advanced."""
    from training.rollouts import rollout_value

    values = np.zeros(len(actions))
    for j in range(futures):
        future = zlib.crc32(f"{key}:{j}".encode())
        for i, action in enumerate(actions):
            fork = copy.deepcopy(env)
            fork.sim.resample_future(future)
            values[i] += rollout_value(fork, action, horizon_steps)
    return values


def lookahead_episode(job: tuple[str, float | None, int, float, dict[str, Any], bool]) -> tuple[float, list[int]]:
    """One episode's goodput (req/s) and the portfolio index chosen at each plan. With
    ``plan=False`` it holds the portfolio's first setting throughout (the default policy's)."""
    from policy_env.knobs_env import SpecKnobsEnv
    from training.knobs import teacher_action

    scenario, rate, seed, duration, cfg, plan = job
    env = SpecKnobsEnv(scenario=scenario, rate=rate, duration=duration)
    env.reset(options={"sim_seed": seed})
    actions = [teacher_action(env, k) for k in cfg["portfolio"]]
    horizon = max(round(cfg["horizon_s"] / env.interval_s), 1)
    every = max(round(cfg["replan_s"] / env.interval_s), 1)
    action, step, done, picks = actions[0], 0, False, []
    while not done:
        if plan and step % every == 0:
            best = int(np.argmax(plan_values(env, actions, horizon, cfg["futures"], seed * 100_003 + step)))
            action = actions[best]
            picks.append(best)
        _, _, done, _, _ = env.step(action)
        step += 1
    return float(env.sim.summary()["goodput_rps"]), picks


def _baseline(job: tuple[str, float | None, int, float, str]) -> float:
    from runtime.scenario import load_scenario
    from training.compare import run_controller

    scenario, rate, seed, duration, spec = job
    return float(run_controller(load_scenario(scenario), spec, seed, duration, rate)["goodput_rps"])


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser
    from runtime.scenario import ScenarioError, load_scenario
    from training.compare import pool_map, ratio_ci

    p = OneLineParser(prog="python -m training.lookahead", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, help="shipped scenario name or YAML path")
    p.add_argument("--rate", type=float, help="mean arrival rate (req/s; default: the scenario's)")
    p.add_argument("--baseline", required=True, help="controller spec to judge against (e.g. the best tuned heuristic)")
    p.add_argument("--seeds", type=int, default=6, help="test seeds (1e9, 1e9+1, ...; the final comparison's)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds of arrivals per episode")
    p.add_argument("--horizon", type=float, default=LOOKAHEAD_DEFAULTS["horizon_s"], help="seconds each candidate is simulated per plan")
    p.add_argument("--replan", type=float, default=LOOKAHEAD_DEFAULTS["replan_s"], help="seconds between plans")
    p.add_argument("--futures", type=int, default=LOOKAHEAD_DEFAULTS["futures"], help="resampled futures per plan")
    p.add_argument("--workers", type=int, default=2, help="processes")
    a = p.parse_args(argv)
    for flag, value in (("--seeds", a.seeds - 1), ("--duration", a.duration), ("--horizon", a.horizon),
                        ("--replan", a.replan), ("--futures", a.futures), ("--workers", a.workers)):
        if value <= 0:
            p.error(f"{flag} must be {'>= 2' if flag == '--seeds' else '> 0'}")
    try:
        load_scenario(a.scenario)
    except ScenarioError as e:
        p.error(str(e))
    from controllers import make_controller

    try:
        make_controller(a.baseline)
    except ValueError as e:
        p.error(f"--baseline {a.baseline!r}: {e}")
    cfg = {"portfolio": PORTFOLIO, "horizon_s": a.horizon, "replan_s": a.replan, "futures": a.futures}
    seeds = [TRAIN_SEED_MAX + i for i in range(a.seeds)]
    base = np.array(pool_map(_baseline, [(a.scenario, a.rate, s, a.duration, a.baseline) for s in seeds], a.workers,
                             desc="baseline"))
    runs = pool_map(lookahead_episode, [(a.scenario, a.rate, s, a.duration, cfg, plan) for s in seeds for plan in (False, True)],
                    a.workers, desc="episodes (the default setting, then the lookahead)")
    fixed = np.array([g for g, _ in runs[0::2]])
    ahead = np.array([g for g, _ in runs[1::2]])

    def show(x: np.ndarray, y: np.ndarray) -> str:
        r, lo, hi = ratio_ci(x, y)
        return f"{r:.3f}x [{lo:.3f}, {hi:.3f}]"

    print(f"{a.scenario} at {a.rate or 'its'} req/s, {len(seeds)} test seeds x {a.duration:g} s "
          f"(horizon {a.horizon:g} s, replan every {a.replan:g} s, {a.futures} futures):")
    print(f"  baseline {a.baseline}: {base.mean():.3f} req/s")
    print(f"  default setting (portfolio 0): {fixed.mean():.3f} req/s, {show(fixed, base)} the baseline")
    print(f"  lookahead: {ahead.mean():.3f} req/s, {show(ahead, base)} the baseline, {show(ahead, fixed)} the default setting")
    print("  plans (portfolio index per plan, per seed): " + " ".join("".join(map(str, pk)) for _, pk in runs[1::2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
