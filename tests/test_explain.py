"""`python -m training.explain`: what a knob policy chose, interval by interval, and a readable
rule that mimics it."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from training.explain import Episode, feature_names, main, report, run_episode

REPO = Path(__file__).resolve().parents[1]
MIX = str(REPO / "training" / "configs" / "scenario-mix.yaml")


def untrained(directory: Path, seed: int) -> str:
    """An untrained (seeded) knob policy at 2-s intervals: it changes setting as its features move."""
    from sb3_contrib import MaskablePPO

    from controllers.policy import export_policy
    from policy_env.knobs_env import SpecKnobsEnv

    env = SpecKnobsEnv(distribution=MIX, duration=6.0, interval_s=2.0)
    model = MaskablePPO("MlpPolicy", env, seed=seed, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, directory, {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    return f"policy:{directory}"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    return untrained(tmp_path_factory.mktemp("explain") / "p", seed=0)


def test_it_records_every_decision_the_run_counts(policy: str) -> None:
    from runtime.distribution import ScenarioDistribution
    from training.compare import run_controller

    dist = ScenarioDistribution.load(MIX)
    for seed in (1_000_000_000, 1_000_000_001):
        ep = run_episode((policy, dist, seed, 6.0, None, None))
        plain = run_controller(dist, policy, seed, 6.0, None)  # the same run, not recorded
        assert Counter(ep.settings) == Counter(plain["knob_usage"]) and ep.goodput_rps == plain["goodput_rps"]
        assert len(ep.times) == len(ep.features) == len(ep.settings) >= 3 and ep.times == sorted(ep.times)
        assert ep.kind in {"wan-4region", "edge-fleet", "mix-wan-edge-hybrid"}
        assert all(len(f) == len(feature_names(("wanspec", "wisp", "centralized"))) for f in ep.features)


def test_the_cli_summarises_and_writes_each_interval_the_same_way_twice(policy: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = [policy, "--distribution", MIX, "--systems", "3", "--duration", "6", "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "settings held, share of control intervals, per kind of system:" in out
    assert "episodes in which it changes setting: " in out and "first interval (the system starts empty): `knobs:mode=" in out
    assert main(args + ["--out", str(tmp_path / "new" / "b.csv")]) == 0  # a folder that does not exist yet is made
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "new" / "b.csv").read_text()  # deterministic by seed
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) >= 9 and {r["seed"] for r in rows} == {"1000000000", "1000000001", "1000000002"}
    assert all(r["setting"].startswith("knobs:mode=") and float(r["has_edge"]) in (0.0, 1.0) for r in rows)
    assert [r["system"] for r in rows if r["seed"] == "1000000000"][0] in out  # each kind of system it ran is summarised


def test_first_from_swaps_only_the_first_choice_and_prices_it(policy: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.distribution import ScenarioDistribution

    other = untrained(tmp_path / "other", seed=3)
    dist = ScenarioDistribution.load(MIX)
    own = run_episode((policy, dist, 1_000_000_004, 6.0, None, None))
    swapped = run_episode((policy, dist, 1_000_000_004, 6.0, None, other))
    theirs = run_episode((other, dist, 1_000_000_004, 6.0, None, None))
    assert own.settings[0] != theirs.settings[0]  # the two policies start differently here
    assert swapped.settings[0] == theirs.settings[0] and swapped.features[0] == own.features[0]
    # against itself the start-up is worth exactly nothing
    assert main([policy, "--scenario", "wan-4region", "--rate", "20", "--seeds", "2", "--duration", "6", "--workers", "1",
                 "--first-from", policy]) == 0
    assert re.search(r"its own first interval against policy:\S+'s \(`knobs:mode=[^`]+` on the first seed\): 1\.000x \[1\.000, 1\.000\]",
                     capsys.readouterr().out)


def test_the_tree_finds_a_planted_rule() -> None:
    names = feature_names(("wanspec", "wisp", "centralized"))
    edge = names.index("has_edge")

    def features(has_edge: float, i: int) -> list[float]:
        f = [0.01 * ((i * 7) % 13)] * len(names)  # noise in every other feature
        f[edge] = has_edge
        return f

    episodes = [Episode("edge-fleet" if e else "wan-4region", i, 1.0, [0.0, 10.0],
                        [features(e, i), features(e, i + 1)], [f"knobs:mode=centralized,cap={1.5 if e else 1},k_cap=3,hedge=false"] * 2)
                for i in range(20) for e in (0.0, 1.0)]
    text = report(episodes, names, depth=1)
    assert "a depth-1 tree over the features agrees with its choice on 100% of the intervals" in text
    assert "has_edge <= 0.500" in text
    assert "edge-fleet (20 systems): `knobs:mode=centralized,cap=1.5,k_cap=3,hedge=false` 100%" in text
    assert "episodes in which it changes setting: 0 of 40" in text
    one = [Episode("wan-4region", 0, 1.0, [0.0], [features(0.0, 0)], ["knobs:mode=centralized,cap=1,k_cap=3,hedge=false"])]
    assert "it holds one setting throughout" in report(one, names, depth=2)


@pytest.mark.parametrize(("args", "match"), [
    (["knobs:mode=centralized,cap=1.5,k_cap=3,hedge=false", "--scenario", "wan-4region"], "is not a knob policy: pass policy:RUN_DIR/best"),
    (["policy:/nonexistent/run/best", "--scenario", "wan-4region"], "/nonexistent/run/best"),
])
def test_bad_input_is_one_clear_line(args: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and len(err.strip().splitlines()) == 1


def test_rate_needs_a_scenario(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([policy, "--distribution", MIX, "--rate", "10"])
    assert e.value.code == 2 and "--rate applies to --scenario" in capsys.readouterr().err


def test_first_from_needs_two_seeds(policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([policy, "--scenario", "wan-4region", "--seeds", "1", "--first-from", policy]) == 2
    assert "--first-from compares over seeds: pass --seeds 2 or more" in capsys.readouterr().err
