"""Knob control: the controller, SpecKnobs-v0, scenario distributions and the knob recipe."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

from controllers import ControllerError, make_controller
from controllers.knobs import CAP_LEVELS, KNOB_FEATURES, KnobController, fixed_controller
from policy_env import SpecKnobsEnv, gamma_for
from runtime.distribution import DistributionError, ScenarioDistribution
from runtime.scenario import load_scenario
from runtime.sim import Simulator

REPO = Path(__file__).resolve().parents[1]
MIX = REPO / "training" / "configs" / "scenario-mix.yaml"
HELD_OUT = REPO / "training" / "scenarios" / "eu-3region-bursty.yaml"
HELD_OUT_FILES = sorted((REPO / "training" / "scenarios").glob("*.yaml"))


def run(scenario, spec, seed=0, duration=10.0, rate=None):
    return Simulator(load_scenario(scenario), seed, duration, rate=rate).run(make_controller(spec))


def test_default_knobs_are_the_first_mode_unchanged():
    # no cap, k cap at max_k, hedging on: exactly the heuristic (all modes see feedback, one answers)
    a, b = run("wan-4region", "knobs", rate=23), run("wan-4region", "wanspec", rate=23)
    assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}


def test_knobs_cap_k_and_mode_act_on_the_run():
    base = run("wan-4region", "knobs:mode=centralized", rate=26)
    capped = run("wan-4region", "knobs:mode=centralized,cap=1.0", rate=26)
    assert capped["requests_dropped"] > base["requests_dropped"]
    k1 = run("wan-4region", "knobs:mode=centralized,k_cap=1", rate=12)
    assert k1["mean_accepted_per_round"] <= 1.0
    with pytest.raises(ControllerError, match="not a level"):
        make_controller("knobs:cap=1.3")
    assert make_controller("knobs:cap=none").knobs.cap == len(CAP_LEVELS) - 1  # the level the error lists
    with pytest.raises(ControllerError, match="not one of the modes"):
        make_controller("knobs:mode=sled")


def test_a_mode_that_cannot_run_is_masked_and_repaired():
    ctl = KnobController()
    ctl.bind(Simulator(load_scenario("colocated"), 0, 1.0).info)
    assert ctl.valid_modes() == [False, True, True]  # wanspec needs remote sites
    assert not ctl.action_mask()[0]
    ctl.set_knobs([0, len(CAP_LEVELS) - 1, 5, 1], 0.0)
    assert ctl._active is ctl.modes[1]


def test_a_knob_controller_counts_the_intervals_of_each_setting_as_specs_that_run_alone():
    from training.compare import Comparison, run_controller

    ticks = iter(range(10_000))

    def act(obs, mask):  # alternate wisp at cap 2x with centralized at k <= 1 without hedging
        return np.array([1, 3, 5, 1]) if next(ticks) % 2 == 0 else np.array([2, 6, 0, 0])

    ctl = KnobController(act=act)
    res = run_controller(load_scenario("wan-4region"), lambda: ctl, 0, 6.0, 10.0)
    usage = res["knob_usage"]
    # the policy's two settings in turn from the first decision: the built-in setting never runs
    assert set(usage) == {"knobs:mode=wisp,cap=2,k_cap=8,hedge=true", "knobs:mode=centralized,cap=none,k_cap=1,hedge=false"}
    assert abs(usage["knobs:mode=wisp,cap=2,k_cap=8,hedge=true"] - usage["knobs:mode=centralized,cap=none,k_cap=1,hedge=false"]) <= 1
    for spec in usage:  # each reported setting is a controller of its own, with that setting
        assert make_controller(spec).spec() == spec
    assert "knob_usage" not in run_controller(load_scenario("wan-4region"), "wanspec", 0, 2.0, 10.0)
    # over seeds: shares of all intervals, most used first
    cmp = Comparison([0, 1], {"p": [{"knob_usage": {"a": 1, "b": 3}}, {"knob_usage": {"a": 2, "c": 2}}], "h": [{}, {}]})
    assert list(cmp.knob_shares("p").items()) == [("a", 0.375), ("b", 0.375), ("c", 0.25)]
    assert cmp.knob_shares("h") == {}
    # a mode with parameters goes by its index; a mode that cannot run is reported as the one that answered
    custom = KnobController(modes=["wanspec", "centralized:max_k=2"])
    custom.bind(Simulator(load_scenario("colocated"), 0, 1.0).info)  # no remote site: wanspec cannot run
    assert custom.spec() == "knobs:mode=1,cap=none,k_cap=8,hedge=true"


@pytest.mark.parametrize("scenario", ["wan-4region", "edge-fleet", "colocated"])
def test_env_passes_the_gymnasium_checker_everywhere_with_one_space(scenario):
    env = SpecKnobsEnv(scenario, duration=5.0)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (len(KNOB_FEATURES) + 6,)  # the same on every scenario


def test_env_is_deterministic_by_seed_and_discounts_by_simulated_time():
    def episode(seed):
        env = SpecKnobsEnv(distribution=str(MIX), duration=6.0)
        obs, info = env.reset(seed=seed)
        out = [obs, info["scenario"]]
        done = False
        rng = np.random.default_rng(0)
        while not done:
            obs, r, term, trunc, info = env.step(rng.integers(0, env.action_space.nvec))
            out += [obs, r]
            done = term or trunc
        return out

    a, b, c = episode(3), episode(3), episode(4)
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b)) and len(a) == len(b)
    assert len(a) != len(c) or any(not np.array_equal(x, y) if isinstance(x, np.ndarray) else x != y for x, y in zip(a, c))
    assert gamma_for(10.0, 1.0) == pytest.approx(0.5 ** 0.1)
    assert gamma_for(10.0, 10.0) == pytest.approx(0.5)


def test_env_return_is_goodput_and_the_drain_is_one_step():
    env = SpecKnobsEnv("wan-4region", rate=23, duration=10.0)
    env.reset(options={"sim_seed": 7})
    total, steps, done = 0.0, 0, False
    while not done:
        _, r, done, _, _ = env.step(np.array([0, len(CAP_LEVELS) - 1, 5, 1]))
        total += r
        steps += 1
    assert steps <= 11
    assert total * env.reward_scale / 10.0 == pytest.approx(run("wan-4region", "wanspec", seed=7, rate=23)["goodput_rps"])


def test_paired_reward_is_the_policys_slo_met_requests_minus_the_baselines_on_the_same_system():
    """Against the setting it holds, every step's paired reward is exactly 0 (the shadow shares
    every random draw); against another, the rewards sum to the difference of the two runs."""
    held = {"mode": 1, "cap": 2.0, "k_cap": 4, "hedge": 0}
    env = SpecKnobsEnv(distribution=str(MIX), duration=8.0, baseline=held)
    check_env(env, skip_render_check=True)
    action = env.controller.action_for(held)

    def rewards(baseline):
        env.set_baseline(baseline)
        env.reset(options={"sim_seed": 5})
        out, done = [], False
        while not done:
            _, r, done, _, _ = env.step(action)
            out.append(r)
        return out

    against_itself = rewards(held)
    assert len(against_itself) >= 8 and against_itself == [0.0] * len(against_itself)
    other = {"mode": 1, "cap": 1.0, "k_cap": 3, "hedge": 0}
    paired, plain = sum(rewards(other)), sum(rewards(None))
    scenario, rate = env.draw(5)
    sim = Simulator(scenario, 5, 8.0, rate=rate)
    sim.run(fixed_controller(other, env.modes))
    baseline_met = sum(r.slo_met for r in sim.metrics.records)
    assert baseline_met > 0 and paired != 0.0
    assert paired == pytest.approx(plain - baseline_met / env.reward_scale)
    with pytest.raises(ValueError, match="cap=1.2 is not a level"):
        env.set_baseline({"mode": 0, "cap": 1.2})


def test_distribution_samples_valid_reproducible_systems():
    d = ScenarioDistribution.load(MIX)
    names = set()
    for i in range(12):
        s1, r1 = d.sample(random.Random(i))
        s2, r2 = d.sample(random.Random(i))
        assert s1.spec == s2.spec and r1 == r2
        names.add(s1.name.split("~")[0])
        assert r1 > 0
    assert names == {"wan-4region", "edge-fleet", "mix-wan-edge-hybrid"}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "training" / "configs").glob("scenario-mix*.yaml")))
def test_every_shipped_distribution_draws_valid_systems(name):
    d = ScenarioDistribution.load(REPO / "training" / "configs" / name)
    assert d.name == name.removesuffix(".yaml") and all(d.draw(seed)[1] > 0 for seed in range(3))


def test_distribution_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenarios: [{scenario: wan-4region}]\nrate_scale: {low: 2, high: 1}\n")
    with pytest.raises(DistributionError, match="rate_scale"):
        ScenarioDistribution.load(bad)
    bad.write_text("name: x\nscenarios: [{scenario: nowhere}]\n")
    with pytest.raises(DistributionError, match="unknown scenario"):
        ScenarioDistribution.load(bad)
    with pytest.raises(DistributionError, match="does not exist"):
        ScenarioDistribution.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("held_out", HELD_OUT_FILES, ids=lambda p: p.stem)
def test_held_out_scenario_is_not_in_the_training_distribution(held_out):
    d = ScenarioDistribution.load(MIX)
    held = load_scenario(held_out)
    assert held.name not in {b.name for b in d.bases}
    # other data-centre sites (edge devices are numbered alike everywhere)
    sites = lambda sc: {(s.name, s.role) for s in sc.sites if s.role != "edge"}  # noqa: E731
    assert not sites(held) & {x for b in d.bases for x in sites(b)}


def test_distribution_scales_lengths_and_a_file_without_the_ranges_draws_as_before(tmp_path):
    head = "name: x\nscenarios: [{scenario: wan-4region}]\nrate_scale: {low: 1.2, high: 2.0}\nload_flip_prob: 0.5\n"

    def draw(extra: str, seed: int = 5):
        f = tmp_path / "d.yaml"
        f.write_text(head + extra)
        return ScenarioDistribution.load(f).sample(random.Random(seed))

    plain, unit = draw(""), draw("prompt_scale: {low: 1, high: 1}\n")
    assert plain[0].spec == unit[0].spec and plain[1] == unit[1]
    longer, rate = draw("prompt_scale: {low: 3, high: 3}\noutput_scale: {low: 0.5, high: 0.5}\n")
    base = load_scenario("wan-4region").spec.workload
    assert rate == plain[1] and longer.spec.sites == plain[0].spec.sites  # the earlier draws are unchanged
    assert longer.spec.workload.prompt_tokens.mean == pytest.approx(3 * base.prompt_tokens.mean)
    assert longer.spec.workload.prompt_tokens.max == min(8192, 3 * base.prompt_tokens.max)
    assert longer.spec.workload.output_tokens.mean == pytest.approx(0.5 * base.output_tokens.mean)



def test_tier_load_sets_a_whole_roles_mean_load_and_leaves_the_other_draws(tmp_path):
    """A busy (or idle) hour across every remote region at once: tier_load draws one mean per
    system for all sites of a role that do not flip; every earlier draw stays as it was."""
    head = "name: x\nscenarios: [{scenario: wan-4region}]\nrate_scale: {low: 1.2, high: 2.0}\nload_flip_prob: 0.3\n"

    def draw(extra: str, seed: int):
        f = tmp_path / "d.yaml"
        f.write_text(head + extra)
        return ScenarioDistribution.load(f).sample(random.Random(seed))

    busy_means = []
    for seed in range(6):
        (plain, rate), (busy, busy_rate) = draw("", seed), draw("tier_load: {remote: {low: 0.7, high: 0.7}}\n", seed)
        assert busy_rate == rate
        for a, b in zip(plain.sites, busy.sites):
            if a.role != "remote" or a.load.kind == "markov" and b.load == a.load:  # the target, or a flip
                assert b.load == a.load and b.gpu == a.gpu
            else:
                busy_means.append(b.load.long_run_mean)
    assert busy_means and all(m == pytest.approx(0.7) for m in busy_means)
    bad = tmp_path / "bad.yaml"
    bad.write_text(head + "tier_load: {remote: {low: 0.2, high: 1.0}}\n")
    with pytest.raises(DistributionError, match=r"tier_load.remote must lie within \[0, 0.9\]"):
        ScenarioDistribution.load(bad)


def test_ttft_and_tpot_scales_draw_each_deadline_apart_and_leave_the_other_draws(tmp_path):
    """A code-completion service has a tight per-token pace and a lax first token: tpot_scale and
    ttft_scale draw each deadline on its own, after every other draw, so the system is otherwise
    the one the file draws without them, and so is its fingerprint (labels recorded on it stay valid)."""
    head = "name: x\nscenarios: [{scenario: wan-4region}]\nslo_scale: {low: 0.8, high: 1.3}\nload_flip_prob: 0.3\n"

    def load(extra: str) -> ScenarioDistribution:
        f = tmp_path / "d.yaml"
        f.write_text(head + extra)
        return ScenarioDistribution.load(f)

    plain, unit = load(""), load("ttft_scale: {low: 1, high: 1}\n")
    assert plain.fingerprint() == unit.fingerprint() != load("tpot_scale: {low: 0.5, high: 0.5}\n").fingerprint()
    tight = load("tpot_scale: {low: 0.5, high: 0.5}\nttft_scale: {low: 2, high: 2}\n")
    for seed in range(4):
        (a, rate), (b, tight_rate) = plain.draw(seed), tight.draw(seed)
        assert tight_rate == rate and b.sites == a.sites
        for ca, cb in zip(a.spec.workload.slo_classes, b.spec.workload.slo_classes, strict=True):
            assert cb.tpot_s == pytest.approx(0.5 * ca.tpot_s) and cb.ttft_s == pytest.approx(2 * ca.ttft_s)
    with pytest.raises(DistributionError, match="tpot_scale.low must be > 0"):
        load("tpot_scale: {low: 0, high: 1}\n")


def _features(scenario, rate, steps=8):
    env = SpecKnobsEnv(scenario, rate=rate, duration=20.0)
    obs, _ = env.reset(options={"sim_seed": 2})
    for _ in range(steps):
        obs, *_ = env.step(np.array([1, len(CAP_LEVELS) - 1, 5, 1]))  # wisp: it runs on every one
    return dict(zip(KNOB_FEATURES, obs))


def test_knob_features_read_gpu_speed_context_and_where_requests_come_from():
    from runtime.scenario import build_scenario

    raw = yaml.safe_load((REPO / "runtime" / "scenarios" / "edge-fleet.yaml").read_text())

    def variant(edge_gpu: str, prompt_mean: float):
        r = copy.deepcopy(raw)
        r["sites"][1]["gpu"] = edge_gpu
        r["workload"]["prompt_tokens"]["mean"] = prompt_mean
        return build_scenario(r)

    slow, fast, long = (_features(variant(g, p), 12) for g, p in (("AppleM2", 256), ("RTX4090", 256), ("RTX4090", 1024)))
    assert slow["edge_draft_cost"] > 2 * fast["edge_draft_cost"] > 0
    assert slow["remote_draft_cost"] == 0 and slow["edge_origin_share"] == 1.0
    assert long["context"] > 2 * fast["context"]
    wan = _features("wan-4region", 12)
    assert wan["edge_draft_cost"] == 0 and wan["edge_origin_share"] == 0 and wan["remote_draft_cost"] > 0
    assert 0 < wan["target_draft_cost"] < wan["remote_draft_cost"]  # an H100 drafts faster than the nearest A10G


def test_a_policy_refuses_a_scenario_where_none_of_its_modes_runs():
    from runtime.scenario import build_scenario

    raw = {"name": "no-drafter", "sites": [{"name": "dc", "role": "target", "gpu": "A100"}]}
    info = Simulator(build_scenario(raw), 0, 1.0).info
    with pytest.raises(ValueError, match="none of the knob modes .* runs on no-drafter"):
        KnobController(modes=["wanspec", "centralized"]).bind(info)
