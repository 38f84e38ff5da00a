"""The protocol core's backend-independent rules (``runtime/core.py``), checked on their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runtime.contract import InvalidDecision, Redundancy, RoundPlan
from runtime.core import AheadLedger, DecisionLoop, check_plan, drafting_sites
from runtime.scenario import LimitsSpec, load_scenario


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


def _loop(*reqs: SimpleNamespace) -> DecisionLoop:
    loop = DecisionLoop()
    loop.ready = {r.rid: r for r in reqs}
    return loop


def _req(rid: int, phase: str = "decode", k: int = 3) -> SimpleNamespace:
    return SimpleNamespace(rid=rid, phase=phase, prompt_tokens=40, generated=10, ready_k=k)


def test_take_verify_batch_returns_the_requests_and_their_token_counts() -> None:
    loop = _loop(_req(1), _req(2, phase="prefill"), _req(3))
    batch, new, ctx = loop._take_verify_batch([2, 1], LimitsSpec(max_batch_size=2))
    assert [r.rid for r in batch] == [2, 1] and list(loop.ready) == [3]
    assert (new, ctx) == (40 + 4, 50)  # a prefill's prompt, a decode's k + 1; context of decodes only


@pytest.mark.parametrize("rids, limits, error", [
    ([1, 2, 3], LimitsSpec(max_batch_size=2), "batch of 3 exceeds limits.max_batch_size=2"),
    ([1, 9], LimitsSpec(), "request 9 is not ready"),
    ([1, 1], LimitsSpec(), "names request 1 twice"),
    ([1, 2], LimitsSpec(max_batch_tokens=7), "batch of 8 tokens exceeds limits.max_batch_tokens=7"),
])
def test_a_rejected_verify_batch_leaves_ready_as_it_was(rids: list[int], limits: LimitsSpec, error: str) -> None:
    loop = _loop(_req(1), _req(2), _req(3))
    with pytest.raises(InvalidDecision, match=error):
        loop._take_verify_batch(rids, limits)
    assert sorted(loop.ready) == [1, 2, 3]


def test_ahead_ledger_counts_per_epoch_and_wastes_what_was_never_consumed() -> None:
    led = AheadLedger()
    assert led.arrive(0, 5) and led.ahead == 5
    led.consumed = 3  # a round verified three streamed tokens
    assert led.ahead == 2
    assert led.restart() == 2 and led.epoch == 1 and led.ahead == 0  # a correction
    assert not led.arrive(0, 4) and led.arrived == 0  # drafted before the site heard of it: waste
    assert led.arrive(1, 2)
    assert led.close() == 2 and led.ahead == 0
