"""A clairvoyant oracle (simulator only): an upper reference for every other controller.

It reads the future through the simulator's hooks (``info.clairvoyant``):

* **draft length** - it knows each round's acceptance run length ``L``, so it drafts exactly
  ``k = min(L, max_k, tokens_left - 1)``: every draft token is accepted and none is wasted
  (``L = 0`` means a plain decode step, which needs no drafter at all).
* **drafter site** - a request with its own edge device drafts there (dedicated, queue-free,
  costs the busy target nothing) if the device keeps the request's SLO pace: decided once, at
  its first round, from that round's exact draft length (a request that moved between its
  device and the shared sites round by round would pay a context transfer at every move). A
  device too slow for the pace, like a laptop under a 40-ms TPOT, would have every round late
  and the admission rule below turning arrivals away for it. Otherwise the round drafts
  wherever its draft arrives first, from the exact delay of the next message on each link
  (ties go remote); drafts on the target GPU share one lock-step batch, capped at the length
  that maximizes the batch's tokens per second.
* **verification batch** - earliest deadline first with the exact verification time and the
  exact tokens each draft will commit, within the tightest slack; requests that can no longer
  meet their SLO get only leftover capacity.
* **admission** - it sees every in-flight request and turns arrivals away while too many are
  behind their SLO pace (under overload, serving fewer requests well is worth more goodput).

The oracle is checked against every heuristic over a grid of scenarios, loads and seeds
(``tests/test_controllers.py``). On a real backend ``info.clairvoyant`` is ``None`` and
:meth:`bind` refuses to run.

Its knowledge can be switched off, to tell how much of its lead over a heuristic is knowing the
future and how much is control (``python -m training.oracle_gap``). ``know_runs=false`` drafts
the length with the most *expected* committed tokens per second instead, from the per-request,
per-position acceptance estimate the heuristics use (:class:`AcceptanceTable`), and verifies by
expected commits. ``know_delays=false`` predicts a link's next delay as half its measured RTT
plus the message's serialization time, not the next draw of its jitter and spikes. With both
off, what remains is control a deployment could run: site by predicted arrival, one lock-step
draft cap for the target's batch, EDF batches with triage, and admission by the in-flight
requests' pace (which reads every in-flight request: a runtime has them, the contract's
``SystemView`` does not pass them yet).
"""

from __future__ import annotations

from typing import Sequence

from runtime.contract import BatchResult, Controller, DecisionPoint, RequestView, RuntimeInfo, SystemView

from controllers.estimators import AcceptanceTable, best_draft_length, expected_tokens, slo_batch


