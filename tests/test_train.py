"""training/train.py: config and flag errors, and a tiny end-to-end run into a temporary MLflow store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from training.train import main

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "default": {
        "n_envs": 1, "total_timesteps": 256, "n_steps": 128, "batch_size": 64, "n_epochs": 1,
        "policy_kwargs": {"net_arch": [16, 16]},
        "env_kwargs": {"scenario": "wan-4region", "rate": 18.0, "duration": 3.0, "n_slots": 8, "base": "static:k=2"},
        "eval": {"seeds": 2, "duration": 3.0, "periodic_seeds": 1, "periodic_duration": 2.0, "every": 0,
                 "baselines": ["static:k=2", "no-spec"], "reference": []},
    }
}


def write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


#: The per-request recipe (the default env is the knob env: tests/test_knobs_train.py).
PER_REQUEST = ["--env", "specctl/SpecControl-v0"]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv if "--env" in argv else PER_REQUEST + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"default": {"n_stepz": 10}}, r"unknown key\(s\) \['n_stepz'\] for maskable_ppo"),
        ({"default": {"total_timesteps": 0}}, "total_timesteps must be a positive integer"),
        ({"default": {"eval": {"seedz": 3}}}, r"unknown eval key\(s\) \['seedz'\]"),
        ({"default": {"vec_env": "threads"}}, "vec_env must be 'dummy' or 'subproc'"),
        ({"default": {"env_kwargs": {"scenario": "nowhere"}}}, "unknown scenario 'nowhere'"),
        ({"default": {"env_kwargs": {"reward": {"goodput": 1}}}}, "unknown reward term"),
        ({"default": {"policy_kwargs": {"activation_fn": "gelu"}}}, "activation_fn 'gelu' is not supported"),
        ({"default": ["not", "a", "mapping"]}, "block 'default' must be a mapping"),
        ({"default": {"pretrain": {"admission_teacher": "inflight-cap:max_inflight=0"}}}, "max_inflight must be >= 1"),
        ({"default": {"pretrain": {"admission_teacher": "nobody"}}}, "unknown controller 'nobody'"),
        ({"default": {"pretrain": {"drop_weight": 0}}}, "drop_weight must be a number > 0"),
        ({"default": {"pretrain": {"dagger": 1.5}}}, "dagger must be a whole number of rounds >= 0"),
    ],
)
def test_bad_config_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg: dict, match: str) -> None:
    err = one_line_error(capsys, ["--config", str(write(tmp_path, cfg)), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert re.search(match, err), err


def test_bad_flags_give_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "needs a Discrete action space" in one_line_error(capsys, ["--algo", "dqn"])
    assert "does not exist" in one_line_error(capsys, ["--config", str(tmp_path / "none.yaml")])
    assert "unknown env 'specctl/Nope-v0'" in one_line_error(capsys, ["--env", "specctl/Nope-v0", "--config", str(write(tmp_path, TINY))])
    assert "--total-timesteps must be >= 1" in one_line_error(capsys, ["--total-timesteps", "0"])
    assert "--eval-seeds must be >= 2" in one_line_error(capsys, ["--eval-seeds", "1"])
    assert "plain file store" in one_line_error(capsys, ["--config", str(write(tmp_path, TINY)), "--tracking-uri", str(tmp_path / "mlruns")])
    (tmp_path / "bad.yaml").write_text("default: [unclosed")
    assert "not valid YAML" in one_line_error(capsys, ["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(SystemExit):
        main([*PER_REQUEST, "--algo", "sac"])
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_train_end_to_end_then_deploy_by_reference(tmp_path: Path) -> None:  # ~60 s of CPU
    """train.py in a subprocess into a temporary MLflow store; load runs:/ and models:/ refs; simulate."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "training" / "train.py"), *PER_REQUEST, "--config", str(write(tmp_path, TINY)),
           "--out", str(tmp_path / "ck"), "--run-name", "tiny", "--register", "tiny-policy", "--workers", "1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\n| policy | " in out.stdout and "best heuristic" in out.stdout
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out.stdout).group(1)
    assert (tmp_path / "ck" / "model.zip").is_file() and (tmp_path / "ck" / "best" / "policy.json").is_file()
    assert not (REPO / "mlflow.db").exists() or "tiny-policy" not in (REPO / "mlflow.db").read_bytes().decode("latin1")

    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "specctl-policies"
    assert run.data.params["env_kwargs.base"] == "static:k=2"
    assert "final/ratio_vs_best_heuristic" in run.data.metrics and "train/policy_gradient_loss" in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"checkpoint", "codec.json", "config.yaml", "command.txt", "comparison.md", "comparison.png", "policy_files"} <= arts

    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import simulate

    os.environ["MLFLOW_TRACKING_URI"] = uri  # what a user sets to reach the store
    try:
        for ref in (f"runs:/{run_id}/policy", "models:/tiny-policy@champion"):
            s = simulate(load_scenario("wan-4region"), make_controller(f"policy:{ref}"), seed=7, duration=3.0, rate=18.0)
            assert s["requests_completed"] > 0, ref
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]

    # resume from the checkpoint the run logged
    resume = cmd[:-6] + ["--resume", f"runs:/{run_id}/checkpoint/model.zip", "--total-timesteps", "128", "--run-name", "tiny-resumed"]
    out = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_slot_distribution_matches_sb3_multicategorical() -> None:
    """The vectorised per-slot distribution is the same distribution as SB3's, only faster."""
    import torch as th
    from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution
    from stable_baselines3.common.distributions import MultiCategoricalDistribution

    from policy_env.sb3 import MaskableSlotMultiCategorical, SlotMultiCategorical

    dims = [9, 4, 2, 2] * 8
    th.manual_seed(0)
    logits = th.randn(6, sum(dims))
    mask = th.rand(6, sum(dims)) > 0.4
    offsets = [sum(dims[:i]) for i in range(len(dims))]
    mask[:, offsets] = True
    ref = MaskableMultiCategoricalDistribution(dims).proba_distribution(logits)
    ref.apply_masking(mask)
    fast = MaskableSlotMultiCategorical(dims).proba_distribution(logits)
    fast.apply_masking(mask)
    acts = ref.sample()
    assert th.allclose(ref.log_prob(acts), fast.log_prob(acts), atol=1e-5)
    assert th.allclose(ref.entropy(), fast.entropy(), atol=1e-5)
    assert th.equal(ref.mode(), fast.mode())
    drawn = fast.sample()
    assert th.isfinite(ref.log_prob(drawn)).all()  # samples respect the mask
    plain, fast_plain = MultiCategoricalDistribution(dims).proba_distribution(logits), SlotMultiCategorical(dims).proba_distribution(logits)
    acts = plain.sample()
    assert th.allclose(plain.log_prob(acts), fast_plain.log_prob(acts), atol=1e-5)
    assert th.allclose(plain.entropy(), fast_plain.entropy(), atol=1e-5)


