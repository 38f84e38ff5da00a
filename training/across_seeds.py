"""A training recipe judged over its training seeds: ``python -m training.across_seeds RUN_DIR...``.

One ``training/train.py`` run is one draw of its recipe: which systems it labels, at which
moments, from which initialisation. Its test-seed CIs (``comparison.md``) say how sure that
run's figures are, not how sure the recipe's are, and on the knob recipe the spread between
training seeds is larger than any test-seed CI (README, "Knob policy results"). This reads the
``comparison.json`` each knob run writes into its output directory and reports, per evaluation
scenario, the policy's goodput ratio against the best tuned baseline and against its own warm
start as a mean over runs with a 95% t-interval over runs (runs are the independent units;
with few of them a t-interval is wider, and more honest, than a bootstrap), the worst and the
best run, and how many runs reach 0.98x; then each run's mean over the held-out scenarios and
the knob setting each run used most on each scenario (which decisions made the figures); and
the same table for the runs' learned selectors where the recipe fits one. ``--against`` pairs
two recipes' runs by training seed and reports the differences.

    for s in 0 1 2 3; do python training/train.py --seed $s --out checkpoints/default-s$s; done
    python -m training.across_seeds checkpoints/default-s*
    python -m training.across_seeds checkpoints/mine-s* --against checkpoints/default-s*
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from training.knobs import COMPARISON_FILE

#: The bar of the generalisation goal: a run "reaches" a scenario at this ratio to the best tuned baseline.
BAR = 0.98


class RunsError(ValueError):
    """Run directories that cannot be read or compared."""


@dataclass
class RunResult:
    """One finished knob run: its training seed and, per scenario, its final-comparison row."""

    path: Path
    seed: int
    scenarios: dict[str, dict[str, Any]]

    @property
    def held_out(self) -> list[str]:
        return [name for name, row in self.scenarios.items() if row.get("held_out")]

    def held_out_mean(self, key: str = "ratio") -> float:
        """The run's mean ratio to the best tuned baseline over the held-out scenarios (nan: none);
        ``key="selector_ratio"``: its selector's."""
        names = self.held_out
        return float(np.mean([self.scenarios[n][key] for n in names])) if names else math.nan


def load_run(directory: str | Path) -> RunResult:
    """A run directory written by ``training/train.py`` (the knob recipe) after its final comparison."""
    path = Path(directory)
    file = path / COMPARISON_FILE
    if not file.is_file():
        raise RunsError(f"{path} has no {COMPARISON_FILE}: pass the --out directory of a knob run of training/train.py "
                        f"that finished its final comparison (a run of an earlier release: python -m training.knobs {path} --seed S writes it)")
    try:
        data = json.loads(file.read_text())
        if not isinstance(data.get("seed"), int):
            raise RunsError(f"{file} records no training seed (a run of an earlier release, or judged again without one): "
                            f"python -m training.knobs {path} --seed S records it")
        seed = data["seed"]
        rows = {str(r["scenario"]): r for r in data["scenarios"]}
        for r in rows.values():
            float(r["ratio"]), float(r["vs_clone"])
    except RunsError:
        raise
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise RunsError(f"{file} is not a knob run's comparison ({type(e).__name__}: {e}); "
                        f"judge the run again: python -m training.knobs {path} --seed S") from None
    return RunResult(path, seed, rows)


def load_runs(directories: Sequence[str | Path], what: str = "runs") -> list[RunResult]:
    """Runs of one recipe: distinct training seeds and the same evaluation scenarios."""
    if not directories:
        raise RunsError(f"no {what} given: pass the --out directories of training/train.py runs")
    runs = [load_run(d) for d in directories]
    by_seed: dict[int, Path] = {}
    for r in runs:
        if r.seed in by_seed:
            raise RunsError(f"{by_seed[r.seed]} and {r.path} both used training seed {r.seed}: "
                            "a recipe's runs need distinct seeds (train them with --seed 0, 1, 2, ...)")
        by_seed[r.seed] = r.path
    names = set(runs[0].scenarios)
    for r in runs[1:]:
        if set(r.scenarios) != names:
            raise RunsError(f"{r.path} was judged on {sorted(r.scenarios)}, {runs[0].path} on {sorted(names)}: "
                            "compare runs of one config's eval.scenarios")
    return sorted(runs, key=lambda r: r.seed)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval for the mean over independent runs (nan bounds for one run)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0.0:
        return mean, mean, mean
    lo, hi = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def _fmt(mean: float, lo: float, hi: float, sign: str = "") -> str:
    return f"{mean:{sign}.3f}" if math.isnan(lo) else f"{mean:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def summary_rows(runs: Sequence[RunResult], ratio: str = "ratio", vs_warm: str = "vs_clone") -> list[dict[str, Any]]:
    """Per scenario, the over-runs figures :func:`report` prints (of the policy, or with
    ``ratio="selector_ratio", vs_warm="selector_vs_clone"`` of the runs' selectors)."""
    out = []
    for name in runs[0].scenarios:
        ratios = [float(r.scenarios[name][ratio]) for r in runs]
        mean, lo, hi = t_interval(ratios)
        wmean, wlo, whi = t_interval([float(r.scenarios[name][vs_warm]) for r in runs])
        out.append({"scenario": name, "held_out": bool(runs[0].scenarios[name].get("held_out")), "runs": len(runs),
                    "ratio": mean, "ci_low": lo, "ci_high": hi, "worst": min(ratios), "best": max(ratios),
                    "reach_bar": sum(x >= BAR for x in ratios), "vs_warm": wmean, "vs_warm_low": wlo, "vs_warm_high": whi})
    return out


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`summary_rows` as a markdown table."""
    lines = [f"| scenario | ratio to the best tuned baseline | worst - best run | runs at >= {BAR}x | ratio to the run's warm start |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['scenario']}{' (held out)' if row['held_out'] else ''} | "
                     f"{_fmt(row['ratio'], row['ci_low'], row['ci_high'])} | {row['worst']:.3f} - {row['best']:.3f} | "
                     f"{row['reach_bar']} of {row['runs']} | {_fmt(row['vs_warm'], row['vs_warm_low'], row['vs_warm_high'])} |")
    return lines


def report(runs: Sequence[RunResult], against: Sequence[RunResult] = ()) -> str:
    """Markdown: the recipe over its runs, each run's held-out mean, and paired differences."""
    seeds = ", ".join(str(r.seed) for r in runs)
    lines = [f"{len(runs)} run{'s' if len(runs) != 1 else ''} (training seeds {seeds}); 95% t-intervals over runs.", "",
             *_table(summary_rows(runs))]
    if runs[0].held_out:
        means = [r.held_out_mean() for r in runs]
        lines += ["", f"held-out mean (ratio to the best tuned baseline over {len(runs[0].held_out)} held-out scenarios): "
                  f"{_fmt(*t_interval(means))}; per run: " + ", ".join(f"seed {r.seed} {m:.3f}" for r, m in zip(runs, means))]
    lines += selector_lines(runs)
    lines += decisions(runs)
    if against:
        lines += ["", *paired(runs, against)]
    return "\n".join(lines)


