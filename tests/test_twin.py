"""The digital twin (controllers/twin.py): what a probe measures, the simulator it builds from
that, and the setting it holds."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from controllers import ControllerError, make_controller
from controllers.knobs import DEFAULT_MODES, fixed_controller
from controllers.lookahead import PORTFOLIO
from controllers.twin import (Measured, Twin, load_process, load_regimes, measured_latency, plan_settings, stressed_raw,
                              twin_raw, twin_scenario)
from runtime.scenario import build_scenario
from runtime.scenario import load_scenario
from runtime.sim import Simulator

SETTINGS = [dict(s) for s in PORTFOLIO[:3]]


def _probe(scenario: str, rate: float, seconds: float = 8.0) -> tuple[Twin, Simulator]:
    """A twin that probes for ``seconds`` of arrivals and the run's drain (so it never plans)."""
    twin = Twin(probe_s=1e6, warmup_s=1.0, portfolio=SETTINGS)
    sim = Simulator(load_scenario(scenario), 5, seconds, rate=rate)
    sim.run(twin)
    return twin, sim


def test_the_probe_measures_the_workload_the_loads_and_the_acceptance():
    twin, sim = _probe("wan-4region", 20.0)
    seen, spec = twin.seen, load_scenario("wan-4region").spec
    assert len(seen.arrivals) == sim.metrics.arrived  # every arrival, with its own lengths and SLO
    assert {a[0] for a in seen.arrivals} <= set(sim.scenario.origins)
    assert set(seen.loads) == {s.name for s in sim.info.sites} and all(len(v) >= 5 for v in seen.loads.values())
    # the probe's setting (centralized) drafts at the target only: its drafter's acceptance is measured
    target_drafter = sim.info.site(sim.info.target_site).drafter
    alpha = spec.drafters[target_drafter].acceptance.alpha_mean
    assert seen.rounds[target_drafter] > 500
    assert seen.alpha(target_drafter, prior=0.0) == pytest.approx(alpha, abs=0.08)
    assert Measured().alpha(target_drafter, prior=0.42) == 0.42  # unseen: the runtime's prior


def test_the_twin_scenario_has_the_sites_and_the_rate_the_probe_saw():
    twin, sim = _probe("edge-fleet", 32.0)
    info = sim.info
    scenario = twin_scenario(info, twin.seen, now=8.0, drain_s=10.0)
    assert [(s.name, s.role, s.drafter, s.gpus) for s in scenario.sites] == [(s.name, s.role, s.drafter, s.gpus) for s in info.sites]
    assert [s.rtt_ms for s in scenario.sites] == pytest.approx([s.rtt_s * 1000 for s in info.sites])
    assert scenario.spec.workload.arrivals.rate == pytest.approx(len(twin.seen.arrivals) / 8.0)
    assert 20.0 < scenario.spec.workload.arrivals.rate < 45.0  # the scenario runs at 32 req/s
    edge_share = sum(o != info.target_site for o in scenario.origins) / len(scenario.origins)
    true_share = sum(o != info.target_site for o in sim.scenario.origins) / len(sim.scenario.origins)
    assert edge_share == pytest.approx(true_share, abs=0.15)
    with pytest.raises(ValueError, match="saw no arrivals"):
        twin_scenario(info, Measured(), now=8.0, drain_s=10.0)


def test_a_stressed_twin_keeps_what_was_measured_and_adds_what_the_probe_cannot_see():
    twin, sim = _probe("wan-4region", 20.0)
    raw = twin_raw(sim.info, twin.seen, now=8.0, drain_s=10.0)
    rate = raw["workload"]["arrivals"]["rate"]
    draws = [stressed_raw(raw, random.Random(j)) for j in range(20)]
    for r in draws:
        build_scenario(r)  # valid
        arr = r["workload"]["arrivals"]
        assert arr["kind"] == "bursty" and arr["rate"] == rate  # bursts around the measured mean rate
        assert 1.5 <= arr["burst_factor"] <= 3.0
        for site, base in zip(r["sites"], raw["sites"]):
            assert {k: v for k, v in site.items() if k != "load"} == {k: v for k, v in base.items() if k != "load"}
            if site["load"] != base["load"]:  # a flip from the measured level to a busy one
                assert site["load"]["kind"] == "markov" and site["load"]["levels"][0] == base["load"]["level"]
                assert 0.4 <= site["load"]["levels"][1] <= 0.8
        assert r["workload"]["prompt_tokens"] == raw["workload"]["prompt_tokens"] and r["limits"] == raw["limits"]
    flipped = [site["load"] != base["load"] for r in draws for site, base in zip(r["sites"], raw["sites"])]
    assert 0.15 < sum(flipped) / len(flipped) < 0.45  # each site flips with probability 0.3
    drift = [d["acceptance"]["kind"] == "drift" for r in draws for d in r["drafters"].values()]
    assert 0 < sum(drift) < len(drift)
    assert raw["workload"]["arrivals"]["kind"] == "poisson" and stressed_raw(raw, random.Random(0)) == draws[0]


