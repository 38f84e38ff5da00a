"""What a trained knob policy does, and what its choice depends on.

    python -m training.explain policy:checkpoints/knobs/best --distribution training/configs/scenario-mix.yaml --systems 36
    python -m training.explain policy:checkpoints/knobs/best --scenario edge-fleet --rate 32 --seeds 10 --out edge.csv

A policy's figures say that it gains, not how. This runs it on the test seeds of a scenario, or
on systems of a distribution that no training seed drew, records at every control interval the
observation it saw and the setting it chose, and prints:

- the settings it held on each kind of system (a distribution's base scenarios);
- how often it changes setting within an episode, and what it holds in the first interval,
  when the system starts empty (a gain made there is a start-up effect, not steady control);
- a shallow decision tree over the knob features that mimics its choice, with the share of
  intervals on which the tree agrees with it: a readable approximation of the policy's rule.

``--out FILE.csv`` writes every interval (system, seed, time, goodput, features, setting).
``--first-from policy:RUN/warm`` also runs it with its first interval chosen by another policy
and prints what its own start-up choice is worth, paired over the seeds.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from policy_env.env import TRAIN_SEED_MAX
from runtime.flags import OneLineParser, positive, positive_float, whole


@dataclass
class Episode:
    """One run of the policy: its system, and per control interval what it saw and chose."""

    kind: str
    seed: int
    goodput_rps: float
    times: list[float]
    features: list[list[float]]
    settings: list[str]


def feature_names(modes: Sequence[str]) -> list[str]:
    """The knob observation's entries in order: :data:`controllers.knobs.KNOB_FEATURES`, then the
    mode one-hot and the mode validity blocks."""
    from controllers.knobs import KNOB_FEATURES

    return [*KNOB_FEATURES, *(f"mode_{m}" for m in modes), *(f"valid_{m}" for m in modes)]


def knob_policy(spec: str) -> Any:
    """The controller of ``spec`` if it is a knob policy (a network setting the knobs), else a
    clear error."""
    from controllers import make_controller
    from controllers.knobs import KnobController

    ctl = make_controller(spec)
    if not isinstance(ctl, KnobController) or ctl.act is None:
        raise ValueError(f"{spec!r} is not a knob policy: pass policy:RUN_DIR/best (or /warm) of a knob "
                         "training run (`python training/train.py`); fixed settings and other controllers have no rule to explain")
    return ctl


def run_episode(job: tuple[str, Any, int, float, float | None, str | None]) -> Episode:
    """Run the policy on one seed (one system of a distribution), recording each decision; with
    ``first`` (another knob policy's spec), that policy chooses the first interval's setting."""
    from runtime.distribution import ScenarioDistribution
    from training.compare import run_controller

    spec, scenario, seed, duration, rate, first = job
    ctl = knob_policy(spec)
    act, apply = ctl.act, ctl.set_knobs
    start = knob_policy(first).act if first else act
    times: list[float] = []
    features: list[list[float]] = []
    settings: list[str] = []
    chosen = False  # set_knobs also runs once in bind, with the knobs the policy replaces

    def recording(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        nonlocal chosen
        features.append([float(x) for x in obs])
        chosen = True
        return (start if len(features) == 1 else act)(obs, mask)

    def set_knobs(action: Any, now: float) -> None:
        nonlocal chosen
        apply(action, now)
        if chosen:  # the setting that answers (a mode that cannot run falls back), as a spec
            chosen = False
            times.append(now)
            settings.append(ctl.spec())

    ctl.act, ctl.set_knobs = recording, set_knobs
    if isinstance(scenario, ScenarioDistribution):  # the system (and rate) this seed draws, named for the report
        scenario, rate = scenario.draw(seed)
    res = run_controller(scenario, ctl, seed, duration, rate)
    return Episode(scenario.name.split("~")[0], seed, res["goodput_rps"], times, features, settings)


def explain_tree(x: np.ndarray, y: Sequence[str], names: Sequence[str], depth: int) -> tuple[str, float]:
    """A depth-``depth`` decision tree (scikit-learn) that predicts the chosen setting from the
    features: its rules as text, and its agreement with the policy on these intervals."""
    from sklearn.tree import DecisionTreeClassifier, export_text

    labels = list(y)
    tree = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=max(2, len(labels) // 50), random_state=0).fit(x, labels)
    return export_text(tree, feature_names=list(names), decimals=3), float(tree.score(x, labels))


def report(episodes: Sequence[Episode], names: Sequence[str], depth: int, top: int = 4) -> str:
    """The printed summary (module docstring)."""
    from training.knobs import settings_line

    def shares(c: Counter[str]) -> dict[str, float]:
        n = sum(c.values())
        return {s: k / n for s, k in c.most_common()}

    lines: list[str] = []
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for e in episodes:
        by_kind[e.kind].update(e.settings)
    lines.append("settings held, share of control intervals, per kind of system:")
    for kind, c in sorted(by_kind.items()):
        lines.append(f"  {kind} ({sum(e.kind == kind for e in episodes)} systems): {settings_line(shares(c), top)}")
    changing = sum(len(set(e.settings)) > 1 for e in episodes)
    lines.append(f"episodes in which it changes setting: {changing} of {len(episodes)}")
    first = Counter(e.settings[0] for e in episodes if e.settings)
    later = Counter(s for e in episodes for s in e.settings[1:])
    lines.append(f"first interval (the system starts empty): {settings_line(shares(first), top)}")
    if later:
        lines.append(f"later intervals: {settings_line(shares(later), top)}")
    x = np.array([f for e in episodes for f in e.features])
    y = [s for e in episodes for s in e.settings]
    if len(set(y)) < 2:
        lines.append(f"it holds one setting throughout, `{y[0]}`: there is no rule to explain")
    else:
        text, agree = explain_tree(x, y, names, depth)
        lines.append(f"a depth-{depth} tree over the features agrees with its choice on {agree:.0%} of the intervals:")
        lines.extend("  " + ln for ln in text.rstrip().splitlines())
    return "\n".join(lines)


def write_csv(path: Path, episodes: Sequence[Episode], names: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "seed", "time_s", "goodput_rps", *names, "setting"])
        for e in episodes:
            for t, feats, s in zip(e.times, e.features, e.settings):
                w.writerow([e.kind, e.seed, f"{t:g}", f"{e.goodput_rps:.4f}", *(f"{v:.5g}" for v in feats), s])


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.distribution import ScenarioDistribution
    from runtime.scenario import load_scenario
    from training.compare import pool_map

    p = OneLineParser(prog="python -m training.explain", description=__doc__.split("\n")[0])
    p.add_argument("policy", help="a knob policy's controller spec, e.g. policy:checkpoints/knobs/best")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scenario", help="shipped scenario name or YAML path")
    where.add_argument("--distribution", help="scenario distribution YAML: each test seed draws its own system")
    p.add_argument("--rate", type=positive("arrival rate in req/s"), help="mean arrival rate (req/s; default: the scenario's)")
    p.add_argument("--seeds", "--systems", type=whole("number of seeds"), default=36, help="test seeds (1e9, 1e9+1, ...), one system each with --distribution")
    p.add_argument("--duration", type=positive_float, default=60.0, help="simulated seconds of arrivals per run")
    p.add_argument("--depth", type=whole("tree depth"), default=2, help="depth of the explaining tree")
    p.add_argument("--workers", type=whole("number of processes"), default=2, help="processes")
    p.add_argument("--out", type=Path, help="write every control interval here (CSV)")
    p.add_argument("--first-from", metavar="POLICY", help="also run it with the first interval's setting chosen by this knob "
                   "policy (e.g. policy:RUN/warm), and print what its own start-up choice is worth (paired over the seeds)")
    a = p.parse_args(argv)
    if a.distribution and a.rate is not None:
        p.error("--rate applies to --scenario; a distribution draws each system's rate")
    try:
        ctl = knob_policy(a.policy)
        if a.first_from:
            if knob_policy(a.first_from).mode_specs != ctl.mode_specs:
                raise ValueError(f"{a.first_from!r} sets other modes than {a.policy!r}: --first-from needs a policy over the "
                                 f"same modes ({list(ctl.mode_specs)}), e.g. the run's warm start")
            if a.seeds < 2:
                raise ValueError("--first-from compares over seeds: pass --seeds 2 or more")
        scenario = ScenarioDistribution.load(a.distribution) if a.distribution else load_scenario(a.scenario)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = feature_names(ctl.mode_specs)
    jobs = [(a.policy, scenario, TRAIN_SEED_MAX + i, a.duration, a.rate, None) for i in range(a.seeds)]
    if a.first_from:
        jobs += [(*job[:5], a.first_from) for job in jobs]
    done = pool_map(run_episode, jobs, a.workers, desc="policy runs")
    episodes = done[:a.seeds]
    print(report(episodes, names, a.depth))
    if a.first_from:
        from training.compare import ratio_ci

        own = np.array([e.goodput_rps for e in episodes])
        other = np.array([e.goodput_rps for e in done[a.seeds:]])
        r, lo, hi = ratio_ci(own, other)
        print(f"its own first interval against {a.first_from}'s (`{done[a.seeds].settings[0]}` on the first seed): "
              f"{r:.3f}x [{lo:.3f}, {hi:.3f}] the goodput ({own.mean():.3f} against {other.mean():.3f} req/s, paired over {a.seeds} seeds)")
    if a.out:
        write_csv(a.out, episodes, names)
        print(f"wrote {a.out} ({sum(len(e.settings) for e in episodes)} control intervals)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
