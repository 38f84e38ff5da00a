"""The learned selector: probe, predict, hold (controllers/selector.py), and its fitting
(training/selector.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controllers import ControllerError, make_controller
from controllers.knobs import DEFAULT_MODES, fixed_controller
from controllers.lookahead import PORTFOLIO
from controllers.selector import SELECTOR_FEATURES, Selector, SelectorModel, load_selector
from runtime.scenario import load_scenario
from runtime.sim import Simulator
from training import selector as fit

SETTINGS = [dict(s) for s in PORTFOLIO[:3]]


def _model(bias: list[float], margin: float = 0.02) -> SelectorModel:
    """A one-leaf forest: it predicts ``bias`` as the settings' shares whatever the probe saw."""
    tree = {"left": [-1], "right": [-1], "feature": [0], "threshold": [0.0], "value": [bias]}
    return SelectorModel(modes=list(DEFAULT_MODES), settings=SETTINGS, trees=[tree], probe_s=4.0, warmup_s=1.0, margin=margin)


def _run(ctl) -> dict:
    return Simulator(load_scenario("wan-4region"), 3, 8.0, rate=20.0).run(ctl)


def test_probing_alone_changes_no_decision():
    probe = Selector(settings=SETTINGS, modes=DEFAULT_MODES, probe_s=4.0, warmup_s=1.0)
    assert _run(probe) == _run(fixed_controller(SETTINGS[0], DEFAULT_MODES))
    assert probe.chosen is None and 2 <= len(probe.samples) <= 4  # one per 1-s window in (1, 4] s
    assert probe.probe_features().shape == (len(SELECTOR_FEATURES),)


@pytest.mark.parametrize("bias, margin, chosen", [
    ([0.5, 0.6, 0.9], 0.02, 2),   # the predicted best
    ([0.9, 0.6, 0.5], 0.02, 0),   # the first is best: keep it
    ([0.5, 0.54, 0.53], 0.05, 0),  # the best beats the first by less than the margin: keep the first
])
def test_after_the_probe_it_holds_the_setting_the_model_chooses(bias, margin, chosen):
    ctl = Selector(_model(bias, margin))
    summary = _run(ctl)
    assert ctl.chosen == chosen
    held = fixed_controller(SETTINGS[chosen], DEFAULT_MODES)
    assert held.spec(held.knobs) in ctl.usage
    twin = Selector(_model(bias, margin))
    assert _run(twin) == summary and twin.chosen == chosen  # deterministic by seed
    # training labels each setting by this very run: probe, then hold it
    label = Selector(settings=SETTINGS, modes=DEFAULT_MODES, probe_s=4.0, warmup_s=1.0, hold=chosen)
    assert _run(label) == summary


