"""One search driver for tuning and sweeps: Optuna in this process, or Ray Tune on a cluster.

:func:`maximize` asks an objective for its score at parameter points drawn by Optuna's TPE
sampler from a table of Optuna distributions. The first point is always ``defaults``, so the
best found is never worse than the defaults on the same objective (and a search with one trial
just scores them). Locally the trials run one after another (the objective may use a process
pool inside); with ``ray`` they are Ray Tune trials (``OptunaSearch``, the same sampler and
table) that run concurrently on the cluster, are retried if their worker dies, and run their
own work in-process. Either way ``on_trial`` hears of every finished trial in this process
(MLflow logging lives there, so the workers need no access to the tracking store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import BaseDistribution

#: Metric name the Ray Tune trials report.
SCORE = "score"


@dataclass(frozen=True)
class Point:
    """One finished trial: its number (in finishing order), parameters, score, and whether it
    is the defaults (the first point asked for; on Ray it need not finish first)."""

    number: int
    params: dict[str, Any]
    score: float
    default: bool = False


def maximize(
    objective: Callable[[dict[str, Any]], float],
    space: Mapping[str, BaseDistribution],
    defaults: Mapping[str, Any],
    *,
    trials: int,
    seed: int = 0,
    ray: str | None = None,
    concurrency: int | None = None,
    on_trial: Callable[[Point], None] | None = None,
    progress: bool = True,
    desc: str = "tune",
    starts: Sequence[Mapping[str, Any]] = (),
) -> list[Point]:
    """Score ``trials`` points of ``space`` (the first is ``defaults``, then ``starts``: points
    known to be good, so the search never ends below them); every point, in finishing order.

    ``ray``: an address (``""``: Ray's default) to run the trials as Ray Tune trials, at most
    ``concurrency`` at a time (default: as many as the cluster has CPUs); None: in this process.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    missing = sorted(set(space) - set(defaults))
    if missing:
        raise ValueError(f"defaults lack {missing}")
    import optuna

    from training.backend import progress_bar

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar says what matters
    bar = progress_bar(trials, desc, "trial", leave=True, show=progress)
    points: list[Point] = []

    base = {k: defaults[k] for k in space}
    first = [base, *({k: p.get(k, defaults[k]) for k in space} for p in starts)]
    if len(first) > trials:
        raise ValueError(f"{len(first)} points to start from (the defaults and {len(starts)} given) need at least as many trials, got {trials}")

    def finished(params: dict[str, Any], score: float) -> None:
        point = Point(len(points), params, score, default=params == base and not any(p.default for p in points))
        points.append(point)
        shown = {"best": f"{max(p.score for p in points):.4g}"}
        default = next((p for p in points if p.default), None)
        if default is not None:
            shown["defaults"] = f"{default.score:.4g}"
        bar.set_postfix(shown)
        bar.update()
        if on_trial is not None:
            on_trial(point)

    try:
        if ray is None:
            _optuna(objective, space, first, trials, seed, finished)
        else:
            _ray_tune(objective, space, first, trials, seed, ray, concurrency, finished, desc)
    finally:
        bar.close()
    return points


def _optuna(objective: Callable[[dict[str, Any]], float], space: Mapping[str, BaseDistribution],
            first: Sequence[Mapping[str, Any]], trials: int, seed: int, finished: Callable[[dict[str, Any], float], None]) -> None:
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for point in first:
        study.enqueue_trial(dict(point))
    for _ in range(trials):
        trial = study.ask(dict(space))
        params = dict(trial.params)
        try:
            score = float(objective(params))
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, score if math.isfinite(score) else -math.inf)
        finished(params, score)


def _ray_tune(objective: Callable[[dict[str, Any]], float], space: Mapping[str, BaseDistribution],
              first: Sequence[Mapping[str, Any]], trials: int, seed: int, address: str, concurrency: int | None,
              finished: Callable[[dict[str, Any], float], None], desc: str) -> None:
    import os

    from training.backend import connect

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, the bar is the progress
    ray = connect(address)
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict[str, Any]) -> None:
        from training.backend import use_ray

        use_ray(False)  # the trial holds a CPU: nested Ray tasks could starve the trials that hold the rest
        tune.report({SCORE: float(objective(dict(config)))})

    class Finished(tune.Callback):
        """Tells this process of every finished trial. Tune pickles its callbacks with the
        experiment state; the hook (and the progress bar behind it) stays out of that."""

        def __init__(self, hook: Callable[[dict[str, Any], float], None], keys: list[str]) -> None:
            self.hook, self.keys = hook, keys

        def __getstate__(self) -> dict[str, Any]:
            return {"hook": None, "keys": self.keys}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.hook({k: trial.config[k] for k in self.keys}, float(trial.last_result[SCORE]))

    searcher = OptunaSearch(dict(space), metric=SCORE, mode="max", points_to_evaluate=[dict(p) for p in first], seed=seed)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=concurrency or max(cpus, 1)),
        run_config=tune.RunConfig(name=f"specctl-{desc.replace(' ', '-')}", verbose=0, callbacks=[Finished(finished, list(space))],
                                  failure_config=tune.FailureConfig(max_failures=2)),  # a trial whose worker died runs again
    )
    grid = tuner.fit()
    if grid.num_errors:
        first = next((r.error for r in grid if r.error is not None), None)
        raise RuntimeError(f"{grid.num_errors} of {len(grid)} Ray Tune trials failed: {str(first).strip().splitlines()[-1] if first else '?'}")
