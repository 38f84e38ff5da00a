"""Train a speculation policy with stable-baselines3, track it in MLflow, compare it with the heuristics.

    python training/train.py                                   # the default: a useful policy in < 10 min
    python training/train.py --algo ppo --env specctl/DraftLength-v0 --total-timesteps 200000
    python training/train.py --scenario edge-fleet --n-envs 4 --vec-env subproc --run-name edge
    python training/train.py --resume checkpoints/<run>/model.zip --total-timesteps 100000

Hyperparameters come from ``training/configs/<algo>.yaml`` (RL-Zoo style: a ``default`` block,
then one block per env id that overrides it); flags override the config. Every run logs its
resolved config, SB3's training metrics, periodic evaluations on held-out seeds against the
heuristic controllers, the final comparison table, plots, the checkpoint and the policy (as an
MLflow model) to MLflow. The best policy by evaluation goodput is kept. Ctrl-C saves a
checkpoint. Bad flags or configs print one line (``error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import yaml

from runtime.scenario import beside, deep_merge, read_yaml_mapping
from training.backend import add_ray_flag
from training.common import CONFIG_DIR, REPO, VALIDATION_OFFSET, ConfigError, add_set_flag, build_vec_env, config_source, hyperparams, make_env_fn, parse_overrides, policy_class, progress, progress_callback, tqdm_write, with_overrides  # noqa: F401
from training.compare import Comparison, comparison_table, evaluate_baselines, evaluate_controllers, ratio_ci, run_controller  # noqa: F401

KNOBS_ENV = "specctl/SpecKnobs-v0"
DEFAULT_ENV = KNOBS_ENV
DEFAULT_ALGO = "maskable_ppo"
EXPERIMENT = "specctl-policies"
#: Keys of a config block that are not the algorithm's own keyword arguments.
RUN_KEYS = {"n_envs", "total_timesteps", "policy", "env_kwargs", "eval", "vec_env", "pretrain", "config_file"}
EVAL_DEFAULTS: dict[str, Any] = {
    "seeds": 10,  # held-out simulator seeds for the final comparison
    "duration": 60.0,  # arrival window of each evaluation run (simulated s)
    "periodic_seeds": 3,  # seeds for the periodic evaluations during training
    "periodic_duration": 30.0,
    "every": 50_000,  # timesteps between periodic evaluations (0: only at the end)
    "baselines": ["all"],  # controller specs; "all" = every registered heuristic
    "reference": ["oracle"],  # shown in the table, never counted as the best heuristic
}

PRETRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 0,  # env steps of the base heuristic to clone before RL (0: start from scratch)
    "epochs": 10,
    "learning_rate": 1.0e-3,
    "batch_size": 256,
    # controller spec whose admit() labels the arrivals to clone (None: the base heuristic's);
    # a teacher used only for cloning, e.g. the clairvoyant oracle (privileged information the
    # policy never sees at deployment: it only sees its observation)
    "admission_teacher": None,
    # loss weight of the steps where the teacher turns an arrival away (rare, and where the
    # clone's threshold is decided); 1 weighs every step alike
    "drop_weight": 1.0,
    # DAgger rounds after the first fit: the clone acts, the teacher labels what it visits
    "dagger": 0,
}


# ------------------------------------------------------------------------------ algorithms
def algorithms() -> dict[str, Any]:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    return {"maskable_ppo": MaskablePPO, "ppo": PPO, "a2c": A2C, "dqn": DQN}


ALGO_NAMES = ("maskable_ppo", "ppo", "a2c", "dqn")


# ------------------------------------------------------------------------------ config
def load_config(path: Path, env_id: str, algo: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``default`` block of ``path`` merged with the ``env_id`` block (nested dicts merge), with
    ``overrides`` (``--set``: dotted keys) set in every block."""
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist (configs ship in {CONFIG_DIR})")
    raw = read_yaml_mapping(path, "config", ConfigError,
                            "a mapping of env ids (and 'default') to hyperparameter blocks", empty_ok=True)
    if overrides:
        raw.setdefault("default", {})  # a config of env-id blocks: the override goes in every block
    raw = with_overrides(raw, overrides)
    src = config_source(path, overrides)
    for key, block in raw.items():
        if not isinstance(block, dict):
            raise ConfigError(f"{src}: block {key!r} must be a mapping of hyperparameters, got {type(block).__name__}")
    cfg = deep_merge(raw.get("default", {}), raw.get(env_id, {}))
    cfg.setdefault("policy", "MlpPolicy")
    cfg.setdefault("n_envs", 1)
    cfg.setdefault("total_timesteps", 100_000)
    cfg.setdefault("vec_env", "dummy")
    cfg.setdefault("env_kwargs", {})
    cfg["eval"] = {**EVAL_DEFAULTS, **(cfg.get("eval") or {})}
    cfg["pretrain"] = {**PRETRAIN_DEFAULTS, **(cfg.get("pretrain") or {})}
    _validate(cfg, src, algo)
    return cfg


