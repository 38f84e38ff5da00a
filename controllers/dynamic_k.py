"""The serving engines' own adaptive draft-length rules, as baselines a learned policy must beat.

* :class:`VllmDynamicK` - vLLM-style: the draft length is looked up in a fixed table keyed by
  the verification batch size (like vLLM's ``num_speculative_tokens_per_batch_size``; with a
  last entry of ``k=0`` it is also ``speculative_disable_by_batch_size``). Verification cost is
  flat up to ~64-128 batched tokens, so small batches can afford long drafts and large ones not.
* :class:`BanditK` - a goodput-aware bandit over draft lengths (BanditSpec, Nightjar): UCB over
  ``k`` in ``0..max_k``, one arm per plan point for the whole lock-step batch, reward = the
  batch's committed tokens per second of target GPU time (verification + the arm's draft
  passes), learned online from ``on_batch_done`` and discounted so it follows the load; one bandit per batch-size bucket
  (powers of two) because the best ``k`` falls as the batch grows.

Both draft on the target site's own GPU (co-located, as the engines do) and leave admission,
redundancy and batching to the defaults (compose with ``+`` to change that).
"""

from __future__ import annotations

import math
from typing import Sequence

from runtime.contract import BatchResult, Controller, DecisionPoint, RequestView, RuntimeInfo, SystemView


def _ints(value: str | int | Sequence[int], what: str) -> list[int]:
    """``"1/16/48"`` (the spec-string form), ``16`` or ``[1, 16, 48]`` -> a list of ints."""
    if isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, str):
        items = [v for v in value.replace(" ", "").split("/") if v]
    else:
        items = list(value)
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be whole numbers separated by '/', e.g. 1/16/48, got {value!r}") from None


def _target_drafter(name: str, info: RuntimeInfo) -> None:
    if info.site(info.target_site).drafter is None:
        raise ValueError(f"{name} drafts on the target site, but {info.target_site!r} in {info.scenario} hosts no drafter; "
                         "use a remote controller (wanspec, sled, wisp)")


def batch_size(point: DecisionPoint) -> int:
    """The verification batch size the planned round will join (what vLLM keys its table on)."""
    return max(point.system.last_batch_size, len(point.plan), 1)


class VllmDynamicK(Controller):
    """Co-located drafting; ``k`` from a table of verification batch sizes.

    ``sizes`` and ``ks`` are the table's two columns (``/``-separated in a spec string): from
    batch size ``sizes[i]`` on, draft ``ks[i]`` tokens. The default, ``1/16/48`` -> ``4/2/1``,
    keeps a batch's drafted tokens (batch x (k + 1)) near the flat part of the verification
    cost curve.
    """

    name = "vllm-dynamic-k"
    owns = frozenset({"drafter_site", "draft_length"})

    def __init__(self, sizes: str | int | Sequence[int] = "1/16/48", ks: str | int | Sequence[int] = "4/2/1") -> None:
        super().__init__()
        self.sizes, self.ks = _ints(sizes, "sizes"), _ints(ks, "ks")
        if len(self.sizes) != len(self.ks) or not self.sizes:
            raise ValueError(f"sizes and ks must have as many entries, got {self.sizes} and {self.ks}")
        if self.sizes[0] != 1 or any(b <= a for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"sizes must start at 1 and increase, got {'/'.join(map(str, self.sizes))}")
        if min(self.ks) < 0:
            raise ValueError(f"ks must be >= 0, got {'/'.join(map(str, self.ks))}")
        self._k = self.ks[0]

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        _target_drafter(self.name, info)

    def k_for(self, n: int) -> int:
        """The table's ``k`` at batch size ``n``."""
        return next(k for size, k in zip(reversed(self.sizes), reversed(self.ks)) if n >= size)

    def prepare(self, point: DecisionPoint) -> None:
        if point.kind == "plan" and point.plan:
            self._k = self.k_for(batch_size(point))

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return max(min(self._k, sys.info.max_k, req.tokens_left - 1), 0)


