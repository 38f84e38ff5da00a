"""Tune a heuristic's parameters for one scenario and arrival rate, on validation seeds.

    python -m training.tune --scenario wan-4region --rate 23 --controller wanspec --trials 30
    python -m training.tune --scenario edge-fleet --rate 32 --controller wisp --cap --ray auto

The objective is mean goodput (``goodput_rps``) over the validation seeds (by default the ones
``training/train.py`` picks models on, disjoint from its test seeds), each run ``--duration``
simulated seconds at ``--rate``. Optuna's TPE sampler searches the controller's table in
:data:`SPACES`; ``--cap`` also searches an in-flight admission cap (``+inflight-cap``, 0 =
no cap). The defaults are the first trial, so the result is never worse than them on these
seeds. With ``--ray`` the trials are Ray Tune trials (same sampler) on a cluster; otherwise they
run one after another here, their seeds in a process pool. One MLflow run per tuning, one
nested run per trial. The last line printed is the best spec alone, ready for
``--controllers`` or ``make_controller``::

    wanspec:k=5,switch_gain=1.4+inflight-cap:max_inflight=112

From Python: :func:`tune_controller` returns a :class:`TuneResult`.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from controllers.knobs import CAP_LEVELS, DEFAULT_MODES, K_CAP_LEVELS
from runtime.flags import OneLineParser, positive, positive_float, whole
from training.backend import add_ray_flag

#: Search space per controller: parameter -> Optuna distribution. Each controller's own default
#: must lie in its distribution (it is the first trial); None means "the controller decides".
SPACES: dict[str, dict[str, BaseDistribution]] = {
    "static": {"k": IntDistribution(1, 8)},
    "centralized": {"max_k": CategoricalDistribution([None, 1, 2, 3, 4, 5, 6, 7])},
    "sled": {
        "k": IntDistribution(1, 8),
        "batch_size": CategoricalDistribution([None, 4, 8, 16, 32]),
        "max_wait_s": FloatDistribution(0.0, 0.1, step=0.005),
    },
    "wanspec": {
        "k": IntDistribution(1, 8),
        "switch_gain": FloatDistribution(1.0, 2.0, step=0.05),
        "backup_k": IntDistribution(1, 4),
        "max_rtt_s": FloatDistribution(0.02, 0.2, step=0.01),
        "ahead": CategoricalDistribution([True, False]),
        "backup": CategoricalDistribution([True, False]),  # the hedged local backup rounds
    },
    "wisp": {
        "min_accept": FloatDistribution(0.0, 0.6, step=0.05),
        "max_rtt_s": FloatDistribution(0.02, 0.2, step=0.01),
        "slo_batching": CategoricalDistribution([True, False]),
    },
    "vllm-dynamic-k": {  # tables of three rows: batch sizes from which each k applies
        "sizes": CategoricalDistribution(["1/16/48", "1/4/16", "1/8/32", "1/24/64", "1/32/96"]),
        "ks": CategoricalDistribution(["4/2/1", "2/1/0", "3/1/0", "3/2/1", "4/2/0", "5/3/1", "5/3/0", "6/3/1", "6/4/2", "8/4/2"]),
    },
    "knobs": {  # one fixed setting of a knob policy's action space: its levels (None: no cap, the largest k), mode by index
        "mode": CategoricalDistribution(list(range(len(DEFAULT_MODES)))),
        "cap": CategoricalDistribution([None, *CAP_LEVELS[:-1]]),
        "k_cap": CategoricalDistribution([None, *K_CAP_LEVELS[:-1]]),
        "hedge": CategoricalDistribution([True, False]),
    },
    "bandit-k": {
        "max_k": IntDistribution(2, 8),
        "exploration": FloatDistribution(0.0, 0.3, step=0.01),
        "discount": CategoricalDistribution([0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
        "contextual": CategoricalDistribution([True, False]),
    },
}
#: ``--cap``: the in-flight admission cap composed with ``+inflight-cap`` (0: no cap, the default).
CAP = "max_inflight"
CAP_SPACE: dict[str, BaseDistribution] = {CAP: IntDistribution(0, 320, step=8)}
EXPERIMENT = "specctl-tune"


@dataclass(frozen=True)
class Trial:
    """One scored spec: trial number (finishing order), the spec, its sampled parameters, mean
    goodput over the seeds, and the goodput per seed."""

    number: int
    spec: str
    params: dict[str, Any]
    score: float
    goodputs: tuple[float, ...] = ()


@dataclass
class TuneResult:
    """What a tuning found: the best spec and its score beside the defaults', every trial."""

    scenario: str
    rate: float | None
    controller: str
    seeds: list[int]
    duration: float
    best_spec: str
    best_score: float
    default_spec: str
    default_score: float
    trials: list[Trial] = field(default_factory=list)
    backend: str = "optuna"
    mlflow_run_id: str | None = None

    @property
    def gain(self) -> float:
        """Best over default mean goodput (1.0: the defaults were best)."""
        return self.best_score / self.default_score if self.default_score > 0 else float("inf")


