"""WANSpec-like WAN drafting (2026): draft in an idle data center, back up locally when late.

The busy target data center offloads its drafter to the allowed non-target site whose draft
is predicted to arrive first (RTT, queue, background load and draft speed; sites farther than
``max_rtt_s`` are never used; a request stays at its site unless another is predicted
``switch_gain`` x faster, since moving costs a context transfer).

Where the runtime supports it (``RuntimeInfo.draft_ahead``; the simulator and the real runtime
do), the remote site *drafts ahead* (``ahead``): it keeps drafting past each round on the
assumption that its tokens are accepted and streams them, so after an all-accepted round the
next draft is already at the target. Redundancy is added only when needed: a round whose
stream has nothing at the target yet (the round after a rejection, while the correction
crosses the WAN) also drafts ``backup_k`` tokens on the target's own drafter at once, and the
first draft to arrive is verified. With the same drafter model at both sites the backup drafts
the very tokens the stream will, so the stream survives it. Rounds with tokens waiting verify up
to ``k`` of them with no target-site drafting at all.

Without draft-ahead (``ahead=false``, or a runtime without it) each round drafts ``k`` remotely
and the local backup starts only if the remote draft has not arrived ``hedge_margin`` x its
predicted delivery time after the round began; if even the best remote site is predicted
slower than local drafting by more than ``max_extra_s`` and the SLO pace is at risk, the round
drafts locally. WANSpec reportedly triggers redundancy on draft entropy; the simulator has no
token distributions, so redundancy is triggered by what has (not) arrived and by timing.
"""

from __future__ import annotations

from runtime.contract import (
    NO_REDUNDANCY,
    BatchResult,
    Controller,
    DecisionPoint,
    Redundancy,
    RequestView,
    RoundPlan,
    RuntimeInfo,
    SystemView,
)

from controllers.estimators import delivery_time, offload_sites