def test_stressed_workloads_add_their_runs_to_each_settings_score():
    twin, sim = _probe("wan-4region", 20.0)
    raw = twin_raw(sim.info, twin.seen, now=8.0, drain_s=5.0)
    nominal, stressed = build_scenario(raw), build_scenario(stressed_raw(raw, random.Random(1)))
    verify, drafts = measured_latency(sim, sim.info)
    plain, _ = plan_settings(nominal, verify, drafts, SETTINGS, DEFAULT_MODES, 5.0, 1, 0)
    both, _ = plan_settings(nominal, verify, drafts, SETTINGS, DEFAULT_MODES, 5.0, 1, 0, stressed=(stressed,))
    alone = []
    for setting in SETTINGS:  # the stressed twin's run is the workload after the nominal ones (seed 1)
        s = Simulator(stressed, seed=1, duration=5.0, verify_latency=verify, draft_latency=drafts)
        s.run(fixed_controller(setting, DEFAULT_MODES))
        alone.append(sum(r.slo_met for r in s.metrics.records))
    assert list(both) == pytest.approx(list(plain + alone))
    assert list(both) != pytest.approx(list(plain * 2))  # the stressed twin is another system, not a copy


def test_a_race_scores_only_the_heats_best_and_the_held_setting_on_the_other_workloads():
    twin, sim = _probe("wan-4region", 20.0)
    raw = twin_raw(sim.info, twin.seen, now=8.0, drain_s=5.0)
    nominal, stressed = build_scenario(raw), build_scenario(stressed_raw(raw, random.Random(1)))
    verify, drafts = measured_latency(sim, sim.info)
    portfolio = [dict(s) for s in PORTFOLIO[:4]]

    def met(setting: dict, scenario, seed: int) -> int:
        s = Simulator(scenario, seed=seed, duration=5.0, verify_latency=verify, draft_latency=drafts)
        s.run(fixed_controller(setting, DEFAULT_MODES))
        return sum(r.slo_met for r in s.metrics.records)

    # two measured-twin workloads (seeds 0, 1), then the stressed one (seed 2); the heats: seeds 0 and 2
    runs = [[met(p, nominal, 0), met(p, nominal, 1), met(p, stressed, 2)] for p in portfolio]
    leaders = sorted(range(4), key=lambda i: -(runs[i][0] + runs[i][2]))[:2]
    held = next(i for i in range(4) if i not in leaders)
    args = (nominal, verify, drafts, portfolio, DEFAULT_MODES, 5.0, 2, 0, (stressed,))
    raced, best = plan_settings(*args, race=2, keep=held)
    for i in range(4):  # a setting in the race has its full score; the others are out (NaN)
        assert raced[i] == sum(runs[i]) if i in leaders or i == held else raced[i] != raced[i]
    assert best == portfolio[max(leaders + [held], key=lambda i: sum(runs[i]))]
    assert list(plan_settings(*args, race=4)[0]) == [sum(r) for r in runs]  # not below the portfolio's size: no race
    assert make_controller("twin:race=6").race == 6


def test_a_replan_keeps_the_held_setting_in_the_race():
    sim, twin = Simulator(load_scenario("wan-4region"), 5, 8.0, rate=20.0), Twin(portfolio=SETTINGS, race=1, warmup_s=1.0)
    twin.bind(sim.info)
    point = sim.next_decision()
    while point.time < 4.0:  # measure a few seconds, as the probe does
        sim.apply(twin.decide(point))
        point = sim.next_decision()
    assert twin.plan_args(point)[-2:] == (1, None)  # the race size; the first plan holds nothing yet
    twin.chosen = 2
    assert twin.plan_args(point)[-1] == 2  # a replan: what is held now runs every workload
    twin.chosen = len(SETTINGS)  # a refined setting, outside the portfolio the plan scores
    assert twin.plan_args(point)[-1] is None


