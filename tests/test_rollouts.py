"""Policy improvement by rollouts (training/rollouts.py): exact copies, labels, targets."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from policy_env.knobs_env import SpecKnobsEnv
from training.rollouts import (
    ROLLOUT_DEFAULTS,
    Labelled,
    candidate_actions,
    confirm_gain,
    fit,
    in_flight_credit,
    label_episode,
    rollout_value,
    survey_episode,
    targets,
    training_set,
)

REPO = Path(__file__).resolve().parents[1]
MIX = str(REPO / "training" / "configs" / "scenario-mix.yaml")


def test_a_copied_env_replays_its_original_exactly() -> None:
    """Rollouts compare candidates from one state: a copy must see the same future as the original."""
    env = SpecKnobsEnv(distribution=MIX, duration=20.0)
    env.reset(seed=4)
    act = np.array([0, 3, 5, 1])
    for _ in range(5):
        env.step(act)
    copies = [copy.deepcopy(env) for _ in range(2)]
    values = [rollout_value(e, act, 6) for e in (*copies, env)]
    assert values[0] == values[1] == values[2] and values[0] > 0


def test_a_resampled_future_keeps_the_past_and_redraws_the_rest() -> None:
    """Confirmation rollouts run on futures drawn anew: deterministic by seed, other than the
    original's, with the arrivals so far kept and none of them delivered twice."""
    env = SpecKnobsEnv(scenario="wan-4region", rate=20.0, duration=30.0)
    env.reset(seed=2)
    act = np.array([0, 3, 5, 1])
    for _ in range(10):
        env.step(act)
    arrived, now = env.sim.metrics.arrived, env.sim.now

    def run(seed: int | None) -> tuple[float, int]:
        fork = copy.deepcopy(env)
        if seed is not None:
            fork.sim.resample_future(seed)
            assert fork.sim.metrics.arrived == arrived and fork.sim.now == now
        return rollout_value(fork, act, 40), fork.sim.metrics.arrived

    original, a, again, b = run(None), run(11), run(11), run(12)
    assert a == again and a != original and b != a
    for value, n in (original, a, b):  # about 20 req/s x 30 s, the first 10 s of them shared
        assert value > 0 and 450 < n < 750


def test_confirmation_gates_labels_on_independent_futures() -> None:
    env = SpecKnobsEnv(scenario="edge-fleet", rate=32.0, duration=20.0)
    env.reset(seed=3)
    cur = np.array([0, 3, 5, 1])
    for _ in range(5):
        env.step(cur)
    same = confirm_gain(env, cur, cur, 3, 2, (3, 5))
    assert same == 0.0  # an action against itself: each future is shared by the two
    gain = confirm_gain(env, np.array([0, 0, 5, 1]), cur, 3, 2, (3, 5))
    assert gain == confirm_gain(env, np.array([0, 0, 5, 1]), cur, 3, 2, (3, 5)) and np.isfinite(gain)
    lucky = _lab([10.0, 20.0, 12.0], 10.0)  # wins by 50% on the shared future ...
    lucky.confirmed = 0.01  # ... and by 1% on independent ones: not a clear gain
    held = _lab([10.0, 20.0, 12.0], 10.0)
    held.confirmed = 0.2  # confirmed: relabelled, weighed by the confirmed gain
    actions, weights, _ = targets([lucky, held, _lab([10.0, 20.0], 10.0)], min_gain=0.03)
    assert actions[0].tolist() == [0, 3, 5, 1] and actions[1].tolist() == [1, 3, 5, 1] == actions[2].tolist()
    assert weights[0] == 1.0 and 1.0 < weights[1] < weights[2]


