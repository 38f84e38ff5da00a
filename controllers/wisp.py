"""WISP-like distributed speculative serving (2026): dynamic drafting and SLO-aware batching.

Three components, after the paper:

* **speculation controller** - per request and round, the draft length with the most expected
  committed tokens per second of round time, from a per-position acceptance table learned
  online and scaled by the request's own history; drafting stops early where a token's chance
  of acceptance falls below ``min_accept`` (suppresses wasted drafting). The round time
  accounts for the link, the drafter's speed under its background load, the wait for a
  verification slot, and the larger verification forward that longer drafts cause.
* **verification-time estimator** - the runtime's latency model, recalibrated against the
  observed batch times (:class:`~controllers.estimators.VerifyTimeEstimator`).
* **verification batch scheduler** - earliest deadline first, admitting a draft only while the
  estimated batch time stays within the tightest slack (suppresses verification interference).

Drafts run on the request's edge device when it has one, otherwise at whichever remote site
gives the best rate, and on the target GPU only when there is nowhere else.
"""

from __future__ import annotations

from typing import Sequence

from runtime.contract import BatchResult, Controller, DecisionPoint, RequestView, RuntimeInfo, SystemView

from controllers.acceptance import acceptance_estimator, check_acceptance
from controllers.estimators import VerifyTimeEstimator, slo_batch