def test_measured_forward_times_match_the_systems_own_with_the_load_divided_out():
    sim = Simulator(load_scenario("wan-4region"), 0, 5.0, rate=10.0)
    point = sim.next_decision()
    verify, drafts = measured_latency(sim, sim.info)
    for n, ctx in [(1, 300), (40, 20_000), (200, 60_000)]:
        assert verify.forward_time(n, n, ctx) == pytest.approx(sim.target_lat.forward_time(n, n, ctx), rel=0.05)
        for name, lat in drafts.items():
            true = sim.sites[name].draft_lat
            assert lat.forward_time(n, n, ctx) == pytest.approx(true.forward_time(n, n, ctx), rel=0.05), name
    assert point is not None
    with pytest.raises(ValueError, match="not a drafting site"):
        Simulator(load_scenario("wan-4region"), 0, 5.0, draft_latency={"nowhere": verify})


def test_it_holds_the_setting_that_runs_best_in_its_twin_deterministically():
    scenario = load_scenario("wan-4region")
    runs = []
    for _ in range(2):
        ctl = make_controller("twin:horizon_s=6,seeds=1,probe_s=4,warmup_s=1,stress=0")
        runs.append((Simulator(scenario, 3, 12.0, rate=20.0).run(ctl), ctl.chosen, list(ctl.values)))
    assert runs[0] == runs[1]
    summary, chosen, values = runs[0]
    assert len(values) == len(PORTFOLIO) and chosen == values.index(max(values))
    held = fixed_controller(PORTFOLIO[chosen], DEFAULT_MODES)
    assert held.spec(held.knobs) in ctl.usage


def test_by_default_it_probes_4_s_and_plans_then():
    # the default setting runs only during the probe, which can be far from a system's best (docs/twin.md)
    ctl = Twin(replan=0, stress=0, horizon_s=4, seeds=1)
    assert (ctl.probe_s, ctl.warmup_s) == (4.0, 1.0)
    Simulator(load_scenario("wan-4region"), 0, 6.0, rate=20.0).run(ctl)
    assert not ctl.probing and ctl.values is not None and len(ctl.probe_scores) == 4  # its 1-s windows after the 1-s warm-up


def test_a_probe_that_saw_no_arrivals_keeps_its_setting():
    sim, ctl = Simulator(load_scenario("wan-4region"), 0, 8.0, rate=20.0), Twin()
    ctl.bind(sim.info)
    assert ctl.pick(sim.next_decision()) is None and ctl.values is None  # rather than fail mid-run


def test_bad_parameters_are_refused_naming_the_fix():
    with pytest.raises(ControllerError, match="horizon_s must be > 0"):
        make_controller("twin:horizon_s=0")
    with pytest.raises(ControllerError, match="warmup_s < probe_s"):
        make_controller("twin:probe_s=2,warmup_s=3")
    for bad in ("replan", "stress", "race"):
        with pytest.raises(ControllerError, match="replan, stress and race >= 0"):
            make_controller(f"twin:{bad}=-1")
    with pytest.raises(ControllerError, match="replan_gap_s, replan_margin, probe_margin and selector_margin must be >= 0"):
        make_controller("twin:replan=3,replan_margin=-0.1")
    with pytest.raises(ControllerError, match="probe_margin and selector_margin must be >= 0, got .* -0.02 and"):
        make_controller("twin:probe_margin=-0.02")


