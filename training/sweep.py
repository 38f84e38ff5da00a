"""Sweeps of ``training/train.py`` over seeds and hyperparameters: ``train.py --sweep FILE``.

Each trial is one ordinary training run (a subprocess: ``python -m training.train`` with the
other flags given, a config that overrides the base config, and ``--seed``), logged to MLflow
as usual and nested under one sweep run. Its score is the best validation-seed goodput the run
logged (the metric its own model selection used), so the sweep picks on validation seeds and
the test seeds stay untouched. Optuna's TPE sampler picks the points; the first trial is the
base config as it is, with the first seed. With ``--ray`` the trials are Ray Tune trials
(``OptunaSearch``) on the cluster, each running its own evaluations in its pool.

The sweep file (YAML)::

    config: training/configs/knobs.yaml   # the base config (default: --config); relative to the repo or the file
    trials: 8                             # runs in all (default 8)
    seeds: [0, 1, 2]                      # training seeds, a dimension of the search (default: --seed)
    args: [--total-timesteps, "3000"]     # more train.py flags for every trial (optional)
    metric: eval/validation_goodput_rps   # optional; default: the first validation metric the run logged
    space:                                # config keys (dotted for nested ones) -> a distribution
      learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}
      n_steps: {choices: [100, 150, 300]}
      warm_start.episodes: {low: 2, high: 8}     # whole numbers when low and high are
      ent_coef: {low: 0.0, high: 0.02, default: 0.005}   # default: when the base config lacks the key

Keys are merged into every block of a config made of blocks (``default`` and env ids), so the
override wins whichever block applies. ``--set KEY=VALUE`` flags change the base config first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from training.common import REPO, ConfigError, config_source, get_dotted, parse_overrides, with_overrides

#: Validation metrics the training recipes log, in the order a sweep looks for them.
METRICS = ("eval/validation_goodput_rps", "eval/goodput_rps")
SWEEP_KEYS = {"config", "trials", "seeds", "args", "metric", "space"}
SEED = "seed"
#: train.py flags a sweep sets per trial, or handles itself (not passed through).
#: --set (``overrides``) is applied to the base config, which each trial then overrides.
OWN_FLAGS = {"sweep", "ray", "config", "seed", "run_name", "tracking_uri", "experiment", "out", "overrides"}


def distribution(key: str, entry: Any) -> tuple[BaseDistribution, Any]:
    """``{choices: [...]}`` or ``{low, high[, log][, step]}`` (plus an optional ``default``) ->
    (an Optuna distribution, the default or None)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"sweep space {key!r}: expected {{choices: [...]}} or {{low: L, high: H[, log: true]}}, got {entry!r}")
    entry = dict(entry)
    default = entry.pop("default", None)
    if "choices" in entry:
        if set(entry) != {"choices"} or not isinstance(entry["choices"], list) or not entry["choices"]:
            raise ConfigError(f"sweep space {key!r}: 'choices' takes a non-empty list and nothing else but 'default'")
        return CategoricalDistribution(entry["choices"]), default
    bad = set(entry) - {"low", "high", "log", "step"}
    if bad or not {"low", "high"} <= set(entry):
        raise ConfigError(f"sweep space {key!r}: expected keys low, high (and log or step), got {sorted(entry)}")
    low, high, log, step = entry["low"], entry["high"], bool(entry.get("log", False)), entry.get("step")
    try:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) and (step is None or isinstance(step, int)):
            return IntDistribution(low, high, log=log, step=step or 1), default
        return FloatDistribution(float(low), float(high), log=log, step=step), default
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sweep space {key!r}: {e}") from None