def selector_lines(runs: Sequence[RunResult]) -> list[str]:
    """The runs' learned selectors (recipes with a ``selector:`` block), as the policy's table:
    ratio to the best tuned baseline and to the run's warm start, and their held-out mean."""
    if not all("selector_ratio" in row for r in runs for row in r.scenarios.values()):
        return []
    lines = ["", "the runs' learned selectors:", "", *_table(summary_rows(runs, "selector_ratio", "selector_vs_clone"))]
    if runs[0].held_out:
        means = [r.held_out_mean("selector_ratio") for r in runs]
        lines += ["", f"selector held-out mean: {_fmt(*t_interval(means))}; per run: "
                  + ", ".join(f"seed {r.seed} {m:.3f}" for r, m in zip(runs, means))]
    return lines


def decisions(runs: Sequence[RunResult]) -> list[str]:
    """Per scenario and run, the knob setting the policy used most on the test seeds (with its
    share of control intervals); runs judged by an earlier release recorded none."""
    if not any(row.get("policy_settings") for r in runs for row in r.scenarios.values()):
        return []
    lines = ["", "the setting each run's policy used most (share of its control intervals on the test seeds):", "",
             "| scenario | " + " | ".join(f"seed {r.seed}" for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for name in runs[0].scenarios:
        cells = []
        for r in runs:
            shares = r.scenarios[name].get("policy_settings") or {}
            spec, share = next(iter(shares.items()), (None, 0.0))
            cells.append(f"`{spec.removeprefix('knobs:')}` {share:.0%}" if spec else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def paired(runs: Sequence[RunResult], against: Sequence[RunResult]) -> list[str]:
    """Differences (these runs minus ``against``) in the ratio to the best tuned baseline, paired by training seed."""
    mine = {r.seed: r for r in runs}
    other = {r.seed: r for r in against}
    if set(runs[0].scenarios) != set(against[0].scenarios):
        raise RunsError(f"the two recipes were judged on different scenarios ({sorted(runs[0].scenarios)} and "
                        f"{sorted(against[0].scenarios)}): compare runs of configs with the same eval.scenarios")
    common = sorted(set(mine) & set(other))
    if not common:
        raise RunsError(f"no training seed in common (these: {sorted(mine)}, --against: {sorted(other)}): "
                        "pair recipes by training the same seeds")
    lines = [f"paired by training seed ({', '.join(map(str, common))}; unpaired runs left out: "
             f"{sorted(set(mine) ^ set(other)) or 'none'}): these runs minus --against",
             "", "| scenario | difference in the ratio to the best tuned baseline | per seed |", "|---|---|---|"]
    names = list(runs[0].scenarios) + (["held-out mean"] if runs[0].held_out else [])
    for name in names:
        def value(r: RunResult) -> float:
            return r.held_out_mean() if name == "held-out mean" else float(r.scenarios[name]["ratio"])
        diffs = [value(mine[s]) - value(other[s]) for s in common]
        lines.append(f"| {name} | {_fmt(*t_interval(diffs), sign='+')} | {', '.join(f'{d:+.3f}' for d in diffs)} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser

    p = OneLineParser(prog="python -m training.across_seeds", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="--out directories of knob runs of training/train.py, one per training seed")
    p.add_argument("--against", nargs="+", default=[], metavar="RUN", help="another recipe's runs: differences paired by training seed")
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.runs)
        against = load_runs(args.against, "--against runs") if args.against else []
        text = report(runs, against)
    except RunsError as e:
        p.error(str(e))
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
