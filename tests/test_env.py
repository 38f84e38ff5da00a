"""The Gymnasium environments: API conformance, determinism, masks, vector envs, the codec."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import policy_env
from policy_env import Codec, CodecMismatch
from runtime.scenario import load_scenario
from runtime.sim import Simulator

SHORT = dict(rate=18.0, duration=4.0)


def masked_random(env, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random valid action from the env's mask."""
    mask = env.action_masks()
    scores = np.where(mask, rng.random(mask.size), -1.0)
    out, o = [], 0
    for n in env.action_space.nvec:
        out.append(int(scores[o : o + n].argmax()))
        o += n
    return np.array(out)


def rollout(env, seed: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    seen, rewards = [obs], []
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(masked_random(env, rng))
        seen.append(obs)
        rewards.append(r)
        if term or trunc:
            obs, _ = env.reset()
    return seen, rewards


@pytest.mark.parametrize("env_id", list(policy_env.ENV_IDS))
def test_registered_ids_make_and_pass_checkers(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, **SHORT)
    assert env.unwrapped.codec.owns == policy_env.ENV_IDS[env_id]
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)


def test_same_seed_same_trajectory_and_different_seed_differs() -> None:
    a, ra = rollout(gym.make("specctl/SpecControl-v0", **SHORT).unwrapped, 3, 300)
    b, rb = rollout(gym.make("specctl/SpecControl-v0", **SHORT).unwrapped, 3, 300)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and ra == rb
    c, _ = rollout(gym.make("specctl/SpecControl-v0", **SHORT).unwrapped, 4, 300)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_observations_stay_in_space_and_masks_forbid_invalid_choices() -> None:
    env = gym.make("specctl/SpecControl-v0", **SHORT).unwrapped
    codec = env.codec
    nk, ns, _, _ = codec.dims
    width = nk + ns + 4
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    kinds = set()
    admits = 0
    for _ in range(400):
        part = env.part
        mask = env.action_masks().reshape(codec.n_slots, width)
        point, chunk = part.point, part.chunk
        kinds.add(point.kind)
        for j in range(codec.n_slots):
            row = mask[j]
            if j >= len(chunk):  # empty slot: only option 0 everywhere
                assert row.sum() == 4
                continue
            req = chunk[j]
            if point.kind == "plan" and j < part.chunk_admit:  # an arrival: only the admit bit is free
                assert req in point.admit and row.sum() == 5 and row[nk + ns + 3]
                admits += 1
            elif point.kind == "plan":
                assert row[:nk].sum() == 1 + max(0, min(codec.max_k, req.tokens_left - 1))
                allowed = env.sim.info.allowed_sites(req)
                assert all((opt in allowed) == row[nk + s] for s, opt in enumerate(codec.site_options))
                assert not row[nk + ns + 3]  # no include bit at plan points
            else:
                assert row[:nk].sum() == 1 and row[nk + ns + 3]
        obs, _, term, trunc, _ = env.step(masked_random(env, rng))
        assert env.observation_space.contains(obs)
        if term or trunc:
            env.reset()
    assert kinds == {"plan", "batch"} and admits > 0


def test_unmasked_invalid_actions_are_repaired_not_fatal() -> None:
    """PPO/A2C without masks can ask for anything; the codec clips k and replaces bad sites."""
    env = gym.make("specctl/SpecControl-v0", scenario="edge-fleet", rate=16.0, duration=3.0).unwrapped
    env.reset(seed=1)
    worst = env.action_space.nvec - 1  # k = max_k, last site option, a backup, include everything
    for _ in range(300):
        _, _, term, trunc, _ = env.step(worst)
        if term or trunc:
            break
    assert env.sim.metrics.tokens_committed > 0


def test_episode_truncates_at_the_end_of_the_arrival_window() -> None:
    env = gym.make("specctl/DraftLength-v0", rate=18.0, duration=2.0).unwrapped
    env.reset(seed=0)
    trunc = term = False
    steps = 0
    while not (term or trunc):
        _, _, term, trunc, info = env.step(np.zeros(len(env.action_space.nvec), dtype=np.int64))
        steps += 1
    assert trunc and not term and info["sim_time"] >= 2.0 and steps > 10


def test_waiting_is_possible_and_rewards_count_slo_goodput() -> None:
    env = gym.make("specctl/Batching-v0", rate=18.0, duration=5.0, reward={"on_pace_tokens": 0.0, "target_draft_pass": 0.0, "wasted_token": 0.0}).unwrapped
    env.reset(seed=0)
    include_all = np.tile([0, 0, 0, 1], env.codec.n_slots)
    total, t0 = 0.0, None
    while True:
        _, r, term, trunc, _ = env.step(include_all)
        total += r
        if term or trunc:
            break
    met = sum(rec.slo_met for rec in env.sim.metrics.records)
    assert total == pytest.approx(met) and met > 0
    # including nobody (with nothing beyond the slots) makes the verifier wait
    env.reset(seed=0)
    t0 = env.sim.now
    env.step(np.zeros_like(include_all))
    assert env.sim.metrics.target_verify_passes == 0 or env.sim.now > t0


