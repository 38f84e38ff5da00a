"""Estimators and building blocks shared by the heuristic controllers.

* :class:`AcceptanceTable` learns per-position acceptance online from verification feedback
  (real acceptance is "heavy-head", not geometric), scaled per request by its own history.
  :mod:`controllers.acceptance` has the alternatives a heuristic's ``acceptance`` names.
* :class:`VerifyTimeEstimator` calibrates the runtime's verification latency model against the
  batch times actually observed (WISP's verification-time estimator).
* :func:`best_draft_length` picks the draft length with the most expected tokens per second of
  round time (the goodput-driven rule of SmartSpec/TurboSpec, per site).
* :func:`delivery_time` predicts when a draft from a site would reach the target.
* :func:`slo_batch` is the SLO-aware verification batch scheduler (earliest deadline first,
  keep the estimated batch time within the tightest positive slack).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from runtime.contract import BatchResult, RequestView, RuntimeInfo, SystemView, batch_tokens

#: Sort rank of requests that can no longer meet their SLO (they get leftover capacity).
HOPELESS = 1
#: Margin (s) for the target's drafting between two verification forwards, when deciding
#: whether a prefill can still wait for the next batch.
LAST_CALL_S = 0.05


def expected_tokens(probs: Sequence[float], k: int) -> float:
    """Expected committed tokens of a round drafting ``k`` with conditional acceptance ``probs``.

    ``probs[j]`` is P(token j+1 accepted | tokens 1..j accepted); the bonus token always counts.
    With constant alpha this is (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al. 2023).
    """
    total, run, last = 1.0, 1.0, len(probs) - 1
    for j in range(k):
        run *= probs[j if j < last else last]
        total += run
    return total


def best_draft_length(probs: Sequence[float], round_s: Sequence[float], min_marginal: float = 0.0) -> int:
    """The ``k`` with the most expected committed tokens per second of round time.

    ``round_s[k]`` is the predicted time of a round drafting ``k`` tokens (``round_s[0]``: a
    plain decode step); ``len(round_s) - 1`` is the largest k considered. Tokens whose marginal
    acceptance probability is below ``min_marginal`` are never drafted (WISP's cut-off for
    wasted drafting).
    """
    best_k, best_rate = 0, 1.0 / max(round_s[0], 1e-9)
    run, tokens = 1.0, 1.0
    for k in range(1, len(round_s)):
        run *= probs[min(k - 1, len(probs) - 1)]
        if run < min_marginal:
            break
        tokens += run
        rate = tokens / max(round_s[k], 1e-9)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


class AcceptanceTable:
    """Per-request, per-position acceptance: the request's own rate times a learned position shape.

    Real acceptance is "heavy-head" (early draft tokens are accepted more often), so a single
    rate misjudges long drafts. The table learns, for each draft position j, how often token j
    is accepted (given tokens 1..j-1 were) *relative to* the drafting request's own acceptance
    estimate at the time; dividing by the request's rate keeps long-drafting good requests from
    inflating the later positions. Call :meth:`note` when a request plans a round and
    :meth:`update` with every verification result.
    """

    def __init__(self, info: RuntimeInfo, k_max: int, prior_weight: float = 20.0) -> None:
        self.prior = sum(info.prior_alpha.values()) / len(info.prior_alpha) if info.prior_alpha else 0.7
        self.hits = [prior_weight] * k_max  # accepted tokens at position j
        self.expected = [prior_weight] * k_max  # sum of the requests' own rates over the same trials
        self.shape = [1.0] * k_max
        self._rate: dict[int, float] = {}
        # rate -> its table, until the shape next moves: requests with the same verified history
        # share one (planners ask for it per request, site and round)
        self._by_rate: dict[float, list[float]] = {}
        # a subclass with tables of its own (the true or a learned acceptance) is asked for them
        self._tables_are_shape = type(self).for_request is AcceptanceTable.for_request

    def rate(self, req: RequestView) -> float:
        return req.alpha_estimate(self.prior)

    def note(self, req: RequestView) -> None:
        self._rate[req.rid] = self.rate(req)

    def update(self, result: BatchResult) -> None:
        hits, expected = self.hits, self.expected
        n = len(hits)
        for rid, k, a in zip(result.rids, result.ks, result.accepted):
            rate = self._rate.pop(rid, None)
            if k <= 0 or rate is None:
                continue
            for j in range(min(a + 1, k, n)):  # positions reached: the accepted ones + the first rejected
                expected[j] += rate
            for j in range(min(a, n)):
                hits[j] += 1
        self.shape = [h / e for h, e in zip(hits, expected)]
        self._by_rate.clear()

    @property
    def probs(self) -> list[float]:
        """The table for a request with the prior acceptance rate."""
        return [min(self.prior * s, 0.99) for s in self.shape]

    def for_request(self, req: RequestView) -> list[float]:
        """The request's per-position table (shared and cached: do not modify it)."""
        rate = self.rate(req)
        got = self._by_rate.get(rate)
        if got is None:
            got = self._by_rate[rate] = [min(rate * s, 0.99) for s in self.shape]
        return got

    def expected_tokens(self, req: RequestView, k: int) -> float:
        """``expected_tokens(self.for_request(req), k)``, with the same float operations, without
        building the table: batch schedulers ask for every ready request after every
        verification, and each verification moves the shape, so a cached table rarely helps."""
        if not self._tables_are_shape:
            return expected_tokens(self.for_request(req), k)
        rate = self.rate(req)
        shape = self.shape
        total, run, last = 1.0, 1.0, len(shape) - 1
        for j in range(k):
            p = rate * shape[j if j < last else last]
            run *= p if p < 0.99 else 0.99
            total += run
        return total


