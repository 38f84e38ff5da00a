"""Learning a planner's portfolio from training systems (training/portfolio.py) and reading it
in the lookahead (controllers/lookahead.py)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from controllers import ControllerError, make_controller
from controllers.lookahead import load_portfolio
from runtime.scenario import load_scenario
from runtime.sim import Simulator
from training import portfolio


def test_greedy_adds_the_setting_that_covers_what_the_chosen_ones_miss():
    shares = np.array([  # systems x settings
        [1.00, 0.92, 0.85, 0.50],
        [0.30, 0.92, 1.00, 0.50],
        [1.00, 0.92, 0.85, 0.50],
    ])
    chosen, coverage = portfolio.greedy_portfolio(shares, size=3)
    assert chosen[0] == 1  # the best alone by mean share
    assert chosen[1] == 0  # the most it adds: systems 0 and 2 reach their best
    assert chosen[2] == 2  # then system 1's
    assert coverage == pytest.approx([0.92, (1 + 0.92 + 1) / 3, 1.0])
    # once every system's best is covered, a larger portfolio would only cost forks
    assert portfolio.greedy_portfolio(np.eye(2), size=5)[0] == [0, 1]
    with pytest.raises(ValueError, match="systems x settings"):
        portfolio.greedy_portfolio(np.zeros((3, 0)), 2)


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "a mapping with `modes`"),
    ("modes: [wanspec]\nsettings: []\n", "settings is empty"),
    ("modes: [wanspec]\nsettings: [{mode: 1}]\n", r"settings\[0\].mode must index modes \(0..0\)"),
    ("modes: [wanspec]\nsettings: [{mode: 0, cap: 7}]\n", "cap=7.0 is not a level"),
    ("modes: [wanspec]\nsettings: [{mode: 0, speed: 2}]\n", "must map mode, cap, k_cap and hedge"),
    ("modes: [wanspec\n", "not valid YAML"),
])
def test_a_bad_portfolio_file_is_refused_naming_the_problem(tmp_path, text, match):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_portfolio(f)
    with pytest.raises(ControllerError, match="not found.*training.portfolio"):
        make_controller(f"lookahead:portfolio={tmp_path / 'missing.yaml'}")


def test_cli_learns_a_portfolio_the_lookahead_runs(tmp_path, capsys):
    out = tmp_path / "new" / "portfolio.yaml"  # folders that do not exist yet are made
    assert portfolio.main(["--systems", "2", "--duration", "3", "--caps", "1", "inf", "--k-caps", "2", "--size", "3",
                           "--out", str(out), "--save-scores", str(tmp_path / "scores" / "scores.npz")]) == 0
    printed = capsys.readouterr().out
    assert "the shipped portfolio (6 settings) covers" in printed and "lookahead:portfolio=" in printed
    data = yaml.safe_load(out.read_text())
    assert data["modes"] == ["wanspec", "wisp", "centralized"] and 1 <= len(data["settings"]) <= 3
    scores = np.load(tmp_path / "scores" / "scores.npz")
    assert scores["goodput"].shape == (2, 6 + 3 * 2)  # the shipped six, then every mode x cap x k cap
    ctl = make_controller(f"lookahead:portfolio={out},horizon_s=1,replan_s=2,futures=1")
    assert ctl.portfolio == [dict(s, hedge=int(s["hedge"])) for s in data["settings"]]
    summary = Simulator(load_scenario("wan-4region"), 0, 3.0, rate=20.0).run(ctl)
    assert summary["requests_completed"] > 0 and ctl.plans and set(ctl.plans) <= set(range(len(data["settings"])))


def test_cli_refuses_bad_flags_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        portfolio.main(["--k-caps", "5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "k_cap=5 is not a level" in err and len(err.splitlines()) == 1


def test_the_shipped_capped_grid_is_the_six_then_every_mode_x_cap_2_or_3_x_k_cap_2_or_3_unhedged():
    from controllers.knobs import DEFAULT_MODES, setting_key

    modes, settings = load_portfolio("training/configs/twin-capped-grid.yaml")
    grid = portfolio.candidate_grid(len(DEFAULT_MODES), [2.0, 3.0], [2, 3], [0])
    assert list(modes) == list(DEFAULT_MODES) and len(settings) == 18
    assert [setting_key(s) for s in settings] == [setting_key(g) for g in grid]  # what the README describes