def test_gymnasium_and_sb3_vector_envs() -> None:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    venv = gym.make_vec("specctl/DraftLength-v0", num_envs=2, vectorization_mode="sync", **SHORT)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, venv.single_observation_space.shape[0])
    obs, r, *_ = venv.step(np.zeros((2, len(venv.single_action_space.nvec)), dtype=np.int64))
    assert r.shape == (2,)
    venv.close()
    for cls in (DummyVecEnv, SubprocVecEnv):
        v = make_vec_env(lambda: gym.make("policy_env:specctl/SpecControl-v0", **SHORT), n_envs=2, seed=0, vec_env_cls=cls)
        v.reset()
        masks = np.stack(v.env_method("action_masks"))
        assert masks.shape == (2, int(v.action_space.nvec.sum()))
        v.step(np.zeros((2, len(v.action_space.nvec)), dtype=np.int64))
        v.close()


def test_codec_roundtrip_and_mismatch_names_the_differences() -> None:
    wan = Simulator(load_scenario("wan-4region"), 0, 1.0).info
    edge = Simulator(load_scenario("edge-fleet"), 0, 1.0).info
    codec = Codec.for_runtime(wan, n_slots=8)
    assert Codec.from_dict(codec.to_dict()) == codec
    codec.check(wan)
    with pytest.raises(CodecMismatch, match=r"site_options: checkpoint \('us-east-1'.*vs runtime \('server', 'edge'\)"):
        codec.check(edge)
    with pytest.raises(CodecMismatch, match="version"):
        Codec.from_dict({**codec.to_dict(), "version": 99})


def test_bad_env_arguments_raise_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown reward term"):
        gym.make("specctl/SpecControl-v0", reward={"goodput": 1.0})
    with pytest.raises(ValueError, match="owns must be"):
        gym.make("specctl/SpecControl-v0", owns=("scheduling",))
    with pytest.raises(ValueError, match="unknown scenario"):
        gym.make("specctl/SpecControl-v0", scenario="nowhere")


def test_admission_bit_turns_arrivals_away_and_the_teacher_labels_them() -> None:
    """Codec v2: arrivals fill the first slots of a plan point; accept bit 0 drops the request."""
    env = gym.make("specctl/SpecControl-v0", **SHORT).unwrapped
    assert "admission" in env.codec.owns and env.codec.version == 3
    env.reset(seed=2)
    dropped = 0
    while True:
        part = env.part
        action = env.expert_action()
        n_admit = part.chunk_admit if part.point.kind == "plan" else 0
        if n_admit:
            obs = env._obs.reshape(-1)
            assert obs[9] > 0  # the "arrivals" global feature
            rows = action.reshape(env.codec.n_slots, 4)
            assert rows[:n_admit, 3].all()  # the base heuristic (static) admits everyone
            rows[:n_admit, 3] = 0  # turn them all away
            dropped += n_admit
        before = env.sim.metrics.dropped
        _, _, term, trunc, _ = env.step(action)
        if n_admit and part.pos >= len(part.slots):
            assert env.sim.metrics.dropped >= before + n_admit
        if term or trunc:
            break
    assert dropped > 0 and env.sim.metrics.dropped >= dropped and not env.sim.metrics.records
    # a teacher labels admissions for behaviour cloning: a cap of 1 in flight turns most away
    env = gym.make("specctl/SpecControl-v0", admission_teacher="inflight-cap:max_inflight=1", **SHORT).unwrapped
    env.reset(seed=2)
    labels = []
    for _ in range(300):
        a = env.expert_action().reshape(env.codec.n_slots, 4)
        labels += a[: env.part.chunk_admit, 3].tolist() if env.part.point.kind == "plan" else []
        _, _, term, trunc, _ = env.step(a.reshape(-1))
        if term or trunc:
            break
    assert 0 in labels and 1 in labels


def test_codec_v1_checkpoints_are_refused_with_a_version_message() -> None:
    wan = Simulator(load_scenario("wan-4region"), 0, 1.0).info
    old = {**Codec.for_runtime(wan).to_dict(), "version": 1}
    with pytest.raises(CodecMismatch, match="codec version 1 is not supported .*version 3"):
        Codec.from_dict(old)
