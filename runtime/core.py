"""The protocol core both backends share: decision points, applying decisions, checking round
plans and verification batches, the allowed drafting sites, backup races and round deadlines,
switching and closing a request's draft-ahead stream, the target's per-epoch stream counts
(:class:`AheadLedger`) and the system view's request counters.

The simulator (``runtime/sim/``) and the real runtime (``runtime/real/``) are this core plus a
clock and a way to move work and messages. What is here knows nothing of a clock source, an
event heap, torch or gRPC: a backend passes its ``now`` in and implements the hooks
:meth:`DecisionLoop._admit`, :meth:`~DecisionLoop._reject`, :meth:`~DecisionLoop._start_round`,
:meth:`~DecisionLoop._start_verify`, :meth:`~DecisionLoop._launch`, :meth:`~DecisionLoop._call_at`
and the stream hooks :meth:`~DecisionLoop._open_stream` and :meth:`~DecisionLoop._close_stream`.
"""

from __future__ import annotations

from typing import Any, Callable

from runtime.contract import Decision, DecisionPoint, InvalidDecision, Redundancy, RoundPlan, batch_tokens
from runtime.scenario import LimitsSpec, Scenario


def drafting_sites(scenario: Scenario) -> dict[str, frozenset[str]]:
    """Per origin site, the sites that may draft for its requests: every non-edge drafter site,
    plus the origin itself when it is an edge device with a drafter."""
    return {
        o.name: frozenset(s.name for s in scenario.sites if s.drafter is not None and (s.role != "edge" or s.name == o.name))
        for o in scenario.sites
    }


def check_plan(rid: int, k: int, plan: RoundPlan, limits: LimitsSpec, allowed: frozenset[str]) -> None:
    """Raise :class:`InvalidDecision` for a ``k > 0`` round the limits or the request's sites forbid."""
    if k > limits.max_k:
        raise InvalidDecision(f"request {rid}: k={k} exceeds limits.max_k={limits.max_k}")
    site = plan.site
    if site not in allowed:
        raise InvalidDecision(f"request {rid}: site {site!r} cannot draft for it; allowed: {sorted(allowed)}")
    backups = plan.redundancy.backups
    if backups:
        if len(backups) + 1 > limits.max_redundancy:
            raise InvalidDecision(f"request {rid}: redundancy {len(backups) + 1} exceeds limits.max_redundancy={limits.max_redundancy}")
        for b in backups:
            if b not in allowed or b == site or backups.count(b) > 1:
                raise InvalidDecision(f"request {rid}: backup site {b!r} must be distinct from {site!r} and one of {sorted(allowed)}")


