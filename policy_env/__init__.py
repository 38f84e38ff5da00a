"""Gymnasium environments over the specctl runtime, and the observation/action codec.

Importing this package registers the environments::

    import gymnasium as gym
    import policy_env  # noqa: F401  (registers specctl/*)

    env = gym.make("specctl/SpecControl-v0", scenario="wan-4region", rate=18)

| id | the agent decides | the heuristic ``base`` decides |
|---|---|---|
| ``specctl/SpecControl-v0`` | admission, draft length, drafter site, redundancy, verification batch | (nothing) |
| ``specctl/SpecPlan-v0`` | draft length, drafter site, redundancy | verification batch, admission |
| ``specctl/DraftLength-v0`` | draft length | site, redundancy, batch, admission |
| ``specctl/Batching-v0`` | verification batch | k, site, redundancy, admission |
| ``specctl/SpecKnobs-v0`` | every ``interval_s``: mode (heuristic), admission cap, k cap, hedging | every request, with those knobs |
"""

from __future__ import annotations

import gymnasium as gym

from policy_env.codec import AGENT_DECISIONS, CODEC_VERSION, SPEC_DECISIONS, Codec, CodecMismatch
from policy_env.control import ActionController, build_controller
from policy_env.env import DEFAULT_REWARD, TRAIN_SEED_MAX, SpecControlEnv
from policy_env.knobs_env import SpecKnobsEnv, gamma_for

#: Registered ids -> the decisions the agent owns.
ENV_IDS: dict[str, tuple[str, ...]] = {
    "specctl/SpecControl-v0": AGENT_DECISIONS,
    "specctl/SpecPlan-v0": ("draft_length", "drafter_site", "redundancy"),
    "specctl/DraftLength-v0": ("draft_length",),
    "specctl/Batching-v0": ("batch",),
}

for _id, _owns in ENV_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="policy_env.env:SpecControlEnv", kwargs={"owns": _owns}, disable_env_checker=True)
KNOBS_ENV_ID = "specctl/SpecKnobs-v0"
if KNOBS_ENV_ID not in gym.registry:
    gym.register(id=KNOBS_ENV_ID, entry_point="policy_env.knobs_env:SpecKnobsEnv", disable_env_checker=True)

__all__ = [
    "AGENT_DECISIONS", "SPEC_DECISIONS", "CODEC_VERSION", "Codec", "CodecMismatch", "ActionController", "build_controller",
    "DEFAULT_REWARD", "TRAIN_SEED_MAX", "SpecControlEnv", "ENV_IDS", "KNOBS_ENV_ID", "SpecKnobsEnv", "gamma_for",
]