def test_a_model_file_round_trips_and_a_bad_one_is_refused_naming_the_fix(tmp_path):
    path = tmp_path / "m.json"
    _model([0.5, 0.6, 0.9]).save(path)
    assert load_selector(path) == _model([0.5, 0.6, 0.9])
    assert make_controller(f"selector:model={path},margin=0.5").model.margin == 0.5
    d = json.loads(path.read_text())
    bad_tree = {"left": [0], "right": [-1], "feature": [0], "threshold": [0.0], "value": [[0.5, 0.6, 0.9]]}  # a loop
    for change, match in [({"version": 0}, "version 0"), ({"features": ["x"]}, "other features"),
                          ({"trees": [bad_tree]}, "tree 0 is not 3 settings' shares"), ({"trees": []}, "needs trees"), ({"settings": [{"mode": 9}]}, r"settings\[0\].mode must index modes"),
                          ({"speed": 1}, "unexpected keyword"), ({"warmup_s": 9.0}, "warmup_s < probe_s")]:
        path.write_text(json.dumps({**d, **change}))
        with pytest.raises(ValueError, match=match):
            load_selector(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_selector(path)
    with pytest.raises(ControllerError, match="not found.*training.selector"):
        make_controller(f"selector:model={tmp_path / 'none.json'}")
    with pytest.raises(ControllerError, match="needs a model file"):
        make_controller("selector")
    path.write_text(json.dumps(d))
    with pytest.raises(ControllerError, match="probe_s come.* from the model; refit it"):
        make_controller(f"selector:model={path},probe_s=5")
    with pytest.raises(ControllerError, match="hold come.* from the model"):
        make_controller(f"selector:model={path},hold=1")
    with pytest.raises(ValueError, match=r"hold=3: there are 3 settings \(0..2\)"):
        Selector(settings=SETTINGS, modes=DEFAULT_MODES, hold=3)


def test_the_exported_forest_predicts_what_sklearn_does_and_cross_validation_switches_where_it_pays():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(300, len(SELECTOR_FEATURES)))
    shares = np.stack([np.full(300, 0.9), 0.9 + 0.1 * np.sign(x[:, 0])], axis=1)  # the second is best where x0 > 0
    forest = fit.fit_forest(x, shares, leaf=5)
    model = SelectorModel(modes=list(DEFAULT_MODES), settings=SETTINGS[:2], trees=fit.export_trees(forest))
    probe = rng.uniform(-1, 1, size=(20, len(SELECTOR_FEATURES)))
    assert np.allclose([model.predict(p) for p in probe], forest.predict(probe), atol=1e-5)
    picks = fit.cross_validate(x, shares, leaf=5, margin=0.0)
    assert np.mean((picks == 1) == (x[:, 0] > 0)) > 0.95