class VerifyTimeEstimator:
    """The runtime's verification latency model, corrected by an EWMA of observed/predicted.

    Each verification forward reports its real duration; the ratio to what the model predicted
    (under the load at the time) absorbs what the model misses (kernel overheads, a measured
    profile's bias). ``predict`` is what batch schedulers call.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        self.ratio = 1.0
        self.smoothing = smoothing
        self.sys: SystemView | None = None

    def observe(self, result: BatchResult) -> None:
        if self.sys is None or result.duration <= 0:
            return
        predicted = self.sys.estimate_verify_time(len(result.rids), result.new_tokens, result.context_tokens)
        if predicted > 0:
            self.ratio += self.smoothing * (result.duration / predicted - self.ratio)

    def predict(self, sys: SystemView, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        self.sys = sys
        return sys.estimate_verify_time(n_seqs, new_tokens, context_tokens) * self.ratio


def delivery_time(sys: SystemView, site: str, k: int, context_tokens: int, backlog: int | None = None) -> float:
    """Predicted seconds from now until a ``k``-token draft from ``site`` reaches the target.

    Remote and edge sites: the commit's trip there, the batched draft job in progress (if the
    site is busy), its own batched job under the site's background load, and the trip back.
    ``backlog`` (drafts the caller already sent there) refines the site's reported queue, which
    only counts tasks that have arrived. The target site: its own drafting, after the
    verifier's current forward.
    """
    info = sys.info
    state = sys.site_state(site)
    queue = state.queue if backlog is None else max(state.queue, backlog)
    draft = sys.estimate_draft_time(site, queue + 1, k, context_tokens * (queue + 1))
    if site == info.target_site:
        wait = sys.verify_time_ewma * 0.5 if sys.verifier_busy else 0.0
        return wait + draft
    busy = state.busy or queue > 0
    return state.rtt_s + (draft if busy else 0.0) + draft


def urgency(req: RequestView, now: float, expected_commit: float = 1.0, token_s: float = 0.0) -> tuple[int, float]:
    """Sort key for earliest-deadline-first: hopeless requests last, then by pace deadline.

    A request that can no longer meet its SLO only gets leftover capacity (EDF alone collapses
    under overload: it keeps serving the latest requests first). That is one past its TTFT
    deadline before its first token, or one whose remaining tokens cannot finish in time even
    at ``token_s`` seconds per token (pass an optimistic bound). Otherwise the deadline is when
    the tokens this round will commit (``expected_commit``) are due at the SLO's pace.
    """
    if req.phase == "prefill":
        d = req.deadline()
        return (HOPELESS if d < now else 0, d)
    if token_s > 0:
        final = req.first_token_time + req.tpot_slo * (req.max_tokens - 1)
        if now + req.tokens_left * token_s > final:
            return (HOPELESS, final)
    return (0, req.deadline() + req.tpot_slo * (expected_commit - 1))


def slo_batch(
    ready: Sequence[RequestView],
    sys: SystemView,
    predict: Callable[[int, int, int], float],
    commit_of: Callable[[RequestView], float] | None = None,
    min_slack_s: float = 0.0,
    token_s: float = 0.0,
    prefill_first: bool = False,
) -> list[int]:
    """WISP's SLO-aware verification batch: EDF order, filled while it stays within slack.

    Requests join in deadline order; one joins only if the estimated batch time stays within
    the tightest positive slack of the batch so far (late requests cannot be saved by a small
    batch, so they do not shrink it) and within the runtime's batch limits. The most urgent
    request always goes, and so does a prefill that would miss its TTFT after one more batch;
    requests skipped now lead the next batch. ``token_s`` (an optimistic seconds-per-token
    bound) enables triage of requests that can no longer finish in time. ``prefill_first``
    puts every live prefill ahead of decoding requests (as vLLM does by default).
    """
    info = sys.info
    now = sys.now
    keyed = sorted(
        ((urgency(r, now, commit_of(r) if commit_of else 1.0, token_s), r) for r in ready),
        key=lambda x: (x[0][0], prefill_first and x[1].phase != "prefill", x[0][1]),
    )
    out: list[int] = []
    n = new = ctx = 0
    tightest = math.inf
    for (hopeless, deadline), r in keyed:
        t = batch_tokens(r)
        c = r.context_tokens if r.phase != "prefill" else 0
        if out and (n + 1 > info.max_batch_size or new + t > info.max_batch_tokens):
            if n + 1 > info.max_batch_size:
                break
            continue
        slack = deadline - now if not hopeless else math.inf
        bound = min(tightest, slack) if slack > 0 else tightest
        if out:
            took = predict(n + 1, new + t, ctx + c)
            # a prefill that cannot wait for another batch goes now (a missed TTFT is final)
            last_call = r.phase == "prefill" and not hopeless and slack < 2 * took + LAST_CALL_S
            if took > max(bound, min_slack_s) and not last_call:
                continue
        out.append(r.rid)
        n, new, ctx = n + 1, new + t, ctx + c
        tightest = bound
    return out


def static_batch(ready: Sequence[RequestView], sys: SystemView, size: int, max_wait_s: float) -> list[int]:
    """Static batching (SLED): wait for ``size`` ready drafts or until the oldest waited ``max_wait_s``."""
    info = sys.info
    if len(ready) < min(size, info.max_batch_size):
        oldest = min(r.ready_since for r in ready)
        if sys.now - oldest < max_wait_s:
            return []
    out: list[int] = []
    tokens = 0
    for r in sorted(ready, key=lambda r: r.ready_since):
        t = batch_tokens(r)
        if out and (len(out) >= min(size, info.max_batch_size) or tokens + t > info.max_batch_tokens):
            break
        out.append(r.rid)
        tokens += t
    return out


def offload_sites(info: RuntimeInfo) -> list[str]:
    """Drafter sites other than the target (remote data centers and edge devices)."""
    return [s.name for s in info.drafter_sites if s.role != "target"]
