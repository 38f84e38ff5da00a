"""``python -m training.oracle_gap``: where the oracle's lead over a baseline comes from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from training.oracle_gap import ABLATIONS, gap_share_ci, main


def test_gap_share_is_the_rows_part_of_the_oracles_lead():
    base = np.array([10.0, 12.0, 11.0, 9.0])
    oracle = base + 2.0
    share, lo, hi = gap_share_ci(base + 0.5, base, oracle)
    assert share == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    share, lo, hi = gap_share_ci(base + np.array([0.0, 1.0, 0.5, 0.5]), base, oracle)
    assert share == pytest.approx(0.25) and lo < 0.25 < hi
    assert np.isnan(gap_share_ci(base, base, base)[0])  # no lead: no share of it


def test_it_prints_every_ablation_beside_the_baseline_and_the_ceiling(capsys: pytest.CaptureFixture[str]):
    # an overloaded colocated server without speculation: the oracle leads on both seeds
    assert main(["--scenario", "colocated", "--rate", "20", "--seeds", "2", "--duration", "6", "--workers", "1",
                 "--baseline", "no-spec", "--row", "tuned wisp=wisp:min_accept=0.35"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [r.split(" | ")[0][2:] for r in rows] == [name for name, _ in ABLATIONS] + ["tuned wisp", "ceiling: every arrival meets its SLO"]
    oracle = rows[0]
    assert "`oracle`" in oracle and "+1.00 [+1.00, +1.00]" in oracle  # the oracle is all of its own lead
    assert "`oracle:know_runs=false`" in rows[1] and "`wisp:min_accept=0.35`" in rows[-2]


@pytest.mark.parametrize("row,message", [
    ("wisp", "--row 'wisp': expected NAME=SPEC"),
    ("oracle=wisp", "the name 'oracle' is taken"),
    ("mine=nope", "--row 'nope': unknown controller 'nope'"),
])
def test_a_bad_row_is_refused_in_one_line(row: str, message: str):
    r = subprocess.run([sys.executable, "-m", "training.oracle_gap", "--scenario", "edge-fleet", "--baseline", "wisp", "--row", row],
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