def _validate(cfg: dict[str, Any], src: str, algo: str) -> None:
    cls = algorithms()[algo]
    valid = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "env", "policy", "seed", "verbose", "tensorboard_log", "device", "_init_setup_model")}
    bad = sorted(set(cfg) - valid - RUN_KEYS)
    if bad:
        raise ConfigError(f"{src}: unknown key(s) {bad} for {algo}; valid: {sorted(valid | RUN_KEYS)}")
    bad_eval = sorted(set(cfg["eval"]) - set(EVAL_DEFAULTS))
    if bad_eval:
        raise ConfigError(f"{src}: unknown eval key(s) {bad_eval}; valid: {sorted(EVAL_DEFAULTS)}")
    bad_pre = sorted(set(cfg["pretrain"]) - set(PRETRAIN_DEFAULTS))
    if bad_pre:
        raise ConfigError(f"{src}: unknown pretrain key(s) {bad_pre}; valid: {sorted(PRETRAIN_DEFAULTS)}")
    if not isinstance(cfg["env_kwargs"], dict):
        raise ConfigError(f"{src}: env_kwargs must be a mapping of SpecControlEnv arguments")
    for key in ("n_envs", "total_timesteps"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{src}: {key} must be a positive integer, got {cfg[key]!r}")
    if cfg["vec_env"] not in ("dummy", "subproc"):
        raise ConfigError(f"{src}: vec_env must be 'dummy' or 'subproc', got {cfg['vec_env']!r}")


# ------------------------------------------------------------------------------ environments
def probe_env(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    """One env instance, to validate arguments early and read the codec."""
    import gymnasium as gym

    import policy_env

    if env_id not in policy_env.ENV_IDS:
        raise ConfigError(f"unknown env {env_id!r}; registered: {', '.join(policy_env.ENV_IDS)}")
    try:
        return gym.make(env_id, **env_kwargs).unwrapped
    except (TypeError, ValueError) as e:
        if type(e).__name__ in ("ScenarioError", "ControllerError"):
            raise
        raise ConfigError(f"env_kwargs for {env_id}: {e}") from None


# ------------------------------------------------------------------------------ evaluation
def teacher_controller(base: str, teacher: str) -> Any:
    """The cloning target as a controller: ``base`` with ``teacher``'s admission (a reference row)."""
    from controllers import make_controller
    from runtime.contract import compose

    return compose(make_controller(base), admission=make_controller(teacher))


def load_policy(policy_dir: str) -> Any:
    """The exported (deployable) policy, as the controller slot loads it."""
    from controllers.policy import PolicyController

    return PolicyController.load(policy_dir)


def evaluate_policy(policy_dir: Path, scenario: Any, seeds: Sequence[int], duration: float, rate: float | None, workers: int = 1) -> list[dict[str, float]]:
    """The exported policy in the simulator's controller slot, seed by seed."""
    cmp = evaluate_controllers(scenario, {"policy": partial(load_policy, str(policy_dir))}, seeds, duration, rate, workers, desc="policy")
    return cmp.rows["policy"]


def baseline_specs(eval_cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(heuristics, references): ``all`` expands to every heuristic but the references."""
    from controllers import HEURISTICS, REGISTRY

    refs = [r for r in eval_cfg["reference"] if r.split(":")[0] in REGISTRY]
    out: list[str] = []
    for spec in eval_cfg["baselines"]:
        # "all": every heuristic (controllers.registry.HEURISTICS) that is not a reference row
        skip = {r.split(":")[0] for r in refs}
        names = [n for n in HEURISTICS if n not in skip] if spec == "all" else [spec]
        out += [n for n in names if n not in out]
    return out, refs


# ------------------------------------------------------------------------------ warm start
@dataclass
class CloneData:
    """Steps labelled by the teacher: observations, its actions, masks, discounted returns, turn-aways."""

    obs: np.ndarray
    act: np.ndarray
    mask: np.ndarray
    ret: np.ndarray
    drops: np.ndarray  # steps where the teacher turns an arrival away

    def __add__(self, other: "CloneData") -> "CloneData":
        return CloneData(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in ("obs", "act", "mask", "ret", "drops")))


def collect_clone_data(env: Any, obs: np.ndarray, n: int, gamma: float, desc: str,
                       act: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[CloneData, np.ndarray]:
    """``n`` env steps from ``obs`` labelled with ``env.expert_action()``, and the next observation.
    The env follows the teacher, or ``act(obs, mask)`` (DAgger: the states the learner visits)."""
    from policy_env.codec import block_period

    obs_buf = np.zeros((n, env.observation_space.shape[0]), dtype=np.float32)
    act_buf = np.zeros((n, len(env.action_space.nvec)), dtype=np.int64)
    mask_buf = np.zeros((n, int(env.action_space.nvec.sum())), dtype=bool)
    rew = np.zeros(n, dtype=np.float32)
    done = np.zeros(n, dtype=bool)
    for i in progress(iterable=range(n), desc=desc, unit="step"):
        obs_buf[i], act_buf[i], mask_buf[i] = obs, env.expert_action(), env.action_masks()
        obs, rew[i], term, trunc, _ = env.step(act_buf[i] if act is None else act(obs_buf[i], mask_buf[i]))
        done[i] = term or trunc
        if done[i]:
            obs, _ = env.reset()
    ret = np.zeros(n, dtype=np.float32)
    acc = 0.0
    for i in range(n - 1, -1, -1):
        acc = rew[i] + gamma * acc * (not done[i])
        ret[i] = acc
    # a plan point (obs[0] = +1) with a slot whose accept bit is free and labelled 0
    width = int(env.action_space.nvec[: block_period(env.action_space.nvec)].sum())
    accept_free = mask_buf.reshape(n, -1, width)[:, :, -1]
    drops = (obs_buf[:, 0] > 0) & (accept_free & (act_buf.reshape(n, accept_free.shape[1], -1)[:, :, -1] == 0)).any(1)
    return CloneData(obs_buf, act_buf, mask_buf, ret, drops), obs


def fit_clone(model: Any, data: CloneData, cfg: dict[str, Any], seed: int) -> tuple[float, float]:
    """Fit the policy to the teacher's actions (masked log-likelihood, turn-aways weighted
    ``drop_weight``) and the value head to the discounted returns; (last nll, last value mse)."""
    import torch
    policy = model.policy
    masked = "action_masks" in inspect.signature(policy.evaluate_actions).parameters
    opt = torch.optim.Adam(policy.parameters(), lr=float(cfg["learning_rate"]))
    n = len(data.obs)
    weight = np.where(data.drops, float(cfg.get("drop_weight", 1.0)), 1.0).astype(np.float32)
    o, a, m, r, wt = (torch.as_tensor(x) for x in (data.obs, data.act, data.mask, data.ret, weight))
    bs = int(cfg["batch_size"])
    rng = np.random.default_rng(seed)
    policy.set_training_mode(True)
    nll = vloss = 0.0
    for _ in progress(iterable=range(int(cfg["epochs"])), desc="fit clone", unit="epoch"):
        for idx in np.array_split(rng.permutation(n), max(1, n // bs)):
            kw = {"action_masks": m[idx].numpy()} if masked else {}
            values, log_prob, _ = policy.evaluate_actions(o[idx], a[idx], **kw)
            v = torch.nn.functional.mse_loss(values.flatten(), r[idx])
            loss = -(wt[idx] * log_prob).sum() / wt[idx].sum() + 0.5 * v
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            opt.step()
            nll, vloss = -log_prob.mean().item(), v.item()
    policy.set_training_mode(False)
    return nll, vloss


def _predict(model: Any, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The deterministic action(s), masked where the algorithm supports masks."""
    masked = "action_masks" in inspect.signature(model.policy.evaluate_actions).parameters
    kw = {"action_masks": mask} if masked else {}
    return model.predict(obs, deterministic=True, **kw)[0]


def pretrain(model: Any, env_id: str, env_kwargs: dict[str, Any], cfg: dict[str, Any], seed: int, gamma: float) -> dict[str, float]:
    """Behaviour cloning from the env's base heuristic, before RL, with optional DAgger rounds.

    Runs the heuristic through the env for ``steps`` steps, recording its answers as actions
    (``SpecControlEnv.expert_action``), then fits the policy to them. Each of the ``dagger``
    rounds then lets the clone act for ``steps`` more steps, labels the states *it* visits with
    the teacher's answers, and refits on everything so far (Ross et al., 2011): a clone that
    drifts off the teacher's states learns how to get back. RL then starts from the teacher's
    behaviour instead of uniform random choices.
    """
    import gymnasium as gym

    teacher = cfg.get("admission_teacher")
    env = gym.make(env_id, **env_kwargs, **({"admission_teacher": teacher} if teacher else {})).unwrapped
    n = int(cfg["steps"])
    obs, _ = env.reset(seed=seed + 7919)
    data, obs = collect_clone_data(env, obs, n, gamma, "clone base heuristic")
    nll, vloss = fit_clone(model, data, cfg, seed)
    last = data  # agreement is measured on the last collected steps: the learner's own after DAgger
    for r in range(int(cfg["dagger"])):
        last, obs = collect_clone_data(env, obs, n, gamma, f"DAgger round {r + 1}", act=lambda o, m: _predict(model, o, m))
        data = data + last
        nll, vloss = fit_clone(model, data, cfg, seed + r + 1)
    sample = slice(0, min(len(last.obs), 4096))
    pred = _predict(model, last.obs[sample], last.mask[sample])
    cuts = np.cumsum(env.action_space.nvec)[:-1]
    free = np.stack([seg.sum(1) > 1 for seg in np.split(last.mask[sample], cuts, axis=1)], 1)  # real choices only
    agree = float((pred == last.act[sample])[free].mean()) if free.any() else 1.0
    recall = 1.0
    if last.drops.any():  # how many of the teacher's turn-aways the clone reproduces
        recall = float((_predict(model, last.obs[last.drops], last.mask[last.drops]) == last.act[last.drops]).all(1).mean())
    return {"pretrain/nll": nll, "pretrain/value_mse": vloss, "pretrain/agreement": agree, "pretrain/steps": float(len(data.obs)),
            "pretrain/teacher_drops": float(last.drops.sum()), "pretrain/drop_recall": recall}


# ------------------------------------------------------------------------------ callbacks
def make_eval_callback(**kwargs: Any) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class CompareCallback(BaseCallback):
        """Every ``every`` timesteps: export the policy, run it in the simulator on held-out seeds,
        log goodput against the best heuristic, and keep the best export (like SB3's EvalCallback)."""

        def __init__(self, out_dir: Path, export: Callable[[Path], Path], scenario: Any, seeds: list[int], duration: float,
                     rate: float | None, baseline_goodput: float, best_name: str, every: int) -> None:
            super().__init__()
            self.out_dir, self.export, self.scenario = out_dir, export, scenario
            self.seeds, self.duration, self.rate = seeds, duration, rate
            self.baseline_goodput, self.best_name, self.every = baseline_goodput, best_name, every
            self.best = -math.inf
            self.history: list[tuple[int, float]] = []
            self._next = every

        def _on_step(self) -> bool:
            if self.every and self.num_timesteps >= self._next:
                self._next += self.every
                self.evaluate()
            return True

        def evaluate(self) -> float:
            import mlflow

            policy_dir = self.export(self.out_dir / "latest")
            res = evaluate_policy(policy_dir, self.scenario, self.seeds, self.duration, self.rate)
            goodput = float(np.mean([r["goodput_rps"] for r in res]))
            passes = float(np.mean([r["target_draft_forward_passes"] for r in res]))
            ratio = goodput / self.baseline_goodput if self.baseline_goodput > 0 else math.inf
            self.history.append((self.num_timesteps, goodput))
            mlflow.log_metrics({"eval/goodput_rps": goodput, "eval/ratio_vs_best_heuristic": ratio,
                                "eval/target_draft_forward_passes": passes}, step=self.num_timesteps)
            if goodput > self.best:
                self.best = goodput
                if (self.out_dir / "best").exists():
                    shutil.rmtree(self.out_dir / "best")
                shutil.copytree(policy_dir, self.out_dir / "best")
                self.model.save(self.out_dir / "best_model.zip")
            self.logger.record("eval/goodput_rps", goodput)
            self.logger.record("eval/ratio_vs_best_heuristic", ratio)
            tqdm_write(f"eval @ {self.num_timesteps:,} steps: goodput {goodput:.3f} req/s = {ratio:.3f}x {self.best_name} (best so far {self.best:.3f})")
            return goodput

    return CompareCallback(**kwargs)


# ------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    from runtime.flags import OneLineParser

    p = OneLineParser(prog="python training/train.py", description=__doc__.split("\n")[0])
    p.add_argument("--algo", default=DEFAULT_ALGO, choices=ALGO_NAMES, help=f"algorithm (default: {DEFAULT_ALGO})")
    p.add_argument("--env", default=DEFAULT_ENV, help=f"Gymnasium env id (default: {DEFAULT_ENV})")
    p.add_argument("--scenario", help="shipped scenario name or YAML path (default: the config's; for the knob env, one scenario instead of its distribution)")
    p.add_argument("--rate", type=float, help="override the scenario's arrival rate (req/s) for training and evaluation")
    p.add_argument("--config", type=Path, help="hyperparameter YAML (default: training/configs/knobs.yaml for the knob env, else <algo>.yaml)")
    add_set_flag(p)
    p.add_argument("--n-envs", type=int, help="parallel envs (default: the config's)")
    p.add_argument("--vec-env", choices=("dummy", "subproc"), help="vectorised env class (default: the config's, else dummy)")
    p.add_argument("--total-timesteps", type=int, help="env steps to train for (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--eval-freq", type=int, help="timesteps between evaluations on held-out seeds (0: only at the end)")
    p.add_argument("--eval-seeds", type=int, help="held-out seeds in the final comparison (default: the config's)")
    p.add_argument("--resume", help="continue from a checkpoint (model.zip path, or runs:/<run_id>/checkpoint/model.zip)")
    p.add_argument("--run-name", help="MLflow run name (default: <env>-<algo>-<time>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default: {EXPERIMENT})")
    p.add_argument("--register", metavar="NAME", help="register the best policy as an MLflow model NAME with alias 'champion'")
    p.add_argument("--out", type=Path, help="local directory for checkpoints (default: checkpoints/<run-name>)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the final baseline runs (default: 2)")
    add_ray_flag(p)  # the evaluations' runs as Ray tasks (training.backend)
    p.add_argument("--sweep", type=Path, metavar="FILE",
                   help="sweep seeds and hyperparameters (a YAML, see training/sweep.py): one training run per trial, the best "
                   "picked on validation seeds, all nested under one MLflow run; with --ray, as Ray Tune trials")
    return p


def apply_run_flags(cfg: dict[str, Any], args: argparse.Namespace) -> None:
    """The flags both recipes share (rate, env count and kind, budget, evaluation), checked."""
    if args.rate is not None:
        if not args.rate > 0:
            raise ConfigError(f"--rate must be > 0 requests/s, got {args.rate}")
        cfg["env_kwargs"]["rate"] = args.rate
    for flag in ("n_envs", "total_timesteps", "vec_env"):
        v = getattr(args, flag)
        if v is not None:
            if isinstance(v, int) and v < 1:
                raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
            cfg[flag] = v
    if args.eval_freq is not None:
        if args.eval_freq < 0:
            raise ConfigError(f"--eval-freq must be >= 0, got {args.eval_freq}")
        cfg["eval"]["every"] = args.eval_freq
    if args.eval_seeds is not None:
        if args.eval_seeds < 2:
            raise ConfigError(f"--eval-seeds must be >= 2 (a confidence interval needs two), got {args.eval_seeds}")
        cfg["eval"]["seeds"] = args.eval_seeds


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    if args.algo == "dqn":
        raise ConfigError("dqn needs a Discrete action space, and specctl envs act per request slot (MultiDiscrete); use maskable_ppo, ppo or a2c")
    path = args.config or CONFIG_DIR / f"{args.algo}.yaml"
    cfg = load_config(path, args.env, args.algo, parse_overrides(args.overrides))
    if args.scenario:
        cfg["env_kwargs"]["scenario"] = args.scenario
    apply_run_flags(cfg, args)
    hyperparams(cfg, RUN_KEYS)  # fail on bad values now, not after the baselines ran
    pre = cfg["pretrain"]
    if pre["admission_teacher"] is not None:
        from controllers import make_controller

        if not isinstance(pre["admission_teacher"], str):
            raise ConfigError(f"pretrain.admission_teacher must be a controller spec string, got {pre['admission_teacher']!r}")
        make_controller(pre["admission_teacher"])  # ControllerError: one line naming the problem
    if isinstance(pre["dagger"], bool) or not isinstance(pre["dagger"], int) or pre["dagger"] < 0:
        raise ConfigError(f"pretrain.dagger must be a whole number of rounds >= 0, got {pre['dagger']!r}")
    if not isinstance(pre["drop_weight"], (int, float)) or not pre["drop_weight"] > 0:
        raise ConfigError(f"pretrain.drop_weight must be a number > 0, got {pre['drop_weight']!r}")
    cfg["config_file"] = str(path)
    return cfg


def load_checkpoint(ref: str, algo_cls: Any, env: Any) -> Any:
    if ref.startswith("runs:/"):
        import mlflow

        ref = mlflow.artifacts.download_artifacts(artifact_uri=ref)
    path = Path(ref)
    if path.is_dir():
        path = path / "model.zip"
    if not path.is_file():
        raise ConfigError(f"--resume {ref}: no checkpoint there (expected a model.zip written by training/train.py)")
    try:
        return algo_cls.load(path, env=env)
    except ValueError as e:  # e.g. spaces differ
        raise ConfigError(f"--resume {ref}: {str(e).splitlines()[0]} (resume with the --env/--scenario it was trained on)") from None


def resolve_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The knob recipe's config (``training/configs/knobs.yaml`` unless ``--config``), with flags applied."""
    from training.knobs import KNOB_RUN_KEYS, load_knob_config, load_selector_data

    if args.algo not in ("maskable_ppo", "ppo"):
        raise ConfigError(f"--algo {args.algo}: the knob env trains with maskable_ppo (the default) or ppo")
    path = args.config or CONFIG_DIR / "knobs.yaml"
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist (configs ship in {CONFIG_DIR})")
    cfg = load_knob_config(path, args.algo, algorithms()[args.algo], parse_overrides(args.overrides))
    if args.scenario:  # one scenario instead of the distribution
        cfg["env_kwargs"] = {**cfg["env_kwargs"], "scenario": args.scenario, "distribution": None}
    apply_run_flags(cfg, args)
    dist = cfg["env_kwargs"].get("distribution")
    if dist:
        cfg["env_kwargs"]["distribution"] = beside(dist, str(path))
    hyperparams(cfg, KNOB_RUN_KEYS)  # fail on bad values now
    sel = cfg["selector"]
    if sel is not None and sel["data"] is not None:
        if args.scenario:  # the labels chose between systems of a distribution: one scenario has none
            print(f"selector: not fitted (its labels in {sel['data']} are systems of a distribution; --scenario trains "
                  "on one; set selector.data: null in a config to label this scenario's seeds)")
            cfg["selector"] = None
        else:
            load_selector_data(sel, cfg["env_kwargs"])  # data of another distribution fails now, naming the fix
    cfg["config_file"] = str(path)
    return cfg


def train(args: argparse.Namespace) -> int:
    if args.env == KNOBS_ENV:
        from training.knobs import train_knobs

        if args.resume:
            raise ConfigError("--resume is not supported for the knob env yet; start a new run (it trains in minutes)")
        return train_knobs(args, resolve_knobs(args), algorithms()[args.algo])
    return train_per_request(args)


def train_per_request(args: argparse.Namespace) -> int:
    import mlflow
    import torch
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger

    from controllers.policy import export_policy
    from policy_env import TRAIN_SEED_MAX
    from training.mlflow_sb3 import MLflowOutputFormat, log_params_flat, log_policy_model, setup_tracking

    torch.set_num_threads(1)
    cfg = resolve(args)
    env_kwargs = cfg["env_kwargs"]
    probe = probe_env(args.env, env_kwargs)
    scenario, rate, codec = probe.scenario, probe.rate, probe.codec
    ev = cfg["eval"]
    heuristics, refs = baseline_specs(ev)
    if not heuristics:
        raise ConfigError("eval.baselines names no registered controller; use 'all' or names from controllers.REGISTRY")
    algo_cls = algorithms()[args.algo]
    run_name = args.run_name or f"{args.env.split('/')[-1]}-{args.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = args.out or REPO / "checkpoints" / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"base": probe.base_spec, "env_id": args.env, "env_kwargs": {k: v for k, v in env_kwargs.items()}, "algo": args.algo}

    try:
        uri = setup_tracking(args.tracking_uri, args.experiment)
    except ValueError as e:  # a bad store: the shared helper's one-line message
        raise ConfigError(str(e)) from None
    t_start = time.time()
    print(f"training {args.algo} on {args.env} | scenario {scenario.name} at {rate or 'its'} req/s | base heuristic {probe.base_spec} "
          f"| {cfg['total_timesteps']:,} steps x {cfg['n_envs']} envs | MLflow {uri}")
    with mlflow.start_run(run_name=run_name) as run:
        run_id = run.info.run_id
        log_params_flat({"algo": args.algo, "env": args.env, "seed": args.seed, **{k: v for k, v in cfg.items()}})
        mlflow.set_tags({"specctl.env": args.env, "specctl.scenario": scenario.name, "specctl.algo": args.algo})
        mlflow.log_text(shlex.join([sys.executable, *sys.argv]), "command.txt")
        mlflow.log_text(yaml.safe_dump(cfg, sort_keys=False), "config.yaml")
        mlflow.log_dict(codec.to_dict(), "codec.json")

        # baselines for the periodic evaluations (held-out seeds, same workload)
        # validation seeds pick the best model; the final comparison uses other (test) seeds
        periodic_seeds = [TRAIN_SEED_MAX + VALIDATION_OFFSET + i for i in range(ev["periodic_seeds"])]
        periodic = evaluate_baselines(scenario, heuristics, periodic_seeds, ev["periodic_duration"], rate, args.workers, desc="periodic baselines")
        best_name = max(heuristics, key=lambda n: periodic.mean(n))
        best_goodput = periodic.mean(best_name)

        venv = build_vec_env(args.env, env_kwargs, cfg["n_envs"], cfg["vec_env"], args.seed)
        if args.resume:
            model = load_checkpoint(args.resume, algo_cls, venv)
        else:
            model = algo_cls(policy_class(cfg["policy"], args.algo), venv, seed=args.seed, verbose=0, **hyperparams(cfg, RUN_KEYS))
        model.set_logger(Logger(folder=None, output_formats=[MLflowOutputFormat(run_id=run_id)]))
        if cfg["pretrain"]["steps"] > 0 and not args.resume:
            stats = pretrain(model, args.env, env_kwargs, cfg["pretrain"], args.seed, getattr(model, "gamma", 0.99))
            mlflow.log_metrics(stats, step=0)
            print(f"cloned the base heuristic {probe.base_spec} from {int(stats['pretrain/steps']):,} steps: "
                  f"{stats['pretrain/agreement']:.1%} of action dimensions agree"
                  + (f"; {stats['pretrain/drop_recall']:.0%} of the teacher's {stats['pretrain/teacher_drops']:.0f} turn-aways reproduced"
                     if stats["pretrain/teacher_drops"] else ""))

        def export(directory: Path) -> Path:
            return export_policy(model, codec, directory, meta)

        every = ev["every"]
        compare = make_eval_callback(out_dir=out_dir, export=export, scenario=scenario, seeds=periodic_seeds,
                                     duration=ev["periodic_duration"], rate=rate, baseline_goodput=best_goodput,
                                     best_name=best_name, every=every)
        if cfg["pretrain"]["steps"] > 0 and not args.resume and every:
            compare.init_callback(model)
            compare.evaluate()  # the cloned heuristic is the first candidate for "best"
        interrupted = False
        t_train = time.time()
        try:
            model.learn(cfg["total_timesteps"], callback=CallbackList([compare, progress_callback(cfg["total_timesteps"])]),
                        reset_num_timesteps=not args.resume)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: saving a checkpoint", file=sys.stderr)
        train_s = time.time() - t_train
        model.save(out_dir / "model.zip")
        export(out_dir / "policy")
        mlflow.log_artifact(str(out_dir / "model.zip"), "checkpoint")
        mlflow.log_metrics({"train/wall_s": train_s, "train/env_steps_per_s": model.num_timesteps / max(train_s, 1e-9)})
        if interrupted:
            mlflow.log_artifacts(str(out_dir / "policy"), "policy_files")
            mlflow.set_tag("specctl.status", "interrupted")
            print(f"checkpoint: {out_dir / 'model.zip'} (runs:/{run_id}/checkpoint/model.zip); resume with --resume")
            return 130
        compare.evaluate()  # the final weights compete for "best" too
        best_dir = out_dir / "best"

        # the final comparison on more held-out seeds: best policy vs every heuristic
        seeds = [TRAIN_SEED_MAX + i for i in range(ev["seeds"])]
        named: dict[str, Any] = {spec: spec for spec in heuristics + refs}
        teacher = cfg["pretrain"].get("admission_teacher")
        if teacher and cfg["pretrain"]["steps"] > 0 and "admission" in codec.owns:
            # the cloning target, shown as a reference (like the oracle): what the policy started from
            named[f"teacher: {probe.base_spec} + {teacher}"] = partial(teacher_controller, probe.base_spec, teacher)
        named["policy"] = partial(load_policy, str(best_dir))
        cmp = evaluate_controllers(scenario, named, seeds, ev["duration"], rate, args.workers, desc="final comparison")
        rows, table = comparison_table(cmp, "policy", heuristics)
        policy_row = next(r for r in rows if r["controller"] == "policy")
        best_row = next(r for r in rows if r["role"] == "best heuristic")
        mlflow.log_metrics({
            "final/goodput_rps": policy_row["goodput_rps"], "final/ratio_vs_best_heuristic": policy_row["ratio_vs_best"],
            "final/ratio_ci_low": policy_row["ratio_ci_low"], "final/ratio_ci_high": policy_row["ratio_ci_high"],
            "final/target_draft_forward_passes": policy_row["target_draft_forward_passes"],
            "final/best_heuristic_goodput_rps": best_row["goodput_rps"],
            "final/best_heuristic_target_draft_forward_passes": best_row["target_draft_forward_passes"],
        })
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "comparison.json")
        mlflow.log_text(table, "comparison.md")
        mlflow.log_figure(_plot(rows, compare.history, best_goodput, best_name), "comparison.png")
        mlflow.log_artifacts(str(best_dir), "policy_files")
        model_uri = log_policy_model(best_dir, "policy", register_as=args.register)
        total_s = time.time() - t_start
        mlflow.log_metric("run/wall_s", total_s)

    beats = policy_row["ratio_ci_low"] > 1.0
    print(f"\n{scenario.name} at {rate or 'its'} req/s, {len(seeds)} held-out seeds x {ev['duration']:g} s:\n{table}\n")
    print(f"policy goodput {policy_row['goodput_rps']:.3f} req/s = {policy_row['ratio_vs_best']:.3f}x the best heuristic "
          f"({best_row['controller']}, {best_row['goodput_rps']:.3f}) 95% CI [{policy_row['ratio_ci_low']:.3f}, {policy_row['ratio_ci_high']:.3f}]"
          f"{' - better' if beats else (' - not significantly better' if policy_row['ratio_vs_best'] >= 1 else ' - worse')}; "
          f"target-site draft passes {policy_row['target_draft_forward_passes']:.0f} vs {best_row['target_draft_forward_passes']:.0f}")
    print(f"trained {model.num_timesteps:,} steps in {train_s:.0f} s ({model.num_timesteps / max(train_s, 1e-9):,.0f} steps/s); whole run {total_s:.0f} s")
    print(f"MLflow run {run_id} ({run_name}) in experiment {args.experiment!r} at {uri}")
    print(f"  deploy: python -m runtime simulate --controller policy:runs:/{run_id}/policy" + (f"   or policy:{model_uri}" if args.register else ""))
    print(f"  local:  {best_dir}  (checkpoint {out_dir / 'model.zip'})")
    print(f"  browse: mlflow ui --backend-store-uri {uri}")
    return 0


def _plot(rows: list[dict[str, Any]], history: list[tuple[int, float]], best_goodput: float, best_name: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["controller"] for r in rows]
    a.barh(names, [r["goodput_rps"] for r in rows], xerr=[r["goodput_rps_std"] for r in rows],
           color=["tab:red" if r["role"] == "policy" else "tab:gray" for r in rows])
    a.invert_yaxis()
    a.set_xlabel("goodput (SLO-meeting req/s), held-out seeds")
    if history:
        b.plot([h[0] for h in history], [h[1] for h in history], marker="o", label="policy")
    b.axhline(best_goodput, color="k", ls="--", label=best_name)
    b.set_xlabel("timesteps")
    b.set_ylabel("periodic eval goodput (req/s)")
    b.legend()
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    from controllers import ControllerError
    from runtime.distribution import DistributionError
    from runtime.scenario import ScenarioError
    from training.backend import BackendError, use_ray

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = use_ray(args.ray)
    try:
        if args.sweep:
            from training.sweep import sweep

            return sweep(args, parser)
        return train(args)
    except (ConfigError, ScenarioError, ControllerError, DistributionError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        use_ray(previous)


if __name__ == "__main__":
    raise SystemExit(main())
