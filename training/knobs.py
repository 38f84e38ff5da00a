"""Train a knob policy (``specctl/SpecKnobs-v0``) over a scenario distribution and judge it held out.

    python training/train.py                                          # the default: warm start, selector, final comparison
    python training/train.py --config training/configs/knobs-full.yaml  # the full recipe (rollouts, the run's own selector labels)

The recipe, and why:

1. **Warm start**: clone a fixed knob setting from ``warm_start.episodes`` episodes of the
   distribution: ``warm_start.knobs``, or with ``warm_start.tune`` the setting that does best over
   training systems of the distribution (:mod:`training.mix_tune`; the hand-picked setting is one
   candidate). The clone is an ablation row of the final table: learning must beat it.
2. **Policy improvement by rollouts** (``rollouts:``; :mod:`training.rollouts`): label states the
   policy visits by holding each candidate knob setting in a copy of the simulator, fit the
   policy to the clear winners, repeat. PPO from the clone did not move it in 3,000 steps.
   ``knobs.yaml`` (the quickstart) runs none: they did not improve its tuned warm start.
3. **PPO at the control interval** for ``total_timesteps`` (0 in the default configs;
   MaskablePPO: modes that cannot run are masked). ``half_life_s`` sets the discount per
   simulated second (``gamma = 0.5 ** (interval_s / half_life_s)``). ``paired_reward``: each
   step's reward is the policy's SLO-met requests minus the warm start's in a shadow run of the
   same system and seed (:class:`policy_env.knobs_env.SpecKnobsEnv`'s ``baseline``), which
   cancels most of an episode's luck without changing what the best policy is.
   ``knobs-ppo.yaml`` runs it at 10-s intervals from the warm start (README: where it beats
   the warm start, and why).
4. **Model selection on validation episodes** of the training distribution (seeds
   ``TRAIN_SEED_MAX + 1000..``): the evaluation scenarios are never looked at before the end.
   An export replaces the kept one only if it is better on the same episodes by a one-sided
   paired t-test at ``eval.accept_p`` (:func:`replaces_kept`), not just by a higher mean.
5. **The learned selector** (``selector:``; :mod:`training.selector`): a random forest that
   picks one of six settings per system from a 10-s probe of it, fitted on labelled training
   systems (``selector.data``, or labels recorded in the run), written as
   ``RUN_DIR/selector.json`` and validated on the same validation episodes. The rollouts learn a
   switching policy within a run and, measured, add nothing; the selector learns which setting
   fits which system, and gains out of sample (README).
6. **Final comparison** on each ``eval.scenarios`` entry (scenario, rate and the baselines tuned
   for it on validation seeds with ``python -m training.tune``) over test seeds
   ``TRAIN_SEED_MAX + i``: the policy, the clone, the selector, every baseline and the oracle,
   with paired bootstrap CIs of the goodput ratio against the best baseline. Scenarios marked
   ``held_out`` are not in the training distribution.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from training.common import ConfigError, add_set_flag, config_source, parse_overrides, progress, progress_callback, with_overrides
from training.compare import ceiling_ratio, comparison_table, evaluate_grids, pool_map, ratio_ci
from training.rollouts import ROLLOUT_DEFAULTS

KNOB_RUN_KEYS = {"n_envs", "total_timesteps", "policy", "env_kwargs", "eval", "vec_env", "half_life_s", "warm_start", "rollouts",
                 "selector", "paired_reward", "config_file"}
WARM_DEFAULTS: dict[str, Any] = {"episodes": 4, "epochs": 200, "learning_rate": 3e-3, "confidence": 0.6,
                                 "knobs": {"mode": 0, "cap": 2.0, "k_cap": 8, "hedge": 1},
                                 # null: clone ``knobs``; a mapping (training.mix_tune.TUNE_DEFAULTS): clone the
                                 # fixed setting that does best over training systems of the distribution
                                 "tune": None}
#: ``twin``: also judge the digital twin (``controllers/twin.py``: it needs no training) in the final
#: comparison (true: ``twin`` as it ships; or a spec of it such as ``twin:seeds=3``).
EVAL_DEFAULTS: dict[str, Any] = {"seeds": 10, "duration": 60.0, "validation_episodes": 4, "accept_p": 0.05, "every": 2000, "scenarios": [],
                                 "references": ["oracle"], "twin": False}
#: The ``selector:`` block (absent or null: no selector). ``data``: labels recorded on this
#: distribution (``python -m training.selector --data``), fitted in seconds; null: record them
#: here on ``systems`` training systems (each of the six settings runs ``duration`` s on each).
SELECTOR_DEFAULTS: dict[str, Any] = {"data": None, "systems": 240, "duration": 60.0, "probe_s": 10.0, "folds": 5}


def load_knob_config(path: Path, algo: str, algo_cls: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate a knob-training YAML (a flat mapping: algorithm kwargs + recipe keys),
    with ``overrides`` (``--set``: dotted keys) set first, so they are checked as the file is."""
    import inspect

    from controllers.knobs import cap_level, k_cap_level
    from runtime.scenario import read_yaml_mapping

    cfg = with_overrides(read_yaml_mapping(path, "config", ConfigError, "a mapping of hyperparameters"), overrides)
    src = config_source(path, overrides)
    valid = {p for p in inspect.signature(algo_cls.__init__).parameters
             if p not in ("self", "env", "policy", "seed", "verbose", "tensorboard_log", "device", "_init_setup_model", "gamma")}
    bad = sorted(set(cfg) - valid - KNOB_RUN_KEYS)
    if bad:
        raise ConfigError(f"{src}: unknown key(s) {bad} for {algo} (gamma comes from half_life_s); valid: {sorted(valid | KNOB_RUN_KEYS)}")
    cfg.setdefault("policy", "MlpPolicy")
    cfg.setdefault("n_envs", 2)
    cfg.setdefault("vec_env", "subproc")
    cfg.setdefault("total_timesteps", 4000)
    cfg.setdefault("half_life_s", 10.0)
    cfg.setdefault("paired_reward", False)
    cfg.setdefault("env_kwargs", {})
    cfg["warm_start"] = {**WARM_DEFAULTS, **(cfg.get("warm_start") or {})}
    bad = sorted(set(cfg["warm_start"]) - set(WARM_DEFAULTS))
    if bad:
        raise ConfigError(f"{src}: unknown warm_start key(s) {bad}; valid: {sorted(WARM_DEFAULTS)}")
    knobs = cfg["warm_start"]["knobs"]
    try:
        if not isinstance(knobs, dict) or set(knobs) - {"mode", "cap", "k_cap", "hedge"}:
            raise ValueError("a mapping of mode (an index), cap, k_cap and hedge (0/1)")
        cap_level(knobs.get("cap"))
        k_cap_level(knobs.get("k_cap"))
        if not (isinstance(knobs.get("mode", 0), int) and knobs.get("mode", 0) >= 0 and knobs.get("hedge", 1) in (0, 1)):
            raise ValueError(f"mode must be an index >= 0 and hedge 0 or 1, got {knobs}")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{src}: warm_start.knobs: {e}") from None
    if cfg["warm_start"]["tune"] is not None:
        from training.mix_tune import check_tune_config

        cfg["warm_start"]["tune"] = check_tune_config(cfg["warm_start"]["tune"], f"{src}: warm_start.tune")
    cfg["eval"] = {**EVAL_DEFAULTS, **(cfg.get("eval") or {})}
    bad = sorted(set(cfg["eval"]) - set(EVAL_DEFAULTS))
    if bad:
        raise ConfigError(f"{src}: unknown eval key(s) {bad}; valid: {sorted(EVAL_DEFAULTS)}")
    ev = cfg["eval"]
    if not (isinstance(ev["accept_p"], (int, float)) and not isinstance(ev["accept_p"], bool) and 0 < ev["accept_p"] <= 1):
        raise ConfigError(f"{src}: eval.accept_p must be a p-value in (0, 1] (1: the higher validation mean wins), "
                          f"got {ev['accept_p']!r}")
    if ev["accept_p"] < 1 and not (isinstance(ev["validation_episodes"], int) and ev["validation_episodes"] >= 2):
        raise ConfigError(f"{src}: eval.accept_p < 1 tests paired validation episodes, so it needs "
                          f"eval.validation_episodes >= 2 (got {ev['validation_episodes']!r}), or set accept_p: 1")
    twin = cfg["eval"]["twin"]
    if not (isinstance(twin, bool) or isinstance(twin, str) and twin.split(":")[0] == "twin"):
        raise ConfigError(f"{src}: eval.twin must be true, false or a twin spec such as 'twin:seeds=3' (judge the "
                          f"digital twin too), got {twin!r}")
    if isinstance(twin, str):
        from controllers import ControllerError, make_controller

        try:
            make_controller(twin)
        except ControllerError as e:
            raise ConfigError(f"{src}: eval.twin: {e}") from None
    cfg["rollouts"] = {**ROLLOUT_DEFAULTS, **(cfg.get("rollouts") or {})}
    bad = sorted(set(cfg["rollouts"]) - set(ROLLOUT_DEFAULTS))
    if bad:
        raise ConfigError(f"{src}: unknown rollouts key(s) {bad}; valid: {sorted(ROLLOUT_DEFAULTS)}")
    for key, least in (("n_envs", 1), ("total_timesteps", 0)):
        if not isinstance(cfg[key], int) or cfg[key] < least:
            raise ConfigError(f"{src}: {key} must be an integer >= {least}, got {cfg[key]!r}")
    ro = cfg["rollouts"]
    if not (isinstance(ro["iterations"], int) and ro["iterations"] >= 0 and isinstance(ro["systems"], int) and ro["systems"] >= 1):
        raise ConfigError(f"{src}: rollouts.iterations must be an integer >= 0 and rollouts.systems >= 1")
    if not (isinstance(ro["survey"], int) and not isinstance(ro["survey"], bool) and ro["survey"] >= 0):
        raise ConfigError(f"{src}: rollouts.survey must be a whole number of systems >= 0 (0: no survey), got {ro['survey']!r}")
    if not isinstance(ro["modes"], bool):
        raise ConfigError(f"{src}: rollouts.modes must be true (the other modes are candidates too) or false "
                          f"(only the current mode's caps and k caps), got {ro['modes']!r}")
    if not ro["caps"] or not ro["at_s"] or float(ro["horizon_s"]) <= 0:
        raise ConfigError(f"{src}: rollouts needs caps and at_s (non-empty lists) and horizon_s > 0")
    if ro["gain_per"] not in ("best", "demand"):
        raise ConfigError(f"{src}: rollouts.gain_per must be 'best' or 'demand', got {ro['gain_per']!r}")
    if ro["gain_per"] == "demand" and ro["confirm"]:
        raise ConfigError(f"{src}: rollouts.confirm measures gains as a share of the best value; "
                          f"set confirm: 0 with gain_per: demand")
    if not (isinstance(ro["confirm"], int) and ro["confirm"] >= 0):
        raise ConfigError(f"{src}: rollouts.confirm must be an integer >= 0 (independent futures per relabelled "
                          f"state; 0 turns confirmation off), got {ro['confirm']!r}")
    if not (isinstance(ro["anchor"], (int, float)) and not isinstance(ro["anchor"], bool) and ro["anchor"] >= 0):
        raise ConfigError(f"{src}: rollouts.anchor must be a weight >= 0 (0: no warm-start anchors), got {ro['anchor']!r}")
    if not (isinstance(ro["committee"], int) and not isinstance(ro["committee"], bool) and ro["committee"] >= 0):
        raise ConfigError(f"{src}: rollouts.committee must be an integer >= 0 (members; 0: one network), got {ro['committee']!r}")
    if not (isinstance(ro["agree"], (int, float)) and not isinstance(ro["agree"], bool) and 0.5 < ro["agree"] <= 1.0):
        raise ConfigError(f"{src}: rollouts.agree must be a share in (0.5, 1] (a supermajority of the members), got {ro['agree']!r}")
    if ro["committee"] and cfg["total_timesteps"]:
        raise ConfigError(f"{src}: PPO cannot fine-tune a committee policy; set total_timesteps: 0 or rollouts.committee: 0")
    try:
        [cap_level(c) for c in ro["caps"]]
        [k_cap_level(k) for k in ro["k_caps"]]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{src}: rollouts.caps / k_caps: {e}") from None
    if not isinstance(cfg["paired_reward"], bool):
        raise ConfigError(f"{src}: paired_reward must be true (PPO's reward is the policy's SLO-met requests minus "
                          f"the warm start's on the same system and seed) or false, got {cfg['paired_reward']!r}")
    if "baseline" in cfg["env_kwargs"]:
        raise ConfigError(f"{src}: env_kwargs.baseline is set by the recipe; use paired_reward: true instead")
    if not (isinstance(cfg["half_life_s"], (int, float)) and cfg["half_life_s"] > 0):
        raise ConfigError(f"{src}: half_life_s must be > 0 simulated seconds, got {cfg['half_life_s']!r}")
    cfg["selector"] = check_selector_config(cfg.get("selector"), path, src)
    from controllers import ControllerError, make_controller

    for i, sc in enumerate(cfg["eval"]["scenarios"]):
        if not isinstance(sc, dict) or "scenario" not in sc or "baselines" not in sc:
            raise ConfigError(f"{src}: eval.scenarios[{i}] needs scenario, rate and baselines (tuned controller specs)")
        where = f"eval.scenarios[{i}].references" if "references" in sc else "eval.references"
        refs = references(cfg["eval"], sc)
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise ConfigError(f"{src}: {where} must be a list of controller specs, got {refs!r}")
        for r in refs:  # a reference that cannot be built fails now, not after the training
            try:
                make_controller(r)
            except (ControllerError, ValueError) as e:
                raise ConfigError(f"{src}: {where}: {r!r}: {e}") from None
    return cfg