class Oracle(Controller):
    """Knows every round's acceptance run length and every link's next delay (simulator only).

    ``offload_slack`` (0..1) also offloads to a shared remote site while the request keeps that
    share of its SLO slack (0: only when the remote draft arrives first). ``max_behind`` is the
    share of decoding requests allowed to be more than ``behind_tokens`` tokens behind their SLO
    pace before arrivals are turned away (1 disables admission control). ``triage`` scales the
    optimistic per-token time used to spot requests that can no longer meet their SLO.
    ``behind_share`` adds that share of a request's tokens so far to the allowed lag.
    ``slo_batching=false`` verifies first come first served instead of by deadline, and
    ``prefill_first`` puts every live prefill ahead of decoding requests (ablations).
    ``know_runs=false`` and ``know_delays=false`` take its knowledge of the future away (the
    module docstring says what replaces it).
    """

    name = "oracle"
    owns = frozenset({"admission", "drafter_site", "draft_length", "batch"})

    def __init__(
        self,
        offload_slack: float = 0.0,
        triage: float = 1.0,
        max_behind: float = 0.2,
        behind_tokens: float = 2.0,
        behind_share: float = 0.25,
        slo_batching: bool = True,
        prefill_first: bool = False,
        know_runs: bool = True,
        know_delays: bool = True,
        max_k: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= offload_slack <= 1:
            raise ValueError(f"offload_slack must be in [0, 1], got {offload_slack}")
        self.offload_slack = offload_slack
        self.triage = triage
        self.max_behind = max_behind
        self.behind_tokens = behind_tokens
        self.behind_share = behind_share
        self.slo_batching = slo_batching
        self.prefill_first = prefill_first
        if max_k is not None and max_k < 0:
            raise ValueError(f"max_k must be >= 0, got {max_k}")
        self.know_runs = know_runs
        self.know_delays = know_delays
        self.max_k = max_k
        self._site: dict[int, str] = {}
        self._cap = 0
        self._verify_s: list[float] = [0.0]
        self._wait_s = 0.0

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        sim = info.clairvoyant
        if sim is None or not hasattr(sim, "peek_run_length") or not hasattr(sim, "peek_link_delay"):
            raise ValueError(
                "the oracle needs the simulator's clairvoyant hooks (info.clairvoyant), which a real backend "
                "does not have; run it with `python -m runtime simulate` or training.evaluate"
            )
        self.sim = sim
        self._models = {s.name: s.drafter for s in info.sites}
        self._offload = {s.name for s in info.drafter_sites if s.role != "target"}
        self._target_drafts = self._models[info.target_site] is not None
        net = getattr(getattr(sim, "scenario", None), "spec", None)
        self._bytes_per_token = net.network.bytes_per_token if net is not None else 4
        self._header = net.network.header_bytes if net is not None else 64
        self.acceptance = AcceptanceTable(info, max(info.max_k, 1))
        self._max_k = info.max_k if self.max_k is None else min(self.max_k, info.max_k)
        self._own_device: dict[int, bool] = {}  # edge request -> its device keeps its SLO pace

    def on_batch_done(self, result: BatchResult) -> None:
        if not self.know_runs:
            self.acceptance.update(result)

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        """Admission control: turn a request away while the admitted ones are falling behind.

        Goodput counts only requests that meet their SLO, so under overload serving fewer
        requests well beats serving all of them late. The oracle sees every in-flight request;
        it admits while at most ``max_behind`` of the decoding ones are behind their SLO pace
        by more than ``behind_tokens`` tokens.
        """
        if self.max_behind >= 1:
            return True
        behind, decoding = self._behind(sys.now)
        return behind <= self.max_behind * max(decoding, 20)  # the floor ignores noise at light load

    def _behind(self, now: float) -> tuple[int, int]:
        """(decoding requests behind their SLO pace, decoding requests).

        Behind means later than ``behind_tokens`` plus ``behind_share`` of its tokens so far:
        speculative rounds commit in bursts, so being a round behind is normal, while a
        request whose average time per token drifts past the SLO is in trouble.
        """
        slack, share = self.behind_tokens, self.behind_share
        decoding = behind = 0
        for r in self.sim.requests.values():
            if r.phase == "decode":
                decoding += 1
                if r.deadline() + (slack + share * r.generated) * r.tpot_slo < now:
                    behind += 1
        return behind, decoding

    def _k(self, req: RequestView, site: str, sys: SystemView) -> int:
        """This round's draft length at ``site``: the exact run length, or (``know_runs=false``)
        the length with the most expected tokens per second of predicted round time."""
        cap = min(self._max_k, req.tokens_left - 1)
        if cap <= 0 or self._models.get(site) is None:
            return 0
        if self.know_runs:
            return min(self.sim.peek_run_length(req, site), cap)
        if site == sys.info.target_site:
            return cap  # the target's lock-step draft cap (prepare) bounds it
        # WISP's round model: a draft waits for the forward in progress and the full batches ahead
        verify, wait = self._verify_s, self._wait_s
        rounds = [wait + verify[0]] + [max(self._delivery(req, sys, site, k), wait) + verify[k] for k in range(1, cap + 1)]
        return best_draft_length(self.acceptance.for_request(req), rounds)

    def _delivery(self, req: RequestView, sys: SystemView, site: str, k: int) -> float:
        """Seconds until ``site``'s k-token draft reaches the target, with the exact outbound delay."""
        state = sys.site_state(site)
        draft = sys.estimate_draft_time(site, max(state.queue, 1), k, req.context_tokens)
        if site == sys.info.target_site:
            return draft
        synced: dict[str, int] = getattr(req, "synced", {})
        catchup = max(req.context_tokens - synced.get(site, 0), 1)
        ship = catchup if site != req.origin or site in synced else 1  # what the simulator sends
        nbytes = self._header + ship * self._bytes_per_token
        if self.know_delays:
            out = self.sim.peek_link_delay(site, nbytes)
        else:  # the measured RTT's half and the serialization time: no look at the next draw
            link = self.sim.sites[site].link
            out = state.rtt_s / 2 + (nbytes / link.bytes_per_s if link is not None else 0.0)
        queued = draft if state.busy else 0.0
        return out + queued + draft + state.rtt_s / 2

    def prepare(self, point: DecisionPoint) -> None:
        """Choose every planned request's site, then one draft cap for the target GPU's batch.

        Drafts on the target GPU run in lock-step (the batch waits for its longest draft while
        the verifier idles), so the oracle picks the cap K that maximizes the batch's committed
        tokens per second of draft-plus-verify time, knowing every run length exactly.
        """
        if point.kind != "plan" or not point.plan:
            return
        sys = point.system
        target = sys.info.target_site
        n = max(sys.last_batch_size, len(point.plan))
        ctx = sum(r.context_tokens for r in point.plan) // len(point.plan) * n
        if not self.know_runs:
            for r in point.plan:
                self.acceptance.note(r)
            self._verify_s = [sys.estimate_verify_time(n, n * (k + 1), ctx) for k in range(self.info.max_k + 1)]  # type: ignore[union-attr]
            self._wait_s = self._verify_s[0] * (0.5 + sys.verify_queue // max(sys.info.max_batch_size, 1))
        self._site = {r.rid: self._choose_site(r, sys) for r in point.plan}
        mine = [r for r in point.plan if self._site[r.rid] == target]
        runs = [self._k(r, target, sys) for r in mine]
        self._cap = self._max_k
        if not runs or max(runs) == 0:
            return
        step = sys.estimate_draft_time(target, len(runs), 1, ctx)
        others = n - len(runs)
        # committed tokens if the cap is c: exactly min(L, c) + 1, or their expectation
        probs = None if self.know_runs else [self.acceptance.for_request(r) for r in mine]

        def rate(cap: int) -> float:
            drafted = sum(min(L, cap) for L in runs)
            if probs is None:
                committed = drafted + n
            else:
                committed = sum(expected_tokens(p, min(L, cap)) for p, L in zip(probs, runs)) + others
            seconds = cap * step + sys.estimate_verify_time(n, others + len(runs) + drafted, ctx)
            return committed / seconds

        self._cap = max(range(max(runs) + 1), key=rate)

    def _choose_site(self, req: RequestView, sys: SystemView) -> str:
        info = sys.info
        target = info.target_site
        device = req.origin if req.origin in self._offload else None
        if device is not None and self._keeps_pace(req, sys, device):
            return device  # the user's own device: dedicated, queue-free, costs no one anything
        options = [s for s in info.allowed_sites(req) if s in self._offload and s != device]
        if not options:
            return target
        k = max(self._k(req, options[0], sys), 1)
        best = min(options, key=lambda s: self._delivery(req, sys, s, k))
        if not self._target_drafts:
            return best
        # a shared remote site: draft wherever the draft arrives first (ties go remote); with
        # offload_slack > 0, also offload while the request keeps that share of its SLO slack
        remote = self._delivery(req, sys, best, k)
        if self.offload_slack > 0:
            due = req.deadline() + req.tpot_slo * k - sys.now
            if remote + sys.verify_time_ewma <= due * self.offload_slack:
                return best
        return best if remote <= self._delivery(req, sys, target, k) else target

    def _keeps_pace(self, req: RequestView, sys: SystemView, device: str) -> bool:
        """Whether ``req``'s own device drafts fast enough for its SLO pace: its first round,
        drafted there and verified alone, takes no longer than the SLO allows for the tokens it
        commits. Decided once per request, so it never moves between its device and the shared
        sites."""
        keeps = self._own_device.get(req.rid)
        if keeps is None:
            k = max(self._k(req, device, sys), 1)
            # the verification alone, not the target's current batch: overload there slows every
            # site's rounds, and is no reason to leave the device
            verify = sys.estimate_verify_time(1, k + 1, req.context_tokens)
            round_s = self._delivery(req, sys, device, k) + verify
            keeps = self._own_device[req.rid] = round_s <= (k + 1) * req.tpot_slo
        return keeps

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        site = self._site.get(req.rid)
        return site if site is not None else self._choose_site(req, sys)

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        k = self._k(req, site, sys)
        return min(k, self._cap) if site == sys.info.target_site else k

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        if not self.slo_batching:
            return super().select_batch(ready, sys)
        def commit(r: RequestView) -> float:
            if not self.know_runs:
                return self.acceptance.expected_tokens(r, r.ready_k)
            return float(min(r.ready_k + 1, r.tokens_left))  # every drafted token is accepted

        fastest_token_s = sys.verify_time_ewma / (sys.info.max_k + 1) * self.triage
        return slo_batch(
            ready, sys, sys.estimate_verify_time, commit, token_s=fastest_token_s, prefill_first=self.prefill_first
        )