class DecisionLoop:
    """The decision-point half of :class:`runtime.contract.Runtime`, for a backend that keeps
    arrivals awaiting admission (``_admit_q``), requests starting a round (``_plan_q``),
    verification candidates (``ready``) and batch feedback (``_feedback``)."""

    _admit_q: list[Any]
    _plan_q: list[Any]
    _feedback: list[Any]
    _pending: DecisionPoint | None
    ready: dict[int, Any]  # verification candidates by request id
    requests: dict[int, Any]  # admitted or awaiting admission, unfinished
    _target_busy: bool  # the target's GPU runs a forward (verification or local drafting)

    # ---- the SystemView counters both backends answer alike
    @property
    def verify_queue(self) -> int:
        return len(self.ready)

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    @property
    def verifier_busy(self) -> bool:
        return self._target_busy

    def _plan_point(self, now: float) -> DecisionPoint:
        """The plan point for what waits (call when ``_admit_q`` or ``_plan_q`` is not empty)."""
        point = DecisionPoint("plan", now, self, admit=self._admit_q, plan=self._plan_q, feedback=self._feedback)  # type: ignore[arg-type]
        self._admit_q, self._plan_q, self._feedback = [], [], []
        self._pending = point
        return point

    def _batch_point(self, now: float) -> DecisionPoint:
        """The batch point over every ready request (call when ``ready`` is not empty)."""
        point = DecisionPoint("batch", now, self, ready=list(self.ready.values()), feedback=self._feedback)  # type: ignore[arg-type]
        self._feedback = []
        self._pending = point
        return point

    def apply(self, decision: Decision) -> None:
        point = self._pending
        if point is None:
            raise RuntimeError("apply() called without a pending decision point")
        self._pending = None
        if point.kind == "plan":
            if len(decision.admit) != len(point.admit) or len(decision.plans) != len(point.plan):
                raise InvalidDecision(
                    f"decision answers {len(decision.admit)} admissions and {len(decision.plans)} plans; "
                    f"the point asked {len(point.admit)} and {len(point.plan)}"
                )
            for req, ok in zip(point.admit, decision.admit):
                if ok:
                    self._admit(req)
                else:
                    self._reject(req)
            for req, plan in zip(point.plan, decision.plans):
                self._start_round(req, plan)
        else:
            self._start_verify(decision.batch)

    def _take_verify_batch(self, rids: list[int], limits: LimitsSpec) -> tuple[list[Any], int, int]:
        """Check a verification batch against the limits and take its requests out of ``ready``:
        ``(requests, new tokens, context tokens)``. A rejected batch leaves ``ready`` as it was."""
        if len(rids) > limits.max_batch_size:
            raise InvalidDecision(f"batch of {len(rids)} exceeds limits.max_batch_size={limits.max_batch_size}")
        batch: list[Any] = []
        new = ctx = 0
        ready = self.ready
        for rid in rids:
            req = ready.pop(rid, None)
            if req is None:
                twice = any(r.rid == rid for r in batch)
                for r in batch:  # put back what we took: the decision is rejected whole
                    ready[r.rid] = r
                if twice:
                    raise InvalidDecision(f"batch {rids} names request {rid} twice")
                raise InvalidDecision(f"request {rid} is not ready for verification (ready: {sorted(ready)[:10]}...)")
            batch.append(req)
            new += batch_tokens(req)
            if req.phase != "prefill":
                ctx += req.prompt_tokens + req.generated
        if new > limits.max_batch_tokens and len(batch) > 1:
            for r in batch:
                ready[r.rid] = r
            raise InvalidDecision(f"batch of {new} tokens exceeds limits.max_batch_tokens={limits.max_batch_tokens}")
        return batch, new, ctx

    def _start_races(self, req: Any, red: Redundancy, backups: tuple[str, ...], k: int, now: float) -> None:
        """A round's redundancy: its backup drafts (now, or ``hedge_after_s`` later if the round is
        still open; see ``_on_hedge``) and its deadline (``_on_timeout``)."""
        if backups:
            if red.hedge_after_s <= 0:
                for b in backups:
                    self._launch(req, b, k)
            else:
                self._call_at(now + red.hedge_after_s, self._on_hedge, (req, req.round_id, backups, k))
        if red.timeout_s is not None:
            self._call_at(now + red.timeout_s, self._on_timeout, (req, req.round_id))

    def _stream_to(self, req: Any, site: str) -> Any:
        """``req``'s draft-ahead stream from ``site``: one open to another site is closed first."""
        st = req.stream
        if st is None or st.site != site:
            if st is not None:
                self._close_stream(st)
            st = self._open_stream(req, site)
        return st

    def _draft_round(self, req: Any, site: str, k: int) -> None:
        """Draft this round of ``req`` at ``site`` round by round, closing any stream it had."""
        if req.stream is not None:
            self._close_stream(req.stream)
        self._launch(req, site, k)

    # ---- what a backend implements
    def _open_stream(self, req: Any, site: str) -> Any:
        """Open a draft-ahead stream of ``req`` at ``site`` (it becomes ``req.stream``)."""
        raise NotImplementedError

    def _close_stream(self, st: Any) -> None:
        """Stop a stream: its unverified tokens are waste, and the site hears it later."""
        raise NotImplementedError

    def _call_at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` at backend time ``t`` (an event, a timer)."""
        raise NotImplementedError

    def _launch(self, req: Any, site: str, k: int) -> None:
        """Start drafting ``k`` tokens of ``req``'s open round at ``site``."""
        raise NotImplementedError

    def _on_hedge(self, arg: tuple[Any, int, tuple[str, ...], int]) -> None:
        """A hedge delay ran out: launch the backups if that round is still open."""
        raise NotImplementedError

    def _on_timeout(self, arg: tuple[Any, int]) -> None:
        """A round's deadline: verify it without drafts if it is still open."""
        raise NotImplementedError

    def _admit(self, req: Any) -> None:
        """Admission said yes: the request waits for its prefill."""
        raise NotImplementedError

    def _reject(self, req: Any) -> None:
        """Admission said no: the request ends, counted as dropped."""
        raise NotImplementedError

    def _start_round(self, req: Any, plan: RoundPlan) -> None:
        raise NotImplementedError

    def _start_verify(self, rids: list[int]) -> None:
        raise NotImplementedError


class AheadLedger:
    """The target's counts for one draft-ahead stream, alike in every backend.

    Tokens are counted per *epoch*: a correction starts a new one, and tokens of an older epoch
    (drafted before the correction reached the site) are waste on arrival. ``consumed`` is how
    many of this epoch's tokens the target used (verified, or matched by committed tokens);
    what arrived beyond it is waste when the epoch or the stream ends.
    """

    __slots__ = ("epoch", "arrived", "consumed")

    def __init__(self) -> None:
        self.epoch = 0
        self.arrived = 0
        self.consumed = 0

    @property
    def ahead(self) -> int:
        """Tokens that arrived and are not consumed yet."""
        return max(self.arrived - self.consumed, 0)

    def arrive(self, epoch: int, n: int) -> bool:
        """``n`` tokens of ``epoch`` arrived: True if they count (current epoch), False if waste."""
        if epoch != self.epoch:
            return False
        self.arrived += n
        return True

    def restart(self) -> int:
        """A correction: start a new epoch; returns the tokens wasted (arrived, never consumed)."""
        wasted = self.ahead
        self.epoch += 1
        self.arrived = self.consumed = 0
        return wasted

    def close(self) -> int:
        """The stream ends; returns the tokens wasted."""
        wasted = self.ahead
        self.arrived = self.consumed
        return wasted
