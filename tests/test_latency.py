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


def test_the_capacity_proxy_reads_a_measured_target_profile(tmp_path):
    """``rate_per_capacity`` scales arrivals by the target's capacity: where the target has a
    measured profile, the proxy comes from it (twice as slow a profile, twice the service time),
    not from the roofline of its catalog GPU."""
    import yaml

    from runtime.distribution import nominal_service_s
    from runtime.scenario import SCENARIO_DIR, build_scenario

    raw = yaml.safe_load((SCENARIO_DIR / "colocated.yaml").read_text())
    roofline = nominal_service_s(build_scenario(raw))
    services = []
    for ms in (10.0, 20.0):
        csv = tmp_path / f"target-{ms:g}.csv"
        csv.write_text("new_tokens,context_tokens,ms\n" + "".join(f"{n},{c},{ms * (1 + n / 512)}\n" for c in (0, 100000) for n in (1, 4096)))
        raw["sites"][0]["profiles"] = {"llama-3.1-8b": str(csv)}
        services.append(nominal_service_s(build_scenario(raw)))
    assert services[1] == pytest.approx(2 * services[0]) and roofline not in services
