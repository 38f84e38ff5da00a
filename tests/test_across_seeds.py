"""A recipe judged over training runs: aggregation, pairing by seed, and clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from training.across_seeds import main, t_interval
from training.knobs import write_comparison


def run(tmp_path: Path, name: str, seed: int, ratios: dict[str, float], held_out: tuple[str, ...] = ("eu",),
        settings: dict[str, dict[str, float]] | None = None, selector: dict[str, float] | None = None) -> str:
    """A run directory as a knob run leaves it: comparison.json with one row per scenario
    (``selector``: the ratios of a run that fitted one, each 1.1x its warm start)."""
    rows = [{"scenario": s, "rate": 1.0, "held_out": s in held_out, "best_baseline": "wanspec", "ratio": r,
             "ci_low": r - 0.01, "ci_high": r + 0.01, "vs_clone": r / 0.9, "vs_clone_low": 0.0, "vs_clone_high": 2.0,
             "clone_ratio": 0.9, "oracle_ratio": 1.1, "gap_closed": None,
             **({"policy_settings": settings[s]} if settings else {}),
             **({"selector_ratio": selector[s], "selector_vs_clone": 1.1} if selector else {})} for s, r in ratios.items()]
    d = tmp_path / name
    d.mkdir()
    write_comparison(d, rows, seed, "training/configs/knobs.yaml")
    return str(d)


def test_t_interval_is_the_textbook_one() -> None:
    mean, lo, hi = t_interval([0.9, 1.0, 1.1])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(1.0) and lo == pytest.approx(1.0 - half) and hi == pytest.approx(1.0 + half)
    assert math.isnan(t_interval([0.7])[1])  # one run: no interval
    assert t_interval([0.8, 0.8]) == (0.8, 0.8, 0.8)


def test_report_over_runs_and_paired_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = [run(tmp_path, f"a{s}", s, {"wan": 0.95 + 0.01 * s, "eu": 0.80 + 0.1 * s}) for s in range(3)]
    b = [run(tmp_path, f"b{s}", s, {"wan": 0.95, "eu": 0.85}) for s in (1, 2, 5)]
    out_file = tmp_path / "reports" / "report.md"  # a folder that does not exist yet is made
    assert main([*a, "--against", *b, "--markdown", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("3 runs (training seeds 0, 1, 2)")
    eu_mean, eu_lo, eu_hi = t_interval([0.8, 0.9, 1.0])
    assert f"| eu (held out) | {eu_mean:.3f} [{eu_lo:.3f}, {eu_hi:.3f}] | 0.800 - 1.000 | 1 of 3 |" in text
    assert "per run: seed 0 0.800, seed 1 0.900, seed 2 1.000" in text
    # paired on seeds 1 and 2 only (0 and 5 have no partner): eu differences +0.05 and +0.15
    assert "paired by training seed (1, 2; unpaired runs left out: [0, 5])" in text
    assert "| held-out mean | +0.100 [" in text and "| +0.050, +0.150 |" in text
    assert out_file.read_text().strip() == text.strip()
    assert "used most" not in text  # runs that recorded no knob settings (an earlier release): no table
    assert "selectors" not in text  # nor a selector


def test_report_judges_the_runs_selectors_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [run(tmp_path, f"s{s}", s, {"wan": 0.95, "eu": 0.9}, selector={"wan": 0.96 + 0.03 * s, "eu": 0.99}) for s in range(2)]
    assert main(runs) == 0
    text = capsys.readouterr().out
    wan = t_interval([0.96, 0.99])
    assert "the runs' learned selectors:" in text
    assert f"| wan | {wan[0]:.3f} [{wan[1]:.3f}, {wan[2]:.3f}] | 0.960 - 0.990 | 1 of 2 | 1.100 [1.100, 1.100] |" in text
    assert "| eu (held out) | 0.990 [0.990, 0.990] | 0.990 - 0.990 | 2 of 2 |" in text
    assert "selector held-out mean: 0.990 [0.990, 0.990]; per run: seed 0 0.990, seed 1 0.990" in text


def test_report_shows_the_setting_each_run_used_most(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.knobs import settings_line

    wisp, wanspec = "knobs:mode=wisp,cap=2,k_cap=8,hedge=true", "knobs:mode=wanspec,cap=1,k_cap=8,hedge=true"
    runs = [run(tmp_path, "s0", 0, {"wan": 1.0, "eu": 0.95}, settings={"wan": {wanspec: 1.0}, "eu": {wisp: 0.7, wanspec: 0.3}}),
            run(tmp_path, "s1", 1, {"wan": 1.0, "eu": 0.60}, settings={"wan": {wanspec: 1.0}, "eu": {wanspec: 0.9, wisp: 0.1}})]
    assert main(runs) == 0
    text = capsys.readouterr().out
    assert "| scenario | seed 0 | seed 1 |" in text
    assert "| eu | `mode=wisp,cap=2,k_cap=8,hedge=true` 70% | `mode=wanspec,cap=1,k_cap=8,hedge=true` 90% |" in text
    # the final comparison's line: the most used settings, then the rest
    shares = {"a": 0.5, "b": 0.2, "c": 0.15, "d": 0.1, "e": 0.05}
    assert settings_line(shares) == "`a` 50%, `b` 20%, `c` 15%, 2 others 15%"
    assert settings_line({"a": 1.0}, top=1) == "`a` 100%" and settings_line({}) == "none recorded"


@pytest.mark.parametrize("case, match", [
    ("missing", "has no comparison.json: pass the --out directory of a knob run"),
    ("same seed", "both used training seed 0: a recipe's runs need distinct seeds"),
    ("other scenarios", r"was judged on \['edge', 'eu'\].*compare runs of one config's eval.scenarios"),
    ("no common seed", r"no training seed in common \(these: \[0\], --against: \[1\]\)"),
    ("no seed", "records no training seed .*python -m training.knobs .* --seed S records it"),
    ("broken", "is not a knob run's comparison .*--seed S"),
])
def test_runs_that_cannot_be_compared_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, match: str) -> None:
    import re

    first = run(tmp_path, "first", 0, {"wan": 1.0, "eu": 0.9})
    args = {
        "missing": [str(tmp_path / "nowhere")],
        "same seed": [first, run(tmp_path, "again", 0, {"wan": 1.0, "eu": 0.9})],
        "other scenarios": [first, run(tmp_path, "other", 1, {"edge": 1.0, "eu": 0.9})],
        "no common seed": [first, "--against", run(tmp_path, "b", 1, {"wan": 1.0, "eu": 0.9})],
        "no seed": [first, str(tmp_path / "bad")],
        "broken": [first, str(tmp_path / "bad")],
    }[case]
    if case in ("no seed", "broken"):
        (tmp_path / "bad").mkdir()
        text = '{"scenarios": []}' if case == "no seed" else '{"seed": 1, "scenarios": [{"scenario": "eu"}]}'
        (tmp_path / "bad" / "comparison.json").write_text(text)  # an earlier release's; a row without ratios
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err


def test_judging_a_run_again_keeps_its_recorded_seed(tmp_path: Path) -> None:
    from training.knobs import recorded_seed

    assert recorded_seed(tmp_path) is None  # no comparison yet: python -m training.knobs needs --seed
    run(tmp_path, "r", 3, {"wan": 1.0})
    assert recorded_seed(tmp_path / "r") == 3
