"""The knob recipe of training/train.py (the default): config errors, and a tiny run end to end
whose policy then deploys on scenarios with other site sets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from training.train import main

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "n_envs": 1, "vec_env": "dummy", "total_timesteps": 40, "n_steps": 20, "batch_size": 20, "n_epochs": 1,
    "policy_kwargs": {"net_arch": [16]}, "half_life_s": 5.0, "paired_reward": True,
    "env_kwargs": {"distribution": str(REPO / "training" / "configs" / "scenario-mix.yaml"), "duration": 5.0},
    "warm_start": {"episodes": 1, "epochs": 5,
                   "tune": {"systems": [1, 1], "keep": 2, "duration": 3.0, "caps": [1.0, 3.0], "k_caps": [3], "hedge": [False]}},
    "rollouts": {"iterations": 1, "systems": 1, "at_s": [2.0], "horizon_s": 1.0, "caps": [2.0], "epochs": 5, "anchor": 0.25,
                 "survey": 1},
    "eval": {"seeds": 2, "duration": 4.0, "validation_episodes": 2, "every": 20, "scenarios": [
        {"scenario": "wan-4region", "rate": 20.0, "baselines": ["wanspec", "wanspec+inflight-cap:max_inflight=100"], "references": []},
        {"scenario": str(REPO / "training" / "scenarios" / "eu-3region-bursty.yaml"), "rate": 8.0, "held_out": True,
         "baselines": ["centralized"], "references": []},
    ], "twin": "twin:probe_s=2,warmup_s=1,horizon_s=2,seeds=1"},
}


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "knobs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("patch", "match"), [
    ({"n_stepz": 3}, r"unknown key\(s\) \['n_stepz'\]"),
    ({"gamma": 0.9}, "gamma comes from half_life_s"),
    ({"half_life_s": 0}, "half_life_s must be > 0"),
    ({"paired_reward": "yes"}, r"paired_reward must be true \(PPO's reward is the policy's SLO-met requests minus"),
    ({"env_kwargs": {**TINY["env_kwargs"], "baseline": {"mode": 0}}}, "env_kwargs.baseline is set by the recipe; use paired_reward"),
    ({"rollouts": {"horizon": 3}}, r"unknown rollouts key\(s\) \['horizon'\]"),
    ({"rollouts": {"caps": []}}, "rollouts needs caps and at_s"),
    ({"rollouts": {"caps": [1.2]}}, r"rollouts.caps / k_caps: cap=1.2 is not a level; choose one of"),
    ({"rollouts": {"k_caps": [5]}}, r"rollouts.caps / k_caps: k_cap=5 is not a level; choose one of"),
    ({"rollouts": {"confirm": -1}}, r"rollouts.confirm must be an integer >= 0"),
    ({"rollouts": {"modes": "no"}}, r"rollouts.modes must be true"),
    ({"rollouts": {"gain_per": "value"}}, r"rollouts.gain_per must be 'best' or 'demand', got 'value'"),
    ({"rollouts": {"gain_per": "demand", "confirm": 2}}, r"set confirm: 0 with gain_per: demand"),
    ({"rollouts": {"anchor": -0.5}}, r"rollouts.anchor must be a weight >= 0 \(0: no warm-start anchors\), got -0.5"),
    ({"rollouts": {"survey": -1}}, r"rollouts.survey must be a whole number of systems >= 0 \(0: no survey\), got -1"),
    ({"rollouts": {"committee": -2}}, r"rollouts.committee must be an integer >= 0 \(members; 0: one network\), got -2"),
    ({"rollouts": {"committee": 4, "agree": 0.5}}, r"rollouts.agree must be a share in \(0.5, 1\]"),
    ({"rollouts": {"committee": 4}}, r"PPO cannot fine-tune a committee policy; set total_timesteps: 0"),
    ({"eval": {"scenarios": [{"scenario": "wan-4region"}]}}, "needs scenario, rate and baselines"),
    ({"eval": {**TINY["eval"], "evals": 3}}, r"unknown eval key\(s\) \['evals'\]; valid: \['accept_p', 'duration'"),
    ({"eval": {**TINY["eval"], "accept_p": 0}}, r"eval.accept_p must be a p-value in \(0, 1\] \(1: the higher validation mean wins\)"),
    ({"eval": {**TINY["eval"], "validation_episodes": 1}}, r"eval.accept_p < 1 tests paired validation episodes, so it needs "
                                                           r"eval.validation_episodes >= 2 \(got 1\), or set accept_p: 1"),
    ({"eval": {**TINY["eval"], "twin": "yes"}}, r"eval.twin must be true, false or a twin spec such as 'twin:seeds=3'"),
    ({"eval": {**TINY["eval"], "twin": "twin:seeds=0"}}, r"eval.twin: .*seeds >= 1"),
    ({"eval": {**TINY["eval"], "references": ["selector:model=/nowhere.json"],
               "scenarios": [{"scenario": "wan-4region", "baselines": ["wanspec"]}]}},
     r"eval.references: 'selector:model=/nowhere.json': .*not found; fit one with `python -m training.selector"),
    ({"eval": {**TINY["eval"], "scenarios": [{"scenario": "wan-4region", "baselines": ["wanspec"], "references": "oracle"}]}},
     r"eval.scenarios\[0\].references must be a list of controller specs"),
    ({"env_kwargs": {"distribution": "/nowhere.yaml"}}, "does not exist"),
    ({"warm_start": {"episode": 3}}, r"unknown warm_start key\(s\) \['episode'\]"),
    ({"warm_start": {"knobs": {"mode": 0, "cap": 1.2}}}, r"warm_start.knobs: cap=1.2 is not a level"),
    ({"warm_start": {"knobs": {"mode": "wisp"}}}, r"warm_start.knobs: mode must be an index >= 0"),
    ({"warm_start": {"knobs": {"modes": 1}}}, r"warm_start.knobs: a mapping of mode \(an index\), cap, k_cap and hedge"),
    ({"warm_start": {"tune": {"keep": 1}}}, r"warm_start.tune.keep: an integer >= 2"),
    ({"warm_start": {"tune": {"caps": [1.2]}}}, r"warm_start.tune.caps / k_caps: cap=1.2 is not a level"),
    ({"selector": {"dat": "x.npz"}}, r"selector: unknown key\(s\) \['dat'\]; valid: \['data', 'duration'"),
    ({"selector": {"folds": 1}}, r"selector.folds must be an integer >= 2, got 1"),
    ({"selector": {"systems": 3, "folds": 5}}, r"selector.systems must be an integer >= folds \(5\), got 3"),
    ({"selector": {"probe_s": 20, "duration": 10}}, r"need 2 s \(the probe's warm-up\) < probe_s < duration, got probe_s 20"),
    ({"selector": {"data": "/nowhere.npz"}}, r"selector.data: /nowhere.npz does not exist; record it with `python -m training.selector"),
    ({"selector": "yes"}, r"selector must be a mapping"),
])
def test_bad_knob_config_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict, match: str) -> None:
    code = main(["--config", str(write(tmp_path, {**TINY, **patch})), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert re.search(match, err), err


def test_model_selection_keeps_an_export_until_another_is_better_by_a_paired_test() -> None:
    import numpy as np

    from training.knobs import replaces_kept

    kept = np.array([8.0, 6.0, 10.0, 4.0])
    assert replaces_kept(kept, None, 0.1) == (True, 0.0)  # the first export is kept
    lucky = kept * np.array([1.08, 0.99, 1.01, 0.98])  # a higher mean from one system
    assert lucky.mean() > kept.mean()
    keep, p = replaces_kept(lucky, kept, 0.1)
    assert not keep and 0.1 <= p < 1
    assert replaces_kept(lucky, kept, 1.0)[0]  # accept_p 1: the higher mean wins, as before
    steady = kept * np.array([1.03, 1.02, 1.04, 1.03])
    keep, p = replaces_kept(steady, kept, 0.1)
    assert keep and p < 0.05
    assert replaces_kept(kept * 0.99, kept, 1.0) == (False, 1.0)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "training" / "configs").glob("knobs*.yaml")))
def test_every_shipped_knob_config_is_valid(name: str) -> None:
    from training.knobs import load_knob_config
    from training.train import algorithms

    cfg = load_knob_config(REPO / "training" / "configs" / name, "maskable_ppo", algorithms()["maskable_ppo"])
    assert cfg["eval"]["scenarios"] and isinstance(cfg["paired_reward"], bool)


def test_set_changes_config_values_and_they_are_checked_like_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import build_parser, resolve_knobs

    args = build_parser().parse_args(["--config", str(REPO / "training" / "configs" / "knobs-ppo.yaml"),
                                      "--set", "warm_start.tune.objective=mean", "--set", "eval.seeds=20",
                                      "--set", "warm_start.tune.caps=[1.0, 2.0]", "--set", "eval.twin=twin:seeds=3"])
    cfg = resolve_knobs(args)
    tune = cfg["warm_start"]["tune"]
    assert tune["objective"] == "mean" and tune["caps"] == [1.0, 2.0] and tune["keep"] == 3  # the file's other keys stay
    assert cfg["eval"]["seeds"] == 20 and cfg["eval"]["twin"] == "twin:seeds=3" and cfg["total_timesteps"] == 6000
    for flags, match in ((["--set", "warm_start.tune.objective=meen"],
                          r"\(with --set warm_start.tune.objective\): warm_start.tune.objective: 'worst' or 'mean', got 'meen'"),
                         (["--set", "n_stepz=3"], r"\(with --set n_stepz\): unknown key\(s\) \['n_stepz'\]"),
                         (["--set", "n_steps.x=3"], r"--set n_steps.x: n_steps is 60 in the config, not a mapping; set n_steps itself"),
                         (["--set", "eval.seeds"], r"--set 'eval.seeds': expected KEY=VALUE with a dotted config key")):
        code = main(["--config", str(REPO / "training" / "configs" / "knobs-ppo.yaml"), *flags,
                     "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and re.search(match, err), err


def test_set_values_are_yaml() -> None:
    from training.common import ConfigError, parse_overrides

    assert parse_overrides(["a=3", "b.c=1e-3", "b.d=-2.5E4", "d=null", "e=[1.0, 2.0]", "f=mean", "g=true", "h=x=y"]) == \
        {"a": 3, "b.c": 1e-3, "b.d": -2.5e4, "d": None, "e": [1.0, 2.0], "f": "mean", "g": True, "h": "x=y"}
    assert parse_overrides(None) == {}
    for bad in ("=3", "a..b=1", "a"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="the value is not YAML"):
        parse_overrides(["a=[1, 2"])


def test_selector_data_must_come_from_the_distribution_the_run_trains_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.selector import SelectorData
    from training.train import build_parser, resolve_knobs

    shipped = SelectorData.load(REPO / "training" / "models" / "selector-mix-data.npz")
    SelectorData(shipped.goodput, shipped.features, shipped.seeds, shipped.probe_s, "another-mix@0123456789ab").save(tmp_path / "d.npz")
    cfg = {**TINY, "selector": {"data": str(tmp_path / "d.npz")}}
    code = main(["--config", str(write(tmp_path, cfg)), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert re.search(r"selector.data .*d.npz was recorded on another-mix@0123456789ab, this run trains on scenario-mix@[0-9a-f]{12}; "
                     r"set selector.data: null to record labels on its systems", err), err
    # the default config's shipped labels are this mix's (edit the mix and this fails: record them again)
    default = resolve_knobs(build_parser().parse_args([]))
    assert default["selector"]["data"].endswith("selector-mix-data.npz")
    # one scenario has no systems to choose between: the run says so and fits no selector
    assert resolve_knobs(build_parser().parse_args(["--scenario", "wan-4region"]))["selector"] is None
    assert "selector: not fitted (its labels in" in capsys.readouterr().out


def test_knob_recipe_refuses_algorithms_without_masks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--algo", "a2c"]) == 2
    assert "maskable_ppo" in capsys.readouterr().err


@pytest.mark.slow
def test_knob_recipe_end_to_end_then_deploy_on_other_sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # ~60 s of CPU
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    # the selector's labels recorded in the run, on 4 training systems
    selector = {"data": None, "systems": 4, "duration": 5.0, "probe_s": 3.0, "folds": 2}
    cmd = [sys.executable, str(REPO / "training" / "train.py"), "--config", str(write(tmp_path, {**TINY, "selector": selector})),
           "--out", str(tmp_path / "ck"), "--run-name", "tiny-knobs", "--workers", "1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "warm start (clone)" in out.stdout and "(held out)" in out.stdout and "vs warm start" in out.stdout
    # the warm start is the setting tuned over 2 training systems (7 candidates, then the best 4)
    tuned = re.search(r"warm start: tuned over 2 training systems: `(knobs:[^`]+)`; on the first 1, where every candidate ran, "
                      r"[01]\.\d{3} of each system's best setting \(the config's `knobs:mode=wanspec,cap=2,k_cap=8,hedge=true`: "
                      r"[01]\.\d{3}\)", out.stdout)
    assert tuned and f"warm start: cloned `{tuned.group(1)}` from" in out.stdout, out.stdout[-2000:]
    assert f"PPO reward: SLO-met requests minus those of the warm start `{tuned.group(1)}` on the same system" in out.stdout
    # the survey labels one moment in each mode's episode; the rollouts one more state
    survey = re.search(r"survey \(1 systems, every mode for a whole episode\): (\d) states labelled", out.stdout)
    assert survey and (tmp_path / "ck" / "survey" / "policy.json").is_file(), out.stdout[-2000:]
    assert f"rollouts 1/1: {int(survey.group(1)) + 1} states labelled" in out.stdout
    assert (tmp_path / "ck" / "rollout-labels.npz").is_file()
    # the selector: labelled, fitted (its folds' figures printed), validated, judged beside the policy
    assert "selector: labelling 6 settings x 4 training systems, 5 s each" in out.stdout
    assert "selector held-out folds (2-fold over 4 systems" in out.stdout and "validation of the selector: goodput" in out.stdout
    assert (tmp_path / "ck" / "selector-data.npz").is_file() and (tmp_path / "ck" / "selector.json").is_file()
    assert "selector vs the warm start: " in out.stdout and re.search(r"\n    selector: [01]\.\d{3}x \[", out.stdout)
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", out.stdout).group(1)
    assert f"--controller selector:model=runs:/{run_id}/selector/selector.json" in out.stdout
    assert f"local:  selector:model={tmp_path / 'ck' / 'selector.json'}" in out.stdout
    # the twin: judged beside them (it plans at 2 s of the 4-s test episodes)
    assert "twin vs the warm start: " in out.stdout and re.search(r"\n    twin: [01]\.\d{3}x \[", out.stdout)
    assert "--controller twin:probe_s=2,warmup_s=1,horizon_s=2,seeds=1 --scenario <any>" in out.stdout

    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    assert "final/wan-4region/ratio_vs_best" in run.data.metrics and "eval/validation_goodput_rps" in run.data.metrics
    assert "final/eu-3region-bursty/vs_warm_start" in run.data.metrics
    assert {"selector/folds_vs_default", "eval/selector_validation_goodput_rps", "final/wan-4region/selector_vs_warm_start",
            "final/wan-4region/twin_ratio_vs_best"} <= set(run.data.metrics)
    # the selector deploys from the run as from its file (the store from MLFLOW_TRACKING_URI)
    from controllers import make_controller as make
    from runtime.scenario import load_scenario as scenario_of
    from runtime.sim import simulate as sim

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    remote = make(f"selector:model=runs:/{run_id}/selector/selector.json")
    assert remote.model == make(f"selector:model={tmp_path / 'ck' / 'selector.json'}").model
    # and into the twin that checks its choice, as the run's last lines print it (the run's probe is 3 s)
    assert f"--controller twin:selector=runs:/{run_id}/selector/selector.json,replan=0,stress=0,probe_s=3 --scenario <any>" in out.stdout
    assert make(f"twin:selector=runs:/{run_id}/selector/selector.json,replan=0,stress=0,probe_s=3").prior == remote.model
    assert sim(scenario_of("edge-fleet"), remote, seed=3, duration=3.0)["requests_completed"] > 0
    from controllers import ControllerError

    with pytest.raises(ControllerError, match=r"cannot fetch 'runs:/0{32}/selector/selector.json' from MLflow at sqlite"):
        make(f"selector:model=runs:/{'0' * 32}/selector/selector.json")
    assert run.data.tags["specctl.warm_start"] == tuned.group(1) and run.data.metrics["warm/tuned_systems"] == 2
    assert tuned.group(1) in Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="warm-start-tuning.md")).read_text()
    # the policy as the run logged it, a pyfunc model: the checkpoint's deterministic actions, and
    # no warning from MLflow on the way (it warned about predict's type hints at every log and load)
    from controllers.policy import load_policy_dir

    assert "Add type hints" not in out.stderr
    spec, net = load_policy_dir(tmp_path / "ck" / "best")
    obs = np.random.default_rng(0).uniform(-1, 1, size=(3, spec["net"]["obs_size"])).astype(np.float32)
    assert np.array_equal(mlflow.pyfunc.load_model(f"runs:/{run_id}/policy").predict(obs), np.stack([net(o, None) for o in obs]))
    # the run's comparison, with its training seed, beside its checkpoints: what across_seeds reads
    from training.across_seeds import load_run, report

    result = load_run(tmp_path / "ck")
    assert result.seed == 0 and "eu-3region-bursty" in result.held_out and "wan-4region" in result.scenarios
    # which decisions: the policy's knob settings per scenario, as specs that run alone
    for row in result.scenarios.values():
        assert sum(row["policy_settings"].values()) == pytest.approx(1.0)
        assert all(spec.startswith("knobs:mode=") for spec in row["policy_settings"])
    assert "policy's knob settings (share of control intervals over the test seeds): `knobs:mode=" in out.stdout
    assert report([result]).startswith("1 run (training seeds 0)")
    # judged again (e.g. after re-tuning baselines): the comparison is rewritten, the seed kept or set
    from training.knobs import compare_main

    judge = [str(tmp_path / "ck"), "--config", str(tmp_path / "knobs.yaml"), "--workers", "1", "--tracking-uri", uri]
    assert compare_main(judge + ["--seed", "5"]) == 0 and load_run(tmp_path / "ck").seed == 5
    assert "selector_vs_clone" in load_run(tmp_path / "ck").scenarios["wan-4region"]  # the run's selector is judged again too
    assert compare_main(judge) == 0 and load_run(tmp_path / "ck").seed == 5
    # the run wrote its resolved config: judged again without --config, over that eval block
    from training.knobs import RUN_CONFIG_FILE

    assert yaml.safe_load((tmp_path / "ck" / RUN_CONFIG_FILE).read_text())["eval"]["scenarios"] == TINY["eval"]["scenarios"]
    assert compare_main(judge[:1] + judge[3:]) == 0
    assert json.loads((tmp_path / "ck" / "comparison.json").read_text())["config"] == str(tmp_path / "ck" / RUN_CONFIG_FILE)

    # one policy, five site sets: WAN regions, an edge fleet, a single site (no remote: its mode
    # is masked), other regions, and edge devices beside a remote region (a mix never trained on)
    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import simulate

    held_out = [str(REPO / "training" / "scenarios" / f) for f in ("eu-3region-bursty.yaml", "apac-hybrid.yaml")]
    for scenario in ("wan-4region", "edge-fleet", "colocated", *held_out):
        s = simulate(load_scenario(scenario), make_controller(f"policy:{tmp_path / 'ck' / 'best'}"), seed=3, duration=3.0)
        assert s["requests_completed"] > 0, scenario


def test_the_runs_config_copy_reads_the_same_files_from_the_run_folder(tmp_path: Path) -> None:
    """knobs.yaml names its held-out files relative to its own folder (../scenarios/x.yaml); the
    copy in RUN_DIR/config.yaml, which `python -m training.knobs RUN_DIR` judges over, must still
    find them from the run's folder."""
    from sb3_contrib import MaskablePPO

    from runtime.scenario import beside, load_scenario
    from training.knobs import load_knob_config, write_run_config

    (tmp_path / "configs").mkdir()
    (tmp_path / "scenarios").mkdir()
    shutil.copy(REPO / "training" / "scenarios" / "eu-3region-bursty.yaml", tmp_path / "scenarios" / "held.yaml")
    ev = {**TINY["eval"], "scenarios": [{"scenario": "../scenarios/held.yaml", "rate": 8.0, "baselines": ["centralized"],
                                         "held_out": True, "references": []}, {"scenario": "colocated", "rate": 8.0,
                                                                              "baselines": ["centralized"]}]}
    source = write(tmp_path / "configs", {**TINY, "eval": ev})
    cfg = load_knob_config(source, "maskable_ppo", MaskablePPO)
    cfg["config_file"] = str(source)
    run = tmp_path / "checkpoints" / "run"
    run.mkdir(parents=True)
    assert write_run_config(run, cfg) == (run / "config.yaml").read_text()
    again = load_knob_config(run / "config.yaml", "maskable_ppo", MaskablePPO)
    held, shipped = (sc["scenario"] for sc in again["eval"]["scenarios"])
    assert held == str(tmp_path / "scenarios" / "held.yaml") and shipped == "colocated"  # a shipped name stays a name
    assert load_scenario(beside(held, str(run / "config.yaml"))).name == "eu-3region-bursty"
    assert cfg["eval"]["scenarios"][0]["scenario"] == "../scenarios/held.yaml"  # the run's own config is not changed
    assert again["env_kwargs"]["distribution"] == TINY["env_kwargs"]["distribution"]


