"""Deploying a policy into the controller slot: same actions as SB3, codec checks, clear errors."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import policy_env  # noqa: F401
from controllers import ControllerError, make_controller
from controllers.policy import PolicyController, PolicyLoadError, export_policy
from policy_env import CodecMismatch
from runtime.cli import main as runtime_main
from runtime.scenario import load_scenario
from runtime.sim import Simulator

ENV_KW = dict(rate=18.0, duration=3.0, base="static:k=2")


def tiny_model(algo: str, env_id: str = "specctl/SpecControl-v0"):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    env = gym.make(env_id, **ENV_KW)
    cls = MaskablePPO if algo == "maskable_ppo" else PPO
    model = cls("MlpPolicy", env, n_steps=64, batch_size=32, seed=0, policy_kwargs={"net_arch": [32, 32]})
    with torch.no_grad():  # spread the logits so argmax ties cannot hide a mismatch
        for p in model.policy.action_net.parameters():
            p.normal_(0, 1.0)
    return model, env.unwrapped


def exported(tmp_path: Path, algo: str = "maskable_ppo", env_id: str = "specctl/SpecControl-v0", admit: bool = False) -> tuple[Path, object, object]:
    model, env = tiny_model(algo, env_id)
    if admit:  # random logits may turn every arrival away: favour the accept bit (admit, include)
        width = int(env.action_space.nvec[:4].sum())
        with torch.no_grad():
            model.policy.action_net.bias.view(-1, width)[:, -1] += 10.0
    meta = {"base": env.base_spec, "env_id": env_id, "env_kwargs": ENV_KW, "algo": algo}
    return export_policy(model, env.codec, tmp_path / "policy", meta), model, env


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_deployed_actions_equal_sb3_predict_deterministic(tmp_path: Path, algo: str) -> None:
    policy_dir, model, env = exported(tmp_path, algo)
    ctl = PolicyController.load(str(policy_dir))
    assert not any(p.suffix in (".pkl", ".zip") for p in policy_dir.iterdir())  # plain weights + JSON only
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=5)
    for _ in range(200):
        mask = env.action_masks()
        if algo == "maskable_ppo":
            expected, _ = model.predict(obs, action_masks=mask, deterministic=True)
        else:
            expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(ctl.net(obs, mask), expected)
        action = expected if rng.random() < 0.5 else env.action_space.sample()
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()


def test_controller_in_the_slot_reproduces_the_env_trajectory(tmp_path: Path) -> None:
    """Serving decodes exactly like training: same seed, same policy -> same simulator metrics."""
    policy_dir, model, env = exported(tmp_path, admit=True)
    ctl = PolicyController.load(str(policy_dir))
    obs, info = env.reset(seed=11)
    done = False
    while not done:
        action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
        obs, _, term, trunc, info = env.step(action)
        done = term or trunc
    sim = Simulator(env.scenario, info["sim_seed"], env.duration, rate=env.rate)
    ctl.bind(sim.info)
    point = sim.next_decision()
    while point is not None and sim.now < env.duration:
        sim.apply(ctl.decide(point))
        point = sim.next_decision()
    assert sim.metrics.tokens_committed == env.sim.metrics.tokens_committed > 0
    assert sim.metrics.target_draft_passes == env.sim.metrics.target_draft_passes


def test_policy_runs_in_the_simulate_cli_and_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy_dir, _, _ = exported(tmp_path)
    assert make_controller(f"policy:{policy_dir}").name.startswith("policy")
    assert runtime_main(["simulate", "--controller", f"policy:{policy_dir}", "--duration", "3", "--rate", "18", "--json"]) == 0
    assert '"goodput_rps"' in capsys.readouterr().out


def test_codec_mismatch_says_what_differs(tmp_path: Path) -> None:
    policy_dir, _, _ = exported(tmp_path)
    ctl = PolicyController.load(str(policy_dir))
    with pytest.raises(CodecMismatch, match=r"trained on scenario 'wan-4region' does not fit scenario 'edge-fleet': site_options"):
        Simulator(load_scenario("edge-fleet"), 0, 2.0).run(ctl)
    # and through the CLI: one error line, exit 2
    assert runtime_main(["simulate", "--scenario", "edge-fleet", "--controller", f"policy:{policy_dir}", "--duration", "2"]) == 2


def test_bad_references_and_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist"):
        PolicyController.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="holds no policy.json"):
        PolicyController.load(str(tmp_path / "empty"))
    policy_dir, _, _ = exported(tmp_path)
    (policy_dir / "policy.safetensors").unlink()
    with pytest.raises(PolicyLoadError, match="policy.safetensors is missing"):
        PolicyController.load(str(policy_dir))
    (policy_dir / "policy.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="not valid JSON"):
        PolicyController.load(str(policy_dir))
    with pytest.raises((ControllerError, PolicyLoadError), match="needs a reference"):
        make_controller("policy:")


def test_deployed_admission_bit_zero_turns_every_arrival_away(tmp_path: Path) -> None:
    """Codec v2: the policy owns admission; accept bit 0 at an arrival's slot drops the request."""
    policy_dir, _, env = exported(tmp_path)
    ctl = PolicyController.load(str(policy_dir))
    assert "admission" in ctl.owns and ctl.codec.version == 3
    nk, ns, _, _ = ctl.codec.dims
    width = nk + ns + 4
    bias = ctl.net.layers[-1][1].reshape(ctl.codec.n_slots, width)
    bias[:, -2], bias[:, -1] = 1e6, -1e6  # accept bit: always 0 (turn away / do not include)
    sim = Simulator(env.scenario, 0, 3.0, rate=18.0)
    summary = sim.run(ctl)
    assert summary["requests_arrived"] > 0 and summary["requests_completed"] == 0
    assert summary["requests_dropped"] == summary["requests_arrived"]
    # and the opposite: admitting everyone serves requests
    bias[:, -2], bias[:, -1] = -1e6, 1e6
    assert Simulator(env.scenario, 0, 3.0, rate=18.0).run(PolicyController(ctl.spec, ctl.net))["requests_completed"] > 0


def test_codec_v1_policy_is_refused_with_a_version_message(tmp_path: Path) -> None:
    import json

    policy_dir, _, _ = exported(tmp_path)
    spec = json.loads((policy_dir / "policy.json").read_text())
    spec["codec"]["version"] = 1
    (policy_dir / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(CodecMismatch, match="codec version 1 is not supported"):
        PolicyController.load(str(policy_dir))