def test_pretrain_clones_the_base_heuristic() -> None:
    import gymnasium as gym
    import torch
    from sb3_contrib import MaskablePPO

    from policy_env.sb3 import MaskableSlotPolicy
    from training.train import PRETRAIN_DEFAULTS, pretrain

    torch.manual_seed(0)
    kw = {"rate": 18.0, "duration": 5.0, "base": "static:k=2", "n_slots": 8}
    model = MaskablePPO(MaskableSlotPolicy, gym.make("specctl/DraftLength-v0", **kw), n_steps=64, seed=0, policy_kwargs={"net_arch": [32, 32]})
    stats = pretrain(model, "specctl/DraftLength-v0", kw, {**PRETRAIN_DEFAULTS, "steps": 1500, "epochs": 8}, seed=0, gamma=0.99)
    assert stats["pretrain/agreement"] > 0.95  # static:k=2 is one k per request: easy to clone exactly


def test_dagger_labels_the_learners_own_states_with_the_teacher() -> None:
    """A DAgger round follows the learner (here: a k=0 learner) but records the teacher's answers."""
    import gymnasium as gym

    from training.train import collect_clone_data

    env = gym.make("specctl/DraftLength-v0", rate=18.0, duration=5.0, base="static:k=2", n_slots=8).unwrapped
    obs, _ = env.reset(seed=0)
    teacher, _ = collect_clone_data(env, obs, 300, 0.99, "teacher")
    obs, _ = env.reset(seed=0)
    learner, _ = collect_clone_data(env, obs, 300, 0.99, "learner", act=lambda o, m: np.zeros(len(env.action_space.nvec), dtype=np.int64))
    nk = int(env.action_space.nvec[0])  # max_k + 1 choices of k per slot

    def labelled_k(d: Any) -> np.ndarray:  # the k labels of slots that may draft
        return d.act[:, ::4][d.mask.reshape(300, 8, -1)[:, :, 1:nk].any(2)]

    assert (labelled_k(teacher) == 2).mean() > 0.9 and (labelled_k(learner) == 2).mean() > 0.9  # static:k=2's answers
    assert not np.array_equal(teacher.obs, learner.obs)  # k=0 rounds took the env elsewhere


