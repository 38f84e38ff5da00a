"""Tuning one fixed knob setting over a scenario distribution (the knob recipe's warm start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllers.knobs import setting_key
from training import mix_tune
from training.common import ConfigError
from training.mix_tune import TUNE_DEFAULTS, candidates, check_tune_config, main, tune_fixed_knobs

REPO = Path(__file__).resolve().parents[1]
MIX = str(REPO / "training" / "configs" / "scenario-mix.yaml")
SMALL = {**TUNE_DEFAULTS, "systems": [2, 1], "keep": 2, "duration": 3.0, "caps": [1.0, 3.0], "k_caps": [3], "hedge": [False]}


def test_the_configs_own_setting_leads_the_grid_once() -> None:
    own = {"mode": 0, "cap": 2.0, "k_cap": 8, "hedge": 1}
    grid = candidates(3, {**TUNE_DEFAULTS, "hedge": [False, True]}, own)
    assert grid[0] == own and len(grid) == 3 * 4 * 2 * 2  # already in the grid: not added twice
    keys = {setting_key(g) for g in grid}
    assert len(keys) == len(grid)
    assert len(candidates(3, SMALL, own)) == 3 * 2 + 1  # not in this grid: added in front


@pytest.mark.parametrize(("objective", "winner"), [("mean", "wisp"), ("worst", "wanspec")])
def test_successive_halving_ranks_by_each_systems_best(monkeypatch: pytest.MonkeyPatch, objective: str, winner: str) -> None:
    # goodput per (setting, system) is known here, so the winner is too. Half the systems are busy
    # (goodput ~25x a quiet one's), alternating in each round. Shares of each system's best:
    # wanspec 0.88 busy / 0.85 quiet (mean 0.865, worst 0.85), wisp 1.0 / 0.75 (mean 0.875, worst 0.75),
    # centralized 0.4 / 1.0; cap 3 adds 10% to every mode. Raw goodput would pick wisp on either rule.
    busy = set(mix_tune.tuning_seeds(0, 12)[::2])

    def goodput(job: tuple) -> float:
        _, seed, _, knobs = job
        base = {0: (26.4, 1.02), 1: (30.0, 0.9), 2: (12.0, 1.2)}[knobs["mode"]][0 if seed in busy else 1]
        return base * (1.1 if knobs["cap"] == 3.0 else 1.0)

    monkeypatch.setattr(mix_tune, "setting_goodput", goodput)
    tune = {**SMALL, "systems": [4, 4, 4], "objective": objective}
    result = tune_fixed_knobs({"distribution": MIX}, tune, None, seed=0, workers=1)
    assert result.spec == f"knobs:mode={winner},cap=3,k_cap=3,hedge=false"
    assert result.systems == 12  # the survivor ran on every round's systems
    first = result.ranking[0]
    assert first[0] == result.spec and first[1] == pytest.approx(result.score) and first[2] == pytest.approx(result.worst)
    assert result.worst == pytest.approx(0.85 if winner == "wanspec" else 0.75)
    ran = [n for *_, n in result.ranking]
    assert ran == sorted(ran, reverse=True) and ran.count(4) == 6 - 3  # round 1 drops half of 6: 3 stay
    assert f"| `{result.spec}` |" in result.table()
    # on the first round's systems every candidate ran: the common ground the recipe reports
    assert len(result.first_round) == 6
    assert result.first_round["knobs:mode=wisp,cap=3,k_cap=3,hedge=false"] == pytest.approx(0.875)
    assert result.first_round["knobs:mode=wanspec,cap=3,k_cap=3,hedge=false"] == pytest.approx(0.865)


def test_tuning_on_the_simulator_is_deterministic_by_seed() -> None:
    runs = [tune_fixed_knobs({"distribution": MIX, "duration": 5.0}, SMALL, {"mode": 0, "cap": 2.0, "k_cap": 8, "hedge": 1},
                             seed=3, workers=1) for _ in range(2)]
    assert runs[0].ranking == runs[1].ranking and runs[0].knobs == runs[1].knobs
    assert all(0.0 <= w <= v <= 1.0 for _, v, w, _ in runs[0].ranking)
    assert max(v for _, v, _, _ in runs[0].ranking) > 0  # some setting finished requests on track
    from controllers import make_controller

    assert make_controller(runs[0].spec).spec() == runs[0].spec  # the winner runs alone, as printed


@pytest.mark.parametrize(("tune", "match"), [
    ({"systemz": [2]}, r"unknown key\(s\) \['systemz'\]"),
    ({"systems": [0]}, r"\.systems: a list of systems per round"),
    ({"keep": 1}, r"\.keep: an integer >= 2"),
    ({"duration": 0}, r"\.duration: simulated seconds per run, > 0"),
    ({"caps": [1.2]}, r"cap=1.2 is not a level"),
    ({"k_caps": []}, r"caps and k_caps must be non-empty"),
    ({"hedge": ["yes"]}, r"\.hedge: a non-empty list of true/false"),
    ({"objective": "median"}, r"\.objective: 'worst' or 'mean', got 'median'"),
    ("fast", r"must be a mapping"),
])
def test_bad_tuning_config_names_the_key(tune: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_tune_config(tune, "warm_start.tune")


def test_cli_prints_the_best_spec_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--distribution", MIX, "--systems", "1", "--duration", "3", "--workers", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("knobs:mode=")
    assert main(["--distribution", "/nowhere.yaml", "--systems", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--distribution", MIX, "--keep", "1"]) == 2
    assert "keep: an integer >= 2" in capsys.readouterr().err
