"""training.tune: search spaces, specs, errors, and tiny tunings that never lose to the defaults."""

from __future__ import annotations

import pytest

from controllers import REGISTRY, make_controller
from training.tune import SPACES, TuneResult, main, search_space, spec_of, start_points, tune_controller, validation_seeds

SEEDS = validation_seeds(2)


def test_validation_seeds_are_the_ones_train_selects_models_on():
    from policy_env import TRAIN_SEED_MAX
    from training.common import VALIDATION_OFFSET

    assert SEEDS == [TRAIN_SEED_MAX + VALIDATION_OFFSET, TRAIN_SEED_MAX + VALIDATION_OFFSET + 1]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_holds_its_controllers_defaults_and_builds_valid_specs(name):
    assert name in REGISTRY
    base, fixed, space, defaults = search_space(name, cap=True)
    assert spec_of(base, fixed, defaults, defaults) == name  # the defaults: the bare name
    for k, d in space.items():  # the corners of every distribution make valid controllers
        for v in (d.choices if hasattr(d, "choices") else (d.low, d.high)):
            make_controller(spec_of(base, fixed, {**defaults, k: v}, defaults))


def test_every_heuristic_with_parameters_has_a_search_space():
    assert {"static", "centralized", "sled", "wanspec", "wisp", "vllm-dynamic-k", "bandit-k"} <= set(SPACES)


def test_specs_keep_fixed_and_changed_parameters_and_compose_the_cap():
    base, fixed, space, defaults = search_space("wanspec:ahead=false", cap=True)
    assert "ahead" not in space and fixed == {"ahead": False}
    params = {**defaults, "k": 5, "switch_gain": 1.4000000000000001, "max_inflight": 112}
    spec = spec_of(base, fixed, params, defaults)
    assert spec == "wanspec:ahead=false,k=5,switch_gain=1.4+inflight-cap:max_inflight=112"
    c = make_controller(spec)
    assert c.route["draft_length"].k == 5 and c.route["admission"].max_inflight == 112


@pytest.mark.parametrize("argv,message", [
    (["--controller", "oracle"], "has no search space; tunable: static"),
    (["--controller", "nope"], "unknown controller 'nope'"),
    (["--controller", "wanspec"], "wanspec cannot run colocated"),
    (["--controller", "wanspec+inflight-cap"], "--cap adds and tunes the in-flight cap"),
])
def test_bad_controller_is_one_line_naming_the_fix(argv, message, capsys):
    assert main(["--scenario", "colocated", *argv, "--no-mlflow", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def _check(result: TuneResult, trials: int) -> None:
    assert len(result.trials) == trials
    assert sum(t.spec == result.default_spec for t in result.trials) >= 1
    assert result.best_score >= result.default_score > 0  # the defaults are a trial: never worse
    best = [t for t in result.trials if t.spec == result.best_spec]
    assert best and best[0].score == result.best_score


def _mlflow_runs(uri: str) -> tuple:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["specctl-tune"])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    return parents, runs[runs["tags.mlflow.parentRunId"].notna()]


def test_tuning_on_a_tiny_budget_keeps_the_defaults_or_beats_them_and_logs_to_mlflow(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = tune_controller("colocated", 16.0, "static", trials=3, seeds=SEEDS, duration=5.0, workers=2,
                             progress=False, track=True, tracking_uri=uri)
    _check(result, 3)
    parents, children = _mlflow_runs(uri)
    assert len(parents) == 1 and len(children) == 3
    assert set(children["tags.mlflow.parentRunId"]) == {result.mlflow_run_id}
    assert parents.iloc[0]["tags.best_spec"] == result.best_spec
    assert parents.iloc[0]["metrics.best_goodput_rps"] == pytest.approx(result.best_score)
    # the CLI: --quiet prints the best spec alone; the same seeds give the same answer
    assert main(["--scenario", "colocated", "--rate", "16", "--controller", "static", "--trials", "3", "--duration", "5",
                 "--seeds", *map(str, SEEDS), "--no-mlflow", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == result.best_spec


def test_start_points_are_scored_right_after_the_defaults(capsys):
    assert start_points("wanspec", True, ["wanspec:k=3,backup=false+inflight-cap:max_inflight=128"]) == [
        {"k": 3, "backup": False, "max_inflight": 128}]
    assert start_points("wanspec:ahead=false", False, ["wanspec:ahead=false,k=2"]) == [{"k": 2}]
    for spec, message in [("wisp", "is not a spec of wanspec"),
                          ("wanspec+inflight-cap:max_inflight=128", "only with --cap"),
                          ("wanspec:k=99", "lies outside the search space"),
                          ("wanspec:hedge_margin=2", "hedge_margin is not searched here")]:
        with pytest.raises(ValueError, match=message):
            start_points("wanspec", False, [spec])
    start = "static:k=2+inflight-cap:max_inflight=64"
    result = tune_controller("colocated", 16.0, "static", trials=2, seeds=SEEDS, duration=5.0, cap=True, workers=2,
                             progress=False, starts=[start])
    assert [t.spec for t in sorted(result.trials, key=lambda t: t.number)] == ["static", start]
    assert result.best_score == max(t.score for t in result.trials)
    assert main(["--scenario", "colocated", "--controller", "static", "--trials", "1", "--start", start, "--cap",
                 "--no-mlflow", "--quiet"]) == 2
    assert "need at least as many trials" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_tune_search_never_loses_to_the_defaults_and_logs_every_trial(local_ray, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = tune_controller("colocated", 16.0, "vllm-dynamic-k", trials=4, seeds=SEEDS, duration=5.0, cap=True,
                             ray="", progress=False, track=True, tracking_uri=uri)
    assert result.backend.startswith("ray tune")
    _check(result, 4)
    parents, children = _mlflow_runs(uri)
    assert len(parents) == 1 and len(children) == 4