def test_candidates_move_one_knob_at_a_time() -> None:
    cands = candidate_actions(np.array([0, 3, 2, 0]), [1.0, 3.0], [True, False, True], k_caps=[2, 16], hedge=True)
    got = {tuple(int(x) for x in a) for a in cands}
    assert got == {
        (0, 3, 2, 0), (2, 3, 2, 0),  # the modes that run, at the current cap, k cap and hedging
        (0, 0, 2, 0), (0, 5, 2, 0),  # caps 1.0 and 3.0 at mode 0
        (0, 3, 1, 0), (0, 3, 5, 0),  # k caps 2 and 16 (clipped to the largest level, 8)
        (0, 3, 2, 1), (0, 0, 2, 1), (0, 5, 2, 1),  # hedging switched on, at the current cap and caps 1.0, 3.0
    }
    assert len(cands) == len(got)
    plain = candidate_actions(np.array([0, 3, 2, 0]), [1.0], [True, True])
    assert {tuple(int(x) for x in a) for a in plain} == {(0, 3, 2, 0), (1, 3, 2, 0), (0, 0, 2, 0)}  # no k caps, no hedge flip
    # rollouts.modes: false keeps the current mode: only its caps (and k caps, hedging) are tried
    same_mode = candidate_actions(np.array([2, 3, 2, 0]), [1.0, 3.0], [True, True, True], k_caps=[2], modes=False)
    assert {tuple(int(x) for x in a) for a in same_mode} == {(2, 3, 2, 0), (2, 0, 2, 0), (2, 5, 2, 0), (2, 3, 1, 0)}
    with pytest.raises(ValueError, match="cap"):
        candidate_actions(np.array([0, 3, 5, 1]), [1.234], [True])
    with pytest.raises(ValueError, match="k_cap"):
        candidate_actions(np.array([0, 3, 5, 1]), [1.0], [True], k_caps=[5])