def test_refining_climbs_from_the_portfolios_best_to_a_neighbouring_setting_that_runs_better_in_the_twin():
    from controllers.knobs import setting_key as _key
    from controllers.twin import _neighbours

    assert sorted(map(_key, _neighbours({"mode": 1, "cap": 2.0, "k_cap": 8, "hedge": 0}))) == [
        (1, 2, 5, 0), (1, 3, 4, 0), (1, 3, 5, 1), (1, 4, 5, 0)]  # cap 1.75 / 2.5, k cap 6, hedged
    assert {_key(n)[1] for n in _neighbours({"mode": 0, "cap": 1.0, "k_cap": 1, "hedge": 1})} == {0, 1}  # no level below the first
    scenario = load_scenario("training/scenarios/apac-hybrid.yaml")
    ctl = make_controller("twin:horizon_s=6,seeds=1,probe_s=4,warmup_s=1,refine=2")
    Simulator(scenario, 3, 12.0, rate=18.0).run(ctl)
    plain = list(map(_key, PORTFOLIO))
    held = _key(ctl.settings[ctl.chosen])
    assert len(ctl.values) == len(PORTFOLIO) and ctl.portfolio == ctl.settings[: len(PORTFOLIO)]
    best = plain[int(ctl.values.argmax())]
    if ctl.chosen < len(PORTFOLIO):
        assert held == best  # no neighbour ran 1% better in the twin
    else:  # one or two steps away from the best: the same mode, one level or the hedge apart per step
        assert held[0] == best[0] and held not in plain
        assert sum(abs(a - b) for a, b in zip(held[1:], best[1:])) <= 2


@pytest.mark.slow
def test_the_guard_goes_back_to_the_probes_setting_when_the_held_one_collapses_and_otherwise_changes_nothing():
    # eu-jetson-fleet: a probe that saw the remote region idle makes the twin favour loose wanspec,
    # which collapses once that region's load flips to busy
    jetson = load_scenario("training/scenarios/eu-jetson-fleet.yaml")
    # (the case was found with the 10-s probe of earlier releases, which these runs keep)
    plain, guarded = (make_controller("twin:replan=0,stress=0,probe_s=10,warmup_s=2"),
                      make_controller("twin:replan=0,guard=true,stress=0,probe_s=10,warmup_s=2"))
    lost = Simulator(jetson, 1_000_000_002, 30.0, rate=4.0).run(plain)
    kept = Simulator(jetson, 1_000_000_002, 30.0, rate=4.0).run(guarded)
    assert plain.chosen == 3 and plain.reverted_at is None
    assert guarded.reverted_at is not None and 16.0 <= guarded.reverted_at <= 20.0 and guarded.chosen == 0
    assert min(guarded.held_scores[3:]) < sum(guarded.probe_scores) / len(guarded.probe_scores) - 0.15
    assert kept["goodput_rps"] > 2 * lost["goodput_rps"]
    # where the held setting keeps its pace, the guard only watches: the same run, decision for decision
    wan = load_scenario("wan-4region")
    a, b = (make_controller("twin:horizon_s=10,seeds=1,replan=0,stress=0"),
            make_controller("twin:horizon_s=10,seeds=1,replan=0,guard=true,stress=0"))
    assert Simulator(wan, 4, 24.0, rate=23.0).run(a) == Simulator(wan, 4, 24.0, rate=23.0).run(b)
    assert b.reverted_at is None and len(b.held_scores) >= 10


def test_a_sites_load_is_modelled_by_the_regimes_its_windows_showed():
    assert load_process([0.3, 0.32, 0.28], 1.0) == {"kind": "constant", "level": pytest.approx(0.3)}
    assert load_regimes([0.1, 0.2, 0.3, 0.4, 0.5]) == [0] * 5  # a smooth drift is one regime
    # idle for 3 windows, busy for 2, idle for 4, now busy again for 1: Markov, starting busy
    history = [0.05] * 3 + [0.8] * 2 + [0.05] * 4 + [0.8]
    assert load_regimes(history) == [0] * 3 + [1] * 2 + [0] * 4 + [1]
    m = load_process(history, 2.0)
    assert m["kind"] == "markov" and m["levels"] == pytest.approx([0.8, 0.05])
    assert m["mean_dwell_s"] == pytest.approx([4.0, 7.0])  # finished runs only: busy 2 windows, idle 3.5, x 2 s
    # a regime with no finished run dwells the longer of its run so far and the others' mean dwell
    assert load_process([0.05] * 6 + [0.7], 1.0)["mean_dwell_s"] == pytest.approx([6.0, 6.0])
    assert load_process([0.05] * 2 + [0.7] * 9, 1.0)["mean_dwell_s"] == pytest.approx([9.0, 2.0])


