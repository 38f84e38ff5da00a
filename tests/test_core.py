"""The protocol core's backend-independent rules (``runtime/core.py``), checked on their own."""

from __future__ import annotations

import pytest

from runtime.contract import InvalidDecision, Redundancy, RoundPlan
from runtime.core import check_plan, drafting_sites
from runtime.scenario import load_scenario


def test_drafting_sites_are_non_edge_drafters_plus_the_own_edge_device() -> None:
    sc = load_scenario("edge-fleet")  # server (target + drafter) and 32 edge devices
    allowed = drafting_sites(sc)
    assert allowed["edge-003"] == {"server", "edge-003"}
    assert allowed["server"] == {"server"}
    assert set(allowed) == {s.name for s in sc.sites}


@pytest.mark.parametrize("k, plan, error", [
    (9, RoundPlan(9, "server"), "k=9 exceeds limits.max_k=8"),
    (4, RoundPlan(4, "edge-001"), "site 'edge-001' cannot draft for it"),
    (4, RoundPlan(4, "server", Redundancy(backups=("edge-003", "edge-003"))), "redundancy 3 exceeds"),
    (4, RoundPlan(4, "server", Redundancy(backups=("server",))), "backup site 'server' must be distinct"),
    (4, RoundPlan(4, "server", Redundancy(backups=("edge-001",))), "backup site 'edge-001' must be distinct"),
])
def test_check_plan_rejects_what_the_limits_or_sites_forbid(k: int, plan: RoundPlan, error: str) -> None:
    sc = load_scenario("edge-fleet")  # max_k 8, max_redundancy 2
    with pytest.raises(InvalidDecision, match=error):
        check_plan(7, k, plan, sc.spec.limits, drafting_sites(sc)["edge-003"])


def test_check_plan_accepts_a_hedged_round_within_the_limits() -> None:
    sc = load_scenario("edge-fleet")
    check_plan(7, 8, RoundPlan(8, "edge-003", Redundancy(backups=("server",), hedge_after_s=0.01)),
               sc.spec.limits, drafting_sites(sc)["edge-003"])