def test_cli_fits_a_model_that_deploys_and_refits_from_saved_data(tmp_path, capsys):
    # into folders that do not exist yet: the labels (minutes to hours of runs) are not lost to them
    data, out, again = tmp_path / "labels" / "d.npz", tmp_path / "models" / "m.json", tmp_path / "m2.json"
    assert fit.main(["--systems", "4", "--duration", "8", "--probe-s", "5", "--folds", "2", "--data", str(data),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out folds (2-fold over 4 systems" in printed and "selector:model=" in printed
    assert fit.main(["--from-data", str(data), "--folds", "2", "--out", str(again)]) == 0
    assert json.loads(out.read_text()) == json.loads(again.read_text())
    assert load_selector(out).probe_s == 5.0  # the probe the labels were made with
    assert fit.SelectorData.load(data).distribution.startswith("scenario-mix@")  # which mix drew its systems
    ctl = make_controller(f"selector:model={out}")
    assert _run(ctl)["requests_completed"] > 0 and ctl.chosen is not None
    with pytest.raises(SystemExit):  # its labels hold each setting from 5 s on, not 10
        fit.main(["--from-data", str(data), "--probe-s", "10"])
    assert "recorded with a 5-s probe, not 10; drop --probe-s" in capsys.readouterr().err


def test_check_sets_the_models_predictions_beside_what_each_setting_reached_on_the_test_seeds(tmp_path, capsys):
    """Where a system lies outside what the model was fitted on, its predicted shares and the
    shares the settings reach part: `--check` shows both, per setting, on a scenario's test seeds."""
    model = _model([0.2, 0.3, 0.95])  # predicts the third setting best, whatever the probe saw
    data = fit.SelectorData(goodput=np.array([[4.0, 2.0, 1.0], [3.0, 3.0, 2.0]]), features=np.zeros((2, len(SELECTOR_FEATURES))),
                            seeds=[0, 1], probe_s=4.0)
    rows = fit.check(model, data, ["a", "b", "c"]).splitlines()
    assert rows[1].split() == ["a", "0.200", "1.000", "0", "2"]  # best on both seeds (a tie goes to the first), never chosen
    assert rows[2].split() == ["b", "0.300", "0.750", "0", "0"]
    assert rows[3].split() == ["c", "0.950", "0.458", "2", "0"]  # chosen everywhere, reaching 1/4 and 2/3 of the best
    assert "the model's choices reached 0.458 of each seed's best: 0.429x" in rows[4]
    assert rows[4].endswith("the best fixed setting here, a, 1.000")
    model.save(tmp_path / "m.json")
    assert fit.main(["--check", str(tmp_path / "m.json"), "--scenario", "wan-4region", "--rate", "20", "--seeds", "2",
                     "--duration", "6", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "3 settings x 2 test seeds of wan-4region, 6 s each" in printed
    table = printed.splitlines()[-5:]
    assert [r.split()[1] for r in table[1:4]] == ["0.200", "0.300", "0.950"] and "reached" in table[-1]
    for args, match in [(["--check", str(tmp_path / "m.json"), "--out", "x.json"], "--check fits nothing"),
                        (["--check", str(tmp_path / "m.json"), "--scenario", "wan-4region", "--duration", "3"],
                         "--duration must exceed the model's 4-s probe"),
                        (["--scenario", "wan-4region"], "--scenario and --rate go with --check"),
                        (["--check", str(tmp_path / "nope.json")], "nope.json")]:
        with pytest.raises(SystemExit) as e:
            fit.main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and match in err and len(err.splitlines()) == 1, err


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", goodput=np.ones((3, 2)), features=np.ones((3, 4)), seeds=np.arange(3), labels=np.array(fit.LABELS))
    np.savez(tmp_path / "old.npz", goodput=np.ones((3, 6)), features=np.ones((3, 4)), seeds=np.arange(3))
    for args, match in [(["--systems", "0"], "--systems must be > 0"),
                        (["--probe-s", "2"], "--probe-s must exceed the 2 s the probe waits"),
                        (["--probe-s", "30", "--duration", "20"], "--duration must exceed the selector's 30-s probe"),
                        (["--from-data", str(tmp_path / "d.npz")], "has 2 settings, the portfolio 6"),
                        (["--from-data", str(tmp_path / "old.npz")], "by a whole run of it (an older specctl)"),
                        (["--distribution", "nope.yaml"], "nope.yaml")]:
        with pytest.raises(SystemExit) as e:
            fit.main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and match in err and len(err.splitlines()) == 1


def test_the_judge_runs_the_selector_beside_the_baseline_and_the_default(tmp_path, capsys):
    from training import judge

    path = tmp_path / "m.json"
    _model([0.5, 0.6, 0.9]).save(path)
    assert judge.main(["--scenario", "wan-4region", "--rate", "20", "--baseline", "wanspec", "--seeds", "2", "--duration", "6",
                       "--controller", f"selector:model={path}"]) == 0
    out = capsys.readouterr().out
    assert "baseline wanspec" in out and f"selector:model={path}" in out and "the default setting" in out
    assert "settings it held" in out and "`knobs:mode=wanspec,cap=1,k_cap=3,hedge=false`" in out  # the model's choice
    for args, match in [(["--controller", "nope"], "--controller 'nope': unknown controller"),
                        (["--controller", "wisp", "--rate", "-3"], "--rate: must be a positive arrival rate in req/s, got -3"),
                        (["--controller", "wisp", "--seeds", "1"], "--seeds must be >= 2"),
                        (["--controller", "wisp", "--workers", "0"], "--workers: must be a whole number of processes >= 1")]:
        with pytest.raises(SystemExit) as e:
            judge.main(["--scenario", "wan-4region", "--baseline", "wanspec", *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and match in err and len(err.splitlines()) == 1


def test_the_judge_takes_the_best_of_several_baselines_and_every_heuristic_that_runs(capsys):
    """``--baseline heuristics``: every published heuristic at its defaults, those that cannot run
    on the scenario named and left out; the judged controller is compared with the best of them
    on the test seeds (what the issue's "the best heuristic there" asks)."""
    from policy_env.env import TRAIN_SEED_MAX
    from runtime.scenario import load_scenario
    from training import judge
    from training.compare import evaluate_controllers

    args = ["--scenario", "colocated", "--rate", "20", "--seeds", "2", "--duration", "5", "--workers", "1", "--controller", "centralized"]
    assert judge.main(args + ["--baseline", "heuristics"]) == 0
    out, err = capsys.readouterr()
    assert "baseline 'wanspec' left out: it does not run here" in err and "baseline 'sled' left out" in err
    runs = evaluate_controllers(load_scenario("colocated"), {h: h for h in ("no-spec", "static", "centralized", "wisp", "vllm-dynamic-k", "bandit-k")},
                                [TRAIN_SEED_MAX, TRAIN_SEED_MAX + 1], 5.0, 20.0)
    best = max(runs.rows, key=runs.mean)
    assert f"baseline {best}: {runs.mean(best):.3f} req/s (the best of 6 on these seeds; " in out
    assert judge.main(args + ["--baseline", "no-spec", "static:k=2"]) == 0
    assert "(the best of 2 on these seeds; " in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        judge.main(args + ["--baseline", "wanspec"])
    assert e.value.code == 2 and "no --baseline runs on colocated" in capsys.readouterr().err


def test_judging_on_a_distribution_runs_each_seed_on_the_system_the_knob_env_draws_for_it(capsys):
    from policy_env.knobs_env import SpecKnobsEnv
    from runtime.distribution import ScenarioDistribution
    from training import judge
    from training.compare import run_controller

    mix = "training/configs/scenario-mix.yaml"
    seed = 1_000_000_001
    scenario, rate = SpecKnobsEnv(distribution=mix).draw(seed)
    assert run_controller(ScenarioDistribution.load(mix), "wanspec", seed, 4.0, None) == run_controller(scenario, "wanspec", seed, 4.0, rate)
    assert judge.main(["--distribution", mix, "--systems", "2", "--duration", "4", "--baseline", "wanspec",
                       "--controller", "centralized", "--workers", "1"]) == 0
    assert f"2 systems of {mix} (test seeds), 4 s each" in capsys.readouterr().out
    # --first-seed: a set of test seeds disjoint from the first ones (here 1e9+1 and 1e9+2)
    assert judge.main(["--distribution", mix, "--systems", "2", "--first-seed", "1", "--duration", "4", "--baseline", "wanspec",
                       "--controller", "centralized", "--workers", "1"]) == 0
    judged = np.mean([run_controller(ScenarioDistribution.load(mix), "centralized", seed + i, 4.0, None)["goodput_rps"] for i in (0, 1)])
    out = capsys.readouterr().out
    assert f"2 systems of {mix} (test seeds from 1e9+1), 4 s each" in out and f"  centralized: {judged:.3f} req/s" in out
    for args, match in [(["--rate", "3"], "--rate applies to --scenario"), (["--scenario", "wan-4region"], "not allowed with"),
                        (["--first-seed", "-1"], "--first-seed must be >= 0: seeds below 1e9 are training seeds")]:
        with pytest.raises(SystemExit) as e:
            judge.main(["--distribution", mix, "--baseline", "wanspec", "--controller", "wanspec", *args])
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_shipped_model_loads_against_this_specctls_features():
    """training/models/selector-mix.json must be refitted (`python -m training.selector`) when the
    knob features change; loading it checks them."""
    from pathlib import Path

    model = load_selector(Path(__file__).parents[1] / "training" / "models" / "selector-mix.json")
    assert model.modes == list(DEFAULT_MODES) and len(model.settings) == len(PORTFOLIO) and len(model.trees) == fit.TREES


def test_the_shipped_labels_refit_the_shipped_model(tmp_path):
    """training/models/selector-mix-data.npz (what the default recipe fits from) and
    selector-mix.json must stay one pair: refitted, the data gives the model's choices (byte for
    byte with this scikit-learn; another release may grow slightly different trees)."""
    from pathlib import Path

    models = Path(__file__).parents[1] / "training" / "models"
    assert fit.main(["--from-data", str(models / "selector-mix-data.npz"), "--out", str(tmp_path / "m.json")]) == 0
    refit, shipped = load_selector(tmp_path / "m.json"), load_selector(models / "selector-mix.json")
    x = fit.SelectorData.load(models / "selector-mix-data.npz").features
    same = np.mean([refit.choose(row) == shipped.choose(row) for row in x])
    assert refit.settings == shipped.settings and refit.probe_s == shipped.probe_s and same >= 0.95, same