@pytest.mark.slow
def test_replanning_plans_again_when_a_sites_load_enters_a_new_regime_and_otherwise_changes_nothing():
    # eu-jetson-fleet, seed ...04: the probe sees the remote region busy; it goes idle at ~13 s
    jetson = load_scenario("training/scenarios/eu-jetson-fleet.yaml")
    twin = make_controller("twin:horizon_s=10,seeds=1,replan=3,replan_gap_s=0,replan_margin=0,stress=0")
    Simulator(jetson, 1_000_000_004, 20.0, rate=4.0).run(twin)
    loads = twin.seen.loads["eu-west-2"]
    assert len(twin.replanned_at) == 1 and 10.0 < twin.replanned_at[0] < 20.0
    assert max(loads[:8]) > 0.7 and min(loads) < 0.1  # busy through the probe, idle later
    assert twin.chosen is not None and twin.plan_s > 0
    model = load_process(loads, 1.0)
    assert model["kind"] == "markov" and model["levels"][0] < 0.1  # the regime it is in now comes first
    # where no site's load changes regime (edge-fleet's loads are constant or diurnal), it never
    # replans: the same run as the plain twin's
    edge = load_scenario("edge-fleet")
    a, b = make_controller("twin:horizon_s=5,seeds=1,replan=0,stress=0"), make_controller("twin:horizon_s=5,seeds=1,stress=0")
    assert b.replan == 3  # (the default)
    assert Simulator(edge, 4, 24.0, rate=32.0).run(a) == Simulator(edge, 4, 24.0, rate=32.0).run(b)
    assert b.replanned_at == [] and len(b.seen.loads[b.info.target_site]) >= 20


@pytest.mark.slow
def test_spaced_replans_wait_out_the_gap_and_a_margin_keeps_the_held_setting_against_a_marginally_better_one():
    from runtime.distribution import ScenarioDistribution

    # a training-seed system of the mix whose loads swing right after the probe: plain replanning
    # spends all three replans within 5 s of it; spaced, each plan starts 10 s after the last
    scenario, rate = ScenarioDistribution.load("training/configs/scenario-mix.yaml").draw(7026)
    # (when a replan starts depends on the loads alone: a small, short plan keeps the test fast)
    # (both cases were found with the 10-s probe of earlier releases, which these runs keep)
    bunched, spaced = (Twin(horizon_s=5.0, seeds=1, stress=0, portfolio=SETTINGS, replan=3, replan_gap_s=gap,
                            replan_margin=0.0, probe_s=10.0, warmup_s=2.0) for gap in (0.0, 10.0))
    Simulator(scenario, 7026, 40.0, rate=rate).run(bunched)
    Simulator(scenario, 7026, 40.0, rate=rate).run(spaced)
    assert len(bunched.replanned_at) == 3 and bunched.replanned_at[-1] < bunched.probe_s + 5
    starts = [spaced.probe_s, *spaced.replanned_at]
    assert len(starts) >= 3 and all(b - a >= 10.0 for a, b in zip(starts, starts[1:]))
    # eu-jetson-fleet seed ...04, on the measured twin alone: the replan's best meets 229 SLOs in
    # the twin against the held setting's 228; with a 2% margin the twin keeps what it holds
    jetson = load_scenario("training/scenarios/eu-jetson-fleet.yaml")
    plain = make_controller("twin:replan=3,replan_gap_s=0,replan_margin=0,stress=0,probe_s=10,warmup_s=2")
    margined = make_controller("twin:replan=3,replan_gap_s=0,replan_margin=0.02,stress=0,probe_s=10,warmup_s=2")
    Simulator(jetson, 1_000_000_004, 20.0, rate=4.0).run(plain)
    Simulator(jetson, 1_000_000_004, 20.0, rate=4.0).run(margined)
    assert list(plain.values) == list(margined.values) and plain.replanned_at == margined.replanned_at
    held, best = margined.chosen, int(plain.values.argmax())
    assert plain.chosen == best != held and plain.values[best] < 1.02 * plain.values[held]
    assert margined.kept_at == margined.replanned_at and plain.kept_at == []


def _adopting(spec: str, held: int | None, replanned: bool) -> Twin:
    """A bound twin that holds ``held`` (None: still probing), about to adopt a plan."""
    twin = make_controller(spec)
    assert isinstance(twin, Twin)
    twin.bind(Simulator(load_scenario("wan-4region"), 0, 1.0).info)
    twin.chosen, twin._planned_t = held, 30.0
    if replanned:
        twin.replanned_at.append(30.0)
    return twin