def _plain(value: Any) -> Any:
    """numpy scalars from a sampler -> plain YAML-able values."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    config: Path
    base: dict[str, Any]
    trials: int
    seeds: list[int]
    args: list[str]
    metric: str | None
    space: dict[str, BaseDistribution]
    defaults: dict[str, Any]


def load_sweep(path: Path, config: Path | None, seed: int, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and check a sweep file; every problem is one :class:`ConfigError` line. ``overrides``
    (``--set``) change the base config before the space is read from it."""
    from runtime.scenario import read_yaml_mapping

    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    raw = read_yaml_mapping(path, "sweep", ConfigError, "a mapping with 'space' (and config, trials, seeds, args, metric)")
    bad = sorted(set(raw) - SWEEP_KEYS)
    if bad:
        raise ConfigError(f"sweep {path}: unknown key(s) {bad}; valid: {sorted(SWEEP_KEYS)}")
    cfg_path = Path(raw["config"]) if raw.get("config") else config
    if cfg_path is None:
        raise ConfigError(f"sweep {path}: name the base config ('config: training/configs/<name>.yaml', or --config)")
    if not cfg_path.is_absolute() and not cfg_path.exists():
        cfg_path = next((p for p in (REPO / cfg_path, path.parent / cfg_path) if p.exists()), cfg_path)
    if not cfg_path.is_file():
        raise ConfigError(f"sweep {path}: base config {cfg_path} does not exist")
    base = with_overrides(read_yaml_mapping(cfg_path, "config", ConfigError, "a mapping of hyperparameters"), overrides)
    trials, seeds, args = raw.get("trials", 8), raw.get("seeds", [seed]), raw.get("args", [])
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"sweep {path}: trials must be a whole number >= 1, got {trials!r}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"sweep {path}: seeds must be a non-empty list of whole numbers, got {seeds!r}")
    if not isinstance(args, list):
        raise ConfigError(f"sweep {path}: args must be a list of train.py flags, e.g. [--total-timesteps, '3000']")
    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, dict) or SEED in space_raw:
        raise ConfigError(f"sweep {path}: space must map config keys to distributions (training seeds go in 'seeds')")
    space: dict[str, BaseDistribution] = {}
    defaults: dict[str, Any] = {}
    lookup = base.get("default", {}) if "default" in base else base
    for key, entry in space_raw.items():
        dist, default = distribution(str(key), entry)
        value = get_dotted(lookup, str(key)) if default is None else default
        if value is None:
            raise ConfigError(f"sweep {path}: {config_source(cfg_path, overrides)} has no {key!r}; give the space entry a 'default'")
        inside = value in dist.choices if isinstance(dist, CategoricalDistribution) else dist.low <= value <= dist.high
        if not inside:
            raise ConfigError(f"sweep {path}: space {key!r} does not contain the base value {value!r}; widen it (the base config is the first trial)")
        space[str(key)], defaults[str(key)] = dist, value
    space[SEED], defaults[SEED] = CategoricalDistribution(seeds), seeds[0]
    metric = raw.get("metric")
    return Sweep(cfg_path.resolve(), base, trials, seeds, [str(a) for a in args], metric, space, defaults)