def test_labels_are_deterministic_and_mask_modes_that_cannot_run(tmp_path: Path) -> None:
    from controllers.policy import export_policy
    from sb3_contrib import MaskablePPO

    env = SpecKnobsEnv(scenario="colocated", duration=6.0)  # no remote sites: wanspec cannot run
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "p", {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    cfg = {**ROLLOUT_DEFAULTS, "at_s": [1.0, 3.0], "horizon_s": 2.0, "caps": [1.5, 3.0], "explore": 1.0}
    job = (str(tmp_path / "p"), {"scenario": "colocated", "rate": 6.0, "duration": 6.0}, 7, cfg)
    first, again = label_episode(job), label_episode(job)
    assert len(first) == 2 and [d.time_s for d in first] == [d.time_s for d in again]
    for a, b in zip(first, again):
        assert np.array_equal(a.values, b.values) and np.array_equal(a.obs, b.obs)
    for d in first:  # wanspec (mode 0) is never a candidate; every value is a real rollout
        assert 0 not in d.actions[:, 0] and len(d.actions) == len(d.values) and np.all(np.isfinite(d.values))
    # with confirmation, exactly the states whose best candidate beats the current action by
    # min_gain are rolled out again (the rest stay NaN), the same way every time
    job = (job[0], job[1], job[2], {**cfg, "confirm": 1, "min_gain": 0.0})
    confirmed, again = label_episode(job), label_episode(job)
    for d, e in zip(confirmed, again):
        beaten = d.values.max() > d.current_value
        assert np.isfinite(d.confirmed) == beaten and (d.confirmed == e.confirmed or not beaten)


def test_detours_hold_at_least_one_control_step_at_long_intervals(tmp_path: Path) -> None:
    """With 5-s control steps a 4-s detour window holds no step; the detour must still happen:
    the labelled state's knob features are the detour's, not the policy's own."""
    from controllers.policy import export_policy
    from sb3_contrib import MaskablePPO

    kwargs = {"scenario": "wan-4region", "rate": 20.0, "duration": 30.0, "interval_s": 5.0}
    env = SpecKnobsEnv(**kwargs)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "p", {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    cfg = {**ROLLOUT_DEFAULTS, "at_s": [10.0, 20.0], "horizon_s": 5.0, "caps": [1.0, 3.0], "explore_s": 4.0}
    own = label_episode((str(tmp_path / "p"), kwargs, 3, {**cfg, "explore": 0.0}))
    detoured = label_episode((str(tmp_path / "p"), kwargs, 3, {**cfg, "explore": 1.0}))
    from controllers.knobs import KNOB_FEATURES

    knobs = KNOB_FEATURES.index("cap")  # cap, k_cap, hedge, then the mode one-hot and validity
    assert any(not np.array_equal(a.obs[knobs:], b.obs[knobs:]) for a, b in zip(own, detoured))


def test_rollouts_without_modes_try_only_the_current_modes_caps(tmp_path: Path) -> None:
    """``rollouts.modes: false``: no state is labelled with another heuristic, detours included."""
    from controllers.knobs import cap_level
    from controllers.policy import export_policy
    from sb3_contrib import MaskablePPO

    kwargs = {"scenario": "wan-4region", "rate": 20.0, "duration": 8.0}
    env = SpecKnobsEnv(**kwargs)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "p", {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    cfg = {**ROLLOUT_DEFAULTS, "at_s": [2.0, 5.0], "horizon_s": 1.0, "caps": [1.0, 3.0], "explore": 1.0, "explore_s": 1.0}
    every = label_episode((str(tmp_path / "p"), kwargs, 3, cfg))
    same = label_episode((str(tmp_path / "p"), kwargs, 3, {**cfg, "modes": False}))
    assert all(len(set(d.actions[:, 0])) == 3 for d in every)  # wanspec, wisp and centralized all run here
    for d in same:  # the current mode at its own cap and at caps 1.0 and 3.0
        assert set(d.actions[:, 0]) == {d.current[0]}
        assert {int(a[1]) for a in d.actions} == {int(d.current[1]), cap_level(1.0), cap_level(3.0)}


def test_a_survey_values_each_mode_by_its_whole_episode(tmp_path: Path) -> None:
    """The survey holds every mode that runs for a whole episode: each state it labels, in every
    mode's episode, carries all the modes' SLO-met totals, and each total is what holding that
    mode scores in a plain episode of the env (the policy's other knobs kept)."""
    from controllers.policy import export_policy
    from sb3_contrib import MaskablePPO

    kwargs = {"distribution": MIX, "duration": 8.0}
    env = SpecKnobsEnv(**kwargs)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "p", {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    job = (str(tmp_path / "p"), kwargs, 8, {**ROLLOUT_DEFAULTS, "at_s": [2.0, 6.0]})
    labels, again = survey_episode(job), survey_episode(job)
    env.reset(options={"sim_seed": 8})
    modes = [m for m, ok in enumerate(env.controller.valid) if ok]
    assert len(labels) == 2 * len(modes) and [d.time_s for d in labels] == [d.time_s for d in again]
    first = labels[0]
    assert list(first.actions[:, 0]) == modes and (first.actions[:, 1:] == first.actions[0, 1:]).all()
    for d, e in zip(labels, again):
        assert np.array_equal(d.values, first.values) and np.array_equal(d.obs, e.obs) and d.demand > 0
        assert d.current_value == d.values[list(d.actions[:, 0]).index(d.current[0])]
    for a, value in zip(first.actions, first.values):
        env.reset(options={"sim_seed": 8})
        total, term = 0.0, False
        while not term:
            _, r, term, _, _ = env.step(a)
            total += r
        assert total == value
    assert len(set(first.values)) > 1  # the modes differ on this system


def _lab(values: list[float], current_value: float) -> Labelled:
    actions = np.array([[0, 0, 5, 1], [1, 3, 5, 1], [2, 3, 5, 1]])[: len(values)]
    return Labelled(np.zeros(3, np.float32), np.ones(4, bool), np.array([0, 3, 5, 1]), current_value, actions,
                    np.array(values, float), 0, 0.0)


def test_targets_relabel_only_clear_gains_and_weigh_them() -> None:
    data = [_lab([10.0, 20.0, 12.0], 10.0),  # wisp doubles the value: relabel
            _lab([10.1, 9.0, 9.5], 10.0),  # 1% better: below min_gain, keep the current action
            _lab([5.0, 6.0], 6.0)]  # the current action is as good as the best
    actions, weights, best = targets(data, min_gain=0.03)
    assert actions[0].tolist() == [1, 3, 5, 1]
    assert actions[1].tolist() == [0, 3, 5, 1] and actions[2].tolist() == [0, 3, 5, 1]
    assert weights[0] > weights[1] == weights[2] == 1.0
    assert best == pytest.approx([20.0, 10.1, 6.0])


def test_gains_per_demand_leave_hopeless_states_alone_and_keep_clear_wins() -> None:
    """With ``gain_per="demand"`` a gain is a share of the requests the moment had to serve: a
    state where nothing finishes on track except under one candidate (2 of 100 requests) is
    ~100% of the best value but 2% of the demand, so it stays; 10 of 100 more is relabelled."""
    hopeless = _lab([0.0, 2.0], 0.0)
    hopeless.demand = 100.0
    clear = _lab([50.0, 60.0], 50.0)
    clear.demand = 100.0
    by_best, _, _ = targets([hopeless, clear], min_gain=0.03)
    assert by_best[0].tolist() == [1, 3, 5, 1] == by_best[1].tolist()  # both relabelled
    by_demand, weights, _ = targets([hopeless, clear], min_gain=0.03, gain_per="demand")
    assert by_demand[0].tolist() == [0, 3, 5, 1] and by_demand[1].tolist() == [1, 3, 5, 1]
    assert weights[0] == 1.0 < weights[1]
    with pytest.raises(ValueError, match="demand"):
        targets([_lab([0.0, 2.0], 0.0)], min_gain=0.03, gain_per="demand")  # labelled without it


def test_labelled_demand_counts_the_requests_in_flight_and_arriving(tmp_path: Path) -> None:
    from controllers.policy import export_policy
    from sb3_contrib import MaskablePPO

    env = SpecKnobsEnv(scenario="wan-4region", duration=8.0)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    export_policy(model, env.controller.layout, tmp_path / "p", {"kind": "knobs", "knobs": env.controller.layout.to_dict()})
    cfg = {**ROLLOUT_DEFAULTS, "at_s": [3.0], "horizon_s": 2.0, "caps": [1.0], "explore": 0.0}
    (d,) = label_episode((str(tmp_path / "p"), {"scenario": "wan-4region", "rate": 20.0, "duration": 8.0}, 5, cfg))
    # about 20 req/s x 2 s arrive in the horizon, plus those in flight at t = 3 s (reward units: / 10)
    assert 3.0 < d.demand < 3.0 + 20.0 * 3.0 / 10.0 and d.values.max() <= d.demand


def test_in_flight_credit_counts_on_track_requests_by_progress() -> None:
    env = SpecKnobsEnv(scenario="wan-4region", rate=20.0, duration=10.0)
    env.reset(seed=1)
    for _ in range(4):
        env.step(np.array([0, 3, 5, 1]))
    credit = in_flight_credit(env)
    reqs = list(env.sim.requests.values())
    assert reqs and 0 < credit <= len(reqs) / env.reward_scale
    for r in reqs:  # every request now far past its TTFT SLO and not started: no credit
        r.first_token_time = -1.0
    assert in_flight_credit(env) == 0.0


def test_anchors_keep_the_warm_setting_where_no_labelled_state_is_near() -> None:
    """Labels say "wisp" in one corner of the feature space; warm-start states elsewhere say
    "wanspec". Without anchors the fit answers "wisp" everywhere; with them, only near the labels."""
    from sb3_contrib import MaskablePPO

    env = SpecKnobsEnv("wan-4region", rate=20.0, duration=5.0)
    n = env.observation_space.shape[0]
    rng = np.random.default_rng(0)
    labelled_obs = rng.normal(0.5, 0.2, (16, n)).astype(np.float32)
    anchor_obs = rng.normal(0.5, 0.2, (48, n)).astype(np.float32)
    labelled_obs[:, 0], anchor_obs[:, 0] = 1.5, -1.5  # one feature tells the two apart
    wisp, wanspec = np.array([1, 3, 5, 1]), np.array([0, 3, 5, 1])
    mask = np.ones(int(sum(env.action_space.nvec)), bool)
    data = [Labelled(o, mask, wanspec, 1.0, np.stack([wanspec, wisp]), np.array([1.0, 2.0]), 0, 0.0) for o in labelled_obs]
    actions, weights, values = targets(data, 0.03)
    anchors = (anchor_obs, np.tile(wanspec, (len(anchor_obs), 1)), np.tile(mask, (len(anchor_obs), 1)))

    plain = training_set(data, actions, weights, values, anchors, 0.0)
    assert len(plain[0]) == 16  # weight 0: no anchors
    anchored = training_set(data, actions, weights, values, anchors, 0.25)
    assert len(anchored[0]) == 64 and set(anchored[4][16:]) == {0.25} and not anchored[5][16:].any()

    modes = []
    for arrays in (plain, anchored):
        model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [16]}, n_steps=8, batch_size=8)
        fit(model, *arrays[:5], epochs=150, learning_rate=3e-3, value_weights=arrays[5])
        modes.append([model.predict(o, deterministic=True)[0][0] for o in (labelled_obs[0], anchor_obs[0])])
    assert modes == [[1, 1], [1, 0]]


def _const_net(action: list[int], dims: tuple[int, ...] = (3, 7, 6, 2)):
    """A PolicyNet that always answers ``action`` (its bias is the one-hot logits)."""
    from controllers.policy import PolicyNet

    logits = np.concatenate([np.eye(d, dtype=np.float32)[a] for a, d in zip(action, dims)])
    return PolicyNet([(np.zeros((len(logits), 2), np.float32), logits)], "identity", dims, masked=True)


def test_a_committee_leaves_the_fallback_only_for_an_action_a_supermajority_chooses() -> None:
    from controllers.policy import CommitteeNet, PolicyLoadError

    warm = _const_net([0, 3, 5, 1])
    members = [_const_net([1, 6, 5, 0])] * 3 + [_const_net([1, 3, 5, 0])]  # whole actions split 3:1
    obs = np.zeros(2, np.float32)
    assert CommitteeNet(members, warm, 0.75)(obs).tolist() == [1, 6, 5, 0]  # 3 of 4 reach 0.75
    # 3 of 4 do not reach 0.8; every member switches hedging off and picks mode 1, but not with
    # the same cap: the vote is over whole actions, so the warm start's setting stands
    assert CommitteeNet(members, warm, 0.8)(obs).tolist() == [0, 3, 5, 1]
    assert CommitteeNet(members, warm, 0.75)(np.zeros((2, 2), np.float32)).tolist() == [[1, 6, 5, 0]] * 2  # a batch
    with pytest.raises(PolicyLoadError, match=r"agreement share in \(0.5, 1\]"):
        CommitteeNet(members, warm, 0.5)


def test_fit_committee_resamples_systems_deterministically_and_exports_a_loadable_committee(tmp_path: Path) -> None:
    """Members are fitted to bootstrap resamples of the labelled systems (the same ones for the
    same key); the committee exports as format v2, loads back, answers as it did in training and
    deploys in the simulator; a v2 file without its committee block is refused by name."""
    import json

    from sb3_contrib import MaskablePPO

    from controllers.policy import CommitteeNet, PolicyLoadError, export_policy, load_policy_dir
    from training.rollouts import fit_committee

    env = SpecKnobsEnv(scenario="wan-4region", duration=6.0)
    model = MaskablePPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, n_steps=8, batch_size=8)
    rng = np.random.default_rng(0)
    data = []
    for i in range(12):  # six systems, two states each; half of them label wisp, half wanspec
        d = _lab([1.0, 2.0, 1.5] if i % 4 < 2 else [2.0, 1.0, 1.5], 1.0)
        d.obs, d.mask, d.seed = rng.normal(size=env.observation_space.shape).astype(np.float32), env.action_masks(), i // 2
        data.append(d)
    actions, weights, values = targets(data, min_gain=0.03)
    arrays = training_set(data, actions, weights, values, None, 0.0)
    cfg = {**ROLLOUT_DEFAULTS, "committee": 3, "agree": 0.75, "epochs": 40}
    before = [p.detach().clone() for p in model.policy.parameters()]
    members, stats = fit_committee(model, data, arrays, cfg, key=(1, 1))
    again, _ = fit_committee(model, data, arrays, cfg, key=(1, 1))
    assert all(torch_equal(a, b) for a, b in zip(before, model.policy.parameters()))  # the warm start stays
    assert len(members) == 3 and 0.0 <= stats["moved_share"] <= 1.0 and stats["samples"] == 12
    for m, n in zip(members, again):
        assert all(torch_equal(a, b) for a, b in zip(m.parameters(), n.parameters()))
    assert not all(torch_equal(a, b) for a, b in zip(members[0].parameters(), members[1].parameters()))

    layout = env.controller.layout
    meta = {"kind": "knobs", "knobs": layout.to_dict()}
    export_policy(model, layout, tmp_path / "c", meta, committee=(members, 0.75))
    spec, net = load_policy_dir(tmp_path / "c")
    assert isinstance(net, CommitteeNet) and spec["format_version"] == 2 and len(net.members) == 3
    agreed = np.mean([(net(o, m) == a).all() for o, m, a in zip(arrays[0], arrays[2], arrays[1])])
    assert agreed == pytest.approx(stats["agreement"])
    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import simulate

    out = simulate(load_scenario("edge-fleet"), make_controller(f"policy:{tmp_path / 'c'}"), seed=1, duration=3.0)
    assert out["requests_completed"] > 0
    broken = json.loads((tmp_path / "c" / "policy.json").read_text())
    del broken["net"]["committee"]
    (tmp_path / "c" / "policy.json").write_text(json.dumps(broken))
    with pytest.raises(PolicyLoadError, match=r"v2 needs net.committee"):
        load_policy_dir(tmp_path / "c")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