def test_a_probe_margin_holds_the_probes_setting_unless_another_beats_it_by_the_margin():
    plan = lambda values: (np.array(values, dtype=float), dict(PORTFOLIO[int(np.argmax(values))]))  # noqa: E731
    # eu-jetson-fleet seed 1000000000, the first plan: centralized at cap 2x met 563 SLOs in the
    # twin against the probe's setting's 558 (0.9% more), and lost 12% live on a 180-s run
    first = [558.0, 563.0, 559.0, 106.0, 399.0, 404.0]
    assert _adopting("twin", None, False)._adopt(plan(first)) == 1  # the default: the twin's best
    twin = _adopting("twin:probe_margin=0.02", None, False)
    assert twin._adopt(plan(first)) == 0 and twin.probe_kept_at == [30.0]
    clear = [483.0, 387.0, 531.0, 11.0, 365.0, 350.0]  # seed ...08: wanspec at k 3 by 10%
    twin = _adopting("twin:probe_margin=0.02", None, False)
    assert twin._adopt(plan(clear)) == 2 and twin.probe_kept_at == []
    # seed ...08's replan while holding that: cap 2x beats it by 7%, the probe's setting by 0.2%
    replan = [448.0, 449.0, 418.0, 284.0, 295.0, 290.0]
    assert _adopting("twin", 2, True)._adopt(plan(replan)) == 1
    assert _adopting("twin:probe_margin=0.02", 2, True)._adopt(plan(replan)) == 0
    # a replan whose best is within the replan margin of what it holds: that holds, with or
    # without a probe margin, unless the probe's setting is as good
    close = [400.0, 100.0, 500.0, 505.0, 100.0, 100.0]
    for spec in ("twin", "twin:probe_margin=0.02"):
        twin = _adopting(spec, 2, True)
        assert twin._adopt(plan(close)) == 2 and twin.kept_at == [30.0]
    assert _adopting("twin:probe_margin=0.02", 2, True)._adopt(plan([500.0, 1.0, 498.0, 505.0, 1.0, 1.0])) == 0


def _run_waiting(twin: Twin, sim: Simulator) -> tuple[float | None, float | None]:
    """Drive ``sim`` with ``twin``, waiting for each background plan to finish before the next
    decision (so the result does not depend on the machine's speed): when the first plan started
    and when the twin switched."""
    twin.bind(sim.info)
    point, started, switched = sim.next_decision(), None, None
    while point is not None:
        sim.apply(twin.decide(point))
        if started is None and twin._future is not None:
            started = point.time
        twin.wait()
        if switched is None and twin.chosen is not None:
            switched = point.time
        point = sim.next_decision()
    return started, switched


def test_a_plan_in_the_background_chooses_what_the_blocking_plan_chooses_and_serving_goes_on_meanwhile():
    apac = load_scenario("training/scenarios/apac-hybrid.yaml")
    blocking = make_controller("twin:horizon_s=5,seeds=1")
    assert blocking.background is None and blocking.info is None
    plain = Simulator(apac, 3, 14.0, rate=18.0).run(blocking)
    assert not blocking._background  # in the simulator it plans in the decision call by default
    background = make_controller("twin:horizon_s=5,seeds=1,background=true")
    sim = Simulator(apac, 3, 14.0, rate=18.0)
    started, switched = _run_waiting(background, sim)
    assert background._background and background.plan_s > 0
    assert list(background.values) == list(blocking.values) and background.chosen == blocking.chosen
    # it kept the probe's setting for the decision that started the plan, and switched at the next
    assert started is not None and started >= background.probe_s and switched is not None and switched > started
    assert background._pool is None  # the planning process is stopped once its plan is adopted
    assert sim.summary()["requests_completed"] == pytest.approx(plain["requests_completed"], rel=0.05)


def test_the_twin_plans_over_a_portfolio_file_with_its_own_modes(tmp_path):
    f = tmp_path / "portfolio.yaml"
    f.write_text("modes: [wisp, centralized]\nsettings:\n  - {mode: 1, cap: 1.0, k_cap: 4, hedge: 0}\n"
                 "  - {mode: 0, cap: 2.0, k_cap: 3, hedge: 0}\n")
    twin = make_controller(f"twin:portfolio={f},probe_s=4,warmup_s=1,horizon_s=5,seeds=1,stress=0,replan=0")
    Simulator(load_scenario("wan-4region"), 0, 10.0, rate=16.0).run(twin)
    assert [m.split(":")[0] for m in twin.mode_specs] == ["wisp", "centralized"]
    assert twin.values is not None and len(twin.values) == 2 and twin.chosen in (0, 1)
    with pytest.raises(ControllerError, match="not found.*training.portfolio"):
        make_controller(f"twin:portfolio={tmp_path / 'missing.yaml'}")