def check_selector_config(block: Any, path: Path, src: str) -> dict[str, Any] | None:
    """The ``selector:`` block with defaults filled in, checked (None: the recipe fits no selector);
    ``src`` names the config in errors, ``path`` is where its relative paths start."""
    from controllers.selector import WARMUP_S

    if block is None:
        return None
    where = f"{src}: selector"
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping ({sorted(SELECTOR_DEFAULTS)}) or null, got {block!r}")
    bad = sorted(set(block) - set(SELECTOR_DEFAULTS))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; valid: {sorted(SELECTOR_DEFAULTS)}")
    sel = {**SELECTOR_DEFAULTS, **block}
    folds = sel["folds"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"{where}.folds must be an integer >= 2, got {folds!r}")
    if isinstance(sel["systems"], bool) or not isinstance(sel["systems"], int) or sel["systems"] < folds:
        raise ConfigError(f"{where}.systems must be an integer >= folds ({folds}), got {sel['systems']!r}")
    try:
        probe_s, duration = float(sel["probe_s"]), float(sel["duration"])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: probe_s and duration must be seconds, got {sel['probe_s']!r} and {sel['duration']!r}") from None
    if not WARMUP_S < probe_s < duration:
        raise ConfigError(f"{where}: need {WARMUP_S:g} s (the probe's warm-up) < probe_s < duration, got probe_s {probe_s:g} "
                          f"and duration {duration:g}")
    if sel["data"] is not None:
        from runtime.scenario import beside

        if not isinstance(sel["data"], str):
            raise ConfigError(f"{where}.data must be a path (.npz from `python -m training.selector --data`) or null, got {sel['data']!r}")
        sel["data"] = beside(sel["data"], str(path))
        if not Path(sel["data"]).is_file():
            raise ConfigError(f"{where}.data: {sel['data']} does not exist; record it with `python -m training.selector --data "
                              f"FILE`, or set data: null to record labels in the run")
    return {**sel, "probe_s": probe_s, "duration": duration}