class BanditK(Controller):
    """Co-located drafting; ``k`` chosen online by discounted UCB on committed tokens per second.

    ``max_k`` bounds the arms (``0..max_k``, also by the runtime's limit); ``exploration`` is
    UCB's constant on rewards scaled to [0, 1] by the largest seen; ``discount`` (per batch)
    forgets old rewards so the choice follows the load; ``contextual`` keeps one bandit per
    batch-size bucket (1, 2-3, 4-7, ...) instead of one overall.
    """

    name = "bandit-k"
    owns = frozenset({"drafter_site", "draft_length"})

    def __init__(self, max_k: int = 6, exploration: float = 0.03, discount: float = 0.99, contextual: bool = True) -> None:
        super().__init__()
        if max_k < 0:
            raise ValueError(f"max_k must be >= 0, got {max_k}")
        if exploration < 0 or not 0 < discount <= 1:
            raise ValueError(f"need exploration >= 0 and 0 < discount <= 1, got {exploration} and {discount}")
        self.max_k, self.exploration, self.discount, self.contextual = max_k, exploration, discount, contextual

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        _target_drafter(self.name, info)
        self.arms = min(self.max_k, info.max_k) + 1
        buckets = max(info.max_batch_size, 1).bit_length() + 1 if self.contextual else 1
        self.plays = [[0.0] * self.arms for _ in range(buckets)]  # discounted pulls per (bucket, k)
        self.reward = [[0.0] * self.arms for _ in range(buckets)]  # discounted reward sums
        self.scale = 1e-9  # largest reward seen: UCB wants rewards in [0, 1]
        self._k = 0
        self._round: dict[int, tuple[int, int, float]] = {}  # rid -> (bucket, k, draft pass s)
        self._sys: SystemView | None = None

    def bucket(self, n: int) -> int:
        return min(n.bit_length() - 1, len(self.plays) - 1) if self.contextual else 0

    def choose(self, bucket: int) -> int:
        """The arm with the highest upper confidence bound (an unplayed arm first, smallest k first)."""
        plays, reward = self.plays[bucket], self.reward[bucket]
        total = sum(plays)

        def ucb(k: int) -> float:
            if plays[k] < 1e-9:
                return math.inf
            return reward[k] / plays[k] / self.scale + self.exploration * math.sqrt(math.log(max(total, 1.0)) / plays[k])

        return max(range(self.arms), key=lambda k: (ucb(k), -k))

    def prepare(self, point: DecisionPoint) -> None:
        if point.kind != "plan" or not point.plan:
            return
        sys = self._sys = point.system
        n = batch_size(point)
        b = self.bucket(n)
        self._k = self.choose(b)
        ctx = sum(r.context_tokens for r in point.plan) // len(point.plan)
        step = sys.estimate_draft_time(sys.info.target_site, n, 1, n * ctx)  # one lock-step draft pass
        for r in point.plan:
            if r.phase != "prefill":  # a prefill's round is the prompt's, whatever the draft length
                self._round[r.rid] = (b, self._k, step)

    def on_batch_done(self, result: BatchResult) -> None:
        """Reward each arm in the batch with the committed tokens per second of target GPU time
        the batch would have had if every round in it had drafted the arm's ``k``: the measured
        verification time rescaled by the latency model to that many tokens, plus ``k`` draft
        passes (a batch mixes arms, so its raw time would charge every arm for the longest)."""
        played: dict[tuple[int, int], list[float]] = {}  # (bucket, k) -> [tokens, requests, draft pass s]
        drafted = 0  # draft tokens of the rounds we chose k for
        for rid, k, accepted in zip(result.rids, result.ks, result.accepted):
            got = self._round.pop(rid, None)
            if got is not None:
                acc = played.setdefault(got[:2], [0.0, 0.0, got[2]])
                acc[0] += accepted + 1
                acc[1] += 1
                drafted += k
        if not played or self._sys is None:
            return
        sys, n = self._sys, len(result.rids)
        ours = sum(c for _, c, _ in played.values())
        measured = sys.estimate_verify_time(n, result.new_tokens, result.context_tokens)
        for (b, k), (tokens, count, step) in played.items():
            as_if = sys.estimate_verify_time(n, result.new_tokens + int(ours) * k - drafted, result.context_tokens)
            verify = result.duration * as_if / measured if measured > 0 else result.duration
            rate = n * tokens / count / max(verify + k * step, 1e-9)
            self.scale = max(self.scale, rate)
            plays, reward = self.plays[b], self.reward[b]
            for j in range(self.arms):
                plays[j] *= self.discount
                reward[j] *= self.discount
            plays[k] += 1.0
            reward[k] += rate

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return max(min(self._k, req.tokens_left - 1), 0)