SELECTOR_MODEL = str(Path(__file__).resolve().parents[1] / "training" / "models" / "selector-mix.json")


def test_with_a_selector_the_first_plan_holds_its_choice_unless_the_twin_clearly_beats_it():
    plan = lambda values: (np.array(values, dtype=float), dict(PORTFOLIO[int(np.argmax(values))]))  # noqa: E731
    spec = f"twin:selector={SELECTOR_MODEL}"
    twin = _adopting(spec, None, False)
    twin.learned = 2  # what plan_args records when the probe ends
    assert twin._adopt(plan([400.0, 100.0, 500.0, 505.0, 100.0, 100.0])) == 2 and not twin.overruled  # 1% better: the choice
    twin = _adopting(spec, None, False)
    twin.learned = 2
    assert twin._adopt(plan([400.0, 100.0, 500.0, 560.0, 100.0, 100.0])) == 3 and twin.overruled  # 12% better: the twin's
    twin = _adopting(spec + ",selector_margin=0.2", None, False)
    twin.learned = 2
    assert twin._adopt(plan([400.0, 100.0, 500.0, 560.0, 100.0, 100.0])) == 2
    # replans are the twin's own: the selector chose once, after the probe
    twin = _adopting(spec, 2, True)
    twin.learned = 2
    assert twin._adopt(plan([400.0, 100.0, 300.0, 500.0, 100.0, 100.0])) == 3


def test_with_a_selector_it_runs_the_selectors_choice_and_a_race_always_scores_it():
    from controllers.selector import SelectorModel

    scenario = load_scenario(str(Path(SELECTOR_MODEL).parents[1] / "scenarios" / "us-code-edge.yaml"))
    ctl = make_controller(f"twin:selector={SELECTOR_MODEL},replan=0,stress=0,horizon_s=4,seeds=1")
    assert (ctl.probe_s, ctl.warmup_s) == (ctl.prior.probe_s, ctl.prior.warmup_s)  # the model's probe, not the twin's 4 s
    Simulator(scenario, 0, 11.0, rate=12.0).run(ctl)
    assert ctl.learned == ctl.prior.choose(ctl.probe_features())
    best = int(np.argmax(ctl.values))
    expect = best if ctl.values[best] > ctl.values[ctl.learned] * 1.02 else ctl.learned
    assert ctl.chosen == expect and ctl.overruled == (expect != ctl.learned)
    # a model that always chooses the last setting: a race of one keeps it beside the heats' leader
    last = [0.5] * (len(PORTFOLIO) - 1) + [0.9]
    model = SelectorModel(modes=list(DEFAULT_MODES), settings=[dict(p) for p in PORTFOLIO],
                          trees=[{"left": [-1], "right": [-1], "feature": [0], "threshold": [0.0], "value": [last]}])
    ctl = Twin(selector=model, replan=0, stress=0, horizon_s=4, seeds=1, race=1)
    Simulator(scenario, 0, 11.0, rate=12.0).run(ctl)
    alive = np.flatnonzero(~np.isnan(ctl.values)).tolist()
    assert ctl.learned == len(PORTFOLIO) - 1 and len(alive) == 2 and ctl.learned in alive


def test_a_selector_fitted_on_another_portfolio_or_probe_is_refused_naming_the_fix():
    with pytest.raises(ControllerError, match="other settings or modes than this twin's portfolio"):
        make_controller(f"twin:selector={SELECTOR_MODEL},portfolio=training/configs/twin-capped-grid.yaml")
    with pytest.raises(ControllerError, match="fitted on a 10-s probe.*set probe_s and warmup_s to the model's"):
        make_controller(f"twin:selector={SELECTOR_MODEL},probe_s=5")
    with pytest.raises(ControllerError, match="not found; fit one with `python -m training.selector"):
        make_controller("twin:selector=no-such-model.json")
    with pytest.raises(ControllerError, match="selector_margin must be >= 0"):
        make_controller(f"twin:selector={SELECTOR_MODEL},selector_margin=-0.1")