def load_selector_data(sel: dict[str, Any], env_kwargs: dict[str, Any]) -> Any:
    """The labelled systems ``selector.data`` names, checked against what this run trains on
    (ConfigError naming the fix otherwise); None when the run records its own."""
    from controllers.lookahead import PORTFOLIO
    from policy_env.knobs_env import SpecKnobsEnv
    from training.selector import SelectorData

    if sel["data"] is None:
        return None
    where = f"selector.data {sel['data']}"
    try:
        data = SelectorData.load(sel["data"])
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{where}: {e}") from None
    dist = SpecKnobsEnv(**env_kwargs).distribution
    trains_on = dist.fingerprint() if dist is not None else f"the scenario {env_kwargs.get('scenario')}"
    if data.distribution != trains_on:
        raise ConfigError(f"{where} was recorded on {data.distribution or 'an unnamed distribution (an older file)'}, "
                          f"this run trains on {trains_on}; set selector.data: null to record labels on its systems")
    if data.goodput.shape[1] != len(PORTFOLIO):
        raise ConfigError(f"{where} has {data.goodput.shape[1]} settings, the selector's portfolio {len(PORTFOLIO)}")
    if data.probe_s != sel["probe_s"]:
        raise ConfigError(f"{where} was recorded with a {data.probe_s:g}-s probe; set selector.probe_s: {data.probe_s:g}")
    return data


def twin_spec(ev: dict[str, Any]) -> str | None:
    """The digital twin's controller spec from ``eval.twin`` (None: not judged)."""
    return "twin" if ev["twin"] is True else ev["twin"] or None


def references(ev: dict[str, Any], scenario_entry: dict[str, Any]) -> Any:
    """The reference rows of an evaluation scenario (the oracle unless ``eval.references`` or the
    entry's own ``references`` say otherwise): shown beside the baselines, never the best baseline."""
    return scenario_entry.get("references", ev["references"])


# ------------------------------------------------------------------------------ warm start
def warm_start(model: Any, env_kwargs: dict[str, Any], cfg: dict[str, Any], seed: int,
               gamma: float) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Clone the fixed knob setting: fit the actor to it and the critic to its discounted returns.
    Returns the fit's statistics and the states it saw (observations, actions, masks)."""
    from policy_env.knobs_env import SpecKnobsEnv
    from training.rollouts import fit

    env = SpecKnobsEnv(**env_kwargs)
    obs_l, act_l, mask_l, ret_l = [], [], [], []
    for ep in progress(iterable=range(int(cfg["episodes"])), desc="warm start: run the fixed knobs", unit="episode"):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        rewards = []
        done = False
        while not done:
            a = env.controller.action_for(cfg["knobs"])
            obs_l.append(obs)
            act_l.append(a)
            mask_l.append(env.action_masks())
            obs, r, term, trunc, _ = env.step(a)
            rewards.append(r)
            done = term or trunc
        acc, rets = 0.0, []
        for r in reversed(rewards):
            acc = r + gamma * acc
            rets.append(acc)
        ret_l += rets[::-1]
    states = (np.asarray(obs_l), np.asarray(act_l), np.asarray(mask_l))
    stats = fit(model, *states, np.asarray(ret_l), np.ones(len(act_l)), int(cfg["epochs"]), float(cfg["learning_rate"]),
                confidence=float(cfg["confidence"]), desc="warm start: fit")
    return {f"warm/{k}": v for k, v in stats.items()}, states