class WanSpec(Controller):
    """Remote drafting at the fastest idle site, with a hedged local backup."""

    name = "wanspec"
    owns = frozenset({"drafter_site", "draft_length", "redundancy"})

    def __init__(
        self,
        k: int = 4,
        max_rtt_s: float = 0.08,
        hedge_margin: float = 1.5,
        max_extra_s: float = 0.0,
        backup: bool = True,
        slack_share: float = 0.5,
        ahead: bool = True,
        backup_k: int = 1,
        switch_gain: float = 1.25,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_rtt_s <= 0 or hedge_margin < 1 or max_extra_s < 0:
            raise ValueError("need max_rtt_s > 0, hedge_margin >= 1 and max_extra_s >= 0")
        if backup_k < 1 or switch_gain < 1:
            raise ValueError(f"need backup_k >= 1 and switch_gain >= 1, got {backup_k} and {switch_gain}")
        self.k = k
        self.max_rtt_s = max_rtt_s
        self.hedge_margin = hedge_margin
        self.max_extra_s = max_extra_s
        self.backup = backup
        self.slack_share = slack_share
        self.ahead = ahead
        self.backup_k = backup_k
        self.switch_gain = switch_gain
        self._predicted: dict[int, float] = {}

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        near = [s for s in offload_sites(info) if info.site(s).rtt_s <= self.max_rtt_s]
        if not near:
            raise ValueError(
                f"wanspec drafts at remote or edge sites within max_rtt_s={self.max_rtt_s}, "
                f"and {info.scenario} has none; "
                f"use centralized there (or raise max_rtt_s)"
            )
        self._target_drafts = info.site(info.target_site).drafter is not None
        self._hedge = self.backup and self._target_drafts and info.max_redundancy >= 2
        self._stream = self.ahead and info.draft_ahead
        self._remote = {s.name for s in info.sites if s.name in near}
        self._prior = sum(info.prior_alpha.values()) / len(info.prior_alpha) if info.prior_alpha else 0.7
        self._backlog = {s: 0 for s in self._remote}  # our rounds drafting there, not yet verified
        self._round_site: dict[int, str] = {}
        self._options: dict[str, list[str]] = {}
        # the draft-ahead answers, built once (they are immutable): most rounds get one of them
        self._ahead = Redundancy(ahead=True)
        self._ahead_hedged = Redundancy(backups=(info.target_site,), hedge_after_s=0.0, ahead=True)
        self._kcap = min(self.k, info.max_k)
        self._plans: dict[tuple[int, str, int], RoundPlan] = {}

    def prepare(self, point: DecisionPoint) -> None:
        self._predicted.clear()

    def on_batch_done(self, result: BatchResult) -> None:
        for rid in result.rids:
            site = self._round_site.pop(rid, None)
            if site is not None:
                self._backlog[site] -= 1

    def _k(self, req: RequestView, sys: SystemView) -> int:
        return max(min(self.k, sys.info.max_k, req.tokens_left - 1), 0)

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return self._site(req, sys, max(self._k(req, sys), 1))

    def _site(self, req: RequestView, sys: SystemView, k: int) -> str:
        """:meth:`drafter_site` for a ``k``-token draft."""
        info = sys.info
        options = self._options.get(req.origin)
        if options is None:  # the allowed sites depend only on where the request comes from
            options = self._options[req.origin] = [s for s in info.allowed_sites(req) if s in self._remote]
        if not options:
            return info.target_site
        if self._stream and len(options) == 1:
            site = options[0]  # nothing to compare, and draft-ahead needs no predicted time
        else:
            site, predicted = self._fastest(req, sys, options, k)
        if self._target_drafts and not self._stream:  # draft-ahead hides the WAN instead
            local = delivery_time(sys, info.target_site, k, req.context_tokens)
            # when this round's tokens are due at the SLO pace (geometric acceptance estimate)
            alpha = req.alpha_estimate(self._prior)
            due = req.deadline() + req.tpot_slo * (alpha * (1 - alpha**k) / (1 - alpha)) - sys.now
            budget = due - sys.verify_time_ewma
            if predicted > budget * self.slack_share and predicted > local + self.max_extra_s:
                return info.target_site  # offloading would put the request behind its SLO pace
            # the local backup starts when the remote draft is overdue and the pace is at risk
            self._predicted[req.rid] = max(predicted * self.hedge_margin, budget - local)
        if req.rid not in self._round_site:
            self._backlog[site] += 1
            self._round_site[req.rid] = site
        return site

    def _fastest(self, req: RequestView, sys: SystemView, options: list[str], k: int) -> tuple[str, float]:
        """The option whose ``k``-token draft is predicted to arrive first (the first such, given
        our backlog), or the request's current site unless another is ``switch_gain`` x faster;
        and that site's predicted delivery time."""
        ctx = req.context_tokens
        current = req.drafter_site
        # delivery_time inlined for remote sites, with the same float operations (this runs for
        # every option of every round)
        backlog = self._backlog
        target = sys.info.target_site
        site_state = sys.site_state
        estimate = sys.estimate_draft_time
        site: str | None = None
        predicted = 0.0
        staying = None
        for s in options:
            if s == target:
                d = delivery_time(sys, s, k, ctx, backlog.get(s, 0))
            else:
                state = site_state(s)
                if site is not None and s != current and state.rtt_s >= predicted:
                    continue  # its delivery time is at least its RTT: it cannot be the first fastest
                queue = state.queue
                b = backlog.get(s, 0)
                if b > queue:
                    queue = b
                draft = estimate(s, queue + 1, k, ctx * (queue + 1))
                d = state.rtt_s + (draft if state.busy or queue > 0 else 0.0) + draft
            if site is None or d < predicted:
                site, predicted = s, d
            if s == current:
                staying = d
        assert site is not None  # options is not empty
        if staying is not None and current != site:
            if staying <= predicted * self.switch_gain:  # moving costs a context transfer
                return current, staying  # type: ignore[return-value]
        return site, predicted

    def plan_round(self, req: RequestView, sys: SystemView) -> RoundPlan:
        """With draft-ahead: :meth:`drafter_site`, :meth:`draft_length` and :meth:`redundancy` in
        one call (the same answers; one call per round is the simulator's hot path), and the
        plan reused, as plans are immutable."""
        if not self._stream:
            return super().plan_round(req, sys)
        left = req.tokens_left - 1
        k = self._kcap if left > self._kcap else left if left > 0 else 0  # _k
        site = self._site(req, sys, k if k > 1 else 1)
        which = 0  # NO_REDUNDANCY
        if site != sys.info.target_site:
            which = 1
            if self._hedge and req.ahead_tokens == 0:
                which = 2
                if k > self.backup_k:
                    k = self.backup_k  # nothing streamed yet: a short local backup round
        if k <= 0:
            which = 0
        self._predicted.pop(req.rid, None)  # (only filled without draft-ahead)
        key = (k, site, which)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = RoundPlan(k, site, (NO_REDUNDANCY, self._ahead, self._ahead_hedged)[which])
        return plan

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        k = self._k(req, sys)
        if self._stream and self._hedge and site != sys.info.target_site and req.ahead_tokens == 0:
            return min(k, self.backup_k)  # nothing streamed yet: a short local backup round
        return k

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        predicted = self._predicted.pop(req.rid, None)
        if site == sys.info.target_site:
            return NO_REDUNDANCY
        if self._stream:
            return self._ahead_hedged if self._hedge and req.ahead_tokens == 0 else self._ahead
        if not self._hedge or predicted is None:
            return NO_REDUNDANCY
        return Redundancy(backups=(sys.info.target_site,), hedge_after_s=predicted)