def passthrough(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The train.py flags given on the command line (those not at their defaults), for every trial."""
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in OWN_FLAGS or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        out += [flag] if value is True else [flag, str(value)]
    return out


@dataclass(frozen=True)
class _Trial:
    """One sweep trial: a train.py subprocess, then its best validation score from MLflow."""

    config: str  # the base config, relative to the repository when inside it (workers have their own copy)
    base: dict[str, Any]
    flags: tuple[str, ...]
    uri: str
    experiment: str
    parent: str
    metric: str | None
    out: str | None = None  # --out: each trial's checkpoints in a folder of it named after the run

    def __call__(self, params: dict[str, Any]) -> float:
        import mlflow

        import training

        root = Path(training.__file__).resolve().parents[1]  # this worker's copy of the code
        base_path = Path(self.config) if Path(self.config).is_absolute() else root / self.config
        params = {k: _plain(v) for k, v in params.items()}
        seed = params.pop(SEED)
        tag = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
        name = f"sweep-{self.parent[:8]}-{tag}-s{seed}-{uuid.uuid4().hex[:4]}"
        # a sibling of the base config, so paths relative to it resolve the same way
        fd, cfg_file = tempfile.mkstemp(prefix=f".{base_path.stem}.{name}.", suffix=".yaml", dir=base_path.parent)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the run's evaluations stay in its pool
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(with_overrides(self.base, params), f, sort_keys=False)
            cmd = [sys.executable, "-m", "training.train", *self.flags, "--config", cfg_file, "--seed", str(seed),
                   "--run-name", name, "--experiment", self.experiment, "--tracking-uri", self.uri]
            cmd += ["--out", str(Path(self.out) / name)] if self.out else []
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # its exit code is checked below
        finally:
            Path(cfg_file).unlink(missing_ok=True)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise RuntimeError(f"sweep trial {params} seed {seed}: train.py exited {done.returncode}: {last}")
        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(self.experiment)
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
        if not runs:
            raise RuntimeError(f"sweep trial {name}: train.py logged no MLflow run")
        run = runs[0]
        client.set_tag(run.info.run_id, "mlflow.parentRunId", self.parent)  # nest it under the sweep
        client.log_text(run.info.run_id, done.stdout + done.stderr, "sweep_trial.log")
        for metric in [self.metric] if self.metric else METRICS:
            history = client.get_metric_history(run.info.run_id, metric)
            if history:
                return max(m.value for m in history)
        raise RuntimeError(f"sweep trial {name}: the run logged none of {[self.metric] if self.metric else list(METRICS)}; "
                           "set 'metric' in the sweep file to its validation metric")


def sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``train.py --sweep FILE``: run the sweep, print the best trial, return an exit code."""
    import mlflow

    from training.backend import resolve_ray
    from training.search import Point, maximize
    from training.tracking import resolve_tracking_uri, setup_tracking

    s = load_sweep(Path(args.sweep), args.config, args.seed, parse_overrides(args.overrides))
    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        experiment_id = setup_tracking(uri, args.experiment)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    address = resolve_ray(args.ray)
    flags = passthrough(args, parser) + s.args
    try:
        config = str(s.config.relative_to(REPO))
    except ValueError:
        config = str(s.config)  # outside the repository: must be readable where the trials run
    print(f"sweep {args.sweep}: {s.trials} training runs of {s.config.name} over {sorted(s.space)} "
          f"({'Ray Tune at ' + (address or 'the default address') if address is not None else 'here, one after another'}); MLflow {uri}")
    results: list[Point] = []
    with mlflow.start_run(experiment_id=experiment_id, run_name=args.run_name or f"sweep {Path(args.sweep).stem}") as parent:
        mlflow.log_artifact(str(args.sweep))
        mlflow.log_params({"sweep_file": str(args.sweep), "base_config": str(s.config), "trials": s.trials, "seeds": s.seeds,
                           "flags": " ".join(flags), "backend": "ray tune" if address is not None else "local"})
        trial = _Trial(config, s.base, tuple(flags), uri, args.experiment, parent.info.run_id, s.metric,
                       str(Path(args.out).resolve()) if args.out else None)

        def on_trial(p: Point) -> None:
            results.append(p)
            mlflow.log_metric("trial_score", p.score, step=p.number)

        try:
            maximize(trial, s.space, s.defaults, trials=s.trials, seed=args.seed, ray=address, on_trial=on_trial, desc="sweep")
        except RuntimeError as e:  # a trial's run failed: its last line says why
            print(f"error: {e}", file=sys.stderr)
            mlflow.set_tag("specctl.status", "failed")
            return 1
        best = max(results, key=lambda p: (p.score, p.default))
        default = next(p for p in results if p.default)
        mlflow.log_metrics({"best_score": best.score, "base_score": default.score})
        mlflow.log_dict({"params": best.params, "score": best.score}, "best.json")
        mlflow.set_tag("best_params", json.dumps(best.params, default=str)[:5000])
    print(f"base config (seed {default.params[SEED]}): {default.score:.4f}")
    print(f"best of {len(results)}: {best.score:.4f} with {json.dumps(best.params, default=str)}")
    print(f"MLflow sweep run {parent.info.run_id} in experiment {args.experiment!r} (trials nested under it)")
    return 0


if __name__ == "__main__":  # ``python -m training.sweep FILE [train.py flags]``: ``train.py --sweep FILE``
    from training.train import main as train_main  # here, not in a function: train.py imports this module

    argv = sys.argv[1:]
    sys.exit(train_main(["--sweep", *argv] if argv and not argv[0].startswith("-") else argv))