# ------------------------------------------------------------------------------ validation
def validation_goodputs(controller: Path | str, env_kwargs: dict[str, Any], episodes: int, workers: int) -> np.ndarray:
    """Goodput on each validation system of the training distribution (seeds ``TRAIN_SEED_MAX +
    VALIDATION_OFFSET + i``; never trained on) of an exported policy (its directory) or a
    controller spec."""
    spec = f"policy:{controller}" if isinstance(controller, Path) else controller
    jobs = [(spec, env_kwargs, i) for i in range(episodes)]
    return np.asarray(pool_map(_validation_episode, jobs, workers, desc="validation episodes"), dtype=float)


def validation_goodput(controller: Path | str, env_kwargs: dict[str, Any], episodes: int, workers: int) -> float:
    """Mean goodput over the validation systems (:func:`validation_goodputs`)."""
    return float(np.mean(validation_goodputs(controller, env_kwargs, episodes, workers)))


def replaces_kept(candidate: np.ndarray, kept: np.ndarray | None, accept_p: float) -> tuple[bool, float]:
    """Whether an export replaces the one model selection keeps, and the p-value: a higher mean
    over the same validation systems and, unless ``accept_p`` >= 1, a one-sided paired t-test
    (scipy) below ``accept_p``. Without the test, the best of many exports on a few systems is
    mostly the luckiest (measured: PPO checkpoints that won by 1-3% on 4 systems lost 2-3% on 16)."""
    if kept is None:
        return True, 0.0
    if candidate.mean() <= kept.mean():
        return False, 1.0
    if accept_p >= 1.0:
        return True, math.nan
    from scipy.stats import ttest_rel

    p = float(ttest_rel(candidate, kept, alternative="greater").pvalue)
    return p < accept_p, p


def _validation_episode(job: tuple[str, dict[str, Any], int]) -> float:
    from controllers import make_controller
    from policy_env import TRAIN_SEED_MAX
    from policy_env.knobs_env import SpecKnobsEnv
    from runtime.sim import Simulator
    from training.common import VALIDATION_OFFSET

    spec, env_kwargs, i = job
    env = SpecKnobsEnv(**env_kwargs)
    seed = TRAIN_SEED_MAX + VALIDATION_OFFSET + i
    scenario, rate = env.draw(seed)  # the validation system, drawn as training draws its own
    sim = Simulator(scenario, seed, env.duration, rate=rate)
    return float(sim.run(make_controller(spec))["goodput_rps"])


# ------------------------------------------------------------------------------ the selector
#: The run's fitted selector, in its output directory (``selector:model=RUN_DIR/selector.json``).
SELECTOR_FILE = "selector.json"


def fit_selector(sel: dict[str, Any], env_kwargs: dict[str, Any], seed: int, workers: int, out_dir: Path) -> Any:
    """The learned selector over the lookahead's six settings (:mod:`training.selector`): from
    ``sel['data']``, or from labels recorded here on training systems (saved beside the model);
    writes ``out_dir/selector.json`` and returns the fit (its held-out folds' figures)."""
    from controllers.knobs import DEFAULT_MODES
    from controllers.lookahead import PORTFOLIO
    from training.common import tqdm_write
    from training.mix_tune import tuning_seeds
    from training.selector import fit, record

    settings = [dict(s) for s in PORTFOLIO]
    data = load_selector_data(sel, env_kwargs)
    if data is None:
        seeds = tuning_seeds(seed + 0x5E1, sel["systems"])  # as `python -m training.selector --seed S` draws them
        tqdm_write(f"selector: labelling {len(settings)} settings x {len(seeds)} training systems, {sel['duration']:g} s each")
        data = record(env_kwargs, seeds, sel["duration"], settings, DEFAULT_MODES, sel["probe_s"], workers)
        data.save(out_dir / "selector-data.npz")
    result = fit(data, settings, DEFAULT_MODES, sel["folds"], seed)
    result.model.save(out_dir / SELECTOR_FILE)
    return result


# ------------------------------------------------------------------------------ the run
#: The files of an exported policy that fix what it does (``export_policy`` writes them).
EXPORT_FILES: tuple[str, ...] = ("policy.json", "codec.json", "policy.safetensors")


def same_export(a: Path, b: Path) -> bool:
    """Whether two policy directories hold the same export, byte for byte: model selection copies
    the warm start to ``best`` when nothing beats it, and the final comparison then runs it once."""
    return all((a / f).is_file() and (b / f).is_file() and (a / f).read_bytes() == (b / f).read_bytes()
               for f in EXPORT_FILES)