def test_judging_an_old_export_fails_before_any_run_is_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from sb3_contrib import MaskablePPO

    from controllers.policy import export_policy
    from policy_env.knobs_env import SpecKnobsEnv
    from training.knobs import compare_main

    env = SpecKnobsEnv(scenario="colocated", duration=2.0)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    for d in ("best", "warm"):
        export_policy(model, env.controller.layout, tmp_path / "run" / d, {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    spec_file = tmp_path / "run" / "best" / "policy.json"
    spec = json.loads(spec_file.read_text())
    spec["knobs"]["version"] = 1  # an export of an earlier release's codec
    spec_file.write_text(json.dumps(spec))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert compare_main([str(tmp_path / "run"), "--eval-seeds", "2", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "knob format v1 is not v" in err and "retrain it" in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing was logged


def test_a_policy_that_is_its_warm_start_is_judged_on_the_warm_starts_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Model selection copies the warm start to best/ when nothing beats it: the final comparison
    then runs it once, and the policy's rows are the warm start's; a different export runs."""
    from sb3_contrib import MaskablePPO

    import training.knobs as knobs
    from controllers.policy import export_policy
    from policy_env.knobs_env import SpecKnobsEnv

    env = SpecKnobsEnv(scenario="colocated", duration=2.0)
    meta = {"kind": "knobs", "knobs": env.controller.layout.to_dict()}
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "run" / "warm", meta)
    shutil.copytree(tmp_path / "run" / "warm", tmp_path / "run" / "best")
    config = write(tmp_path, {**TINY, "eval": {"seeds": 2, "duration": 3.0, "validation_episodes": 2, "twin": False, "scenarios": [
        {"scenario": "colocated", "rate": 8.0, "baselines": ["centralized"], "references": []}]}})
    ran: list[list[str]] = []
    real = knobs.evaluate_grids

    def spy(grids, *args, **kwargs):  # type: ignore[no-untyped-def]
        ran.extend(list(controllers) for _, controllers, _ in grids)
        return real(grids, *args, **kwargs)

    monkeypatch.setattr(knobs, "evaluate_grids", spy)
    # without --config it judges over the run's own config (RUN_DIR/config.yaml, which a run writes)
    shutil.copy(config, tmp_path / "run" / knobs.RUN_CONFIG_FILE)
    judge = [str(tmp_path / "run"), "--workers", "1", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert knobs.compare_main(judge) == 0
    out = capsys.readouterr().out
    assert f"judging over the eval block of {tmp_path / 'run' / 'config.yaml'}\n" in out
    assert "its rows are the warm start's runs" in out
    assert ran[-1] == ["centralized", "warm start (clone)"]
    row = json.loads((tmp_path / "run" / "comparison.json").read_text())["scenarios"][0]
    assert (row["vs_clone"], row["ratio"]) == (1.0, row["clone_ratio"])

    other = MaskablePPO("MlpPolicy", env, seed=1, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(other, env.controller.layout, tmp_path / "run" / "best", meta)  # a policy that moved: judged on its own runs
    assert not knobs.same_export(tmp_path / "run" / "best", tmp_path / "run" / "warm")
    assert knobs.compare_main(judge) == 0
    assert ran[-1] == ["centralized", "warm start (clone)", "policy"]
