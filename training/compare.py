"""Held-out comparisons of controllers: the same seeds for every row, paired CIs on goodput ratios.

Shared by ``training/train.py`` (per-request and knob policies) and the tuning tools: every
controller runs on every seed in a process pool, and :func:`comparison_table` reports each
row's goodput against the best heuristic with a paired bootstrap CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class Comparison:
    """Goodput (and costs) per controller on the same held-out seeds."""

    seeds: list[int]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def mean(self, name: str, key: str = "goodput_rps") -> float:
        return float(np.mean([r[key] for r in self.rows[name]]))

    def values(self, name: str, key: str = "goodput_rps") -> np.ndarray:
        return np.array([r[key] for r in self.rows[name]], dtype=float)

    def knob_shares(self, name: str) -> dict[str, float]:
        """A knob controller's settings with their share of its control intervals over every
        seed, most used first (empty for other controllers): which decisions it made."""
        total: dict[str, int] = {}
        for r in self.rows[name]:
            for spec, n in r.get("knob_usage", {}).items():
                total[spec] = total.get(spec, 0) + n
        count = sum(total.values())
        return {spec: n / count for spec, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))} if count else {}


def run_controller(scenario: Any, spec_or_ctl: Any, seed: int, duration: float, rate: float | None) -> dict[str, Any]:
    """One simulation; ``spec_or_ctl`` is a controller spec, a controller, or a no-argument factory.
    ``scenario`` may be a :class:`~runtime.distribution.ScenarioDistribution`: the seed then draws
    the system and its rate (the same draw as the knob env's for that seed).
    Goodput and costs, the arrivals per second (``offered_rps``: goodput's ceiling, the same for
    every controller on a seed), and for a knob controller its ``knob_usage`` (control intervals per setting)."""
    from controllers import make_controller
    from runtime.contract import Controller
    from runtime.distribution import ScenarioDistribution
    from runtime.sim import Simulator

    if isinstance(scenario, ScenarioDistribution):
        scenario, rate = scenario.draw(seed)

    if isinstance(spec_or_ctl, str):
        ctl = make_controller(spec_or_ctl)
    else:
        ctl = spec_or_ctl if isinstance(spec_or_ctl, Controller) else spec_or_ctl()
    s = Simulator(scenario, seed, duration, rate=rate).run(ctl)
    out: dict[str, Any] = {k: float(s[k]) for k in ("goodput_rps", "goodput_tps", "slo_attainment", "target_draft_forward_passes", "wasted_draft_tokens")}
    out["offered_rps"] = float(s["requests_arrived"]) / duration  # the goodput if every arrival met its SLO
    usage = getattr(ctl, "usage", None)
    if isinstance(usage, dict):
        out["knob_usage"] = dict(usage)
    return out


def _job(args: tuple[str, Any, Any, int, float, float | None]) -> tuple[str, int, dict[str, Any]]:
    name, make, scenario, seed, duration, rate = args
    return name, seed, run_controller(scenario, make, seed, duration, rate)


def pool_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, desc: str = "runs") -> list[Any]:
    """``[fn(job) for job in jobs]`` in ``workers`` spawned processes, or as Ray tasks when
    ``--ray``/``RAY_ADDRESS`` asks for them (``training.backend``), in order, with a progress bar."""
    from training.backend import map_jobs

    return map_jobs(fn, jobs, workers=max(workers, 1), desc=desc, unit="run", leave=False)


def evaluate_controllers(scenario: Any, controllers: dict[str, Any], seeds: Sequence[int], duration: float, rate: float | None, workers: int = 1, desc: str = "baselines") -> Comparison:
    """Every named controller (a spec, or a picklable no-argument factory) on every seed, in
    ``workers`` processes, with one progress bar: each run is an independent simulation."""
    return evaluate_grids([(scenario, controllers, rate)], seeds, duration, workers, desc)[0]


def evaluate_grids(grids: Sequence[tuple[Any, dict[str, Any], float | None]], seeds: Sequence[int], duration: float,
                   workers: int = 1, desc: str = "runs") -> list[Comparison]:
    """:func:`evaluate_controllers` for several (scenario, controllers, rate) grids in one pool and
    one progress bar, so no grid's last runs leave a worker idle while the next grid waits. Runs
    go seed by seed (every grid's controllers on the first seed, then the second...), so each
    stretch of the bar holds the same mix of slow and fast controllers and its ETA holds from the
    start. Every run is seeded, so the order changes no figure."""
    jobs = [(g, (name, make, scenario, seed, duration, rate)) for seed in seeds
            for g, (scenario, controllers, rate) in enumerate(grids) for name, make in controllers.items()]
    cmps = [Comparison(list(seeds), {name: [{}] * len(seeds) for name in controllers}) for _, controllers, _ in grids]
    for (g, _), (name, seed, res) in zip(jobs, pool_map(_job, [job for _, job in jobs], workers, desc)):
        cmps[g].rows[name][list(seeds).index(seed)] = res
    return cmps


def evaluate_baselines(scenario: Any, specs: Sequence[str], seeds: Sequence[int], duration: float, rate: float | None, workers: int = 1, desc: str = "baselines") -> Comparison:
    """Every controller spec on every seed."""
    return evaluate_controllers(scenario, {spec: spec for spec in specs}, seeds, duration, rate, workers, desc)


def ratio_ci(policy: np.ndarray, base: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of mean goodputs with a 95% paired-bootstrap confidence interval over seeds (SciPy's
    BCa: the ratio's bootstrap distribution is skewed by the few seeds that tip into overload)."""
    from scipy.stats import bootstrap

    if base.mean() <= 0:
        return math.inf, math.inf, math.inf
    ratio = float(policy.mean() / base.mean())
    if np.allclose(policy, ratio * base):  # the same controller (or an exact multiple): no spread
        return ratio, ratio, ratio

    def mean_ratio(p: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return p.mean(axis) / np.maximum(b.mean(axis), 1e-12)

    for method in ("BCa", "percentile"):  # BCa is undefined on a degenerate bootstrap distribution
        ci = bootstrap((policy, base), mean_ratio, paired=True, vectorized=True, n_resamples=n_boot, confidence_level=0.95,
                       method=method, random_state=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return ratio, float(ci.low), float(ci.high)


def comparison_table(cmp: Comparison, policy_name: str, heuristics: Sequence[str]) -> tuple[list[dict[str, Any]], str]:
    """Rows (for JSON/CSV) and a markdown table: every controller vs the best heuristic."""
    best = max(heuristics, key=lambda n: cmp.mean(n))
    base = cmp.values(best)
    rows = []
    for name in cmp.rows:
        r, lo, hi = ratio_ci(cmp.values(name), base)
        rows.append({
            "controller": name,
            "goodput_rps": cmp.mean(name),
            "goodput_rps_std": float(cmp.values(name).std(ddof=1)) if len(cmp.seeds) > 1 else 0.0,
            "slo_attainment": cmp.mean(name, "slo_attainment"),
            "target_draft_forward_passes": cmp.mean(name, "target_draft_forward_passes"),
            "wasted_draft_tokens": cmp.mean(name, "wasted_draft_tokens"),
            "ratio_vs_best": r, "ratio_ci_low": lo, "ratio_ci_high": hi,
            "role": "policy" if name == policy_name else ("best heuristic" if name == best else ("reference" if name not in heuristics else "heuristic")),
        })
    rows.sort(key=lambda x: -x["goodput_rps"])
    lines = [
        f"| controller | goodput (req/s) | SLO attainment | target draft passes | wasted draft tokens | goodput vs {best} (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for x in rows:
        tag = f" ({x['role']})" if x["role"] not in ("heuristic", x["controller"]) else ""
        lines.append(
            f"| {x['controller']}{tag} | {x['goodput_rps']:.3f} ± {x['goodput_rps_std']:.3f} | {x['slo_attainment']:.3f} | "
            f"{x['target_draft_forward_passes']:.0f} | {x['wasted_draft_tokens']:.0f} | "
            f"{x['ratio_vs_best']:.3f} [{x['ratio_ci_low']:.3f}, {x['ratio_ci_high']:.3f}] |"
        )
    r, lo, hi = ceiling_ratio(cmp, best)
    lines.append(f"| *ceiling: every arrival meets its SLO* | {cmp.mean(best, 'offered_rps'):.3f} | 1.000 | | | {r:.3f} [{lo:.3f}, {hi:.3f}] |")
    return rows, "\n".join(lines)


def ceiling_ratio(cmp: Comparison, name: str) -> tuple[float, float, float]:
    """Goodput's ceiling (every arrival meets its SLO; the seeds' arrivals are the same for every
    row) against ``name``'s goodput, with its paired CI: the most any controller could gain."""
    return ratio_ci(cmp.values(name, "offered_rps"), cmp.values(name))


