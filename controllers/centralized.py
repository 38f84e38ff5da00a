"""Centralized serving: the server drafts and verifies, with goodput-driven draft lengths.

The baseline WISP compares against ("centralized serving") and what a modern single-site
engine does (SmartSpec/TurboSpec in vLLM): every request drafts on the target GPU; each round
one draft length for the whole batch maximizes the batch's expected committed tokens per second
of round time, where the round counts the lock-step draft passes and the verification forward
at the current batch size (so k shrinks as the server fills up). Verification batches are
first come, first served.
"""

from __future__ import annotations

from runtime.contract import BatchResult, Controller, DecisionPoint, RequestView, RuntimeInfo, SystemView

from controllers.acceptance import acceptance_estimator, check_acceptance
from controllers.estimators import AcceptanceTable


class Centralized(Controller):
    """Target-site drafting with the draft length that maximizes goodput (SmartSpec-style).

    ``max_k`` caps the draft length (default: the runtime's limit); ``k`` fixes it instead
    (plain centralized speculative decoding). ``acceptance`` names the acceptance estimator
    (:mod:`controllers.acceptance`: ``table``, ``peek`` or a learned model's file).
    """

    name = "centralized"
    owns = frozenset({"drafter_site", "draft_length"})

    def __init__(self, max_k: int | None = None, k: int | None = None, acceptance: str = "table") -> None:
        super().__init__()
        if max_k is not None and max_k < 0:
            raise ValueError(f"max_k must be >= 0, got {max_k}")
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.max_k = max_k
        self.k = k
        check_acceptance(acceptance)
        self.acceptance_kind = acceptance
        self.acceptance: AcceptanceTable | None = None
        self._batch_k = 0

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        target = info.site(info.target_site)
        if target.drafter is None:
            raise ValueError(
                f"centralized serving drafts on the target site, "
                f"but {target.name!r} in {info.scenario} hosts no drafter; "
                f"use a remote controller (wanspec, sled, wisp)"
            )
        self.k_max = min(self.max_k if self.max_k is not None else info.max_k, info.max_k)
        self.acceptance = acceptance_estimator(info, self.acceptance_kind)

    def on_batch_done(self, result: BatchResult) -> None:
        self.acceptance.update(result)  # type: ignore[union-attr]

    def prepare(self, point: DecisionPoint) -> None:
        if point.kind != "plan" or not point.plan or self.k is not None:
            return
        sys = point.system
        table = self.acceptance
        for r in point.plan:
            table.note(r)  # type: ignore[union-attr]
        n = max(sys.last_batch_size, len(point.plan), 1)
        ctx = sum(r.context_tokens for r in point.plan) // len(point.plan)
        # one k for the whole batch (as SmartSpec does): the batch drafts in lock-step on the
        # target GPU, so everyone waits for the longest draft and for the whole verification
        step = sys.estimate_draft_time(sys.info.target_site, n, 1, n * ctx)
        round_s = [sys.estimate_verify_time(n, n * (k + 1), n * ctx) + k * step for k in range(self.k_max + 1)]
        gain = [0.0] * (self.k_max + 1)
        for r in point.plan:
            probs = table.for_request(r)  # type: ignore[union-attr]
            cap = max(min(self.k_max, r.tokens_left - 1), 0)
            total, run = 1.0, 1.0
            for k in range(self.k_max + 1):
                if 0 < k <= cap:
                    run *= probs[k - 1]
                    total += run
                gain[k] += total
        self._batch_k = max(range(self.k_max + 1), key=lambda k: gain[k] / round_s[k])

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        cap = min(self.k_max, req.tokens_left - 1)
        if cap <= 0:
            return 0
        return min(self.k if self.k is not None else self._batch_k, cap)
