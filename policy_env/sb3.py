"""stable-baselines3 policies for slot-tiled action spaces, with the same distribution in fewer ops.

The codec's action space is ``MultiDiscrete([max_k+1, sites, 2, 2] * n_slots)``: one block of
dimensions repeated per slot. SB3's multi-categorical distribution builds one ``Categorical``
per dimension (64 objects per step for 16 slots, most of a training step's time).
:class:`SlotMultiCategorical` computes exactly the same log-probabilities, entropy (masked
choices contribute nothing, as in sb3-contrib), samples and modes with one tensor op per block
dimension. ``SlotPolicy`` (PPO, A2C) and ``MaskableSlotPolicy`` (MaskablePPO) use it;
``training/train.py`` picks the right one for ``policy: SlotPolicy``.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy

from policy_env.codec import block_period

_HUGE_NEG = -1e8  # sb3-contrib's masked logit


class _SlotMixin:
    """Vectorised multi-categorical over ``n_blocks`` repeats of a block of dimensions."""

    def _setup(self, action_dims: list[int]) -> None:
        self.period = block_period(action_dims)
        self.block = [int(x) for x in action_dims[: self.period]]
        self.n_blocks = len(action_dims) // self.period
        self.width = sum(self.block)
        self._logits: th.Tensor | None = None
        self._mask: th.Tensor | None = None
        self._lp_cache: list[th.Tensor] | None = None

    def proba_distribution(self, action_logits: th.Tensor) -> Any:
        self._logits = action_logits.reshape(-1, self.n_blocks, self.width)
        self._mask = None
        self._lp_cache = None
        self.distributions = [self]  # satisfies the base classes' "parameters set" asserts
        return self

    def apply_masking(self, masks: Any) -> None:
        assert self._logits is not None, "Must set distribution parameters"
        self._mask = None if masks is None else th.as_tensor(masks, dtype=th.bool, device=self._logits.device).reshape(self._logits.shape)
        self._lp_cache = None

    @property
    def _lp(self) -> list[th.Tensor]:
        """Normalised (masked) log-probabilities per block dimension: (batch, n_blocks, choices)."""
        if self._lp_cache is None:
            logits = self._logits
            if self._mask is not None:
                logits = th.where(self._mask, logits, th.tensor(_HUGE_NEG, dtype=logits.dtype, device=logits.device))
            self._lp_cache = [th.log_softmax(x, dim=-1) for x in th.split(logits, self.block, dim=-1)]
        return self._lp_cache

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        a = actions.long().reshape(-1, self.n_blocks, self.period)
        total = 0
        for d, lp in enumerate(self._lp):
            total = total + lp.gather(-1, a[..., d : d + 1]).squeeze(-1)
        return total.sum(-1)

    def entropy(self) -> th.Tensor:
        total = 0
        o = 0
        for lp, n in zip(self._lp, self.block):
            p_log_p = lp.exp() * lp
            if self._mask is not None:
                p_log_p = th.where(self._mask[..., o : o + n], p_log_p, th.zeros((), dtype=lp.dtype, device=lp.device))
            total = total - p_log_p.sum(-1)
            o += n
        return total.sum(-1)

    def sample(self) -> th.Tensor:
        # Gumbel-max: argmax(log p + Gumbel noise) is a draw from the categorical
        out = [(lp - th.empty_like(lp).exponential_().log()).argmax(-1) for lp in self._lp]
        return th.stack(out, dim=-1).reshape(-1, self.n_blocks * self.period)

    def mode(self) -> th.Tensor:
        return th.stack([lp.argmax(-1) for lp in self._lp], dim=-1).reshape(-1, self.n_blocks * self.period)


class SlotMultiCategorical(_SlotMixin, MultiCategoricalDistribution):
    def __init__(self, action_dims: list[int]) -> None:
        super().__init__(action_dims)
        self._setup(action_dims)


class MaskableSlotMultiCategorical(_SlotMixin, MaskableMultiCategoricalDistribution):
    def __init__(self, action_dims: list[int]) -> None:
        super().__init__(action_dims)
        self._setup(action_dims)


class SlotPolicy(ActorCriticPolicy):
    """SB3's MLP actor-critic (PPO, A2C) with the vectorised slot distribution."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, *args: Any, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, *args, **kwargs)
        if isinstance(action_space, spaces.MultiDiscrete):
            self.action_dist = SlotMultiCategorical(list(map(int, action_space.nvec)))


class MaskableSlotPolicy(MaskableActorCriticPolicy):
    """sb3-contrib's maskable MLP actor-critic (MaskablePPO) with the vectorised slot distribution."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, *args: Any, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, *args, **kwargs)
        if isinstance(action_space, spaces.MultiDiscrete):
            self.action_dist = MaskableSlotMultiCategorical(list(map(int, action_space.nvec)))