def validation_seeds(n: int) -> list[int]:
    """The seeds ``training/train.py`` selects models on (never its test seeds, never trained on)."""
    from policy_env import TRAIN_SEED_MAX
    from training.common import VALIDATION_OFFSET

    return [TRAIN_SEED_MAX + VALIDATION_OFFSET + i for i in range(n)]


def search_space(controller: str, cap: bool = False) -> tuple[str, dict[str, Any], dict[str, BaseDistribution], dict[str, Any]]:
    """(name, fixed parameters, space, defaults) for ``NAME[:key=value,...]``: parameters given in
    the spec stay fixed; the rest of the name's table is searched, from the factory's defaults."""
    import inspect

    from controllers import REGISTRY, ControllerError, make_controller, parse_spec, split_composite

    if len(split_composite(controller)) > 1:
        raise ControllerError(f"tune one controller at a time, not {controller!r}; --cap adds and tunes the in-flight cap")
    make_controller(controller)  # bad names and parameters: the registry's one-line error
    name, fixed = parse_spec(controller)
    if name not in SPACES:
        raise ControllerError(f"controller {name!r} has no search space; tunable: {', '.join(SPACES)}")
    params = inspect.signature(REGISTRY[name]).parameters
    space = {k: d for k, d in SPACES[name].items() if k not in fixed}
    defaults = {k: params[k].default for k in space}
    for k, d in space.items():
        if not _contains(d, defaults[k]):  # a table that drifted from the code
            raise ValueError(f"SPACES[{name!r}][{k!r}] does not contain {name}'s default {k}={defaults[k]!r}")
    if cap:
        space, defaults = {**space, **CAP_SPACE}, {**defaults, CAP: 0}
    return name, fixed, space, defaults


def start_points(controller: str, cap: bool, starts: Sequence[str]) -> list[dict[str, Any]]:
    """The search points of ``starts``, specs of the tuned controller (e.g. the best of a grid of
    caps, ``wanspec+inflight-cap:max_inflight=128``): parameters they leave out keep their defaults."""
    from controllers import ControllerError, parse_spec, split_composite

    name, fixed, space, _ = search_space(controller, cap)
    points = []
    for spec in starts:
        parts = split_composite(spec)
        base, params = parse_spec(parts[0])
        if base != name or len(parts) > 2:
            raise ControllerError(f"--start {spec!r} is not a spec of {name} (optionally +inflight-cap:{CAP}=N)")
        if len(parts) == 2:
            extra, capped = parse_spec(parts[1])
            if extra != "inflight-cap" or not cap:
                raise ControllerError(f"--start {spec!r}: only an in-flight cap may be composed, and only with --cap")
            params = {**params, **capped}
        for k, v in params.items():
            if k in fixed and fixed[k] == v:
                continue
            if k not in space:
                raise ControllerError(f"--start {spec!r}: {k} is not searched here; searched: {', '.join(space)}")
            if not _contains(space[k], v):
                raise ControllerError(f"--start {spec!r}: {k}={v!r} lies outside the search space {space[k]!r}")
        points.append({k: v for k, v in params.items() if k in space})
    return points


