"""Fit the learned acceptance estimator on rounds recorded over a scenario distribution.

    python -m training.acceptance --distribution training/configs/scenario-mix.yaml --systems 40 \\
        --out training/models/acceptance-mix.json

Each training system (seed ``0..systems-1`` of the distribution: its draw of sites, loads,
acceptance level and drift) is simulated under ``wisp``, recording every verified draft
position: the features the estimator would have computed when the round was planned, and
whether the position was accepted. A logistic regression on them (L2-regularised, SciPy's
L-BFGS; convex, so deterministic) is the model. It is judged by log-loss per verified position
against the table's own estimate on validation systems of the distribution (seeds the
final comparison never tests on) and, with ``--check FILE:RATE``, on scenario files it never
saw. Use the model with ``wisp:acceptance=<out>`` or ``centralized:acceptance=<out>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from controllers.acceptance import FEATURES, FORMAT, LearnedAcceptance
from controllers.wisp import Wisp
from runtime.contract import RuntimeInfo

#: The L2 penalty on the weights (the table's own weight is pulled towards 1, the rest to 0).
L2 = 1e-3


class RecordingWisp(Wisp):
    """``wisp`` whose estimator records each verified position (it estimates as the table)."""

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        self.acceptance = LearnedAcceptance(info, max(info.max_k, 1), record=True)


def record(job: tuple[Any, int, float, float | None]) -> tuple[np.ndarray, np.ndarray]:
    """One simulation's (features, accepted) rows."""
    from runtime.distribution import ScenarioDistribution
    from runtime.sim import Simulator

    scenario, seed, duration, rate = job
    if isinstance(scenario, ScenarioDistribution):
        scenario, rate = scenario.draw(seed)
    ctl = RecordingWisp()
    Simulator(scenario, seed, duration, rate=rate).run(ctl)
    rows = ctl.acceptance.rows  # type: ignore[attr-defined]
    if not rows:
        return np.zeros((0, len(FEATURES))), np.zeros(0)
    return np.concatenate([f for f, _ in rows]), np.concatenate([y for _, y in rows])


def collect(scenario: Any, seeds: Sequence[int], duration: float, rate: float | None, workers: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    from training.backend import map_jobs

    got = [(x, y) for x, y in map_jobs(record, [(scenario, s, duration, rate) for s in seeds], workers=workers, desc=desc, unit="system")
           if len(y)]  # (a system where nothing was drafted adds no rows)
    if not got:
        return np.zeros((0, len(FEATURES))), np.zeros(0)
    return np.concatenate([x for x, _ in got]), np.concatenate([y for _, y in got])


def identity() -> np.ndarray:
    """The weights that reproduce the table's estimate."""
    w = np.zeros(len(FEATURES))
    w[0] = 1.0
    return w


def log_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    """Mean negative log-likelihood per verified position (the estimator clips at 0.99, as here)."""
    p = np.clip(1.0 / (1.0 + np.exp(-(x @ w + b))), 1e-6, 0.99)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression, regularised towards the table's estimate."""
    from scipy.optimize import minimize

    n = len(y)
    w0 = identity()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        # log(1 + e^z) - y z, stably
        nll = np.logaddexp(0.0, z) - y * z
        g = (1.0 / (1.0 + np.exp(-z)) - y) / n
        d = w - w0
        return float(nll.mean() + L2 * d @ d), np.append(x.T @ g + 2 * L2 * d, g.sum())

    res = minimize(loss, np.append(w0, 0.0), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:-1], float(res.x[-1])


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.distribution import ScenarioDistribution
    from runtime.flags import OneLineParser
    from runtime.scenario import load_scenario
    from training.tune import validation_seeds

    p = OneLineParser(prog="python -m training.acceptance", description=__doc__.split("\n")[0])
    p.add_argument("--distribution", default="training/configs/scenario-mix.yaml", help="scenario distribution YAML to train on")
    p.add_argument("--systems", type=int, default=40, help="training systems (seeds 0..N-1 of the distribution)")
    p.add_argument("--validation", type=int, default=10, help="validation systems (the model-selection seeds)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds of arrivals per system")
    p.add_argument("--check", nargs="*", default=[], metavar="FILE:RATE",
                   help="scenario files (never trained on) to report log-loss on, at a rate (req/s)")
    p.add_argument("--seeds", type=int, default=4, help="validation seeds per --check file")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--out", type=Path, default=Path("training/models/acceptance-mix.json"), help="model file to write")
    a = p.parse_args(argv)
    if a.systems < 1 or a.validation < 1 or a.seeds < 1 or a.duration <= 0:
        p.error("--systems, --validation and --seeds must be >= 1 and --duration > 0")
    try:
        dist = ScenarioDistribution.load(a.distribution)
        checks = []
        for item in a.check:
            path, colon, rate = item.rpartition(":")
            if not colon or not path:
                raise ValueError(f"--check {item!r}: expected FILE:RATE, e.g. training/scenarios/eu-3region-bursty.yaml:8")
            checks.append((path, load_scenario(path), float(rate)))
    except (OSError, ValueError) as e:
        p.error(str(e))

    x, y = collect(dist, range(a.systems), a.duration, None, a.workers, "training systems")
    if not len(y):
        print("error: no draft position was verified on the training systems; raise --systems or --duration", file=sys.stderr)
        return 1
    print(f"{len(y)} verified draft positions from {a.systems} systems of {a.distribution}; fitting", flush=True)
    w, b = fit(x, y)
    report: dict[str, dict[str, float]] = {}

    def judge(name: str, xv: np.ndarray, yv: np.ndarray) -> None:
        if not len(yv):
            print(f"  {name}: no draft position was verified (raise --duration)", flush=True)
            return
        table, learned = log_loss(xv, yv, identity(), 0.0), log_loss(xv, yv, w, b)
        report[name] = {"positions": int(len(yv)), "table": table, "learned": learned}
        print(f"  {name}: log-loss per position {learned:.4f} against the table's {table:.4f} "
              f"({(table - learned) / table:+.1%}; {len(yv)} positions)", flush=True)

    print("held out:")
    judge("validation systems", *collect(dist, validation_seeds(a.validation), a.duration, None, a.workers, "validation systems"))
    for path, scenario, rate in checks:
        judge(path, *collect(scenario, validation_seeds(a.seeds), a.duration, rate, a.workers, Path(path).stem))
    model = {
        "format": FORMAT, "features": list(FEATURES), "weights": [float(v) for v in w], "bias": b,
        "trained_on": {"distribution": a.distribution, "systems": a.systems, "duration": a.duration, "positions": int(len(y))},
        "log_loss": report,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(model, indent=1) + "\n")
    print("weights: " + ", ".join(f"{n} {v:+.3f}" for n, v in zip(FEATURES, w)) + f", bias {b:+.3f}")
    print(f"wrote {a.out}; use it as wisp:acceptance={a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