def test_pretrain_with_dagger_rounds_aggregates_the_data() -> None:
    import gymnasium as gym
    import torch
    from sb3_contrib import MaskablePPO

    from policy_env.sb3 import MaskableSlotPolicy
    from training.train import PRETRAIN_DEFAULTS, pretrain

    torch.manual_seed(0)
    kw = {"rate": 18.0, "duration": 5.0, "base": "static:k=2", "n_slots": 8}
    model = MaskablePPO(MaskableSlotPolicy, gym.make("specctl/DraftLength-v0", **kw), n_steps=64, seed=0, policy_kwargs={"net_arch": [32, 32]})
    stats = pretrain(model, "specctl/DraftLength-v0", kw, {**PRETRAIN_DEFAULTS, "steps": 800, "epochs": 6, "dagger": 1}, seed=0, gamma=0.99)
    assert stats["pretrain/steps"] == 1600
    assert stats["pretrain/agreement"] > 0.95  # measured on the states the clone itself visited


def test_all_baselines_are_the_heuristics_and_each_builds() -> None:
    from controllers import make_controller
    from training.train import EVAL_DEFAULTS, baseline_specs

    heuristics, refs = baseline_specs(EVAL_DEFAULTS)  # what a per-request config without baselines runs
    assert refs == ["oracle"] and "oracle" not in heuristics
    assert {"wanspec", "wisp", "static", "vllm-dynamic-k", "bandit-k"} <= set(heuristics)
    assert not {"selector", "twin", "lookahead", "knobs", "inflight-cap"} & set(heuristics)  # not heuristics
    for spec in heuristics:
        make_controller(spec)  # each runs with its defaults (a selector needs a model file: it once broke this)


def test_ratio_ci_brackets_the_ratio_and_is_exact_for_identical_runs() -> None:
    from training.train import ratio_ci

    rng = np.random.default_rng(1)
    base = rng.uniform(18, 22, 20)
    better = base + rng.normal(0.5, 0.3, 20)
    r, lo, hi = ratio_ci(better, base)
    assert 1.0 < lo < r < hi < 1.05  # a consistent +0.5 req/s is significant
    noisy = base + rng.normal(0.0, 2.0, 20)
    assert ratio_ci(noisy, base)[1] < 1.0 < ratio_ci(noisy, base)[2]  # no consistent gain: the CI spans 1
    assert ratio_ci(base, base) == (1.0, 1.0, 1.0)


def test_the_default_admission_teacher_keeps_an_overloaded_target_from_collapsing() -> None:
    """What the default warm start clones: past wanspec's capacity, turning a few arrivals away
    (admit while <= 120 requests are in flight) keeps far more requests within their SLOs."""
    from runtime.scenario import load_scenario
    from training.train import run_controller, teacher_controller

    cfg = yaml.safe_load((REPO / "training" / "configs" / "maskable_ppo.yaml").read_text())["default"]
    teacher, base = cfg["pretrain"]["admission_teacher"], cfg["env_kwargs"]["base"]
    sc = load_scenario("wan-4region")
    for seed in (0, 1):  # both tip into overload at 26 req/s
        alone = run_controller(sc, base, seed, 30.0, 26.0)
        capped = run_controller(sc, teacher_controller(base, teacher), seed, 30.0, 26.0)
        assert capped["goodput_rps"] > 1.1 * alone["goodput_rps"], (seed, alone, capped)
        assert capped["slo_attainment"] > alone["slo_attainment"]