class Wisp(Controller):
    """Edge/remote drafting with dynamic draft lengths and an SLO-aware verification scheduler.

    ``acceptance`` names the acceptance estimator (:mod:`controllers.acceptance`: ``table``,
    the paper's; ``peek``, sim-only; or a learned model's file).
    """

    name = "wisp"
    owns = frozenset({"drafter_site", "draft_length", "batch"})

    def __init__(
        self, min_accept: float = 0.2, max_rtt_s: float = 0.1, slo_batching: bool = True, acceptance: str = "table"
    ) -> None:
        super().__init__()
        if not 0 <= min_accept < 1:
            raise ValueError(f"min_accept must be in [0, 1), got {min_accept}")
        if max_rtt_s <= 0:
            raise ValueError(f"max_rtt_s must be > 0, got {max_rtt_s}")
        self.min_accept = min_accept
        self.max_rtt_s = max_rtt_s
        self.slo_batching = slo_batching
        check_acceptance(acceptance)
        self.acceptance_kind = acceptance
        self.verify_time = VerifyTimeEstimator()
        self._verify_s: list[float] = [0.0]
        self._wait_s = 0.0
        self._choice: dict[int, tuple[str, int]] = {}
        self._sites: dict[str, tuple[float, float, float]] = {}
        self._rounds: dict[tuple[str, int], list[float]] = {}
        self._ctx = 0

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        if not info.drafter_sites:
            raise ValueError(f"wisp needs a drafter site and {info.scenario} has none; use no-spec")
        self.acceptance = acceptance_estimator(info, self.acceptance_kind)
        self.verify_time = VerifyTimeEstimator()
        self._drafters = {s.name for s in info.drafter_sites}
        self._offload = {s.name for s in info.drafter_sites if s.role != "target" and s.rtt_s <= self.max_rtt_s}
        self._options: dict[str, list[str]] = {}  # origin -> the sites its requests may offload to

    def on_batch_done(self, result: BatchResult) -> None:
        self.acceptance.update(result)
        self.verify_time.observe(result)

    def prepare(self, point: DecisionPoint) -> None:
        if point.kind != "plan" or not point.plan:
            return
        sys = point.system
        info = sys.info
        for r in point.plan:
            self.acceptance.note(r)
        n = max(sys.last_batch_size, len(point.plan), 1)
        self._ctx = ctx = sum(r.context_tokens for r in point.plan) // len(point.plan)
        self._verify_s = [self.verify_time.predict(sys, n, n * (k + 1), n * ctx) for k in range(info.max_k + 1)]
        # a ready draft waits for the forward in progress, plus one forward per full batch ahead of it
        self._wait_s = self._verify_s[0] * (0.5 + sys.verify_queue // max(info.max_batch_size, 1))
        self._sites.clear()
        self._rounds.clear()
        self._choice.clear()

    def _site(self, sys: SystemView, site: str) -> tuple[float, float, float]:
        """(draft step, link RTT, queueing ahead) of a site at this plan point (cached per point)."""
        got = self._sites.get(site)
        if got is None:
            state = sys.site_state(site)
            step = sys.estimate_draft_time(site, max(state.queue, 1), 1, self._ctx)
            got = self._sites[site] = (step, state.rtt_s, step * 4 if state.busy else 0.0)
        return got

    def round_times(self, sys: SystemView, site: str, cap: int) -> list[float]:
        """Predicted round time for each k in 0..cap if ``site`` drafts (index 0: plain decode)."""
        key = (site, cap)
        got = self._rounds.get(key)
        if got is not None:
            return got
        verify, wait = self._verify_s, self._wait_s
        step, rtt, queued = self._site(sys, site)
        if site == sys.info.target_site:  # drafting occupies the verifier itself
            got = [wait + k * step + verify[k] for k in range(cap + 1)]
        else:
            got = [wait + verify[0]] + [max(rtt + queued + k * step, wait) + verify[k] for k in range(1, cap + 1)]
        self._rounds[key] = got
        return got

    def _tokens(self, probs: list[float], cap: int) -> list[float]:
        """Expected committed tokens of a round drafting k = 0, 1, ... tokens, up to ``cap`` or the
        first token whose chance of acceptance is below ``min_accept``: the same for every site,
        so computed once per request and round (the float operations of
        :func:`~controllers.estimators.best_draft_length` and ``expected_tokens``)."""
        tokens, run, total, last = [1.0], 1.0, 1.0, len(probs) - 1
        for k in range(1, cap + 1):
            run *= probs[k - 1 if k - 1 < last else last]
            if run < self.min_accept:
                break
            total += run
            tokens.append(total)
        return tokens

    def _plan(self, sys: SystemView, site: str, cap: int, tokens: list[float]) -> tuple[int, float]:
        """(draft length, expected tokens per second) if ``site`` drafts this round: the k of
        :func:`~controllers.estimators.best_draft_length` over ``tokens`` (:meth:`_tokens`)."""
        rounds = self.round_times(sys, site, cap)
        best_k, best_rate = 0, tokens[0] / max(rounds[0], 1e-9)
        for k in range(1, len(tokens)):
            rate = tokens[k] / max(rounds[k], 1e-9)
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        info = sys.info
        if req.origin in self._offload:
            options = [req.origin]  # the user's own device: free compute, no one else's queue
        else:
            options = self._options.get(req.origin)
            if options is None:  # the allowed sites depend only on where the request comes from
                options = self._options[req.origin] = [s for s in info.allowed_sites(req) if s in self._offload]
            if not options:
                return info.target_site
        cap = min(info.max_k, req.tokens_left - 1)
        if cap <= 0:
            site = options[0]
            self._choice[req.rid] = (site, 0)
            return site
        tokens = self._tokens(self.acceptance.for_request(req), cap)
        site, best = options[0], self._plan(sys, options[0], cap, tokens)
        for s in options[1:]:
            plan = self._plan(sys, s, cap, tokens)
            if plan[1] > best[1]:  # the first of equals, as max() picks
                site, best = s, plan
        self._choice[req.rid] = (site, best[0])
        return site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        chosen = self._choice.get(req.rid)
        if chosen is not None and chosen[0] == site:
            return chosen[1]
        cap = min(sys.info.max_k, req.tokens_left - 1)
        if cap <= 0 or site not in self._drafters:
            return 0
        return self._plan(sys, site, cap, self._tokens(self.acceptance.for_request(req), cap))[0]

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        if not self.slo_batching:
            return super().select_batch(ready, sys)
        est = self.verify_time
        expected = self.acceptance.expected_tokens

        def commit(r: RequestView) -> float:
            return expected(r, r.ready_k)

        return slo_batch(
            ready, sys, lambda n, new, ctx: est.predict(sys, n, new, ctx), commit,
            token_s=sys.verify_time_ewma / (sys.info.max_k + 1),  # optimistic: a full draft accepted every round
        )
