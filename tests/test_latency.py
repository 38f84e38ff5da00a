"""Latency models: the roofline reproduces public profiles; profile tables interpolate."""

from __future__ import annotations

import pytest

from runtime.latency import GPUS, MODELS, ProfileTable, Roofline

# Llama-3-8B on an A100 (Vidur operator profiles, calibration/README.md), ms by batched tokens
VIDUR_A100_8B = {1: 9.8, 8: 10.1, 32: 11.0, 64: 11.3, 128: 13.3, 256: 19.6, 512: 34.9}


def test_roofline_matches_measured_shape():
    rf = Roofline(MODELS["llama-3.1-8b"], GPUS["A100"])
    for tokens, ms in VIDUR_A100_8B.items():
        assert rf.forward_time(1, tokens, 0) * 1000 == pytest.approx(ms, rel=0.15), tokens
    # flat, then linear; context adds KV reads
    assert rf.forward_time(1, 64, 0) < 1.2 * rf.forward_time(1, 1, 0)
    assert rf.forward_time(8, 8, 16384) > rf.forward_time(8, 8, 0)


def test_profile_table_interpolates(tmp_path):
    p = tmp_path / "prof.csv"
    p.write_text("new_tokens,context_tokens,ms\n1,0,10\n100,0,20\n1,1000,12\n100,1000,30\n")
    t = ProfileTable.from_csv(p)
    assert t.forward_time(1, 1, 0) == pytest.approx(0.010)
    assert t.forward_time(1, 50.5, 0) == pytest.approx(0.015)
    assert t.forward_time(1, 100, 500) == pytest.approx(0.025)
    assert t.forward_time(1, 199, 0) == pytest.approx(0.030)  # extrapolates linearly


def test_a_profile_is_read_once_per_version_of_its_file(tmp_path):
    """Sites sharing a profile share one table; a rewritten profile (a new `runtime profile` run)
    is read again."""
    p = tmp_path / "prof.csv"
    p.write_text("new_tokens,context_tokens,ms\n1,0,10\n100,0,20\n")
    first = ProfileTable.from_csv(p)
    assert ProfileTable.from_csv(str(p)) is first
    p.write_text("new_tokens,context_tokens,ms\n1,0,40\n100,0,80\n1,1000,50\n")
    again = ProfileTable.from_csv(p)
    assert again is not first and again.forward_time(1, 1, 0) == pytest.approx(0.040)
    assert first.forward_time(1, 1, 0) == pytest.approx(0.010)


def test_profile_table_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("tokens,ms\n1,2\n")
    with pytest.raises(ValueError, match="needs columns"):
        ProfileTable.from_csv(p)
    with pytest.raises(ValueError, match="does not exist"):
        ProfileTable.from_csv(tmp_path / "missing.csv")
