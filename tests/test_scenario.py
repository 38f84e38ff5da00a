"""Scenario files: shipped ones load; bad ones fail with one line naming the problem."""

from __future__ import annotations

import copy

import pytest
import yaml

from runtime.scenario import ScenarioError, build_scenario, load_scenario, shipped_scenarios
from tests.helpers import base_spec


def test_shipped_scenarios_load():
    assert {"wan-4region", "edge-fleet", "colocated"} <= set(shipped_scenarios())
    wan = load_scenario("wan-4region")
    rtts = sorted(s.rtt_ms for s in wan.sites if s.role == "remote")
    assert len(rtts) == 3 and 9 <= rtts[0] <= 12 and 70 <= rtts[-1] <= 76  # real AWS RTTs
    edge = load_scenario("edge-fleet")
    edges = [s for s in edge.sites if s.role == "edge"]
    assert len(edges) >= 16
    assert min(s.rtt_ms for s in edges) == 10 and max(s.rtt_ms for s in edges) == 50
    assert set(edge.origins) == {s.name for s in edges}
    assert len(load_scenario("colocated").sites) == 1


def _err(spec) -> str:
    with pytest.raises(ScenarioError) as e:
        build_scenario(spec, source="bad.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("scenario bad.yaml: ")
    return msg


def test_unknown_site_in_origins():
    spec = base_spec()
    spec["workload"]["origins"] = ["mars"]
    assert "unknown site 'mars'" in _err(spec)


def test_unknown_model_and_gpu():
    spec = base_spec()
    spec["target_model"] = "gpt-9"
    assert "unknown model 'gpt-9'" in _err(spec)
    spec = base_spec()
    spec["sites"][0]["gpu"] = "H300"
    assert "unknown GPU 'H300'" in _err(spec)
    spec = base_spec()
    spec["sites"][0]["drafter"] = "tiny"
    assert "unknown drafter 'tiny'" in _err(spec)


def test_negative_rate_and_missing_fields():
    spec = base_spec()
    spec["workload"]["arrivals"]["rate"] = -1
    assert "workload.arrivals.poisson.rate" in _err(spec) or "rate" in _err(spec)
    spec = base_spec()
    del spec["sites"]
    assert "sites: required field is missing" in _err(spec)
    spec = base_spec()
    spec["sites"][0]["colour"] = "red"
    assert "unknown field" in _err(spec)


def test_missing_rtt_pair():
    spec = base_spec()
    spec["sites"].append({"name": "r", "role": "remote", "drafter": "llama-3.2-1b"})
    assert "no RTT to the target" in _err(spec)
    spec = base_spec()
    spec["sites"][0]["region"] = "us-east-1"
    spec["sites"].append({"name": "r", "role": "remote", "drafter": "llama-3.2-1b", "region": "moon-1"})
    assert "no RTT for the pair (moon-1, us-east-1)" in _err(spec)


def test_exactly_one_target():
    spec = base_spec()
    spec["sites"][0]["role"] = "remote"
    spec["sites"][0]["rtt_ms"] = 5
    assert "exactly one site with role 'target'" in _err(spec)


def test_yaml_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(p)
    p.write_text("- a list\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        load_scenario("nope")


def test_roundtrip_from_file(tmp_path):
    spec = copy.deepcopy(base_spec(rtt_ms=20))
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(spec))
    sc = load_scenario(p)
    assert [s.name for s in sc.sites] == ["dc", "far"]
    assert sc.site("far").rtt_ms == 20


def test_long_run_mean_of_each_load_kind() -> None:
    from runtime.scenario import ConstantLoad, DiurnalLoad, MarkovLoad

    assert ConstantLoad(level=0.3).long_run_mean == 0.3
    assert DiurnalLoad(kind="diurnal", mean=0.4, amplitude=0.2, period_s=60).long_run_mean == 0.4
    # levels weighted by their mean dwell: 0.1 for 30 s, then 0.7 for 10 s
    assert MarkovLoad(kind="markov", levels=[0.1, 0.7], mean_dwell_s=[30, 10]).long_run_mean == pytest.approx(0.25)