def final_comparison(policy_dir: Path, warm_dir: Path, cfg: dict[str, Any], workers: int,
                     selector: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """The policy, its warm start, the run's selector (if any), the tuned baselines and the
    oracle on every ``eval.scenarios`` entry over test seeds; logs to the active MLflow run.
    A policy that is its warm start (:func:`same_export`) is not run twice. Returns (summary
    rows, markdown)."""
    import mlflow

    from policy_env import TRAIN_SEED_MAX
    from runtime.scenario import beside, load_scenario
    from training.common import tqdm_write

    ev = cfg["eval"]
    seeds = [TRAIN_SEED_MAX + i for i in range(int(ev["seeds"]))]
    kept_warm = same_export(policy_dir, warm_dir)
    if kept_warm:
        tqdm_write("the policy is its warm start (model selection kept it): its rows are the warm start's runs")
    extras = {name: spec for name, spec in (("selector", selector and f"selector:model={selector}"),
                                            ("twin", twin_spec(ev))) if spec}  # judged beside the policy
    grids: list[tuple[Any, dict[str, Any], float | None]] = []
    for sc in ev["scenarios"]:
        named: dict[str, Any] = {spec: spec for spec in sc["baselines"]}
        named.update({r: r for r in references(ev, sc)})
        named["warm start (clone)"] = partial(load_policy, str(warm_dir))
        named["policy"] = partial(load_policy, str(policy_dir))
        named.update(extras)
        grids.append((load_scenario(beside(sc["scenario"], cfg["config_file"])), named, sc.get("rate")))
    cmps = evaluate_grids([(scenario, {name: make for name, make in named.items() if not (kept_warm and name == "policy")}, rate)
                           for scenario, named, rate in grids], seeds, float(ev["duration"]), workers,
                          desc=f"final: {len(grids)} scenarios x {len(seeds)} seeds")
    summary: list[dict[str, Any]] = []
    tables: list[str] = []
    for sc, (scenario, named, rate), cmp in zip(ev["scenarios"], grids, cmps):
        if kept_warm:  # the same export on the same seeds: the same runs (the simulator is deterministic by seed)
            cmp.rows = {name: cmp.rows["warm start (clone)" if name == "policy" else name] for name in named}
        rows, table = comparison_table(cmp, "policy", list(sc["baselines"]))
        pol = next(r for r in rows if r["controller"] == "policy")
        best = next(r for r in rows if r["role"] == "best heuristic")
        clone = next(r for r in rows if r["controller"] == "warm start (clone)")
        vs_clone = ratio_ci(cmp.values("policy"), cmp.values("warm start (clone)"))
        oracle = next((r for r in rows if r["controller"] == "oracle"), None)
        gap = None
        if oracle and oracle["goodput_rps"] > best["goodput_rps"]:
            gap = (pol["goodput_rps"] - best["goodput_rps"]) / (oracle["goodput_rps"] - best["goodput_rps"])
        label = f"{scenario.name} at {rate or 'its'} req/s" + (" (held out: never trained on)" if sc.get("held_out") else "")
        summary.append({"scenario": scenario.name, "rate": rate, "held_out": bool(sc.get("held_out")),
                        "best_baseline": best["controller"], "ratio": pol["ratio_vs_best"], "ci_low": pol["ratio_ci_low"],
                        "ci_high": pol["ratio_ci_high"], "vs_clone": vs_clone[0], "vs_clone_low": vs_clone[1],
                        "vs_clone_high": vs_clone[2], "clone_ratio": clone["ratio_vs_best"],
                        "oracle_ratio": oracle["ratio_vs_best"] if oracle else None, "gap_closed": gap,
                        "ceiling_ratio": ceiling_ratio(cmp, best["controller"])[0],
                        "policy_settings": cmp.knob_shares("policy")})
        extra_lines = ""
        for name in extras:
            row = next(r for r in rows if r["controller"] == name)
            vs = ratio_ci(cmp.values(name), cmp.values("warm start (clone)"))
            summary[-1].update({f"{name}_ratio": row["ratio_vs_best"], f"{name}_ci_low": row["ratio_ci_low"],
                                f"{name}_ci_high": row["ratio_ci_high"], f"{name}_vs_clone": vs[0],
                                f"{name}_vs_clone_low": vs[1], f"{name}_vs_clone_high": vs[2],
                                f"{name}_settings": cmp.knob_shares(name)})
            extra_lines += (f"\n\n{name} vs the warm start: {vs[0]:.3f}x [{vs[1]:.3f}, {vs[2]:.3f}]; "
                            f"settings it held: {settings_line(summary[-1][f'{name}_settings'])}")
        tables.append(f"### {label}, {len(seeds)} test seeds x {ev['duration']:g} s\n\n{table}\n\n"
                      f"policy vs its warm start: {vs_clone[0]:.3f}x [{vs_clone[1]:.3f}, {vs_clone[2]:.3f}]"
                      + (f"; baseline-to-oracle gap closed: {gap:.0%}" if gap is not None and gap >= 0 else
                         "; below the best baseline (no share of the gap to the oracle closed)" if gap is not None else "")
                      + "\n\npolicy's knob settings (share of control intervals over the test seeds): "
                      + settings_line(summary[-1]["policy_settings"]) + extra_lines)
        key = scenario.name.replace("/", "_")
        mlflow.log_metrics({f"final/{key}/ratio_vs_best": pol["ratio_vs_best"], f"final/{key}/ci_low": pol["ratio_ci_low"],
                            f"final/{key}/ci_high": pol["ratio_ci_high"], f"final/{key}/vs_warm_start": vs_clone[0],
                            f"final/{key}/vs_warm_start_ci_low": vs_clone[1]})
        for name in extras:
            mlflow.log_metrics({f"final/{key}/{name}_ratio_vs_best": summary[-1][f"{name}_ratio"],
                                f"final/{key}/{name}_vs_warm_start": summary[-1][f"{name}_vs_clone"],
                                f"final/{key}/{name}_vs_warm_start_ci_low": summary[-1][f"{name}_vs_clone_low"]})
        tqdm_write(tables[-1] + "\n")
    return summary, "\n\n".join(tables)


def settings_line(shares: dict[str, float], top: int = 3) -> str:
    """``spec 74%, spec 20%, 2 others 6%``: the most used knob settings, then the rest."""
    items = list(shares.items())
    text = [f"`{spec}` {share:.0%}" for spec, share in items[:top]]
    rest = items[top:]
    if rest:
        text.append(f"{len(rest)} other{'s' if len(rest) > 1 else ''} {sum(share for _, share in rest):.0%}")
    return ", ".join(text) or "none recorded"


#: A knob run's final comparison, in its output directory (read by ``python -m training.across_seeds``).
COMPARISON_FILE = "comparison.json"
#: ``RUN_DIR/config.yaml``: the run's resolved config (overrides applied), whose eval block
#: ``python -m training.knobs RUN_DIR`` judges over unless ``--config`` names another.
RUN_CONFIG_FILE = "config.yaml"


def write_run_config(run_dir: Path, cfg: dict[str, Any]) -> str:
    """Write ``RUN_DIR/config.yaml`` and return its text: the resolved ``cfg`` with every file it
    names made absolute (a scenario path such as ``../scenarios/x.yaml`` is relative to the config's
    own folder), so the copy reads the same files from the run's folder."""
    from runtime.scenario import beside

    def absolute(name: Any) -> Any:
        if not isinstance(name, str):
            return name
        p = Path(beside(name, str(cfg.get("config_file", "<dict>"))))
        return str(p.resolve()) if p.suffix and p.exists() else name

    out = copy.deepcopy(cfg)
    for sc in out["eval"]["scenarios"]:
        sc["scenario"] = absolute(sc.get("scenario"))
    for key in ("distribution", "scenario"):
        if out["env_kwargs"].get(key):
            out["env_kwargs"][key] = absolute(out["env_kwargs"][key])
    if out.get("selector") and out["selector"].get("data"):
        out["selector"]["data"] = absolute(out["selector"]["data"])
    text = yaml.safe_dump(out, sort_keys=False)
    (Path(run_dir) / RUN_CONFIG_FILE).write_text(text)
    return text


def write_comparison(run_dir: Path, summary: list[dict[str, Any]], seed: int | None, config: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``RUN_DIR/comparison.json``: the final comparison with the run's training seed, which
    ``python -m training.across_seeds`` reads to judge a recipe over its runs."""
    data = {"seed": seed, "config": str(config), "scenarios": summary, **(extra or {})}
    (Path(run_dir) / COMPARISON_FILE).write_text(json.dumps(data, indent=1, default=float) + "\n")
    return data


def recorded_seed(run_dir: Path) -> int | None:
    """The training seed a run's ``comparison.json`` records (None: no file, or an earlier release's)."""
    try:
        seed = json.loads((Path(run_dir) / COMPARISON_FILE).read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) else None


def load_policy(policy_dir: str) -> Any:
    from controllers import make_controller

    return make_controller(f"policy:{policy_dir}")


def train_knobs(args: Any, cfg: dict[str, Any], algo_cls: Any) -> int:
    """The knob recipe end to end (see the module docstring); returns the exit code."""
    import mlflow
    import torch
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.logger import Logger

    from controllers.policy import export_policy
    from policy_env import TRAIN_SEED_MAX
    from policy_env.knobs_env import SpecKnobsEnv, gamma_for
    from training.mix_tune import spec_of, tune_fixed_knobs
    from training.rollouts import improve, label_episode, save_labels, survey_episode
    from training.mlflow_sb3 import MLflowOutputFormat, log_params_flat, log_policy_model, setup_tracking
    from training.common import REPO, build_vec_env, hyperparams, policy_class, tqdm_write

    torch.set_num_threads(1)
    env_kwargs = cfg["env_kwargs"]
    try:
        probe = SpecKnobsEnv(**env_kwargs)
    except TypeError as e:
        raise ConfigError(f"env_kwargs for specctl/SpecKnobs-v0: {e}") from None
    layout = probe.controller.layout
    gamma = gamma_for(cfg["half_life_s"], probe.interval_s)
    ev, warm = cfg["eval"], cfg["warm_start"]
    run_name = args.run_name or f"SpecKnobs-v0-{args.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = args.out or REPO / "checkpoints" / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "knobs", "knobs": layout.to_dict(), "env_id": "specctl/SpecKnobs-v0",
            "env_kwargs": dict(env_kwargs), "algo": args.algo, "base": "knobs"}
    where = f"distribution {probe.distribution.name}" if probe.distribution else f"scenario {probe.scenario.name}"
    uri = setup_tracking(args.tracking_uri, args.experiment)
    t_start = time.time()
    print(f"training {args.algo} on specctl/SpecKnobs-v0 | {where} | knobs every {probe.interval_s:g} s, half-life "
          f"{cfg['half_life_s']:g} s (gamma {gamma:.4f}) | {cfg['total_timesteps']:,} steps x {cfg['n_envs']} envs | MLflow {uri}")
    with mlflow.start_run(run_name=run_name) as run:
        run_id = run.info.run_id
        log_params_flat({"algo": args.algo, "env": "specctl/SpecKnobs-v0", "seed": args.seed, "gamma": gamma, **cfg})
        mlflow.set_tags({"specctl.env": "specctl/SpecKnobs-v0", "specctl.scenario": where, "specctl.algo": args.algo})
        mlflow.log_text(shlex.join([sys.executable, *sys.argv]), "command.txt")
        mlflow.log_text(write_run_config(out_dir, cfg), "config.yaml")
        mlflow.log_dict(layout.to_dict(), "codec.json")

        venv = build_vec_env("specctl/SpecKnobs-v0", env_kwargs, cfg["n_envs"], cfg["vec_env"], args.seed)
        model = algo_cls(policy_class(cfg["policy"], args.algo), venv, seed=args.seed, verbose=0, gamma=gamma, **hyperparams(
            {k: v for k, v in cfg.items() if k not in KNOB_RUN_KEYS}))
        model.set_logger(Logger(folder=None, output_formats=[MLflowOutputFormat(run_id=run_id)]))

        def export(directory: Path, members: Sequence[Any] = ()) -> Path:
            committee = (members, cfg["rollouts"]["agree"]) if members else None
            return export_policy(model, layout, directory, meta, committee)

        workers = args.workers
        warm_spec = spec_of(warm["knobs"], layout.modes)
        if warm["tune"] is not None:
            tuned = tune_fixed_knobs(env_kwargs, warm["tune"], warm["knobs"], args.seed, workers)
            mlflow.log_text(tuned.table(), "warm-start-tuning.md")
            mlflow.log_metrics({"warm/tuned_score": tuned.score, "warm/tuned_systems": tuned.systems}, step=0)
            tqdm_write(f"warm start: tuned over {tuned.systems} training systems: `{tuned.spec}`; on the first "
                       f"{warm['tune']['systems'][0]}, where every candidate ran, {tuned.first_round[tuned.spec]:.3f} of each "
                       f"system's best setting (the config's `{warm_spec}`: {tuned.first_round[warm_spec]:.3f})")
            warm = {**warm, "knobs": tuned.knobs}
            warm_spec = tuned.spec
        mlflow.set_tag("specctl.warm_start", warm_spec)
        stats, anchors = warm_start(model, env_kwargs, warm, args.seed, gamma)
        mlflow.log_metrics(stats, step=0)
        print(f"warm start: cloned `{warm_spec}` from {int(stats['warm/samples'])} steps "
              f"({stats['warm/agreement']:.0%} agreement)")
        export(out_dir / "warm")

        class Select(BaseCallback):
            """Every ``every`` steps: validation goodput of the exported policy; keep the best."""

            def __init__(self) -> None:
                super().__init__()
                self.best, self.history, self._next = -math.inf, [], ev["every"]
                self.kept: np.ndarray | None = None  # the kept export's goodput per validation system

            def _on_step(self) -> bool:
                if ev["every"] and self.num_timesteps >= self._next:
                    self._next += ev["every"]
                    self.evaluate()
                return True

            def evaluate(self, source: Path | None = None, label: str | None = None) -> float:
                d = source or export(out_dir / "latest")
                gs = validation_goodputs(d, env_kwargs, ev["validation_episodes"], workers)
                g = float(gs.mean())
                self.history.append((self.num_timesteps, g))
                mlflow.log_metric("eval/validation_goodput_rps", g, step=self.num_timesteps)
                keep, p = replaces_kept(gs, self.kept, ev["accept_p"])
                if keep:
                    self.best, self.kept = g, gs
                    if (out_dir / "best").exists():
                        shutil.rmtree(out_dir / "best")
                    shutil.copytree(d, out_dir / "best")
                where = label or f"@ {self.num_timesteps:,} PPO steps"
                why = "" if keep or g <= self.best else f"; not kept: paired p = {p:.2f}, not below eval.accept_p {ev['accept_p']:g}"
                tqdm_write(f"validation {where}: goodput {g:.3f} req/s (best {self.best:.3f}){why}")
                return g

        select = Select()
        select.init_callback(model)
        warm_goodput = select.evaluate(out_dir / "warm", "of the warm start")
        t_train = time.time()
        ro, data, current = cfg["rollouts"], [], out_dir / "warm"
        # the survey (if any), then the rollout iterations: each labels states of training systems
        # (below TRAIN_SEED_MAX; a new set each round), fits the policy to every label so far, and
        # is exported and validated
        rounds = [(0, "survey", f"survey ({ro['survey']} systems, every mode for a whole episode)", survey_episode,
                   [(args.seed * 7919 + j) % TRAIN_SEED_MAX for j in range(ro["survey"])])] if ro["survey"] else []
        rounds += [(it + 1, f"rollouts-{it + 1}", f"rollouts {it + 1}/{ro['iterations']}", label_episode,
                    [(args.seed * 7919 + (it + 1) * 104_729 + j) % TRAIN_SEED_MAX for j in range(ro["systems"])])
                   for it in range(ro["iterations"])]
        for step, name, title, label, seeds in rounds:
            stats, members = improve(model, current, env_kwargs, ro, seeds, data, workers, anchors, label=label,
                                     desc=f"{title}: label states", key=(args.seed, step))
            mlflow.log_metrics(stats, step=step)
            mlflow.log_artifact(str(save_labels(data, out_dir / "rollout-labels.npz")))
            current = export(out_dir / name, members)
            tqdm_write(f"{title}: {int(stats['rollouts/states'])} states labelled, "
                       f"{stats['rollouts/relabelled_share']:.0%} relabelled (mean best-candidate gain "
                       f"{stats['rollouts/mean_gain']:+.1%}), fit agreement {stats['rollouts/agreement']:.0%}"
                       + (f"; the committee of {len(members)} leaves the warm start on {stats['rollouts/moved_share']:.0%} of them"
                          if members else ""))
            select.evaluate(current, f"after {title}")
        if cfg["total_timesteps"]:
            if cfg["paired_reward"]:  # reward against the warm start on the same system and seed (SpecKnobsEnv)
                venv.env_method("set_baseline", warm["knobs"])
                tqdm_write(f"PPO reward: SLO-met requests minus those of the warm start `{warm_spec}` on the same system and seed")
            model.learn(cfg["total_timesteps"], callback=CallbackList([select, progress_callback(cfg["total_timesteps"])]))
            # PPO updates once more after its last rollout, so the last periodic check saw older weights
            select.evaluate(label=f"of the final model ({model.num_timesteps:,} PPO steps, after the last update)")
        train_s = time.time() - t_train
        model.save(out_dir / "model.zip")
        mlflow.log_metrics({"train/wall_s": train_s, "train/env_steps_per_s": model.num_timesteps / max(train_s, 1e-9),
                            "eval/warm_validation_goodput_rps": warm_goodput})
        best_dir = out_dir / "best"
        selector, sel_goodput = None, None
        if cfg["selector"] is not None:  # supervised: which setting fits a system, from a probe of it
            t_sel = time.time()
            fitted = fit_selector(cfg["selector"], env_kwargs, args.seed, workers, out_dir)
            selector = out_dir / SELECTOR_FILE
            r, lo, hi = fitted.ratio
            mlflow.log_metrics({"selector/folds_vs_default": r, "selector/folds_vs_default_ci_low": lo,
                                "selector/folds_vs_default_ci_high": hi, "selector/folds_share_of_best": fitted.share,
                                "selector/systems": fitted.systems, "selector/wall_s": time.time() - t_sel})
            mlflow.log_artifact(str(selector), "selector")
            tqdm_write(f"selector {fitted.report()}")
            sel_goodput = validation_goodput(f"selector:model={selector}", env_kwargs, ev["validation_episodes"], workers)
            mlflow.log_metric("eval/selector_validation_goodput_rps", sel_goodput)
            tqdm_write(f"validation of the selector: goodput {sel_goodput:.3f} req/s (the knob policy's best {select.best:.3f})")

        summary, report = final_comparison(best_dir, out_dir / "warm", cfg, workers, selector)
        mlflow.log_text(report, "comparison.md")
        comparison = write_comparison(out_dir, summary, args.seed, cfg["config_file"], {"validation": select.history})
        mlflow.log_dict(comparison, "comparison.json")
        mlflow.log_artifacts(str(best_dir), "policy_files")
        model_uri = log_policy_model(best_dir, "policy", register_as=args.register)
        total_s = time.time() - t_start
        mlflow.log_metric("run/wall_s", total_s)

    print("\nsummary (policy goodput vs the best tuned baseline, and vs its own warm start; 95% paired bootstrap CIs):")
    for s in summary:
        print(f"  {s['scenario']}{' (held out)' if s['held_out'] else ''}: {s['ratio']:.3f}x {s['best_baseline']} "
              f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]; vs warm start {s['vs_clone']:.3f}x [{s['vs_clone_low']:.3f}, {s['vs_clone_high']:.3f}]"
              + (f"; oracle {s['oracle_ratio']:.3f}x" if s["oracle_ratio"] else "")
              + (f"; ceiling {s['ceiling_ratio']:.3f}x" if s.get("ceiling_ratio") else "")
              + (f"; most used {settings_line(s['policy_settings'], top=1)}" if s.get("policy_settings") else ""))
        for name in ("selector", "twin"):
            if f"{name}_ratio" in s:
                print(f"    {name}: {s[f'{name}_ratio']:.3f}x [{s[f'{name}_ci_low']:.3f}, {s[f'{name}_ci_high']:.3f}]; "
                      f"vs warm start {s[f'{name}_vs_clone']:.3f}x [{s[f'{name}_vs_clone_low']:.3f}, {s[f'{name}_vs_clone_high']:.3f}]"
                      + (f"; most held {settings_line(s[f'{name}_settings'], top=1)}" if s.get(f"{name}_settings") else ""))
    print(f"validation goodput ({ev['validation_episodes']} episodes): warm start {warm_goodput:.3f}, best {select.best:.3f} req/s"
          + (f", selector {sel_goodput:.3f}" if sel_goodput is not None else "")
          + f"; trained {model.num_timesteps:,} steps in {train_s:.0f} s; whole run {total_s:.0f} s")
    print(f"MLflow run {run_id} ({run_name}) at {uri}")
    print(f"  deploy: python -m runtime simulate --controller policy:runs:/{run_id}/policy --scenario <any>"
          + (f"   or policy:{model_uri}" if args.register else ""))
    print(f"  local:  {best_dir}")
    if selector is not None:
        print(f"  the selector: python -m runtime simulate --controller selector:model=runs:/{run_id}/selector/{SELECTOR_FILE} "
              "--scenario <any>")
        print(f"  local:  selector:model={selector}")
        from controllers.selector import PROBE_S

        probe = "" if cfg["selector"]["probe_s"] == PROBE_S else f",probe_s={cfg['selector']['probe_s']:g}"
        print(f"  the twin checking the selector's choice (plan-once, as judged in docs/twin.md): python -m runtime simulate "
              f"--controller twin:selector=runs:/{run_id}/selector/{SELECTOR_FILE},replan=0,stress=0{probe} --scenario <any>")
    if twin_spec(ev):
        print(f"  the twin (no training; it models each system from a probe): python -m runtime simulate --controller "
              f"{twin_spec(ev)} --scenario <any>")
    return 0


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.knobs RUN_DIR``: judge a trained knob policy (``RUN_DIR/best`` against
    ``RUN_DIR/warm``, and the run's selector if it fitted one) on the evaluation scenarios of the
    run's own config (``RUN_DIR/config.yaml``) or another's again, e.g. with newly tuned baselines."""
    import argparse

    import mlflow
    from sb3_contrib import MaskablePPO

    from runtime.flags import OneLineParser
    from training.common import CONFIG_DIR
    from training.mlflow_sb3 import setup_tracking

    p = OneLineParser(prog="python -m training.knobs", description="Judge a knob run again: RUN_DIR/best against "
                       "RUN_DIR/warm (and the run's selector, if it fitted one) over the evaluation scenarios of the run's "
                       "own config, or of --config's.")
    p.add_argument("run_dir", type=Path, help="a knob run's output directory (holds best/ and warm/)")
    p.add_argument("--config", type=Path, help="config whose eval block to use (default: the run's own, RUN_DIR/config.yaml; "
                   "for a run of a release before it, training/configs/knobs.yaml)")
    add_set_flag(p)
    p.add_argument("--eval-seeds", type=int, help="test seeds (default: the config's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, help="the run's training seed, recorded in RUN_DIR/comparison.json "
                   "(default: the one recorded there already)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the repo's sqlite store)")
    args: argparse.Namespace = p.parse_args(argv)
    try:
        for d in ("best", "warm"):
            if not (args.run_dir / d / "policy.json").is_file():
                raise ConfigError(f"{args.run_dir / d} holds no policy.json: pass the --out directory of a knob training run")
            load_policy(str(args.run_dir / d))  # an old or broken export fails here, before any run is logged
        seed = args.seed if args.seed is not None else recorded_seed(args.run_dir)
        if args.config is None:
            own = args.run_dir / RUN_CONFIG_FILE
            args.config = own if own.is_file() else CONFIG_DIR / "knobs.yaml"
            print(f"judging over the eval block of {args.config}" + ("" if own.is_file() else
                  f" ({own} is missing: a run of an earlier release; --config C picks another)"))
        cfg = load_knob_config(args.config, "maskable_ppo", MaskablePPO, parse_overrides(args.overrides))
        cfg["config_file"] = str(args.config)
        if args.eval_seeds is not None:
            if args.eval_seeds < 2:
                raise ConfigError(f"--eval-seeds must be >= 2 (a confidence interval needs two), got {args.eval_seeds}")
            cfg["eval"]["seeds"] = args.eval_seeds
        uri = setup_tracking(args.tracking_uri, "specctl-policies")
        with mlflow.start_run(run_name=f"compare-{args.run_dir.name}"):
            mlflow.log_text(shlex.join([sys.executable, "-m", "training.knobs", *(argv or sys.argv[1:])]), "command.txt")
            selector = args.run_dir / SELECTOR_FILE  # the run's selector, if it fitted one
            summary, report = final_comparison(args.run_dir / "best", args.run_dir / "warm", cfg, args.workers,
                                               selector if selector.is_file() else None)
            mlflow.log_text(report, "comparison.md")
            mlflow.log_dict(write_comparison(args.run_dir, summary, seed, str(args.config)), "comparison.json")
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"MLflow: {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(compare_main())

__all__: Sequence[str] = ["compare_main", "final_comparison", "fit_selector", "same_export", "train_knobs", "load_knob_config", "warm_start",
                          "replaces_kept", "validation_goodput", "validation_goodputs"]
