"""train.py --sweep: seeds x hyperparameters, one nested MLflow run per trial, best on validation seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.common import ConfigError, with_overrides
from training.sweep import load_sweep
from training.train import main

TINY = {
    "default": {
        "n_envs": 1, "total_timesteps": 128, "n_steps": 64, "batch_size": 64, "n_epochs": 1,
        "policy_kwargs": {"net_arch": [16, 16]},
        "env_kwargs": {"scenario": "wan-4region", "rate": 18.0, "duration": 3.0, "n_slots": 8, "base": "static:k=2"},
        "eval": {"seeds": 2, "duration": 3.0, "periodic_seeds": 1, "periodic_duration": 2.0, "every": 0,
                 "baselines": ["static:k=2"], "reference": []},
    },
    "specctl/DraftLength-v0": {"n_epochs": 2},
}


def _files(tmp_path: Path, **sweep) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    spec = {"config": str(tmp_path / "tiny.yaml"), "trials": 2, "seeds": [0, 1],
            "space": {"learning_rate": {"low": 1.0e-4, "high": 1.0e-3, "log": True, "default": 3.0e-4},
                      "n_epochs": {"choices": [1, 2]}}}
    spec.update(sweep)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_file_is_checked_and_overrides_win_in_every_block(tmp_path):
    s = load_sweep(_files(tmp_path), None, 0)
    assert s.defaults == {"learning_rate": 3.0e-4, "n_epochs": 1, "seed": 0}
    cfg = with_overrides(s.base, {"n_epochs": 2, "env_kwargs.rate": 9.0})
    assert cfg["default"]["n_epochs"] == 2 and cfg["specctl/DraftLength-v0"]["n_epochs"] == 2
    assert cfg["default"]["env_kwargs"]["rate"] == 9.0 and cfg["default"]["env_kwargs"]["n_slots"] == 8
    for bad, match in (({"space": {"n_epochs": {"choices": [2, 3]}}}, "does not contain the base value 1"),
                       ({"space": {"gamma": {"low": 0.9, "high": 0.99}}}, "has no 'gamma'; give the space entry a 'default'"),
                       ({"seeds": []}, "seeds must be a non-empty list"),
                       ({"trails": 3}, r"unknown key\(s\) \['trails'\]")):
        with pytest.raises(ConfigError, match=match):
            load_sweep(_files(tmp_path, **bad), None, 0)


def test_set_changes_the_sweeps_base_config(tmp_path):
    s = load_sweep(_files(tmp_path), None, 0, {"n_epochs": 2, "eval.seeds": 3})
    assert s.defaults["n_epochs"] == 2  # the first trial is the base config with --set applied
    assert s.base["default"]["eval"]["seeds"] == 3 and s.base["specctl/DraftLength-v0"]["eval"]["seeds"] == 3
    with pytest.raises(ConfigError, match=r"\(with --set n_epochs\) has no 'gamma'"):
        load_sweep(_files(tmp_path, space={"gamma": {"low": 0.9, "high": 0.99}}), None, 0, {"n_epochs": 2})


def test_bad_sweep_is_one_line_error(tmp_path, capsys):
    assert main(["--sweep", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: sweep file {tmp_path / 'none.yaml'} does not exist"


@pytest.mark.slow
def test_sweep_runs_nested_trials_and_never_loses_to_the_base_config(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--sweep", str(_files(tmp_path)), "--env", "specctl/DraftLength-v0", "--tracking-uri", uri,
                 "--workers", "1", "--out", str(tmp_path / "ck"), "--experiment", "sweep-test"]) == 0
    out = capsys.readouterr().out
    assert "best of 2:" in out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sweep-test"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    trials = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(trials) == 2
    assert set(trials["tags.mlflow.parentRunId"]) == {parent.iloc[0].run_id}
    assert trials["metrics.eval/goodput_rps"].notna().all()  # each trial is a whole train.py run
    assert parent.iloc[0]["metrics.best_score"] >= parent.iloc[0]["metrics.base_score"] > 0
    assert len(list((tmp_path / "ck").iterdir())) == 2  # --out: one folder per trial


@pytest.mark.slow
def test_sweep_on_ray_tune_nests_every_trial(local_ray, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--sweep", str(_files(tmp_path)), "--env", "specctl/DraftLength-v0", "--tracking-uri", uri,
                 "--workers", "1", "--experiment", "sweep-ray", "--out", str(tmp_path / "ck"), "--ray"]) == 0
    assert "Ray Tune" in capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sweep-ray"])
    assert runs["tags.mlflow.parentRunId"].notna().sum() == 2