def _contains(d: BaseDistribution, v: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return v in d.choices
    if v is None or isinstance(v, bool) or not d.low <= v <= d.high:  # type: ignore[attr-defined]
        return False
    step = getattr(d, "step", None)
    return step is None or abs((v - d.low) / step - round((v - d.low) / step)) < 1e-9  # type: ignore[attr-defined]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{round(v, 6):g}"
    return str(v)


def spec_of(name: str, fixed: dict[str, Any], params: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The controller spec for a trial: fixed and non-default parameters only, the cap after ``+``."""
    chosen = {**fixed, **{k: v for k, v in params.items() if k != CAP and v is not None and v != defaults.get(k)}}
    spec = name + (":" + ",".join(f"{k}={_value(v)}" for k, v in chosen.items()) if chosen else "")
    cap = params.get(CAP) or 0
    return spec + (f"+inflight-cap:{CAP}={int(cap)}" if cap > 0 else "")


def _goodput(job: tuple[str, str, int, float, float | None]) -> float:
    from training.evaluate import run_once

    scenario, spec, seed, duration, rate = job
    return float(run_once(scenario, spec, seed, duration, rate)["goodput_rps"])


@dataclass(frozen=True)
class _Objective:
    """Mean goodput of a trial's spec over the seeds (picklable: Ray Tune ships it to trials)."""

    scenario: str
    rate: float | None
    seeds: tuple[int, ...]
    duration: float
    name: str
    fixed: dict[str, Any]
    defaults: dict[str, Any]

    def goodputs(self, params: dict[str, Any], backend: Any = None) -> list[float]:
        spec = spec_of(self.name, self.fixed, params, self.defaults)
        jobs = [(self.scenario, spec, s, self.duration, self.rate) for s in self.seeds]
        if backend is None:
            return [_goodput(j) for j in jobs]
        return backend.map(_goodput, jobs, progress=False)

    def __call__(self, params: dict[str, Any]) -> float:
        return sum(self.goodputs(params)) / len(self.seeds)


def tune_controller(
    scenario: str,
    rate: float | None,
    controller: str,
    *,
    trials: int = 30,
    seeds: Sequence[int] | None = None,
    duration: float = 30.0,
    cap: bool = False,
    workers: int = 2,
    ray: str | None = None,
    seed: int = 0,
    progress: bool = True,
    track: bool = False,
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
    starts: Sequence[str] = (),
) -> TuneResult:
    """Tune ``controller``'s parameters (and, with ``cap``, an in-flight cap) for ``scenario`` at
    ``rate`` req/s (None: the scenario's own) to maximize mean goodput over ``seeds`` (default:
    4 validation seeds), ``trials`` trials, the first the defaults.

    ``ray``: an address (``""``: Ray's default) to run Ray Tune trials there; None: Optuna here,
    each trial's seeds on ``workers`` processes. ``seed`` seeds the sampler. ``track`` logs one
    MLflow run (nested under the active run, if any) with a nested run per trial, to
    ``tracking_uri``/``experiment`` (see ``training.tracking``). ``starts``: specs of the same
    controller scored right after the defaults (:func:`start_points`). Bad names, parameters or
    scenarios raise ``ValueError`` subclasses with one line.
    """
    from training.backend import Backend, resolve_ray
    from training.evaluate import applicability
    from training.search import Point, maximize

    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    seeds = list(seeds) if seeds is not None else validation_seeds(4)
    if not seeds:
        raise ValueError("tuning needs at least one seed")
    name, fixed, space, defaults = search_space(controller, cap)
    first = start_points(controller, cap, starts)
    reason = applicability([scenario], [controller])[scenario, controller]
    if reason is not None:
        raise ValueError(f"{controller} cannot run {scenario}: {reason}")
    objective = _Objective(scenario, rate, tuple(seeds), duration, name, fixed, defaults)
    address = resolve_ray(ray)
    result = TuneResult(scenario, rate, controller, seeds, duration, "", float("-inf"), spec_of(name, fixed, defaults, defaults),
                        float("nan"), backend=f"ray tune ({address or 'default'})" if address is not None else f"optuna (pool:{workers})")
    logger = _MlflowTrials(result, space, tracking_uri, experiment) if track else None
    per_seed: dict[str, list[float]] = {}  # local trials keep their per-seed goodputs for MLflow
    with Backend(workers) if address is None else Backend(1, ray=address) as backend:
        def pooled(params: dict[str, Any]) -> float:  # a local trial: its seeds in parallel on the pool
            key = str(params)  # the sampler may repeat a point of a small space: the runs are deterministic
            if key not in per_seed:
                per_seed[key] = objective.goodputs(params, backend)
            return sum(per_seed[key]) / len(per_seed[key])

        run = pooled if address is None else objective  # a Ray trial runs its seeds in-process

        def on_trial(p: Point) -> None:
            trial = Trial(p.number, spec_of(name, fixed, p.params, defaults), p.params, p.score, tuple(per_seed.get(str(p.params), ())))
            result.trials.append(trial)
            if p.default:
                result.default_score = p.score
            if p.score > result.best_score:
                result.best_spec, result.best_score = trial.spec, trial.score
            if logger is not None:
                logger.trial(trial)

        with logger or nullcontext():
            maximize(run, space, defaults, trials=trials, seed=seed, ray=address, on_trial=on_trial, progress=progress,
                     desc=f"tune {name}", starts=first)
            if result.default_score >= result.best_score:  # ties go to the defaults (fewer parameters to explain)
                result.best_spec, result.best_score = result.default_spec, result.default_score
            if logger is not None:
                logger.finish()
    return result


class _MlflowTrials:
    """One MLflow run per tuning (nested under an active run), one nested run per trial, logged
    from this process as trials finish (workers need no access to the tracking store)."""

    def __init__(self, result: TuneResult, space: dict[str, BaseDistribution], uri: str | None, experiment: str) -> None:
        self.result, self.space, self.uri, self.experiment = result, space, uri, experiment

    def __enter__(self) -> "_MlflowTrials":
        import mlflow

        from training.tracking import setup_tracking

        active = mlflow.active_run()
        if active is None:
            self.experiment_id = setup_tracking(self.uri, self.experiment)
        else:
            self.experiment_id = active.info.experiment_id
        r = self.result
        self.run = mlflow.start_run(experiment_id=self.experiment_id, nested=active is not None,
                                    run_name=f"tune {r.controller} {r.scenario}@{r.rate or 'own rate'}")
        mlflow.log_params({"scenario": r.scenario, "rate": r.rate, "controller": r.controller, "seeds": r.seeds,
                           "duration": r.duration, "backend": r.backend, "space": {k: repr(d) for k, d in self.space.items()}})
        self.client = mlflow.MlflowClient()
        return self

    def trial(self, t: Trial) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=f"trial {t.number}",
                                     tags={"mlflow.parentRunId": self.run.info.run_id, "spec": t.spec})
        now = int(time.time() * 1000)
        metrics = [Metric("goodput_rps", t.score, now, 0)] + [Metric("goodput_rps_seed", g, now, i) for i, g in enumerate(t.goodputs)]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, _value(v)[:500]) for k, v in t.params.items()])
        self.client.set_terminated(run.info.run_id)

    def finish(self) -> None:
        import mlflow

        r = self.result
        mlflow.log_metrics({"best_goodput_rps": r.best_score, "default_goodput_rps": r.default_score, "gain": r.gain})
        mlflow.set_tags({"best_spec": r.best_spec, "default_spec": r.default_spec})
        mlflow.log_text(r.best_spec + "\n", "best_spec.txt")
        r.mlflow_run_id = self.run.info.run_id

    def __exit__(self, *exc: object) -> None:
        import mlflow

        mlflow.end_run("FAILED" if exc[0] is not None else "FINISHED")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m training.tune", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, help="shipped scenario name or YAML path")
    p.add_argument("--rate", type=positive("rate in requests/s"), help="arrival rate, req/s (default: the scenario's own)")
    p.add_argument("--controller", required=True,
                   help=f"controller to tune: {', '.join(SPACES)}; NAME:key=value,... keeps those parameters fixed")
    p.add_argument("--cap", action="store_true", help="also tune an in-flight admission cap (+inflight-cap:max_inflight=N)")
    p.add_argument("--trials", type=whole("number of trials"), default=30, help="trials, the first the defaults (default: 30)")
    p.add_argument("--start", action="append", default=[], metavar="SPEC",
                   help="a spec of the same controller to score right after the defaults, e.g. a grid's best "
                        "(wanspec+inflight-cap:max_inflight=128); repeatable")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds to score on (default: 4 validation seeds, those training/train.py selects models on)")
    p.add_argument("--duration", type=positive_float, default=30.0, help="arrival window per run, simulated s (default: 30)")
    p.add_argument("--workers", type=whole("number of worker processes"), default=2, help="processes for each trial's seeds (default: 2)")
    add_ray_flag(p)
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default: {EXPERIMENT})")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the best spec")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.contract import InvalidDecision
    from runtime.scenario import ScenarioError

    args = build_parser().parse_args(argv)
    try:
        r = tune_controller(args.scenario, args.rate, args.controller, trials=args.trials, seeds=args.seeds,
                            duration=args.duration, cap=args.cap, workers=args.workers, ray=args.ray, seed=args.seed,
                            progress=not args.quiet, track=not args.no_mlflow, tracking_uri=args.tracking_uri,
                            experiment=args.experiment, starts=args.start)
    except (ScenarioError, InvalidDecision, ValueError, RuntimeError) as e:  # ControllerError, BackendError: ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        at = f"{r.rate:g} req/s" if r.rate else "its own rate"
        print(f"{r.controller} on {r.scenario} at {at}: {len(r.trials)} trials ({r.backend}), "
              f"mean goodput over {len(r.seeds)} seeds x {r.duration:g} s")
        print(f"  defaults  {r.default_score:8.3f} req/s  {r.default_spec}")
        print(f"  best      {r.best_score:8.3f} req/s  {r.best_spec}  ({r.gain:.3f}x the defaults)")
        if r.mlflow_run_id:
            print(f"  mlflow run {r.mlflow_run_id} in experiment {args.experiment!r}")
    print(r.best_spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
