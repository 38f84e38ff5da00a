"""The simulated backend: a discrete-event simulation of speculative decoding across sites.

One speculation round of one request (DESIGN section 2): the target commits tokens -> the
commit travels to the drafter site(s) -> queues for that site's GPU -> ``k`` batched draft
steps (the first step also feeds the tokens the drafter has not seen: a whole context when
the request moves to a new site) -> the draft travels back -> waits in the verification queue
-> one target forward over the batch -> accepted prefix + one bonus token committed.

The simulator implements :class:`runtime.contract.Runtime` (``next_decision``/``apply``) and
:class:`runtime.contract.SystemView` (it is the ``system`` of every point it emits). Drafting
at the target site shares the target GPU with verification, which is what makes offloading
pay. Events are ``(time, seq, handler, arg)`` tuples on a heap; per-event work is kept small
because the event loop is the hot path (see ``benchmarks/sim_throughput.py``).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from typing import Any, Callable, Iterator

from runtime.core import AheadLedger, DecisionLoop, check_plan, drafting_sites
from runtime.contract import (
    BatchResult,
    Controller,
    Decision,
    DecisionPoint,
    InvalidDecision,
    RequestMixin,
    RoundPlan,
    RuntimeInfo,
    SiteInfo,
    SiteState,
    drive,
    fcfs_batch,
)
from runtime.latency import LatencyModel, site_latency
from runtime.metrics import Metrics, RequestRecord
from runtime.network import Link
from runtime.scenario import Scenario, Site
from runtime.sim.acceptance import AcceptanceState
from runtime.load import LoadProcess
from runtime.workload import Arrival, arrivals


class SimRequest(RequestMixin):
    """A request inside the simulator; satisfies :class:`runtime.contract.RequestView`."""

    __slots__ = (
        "rid", "arrival", "origin", "slo_class", "ttft_slo", "tpot_slo", "prompt_tokens", "max_tokens",
        "generated", "phase", "first_token_time", "drafter_site", "rounds", "drafted", "accepted",
        "rejected_rounds", "last_k", "last_accepted", "ready_k", "ready_site", "ready_since", "spec_max_k",
        # internal
        "acc", "run_len", "round_id", "round_open", "round_start", "tasks", "synced", "deliver_s",
        "draft_ctx", "finish_time", "done", "stream", "want",
    )

    def __init__(self, rid: int, a: Arrival, deliver_s: float) -> None:
        self.rid = rid
        self.arrival = a.time
        self.origin = a.origin
        self.slo_class = a.slo_class
        self.ttft_slo = a.ttft_s
        self.tpot_slo = a.tpot_s
        self.prompt_tokens = a.prompt_tokens
        self.max_tokens = a.output_tokens
        self._start_progress()
        self.ready_since = 0.0
        self.spec_max_k: int | None = None
        self.acc: dict[str, AcceptanceState] = {}
        self.run_len: dict[str, int] = {}
        self.round_id = 0
        self.round_open = False
        self.round_start = 0.0
        self.tasks: list[DraftTask] = []
        self.synced: dict[str, int] = {}
        self.deliver_s = deliver_s
        self.draft_ctx = 0
        self.finish_time = -1.0
        self.done = False
        self.stream: DraftStream | None = None
        self.want = 0  # draft tokens the open round waits for from its stream

    @property
    def ahead_tokens(self) -> int:
        st = self.stream
        if st is None:
            return 0
        n = st.arrived - st.consumed
        return n if n > 0 else 0

    def __repr__(self) -> str:
        return f"SimRequest(rid={self.rid}, gen={self.generated}/{self.max_tokens}, phase={self.phase})"


class DraftTask:
    """One site's share of one round: draft ``k`` tokens for ``req`` after feeding ``catchup``."""

    __slots__ = ("req", "site", "k", "catchup", "round_id", "cancel_at")

    def __init__(self, req: SimRequest, site: str, k: int, catchup: int, round_id: int) -> None:
        self.req = req
        self.site = site
        self.k = k
        self.catchup = catchup
        self.round_id = round_id
        self.cancel_at = math.inf


class DraftStream(AheadLedger):
    """A remote site drafting ahead for one request (``Redundancy(ahead=True)``).

    The site keeps drafting while it is fewer than ``limits.max_k`` tokens ahead of what it
    knows the target consumed, and ships each token as it is drafted. The target's counts per
    epoch are the :class:`runtime.core.AheadLedger` every backend keeps (``epoch``, ``arrived``,
    ``consumed``); ``s_*`` fields are the site's view, updated only when the target's messages
    arrive there.
    """

    __slots__ = ("req", "site", "home", "closed", "s_epoch", "s_drafted", "s_known", "s_catchup", "at_site")

    def __init__(self, req: SimRequest, site: "SimSite") -> None:
        super().__init__()
        self.req = req
        self.site = site.name
        self.home = site  # the site's state and link, without a lookup by name on the hot path
        self.closed = False
        self.s_epoch = 0
        self.s_drafted = 0
        self.s_known = 0
        self.s_catchup = 0
        self.at_site = False

    def hear(self, epoch: int, consumed: int) -> None:
        """The site receives an acknowledgement, or a correction (a new epoch: redraft from the
        target's token)."""
        if epoch != self.s_epoch:
            self.s_epoch = epoch
            self.s_drafted = 0
            self.s_catchup = 1
        if consumed > self.s_known:
            self.s_known = consumed


class SimSite:
    """A site's GPUs, draft queue, draft-ahead streams, background load and link to the target."""

    __slots__ = ("spec", "name", "role", "drafter", "draft_lat", "load", "link", "queue", "free", "rtt_ewma",
                 "streams", "streaming", "pending")

    def __init__(self, spec: Site, scenario: Scenario, load: LoadProcess, link: Link | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.role = spec.role
        self.drafter = spec.drafter
        self.draft_lat: LatencyModel | None = None
        if spec.drafter is not None:
            self.draft_lat = site_latency(spec.profiles, spec.drafter, scenario.model_specs[spec.drafter], spec.gpu, tp=1)
        self.load = load
        self.link = link
        self.queue: list[DraftTask] = []
        self.free = spec.gpus if spec.role != "target" else 1
        self.rtt_ewma = spec.rtt_ms / 1000.0
        self.streams: list[DraftStream] = []
        self.streaming = False  # a draft-ahead pass is running on one of the GPUs
        # Messages from the target (acks, corrections) that reach the site while a pass runs:
        # (time, seq, stream, epoch, consumed), unsorted, applied when the pass ends (see
        # Simulator._message_stream) instead of one event each.
        self.pending: list[tuple[float, int, DraftStream, int, int]] = []


class Simulator(DecisionLoop):
    """Simulated runtime for one scenario, seed and arrival window.

    ``duration`` is the arrival window in simulated seconds; afterwards the simulator drains
    in-flight requests (at most ``limits.drain_s``; the rest count as dropped). ``rate``
    overrides the workload's arrival rate.
    """

    def __init__(
        self,
        scenario: Scenario,
        seed: int = 0,
        duration: float = 60.0,
        trace: str | None = None,
        rate: float | None = None,
        progress: bool = False,
        verify_latency: LatencyModel | None = None,
        draft_latency: dict[str, LatencyModel] | None = None,
    ) -> None:
        """``verify_latency`` (the target model's) and ``draft_latency`` (each drafting site's,
        by name) replace the scenario's forward-time models: a twin's, measured on the system
        it mirrors (:mod:`controllers.twin`)."""
        if duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        self.scenario = scenario
        self.seed = seed
        self.duration = duration
        lim = scenario.spec.limits
        self.limits = lim
        self.net = scenario.spec.network
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self.events_processed = 0
        self.metrics = Metrics(window_s=duration)

        self.sites: dict[str, SimSite] = {}
        for i, s in enumerate(scenario.sites):
            rng = random.Random(seed * 7919 + 104729 * (i + 1))
            link = Link(s, self.net, random.Random(seed * 6007 + 15485863 * (i + 1))) if s.role != "target" else None
            self.sites[s.name] = SimSite(s, scenario, LoadProcess(s.load, rng), link)
        self.target = self.sites[scenario.target.name]
        self.target_lat = verify_latency if verify_latency is not None else site_latency(
            scenario.target.profiles, scenario.spec.target_model, scenario.target_model, scenario.target.gpu, tp=scenario.target.tp)
        for name, lat in (draft_latency or {}).items():
            if name not in self.sites or self.sites[name].drafter is None:
                raise ValueError(f"draft_latency: {name!r} is not a drafting site of {scenario.name}")
            self.sites[name].draft_lat = lat
        self._drafter_index = {name: j for j, name in enumerate(sorted(scenario.spec.drafters))}
        # acceptance positions counted across rounds: each verified round moves them on
        self._carry = any(getattr(d.acceptance, "across_rounds", False) for d in scenario.spec.drafters.values())
        self._drafter_of = {name: s.drafter for name, s in self.sites.items()}

        self.info = RuntimeInfo(
            scenario=scenario.name,
            target_site=self.target.name,
            sites=tuple(
                SiteInfo(s.name, s.role, s.index, s.drafter, s.rtt_ms / 1000.0, s.gpus) for s in scenario.sites
            ),
            max_k=lim.max_k,
            max_batch_size=lim.max_batch_size,
            max_batch_tokens=lim.max_batch_tokens,
            max_redundancy=lim.max_redundancy,
            prior_alpha={n: _prior_alpha(d.acceptance) for n, d in scenario.spec.drafters.items()},
            clairvoyant=self,
            draft_ahead=True,
        )
        self._allowed = drafting_sites(scenario)
        self._checked: set[tuple[str, tuple[str, ...], str]] = set()  # (site, backups, origin) check_plan passed
        net = self.net
        self._header_bytes = net.header_bytes
        self._draft_token_bytes = net.bytes_per_token + (4 if net.send_draft_probs else 0)
        self._ack_bytes = net.header_bytes
        self._correction_bytes = net.header_bytes + net.bytes_per_token

        # request state
        self.requests: dict[int, SimRequest] = {}  # admitted or awaiting admission, unfinished
        self._admit_q: list[SimRequest] = []
        self._plan_q: list[SimRequest] = []
        self.ready: dict[int, SimRequest] = {}  # verification candidates by rid
        self._local_q: list[DraftTask] = []  # draft tasks for the target GPU
        self._target_busy = False
        self._hold_until = -1.0
        self._feedback: list[BatchResult] = []
        self._pending: DecisionPoint | None = None
        # Nothing moves while a point is pending (until apply()): controllers ask every site's
        # state and load once per point, not once per request and site (the hot path).
        self._states: dict[str, SiteState] = {}
        self._slows: dict[str, float] = {}
        self._draft_est: dict[str, tuple[Callable[[int, int, int], float], float]] = {}
        self._next_rid = 0
        self._arrivals_done = False
        self._to_arrive = 0  # created but not yet at the target
        self.verify_time_ewma = 0.0
        self.last_batch_size = 0
        self._finished = False

        # materialised (a list iterator) so a simulator can be deep-copied mid-run (rollouts)
        self._workload = (trace, rate)
        self._arrivals: Iterator[Arrival] = iter(list(arrivals(scenario, seed, duration, trace=trace, rate=rate)))
        self._schedule_next_arrival()
        self._drain_end = duration + lim.drain_s
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=round(duration), unit="sim-s", desc=f"simulate {scenario.name}", leave=False, disable=None)
            self._bar_t = 0

    def resample_future(self, seed: int, keep_acceptance: bool = True) -> None:
        """Redraw everything not yet decided from ``seed``: arrivals after now, background-load
        hops, link jitter, and every request's acceptance draws (rounds already drawn stay).

        For a deep copy made mid-run: rollouts compare candidates on one shared future (common
        random numbers), and confirm the winner on futures drawn here, so a label is not just the
        luckiest of many candidates on one draw of the workload. ``keep_acceptance=False`` also
        forgets each request's own acceptance rate (hidden from a controller, which sees only
        outcomes) and redraws it from the scenario's distribution: a model that knows no more
        than a deployment could."""
        self.seed = seed
        for i, site in enumerate(self.sites.values()):
            site.load.reseed(random.Random(seed * 7919 + 104729 * (i + 1)), self.now)
            if site.link is not None:
                site.link.rng = random.Random(seed * 6007 + 15485863 * (i + 1))
        for req in self.requests.values():
            if not keep_acceptance:
                req.acc.clear()  # recreated on first use from the new seed (_acceptance)
            for model, st in req.acc.items():
                st.rng = random.Random((seed * 1_000_003 + req.rid) * 64 + self._drafter_index[model])
        if self._arrivals_done:
            return
        self._heap = [e for e in self._heap if getattr(e[2], "__func__", None) is not Simulator._on_arrival]
        heapq.heapify(self._heap)
        trace, rate = self._workload
        future = [a for a in arrivals(self.scenario, seed, self.duration, trace=trace, rate=rate) if a.time > self.now]
        self._arrivals = iter(future)
        self._schedule_next_arrival()

    # ------------------------------------------------------------------ SystemView
    def site_state(self, name: str) -> SiteState:
        state = self._states.get(name) if self._pending is not None else None
        if state is None:
            s = self.sites[name]
            queue = len(s.queue) if s is not self.target else len(self._local_q)
            state = SiteState(name, s.load.level(self.now), queue, s.free == 0 if s is not self.target else self._target_busy, s.rtt_ewma)
            if self._pending is not None:
                self._states[name] = state
        return state

    def _slowdown(self, site: SimSite) -> float:
        slow = self._slows.get(site.name) if self._pending is not None else None
        if slow is None:
            slow = site.load.slowdown(self.now)
            if self._pending is not None:
                self._slows[site.name] = slow
        return slow

    def estimate_verify_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        return self.target_lat.forward_time(n_seqs, new_tokens, context_tokens) * self._slowdown(self.target)

    def estimate_draft_time(self, site: str, n_seqs: int, k: int, context_tokens: int) -> float:
        est = self._draft_est.get(site) if self._pending is not None else None
        if est is None:  # (the site's draft step, its slowdown now), once per point per site
            s = self.sites[site]
            lat = s.draft_lat
            if lat is None:
                return 0.0
            est = (lat.forward_time, self._slowdown(s))
            if self._pending is not None:
                self._draft_est[site] = est
        if k <= 0:
            return 0.0
        step, slow = est
        return step(n_seqs, n_seqs, context_tokens) * k * slow

    # ---------------------------------------------------------- clairvoyant hooks (oracle)
    def peek_run_length(self, req: SimRequest, site: str) -> int:
        """This round's acceptance run length if ``site`` drafts it (sim-only, for the oracle)."""
        model = self.sites[site].drafter
        if model is None:
            return 0
        return self._run_length(req, model)

    def peek_acceptance(self, req: SimRequest, site: str) -> list[float]:
        """The request's true acceptance per draft position for its next round at ``site``: its
        current rate, not the round's draw (sim-only; the most any estimator could know)."""
        model = self.sites[site].drafter
        if model is None:
            return []
        req = self.requests.get(req.rid, req)
        st = req.acc.get(model) or self._acceptance(req, model)
        return st.expected_probs(model in req.run_len)

    def peek_link_delay(self, site: str, nbytes: int = 0) -> float:
        """The exact one-way delay of the next message between ``site`` and the target."""
        link = self.sites[site].link
        return 0.0 if link is None else link.peek_delay(nbytes)

    # ------------------------------------------------------------------ Runtime protocol
    def next_decision(self) -> DecisionPoint | None:
        if self._pending is not None:
            raise RuntimeError("apply() the decision for the previous point before asking for the next")
        heap = self._heap
        pop = heapq.heappop
        # these containers are only replaced by _plan_point and _batch_point, as this returns
        admit_q, plan_q, local_q, ready = self._admit_q, self._plan_q, self._local_q, self.ready
        drain_end = self._drain_end
        bar = self._bar
        while True:
            if admit_q or plan_q:
                return self._plan_point(self.now)
            if not self._target_busy:
                if local_q:
                    self._start_local_drafts()
                    continue
                if ready and self.now >= self._hold_until:
                    return self._batch_point(self.now)
            if not heap or (self._arrivals_done and not self.requests and not self._to_arrive):
                self._finish()
                return None
            t, _, fn, arg = pop(heap)
            if t < self.now:
                raise RuntimeError(f"simulated time went backwards: {t} < {self.now}")
            if t > drain_end:
                self._finish()
                return None
            self.now = t
            self.events_processed += 1
            fn(arg)
            if bar is not None and t - self._bar_t >= 1.0:
                step = min(int(t), self._bar.total) - self._bar_t
                if step > 0:
                    bar.update(step)
                    self._bar_t += step

    def apply(self, decision: Decision) -> None:
        self._states.clear()
        self._slows.clear()
        self._draft_est.clear()
        super().apply(decision)

    def run(self, controller: Controller) -> dict[str, float | int]:
        """Drive the whole run with ``controller``; returns the metrics summary."""
        drive(self, controller)
        return self.summary()

    def summary(self) -> dict[str, float | int]:
        return self.metrics.summary()

    # ------------------------------------------------------------------ events
    def _push(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, arg))

    _call_at = _push

    def _schedule_next_arrival(self) -> None:
        a = next(self._arrivals, None)
        if a is None:
            self._arrivals_done = True
        else:
            self._push(a.time, self._on_arrival, a)

    def _on_arrival(self, a: Arrival) -> None:
        self.metrics.arrived += 1
        origin = self.sites[a.origin]
        req = SimRequest(self._next_rid, a, origin.link.base_s if origin.link else 0.0)
        self._next_rid += 1
        self._schedule_next_arrival()
        if origin.link is not None:  # the prompt travels from the edge to the target
            nbytes = self.net.header_bytes + a.prompt_tokens * self.net.bytes_per_token
            self._to_arrive += 1
            self._push(self.now + origin.link.send(nbytes), self._on_request_at_target, req)
        else:
            self._on_request_at_target(req, counted=False)

    def _on_request_at_target(self, req: SimRequest, counted: bool = True) -> None:
        if counted:
            self._to_arrive -= 1
        if len(self.requests) >= self.limits.max_inflight:
            self.metrics.dropped += 1
            return
        self.requests[req.rid] = req
        self._admit_q.append(req)

    def _admit(self, req: SimRequest) -> None:
        req.ready_k = 0
        req.ready_site = None
        req.ready_since = self.now
        self.ready[req.rid] = req
        self._hold_until = -1.0

    def _reject(self, req: SimRequest) -> None:
        self.requests.pop(req.rid, None)
        self.metrics.dropped += 1

    # ---- speculation rounds
    def _start_round(self, req: SimRequest, plan: RoundPlan) -> None:
        k = plan.k if req.spec_max_k is None else min(plan.k, req.spec_max_k)  # the request's own cap
        req.round_id += 1
        req.round_start = self.now
        req.tasks = []
        # run_len is cleared after each verification, not here: a value peeked at this plan
        # point (peek_run_length) must be the one the round's verification uses.
        if k <= 0:
            self._make_ready(req, 0, None)
            return
        site = plan.site
        red = plan.redundancy
        allowed = self._allowed[req.origin]
        backups = red.backups
        if k > self.limits.max_k or site not in allowed or backups and (site, backups, req.origin) not in self._checked:
            check_plan(req.rid, k, plan, self.limits, allowed)  # the hot path skips the call
            if backups:
                self._checked.add((site, backups, req.origin))  # valid for every k <= max_k
        req.round_open = True
        req.drafter_site = site
        req.draft_ctx = req.prompt_tokens + req.generated
        st = req.stream
        if red.ahead and not self.info.draft_ahead:
            raise InvalidDecision(f"request {req.rid}: draft-ahead is switched off here (RuntimeInfo.draft_ahead is False)")
        if red.ahead and self.sites[site].link is not None:
            st = self._stream_to(req, site)
            req.want = k
            avail = st.arrived - st.consumed
            if avail > 0:  # verify what is here; more may join until the batch starts
                req.round_open = False  # _resolve, without tasks to cancel
                self._make_ready(req, k if k < avail else avail, site)
                return
        else:
            self._draft_round(req, site, k)
        if backups or red.timeout_s is not None:
            self._start_races(req, red, backups, k, self.now)

    def _catchup(self, req: SimRequest, site_name: str) -> tuple[int, int]:
        """Tokens ``site_name``'s drafter must feed before drafting, and the bytes to send it:
        the commit notification plus any context the site lacks (an edge has its own prompt)."""
        catchup = max(req.draft_ctx - req.synced.get(site_name, 0), 1)
        ship = catchup if site_name != req.origin or site_name in req.synced else 1
        return catchup, self.net.header_bytes + ship * self.net.bytes_per_token

    def _launch(self, req: SimRequest, site_name: str, k: int) -> None:
        if site_name == self.target.name:  # _catchup's token count; nothing travels
            catchup = req.draft_ctx - req.synced.get(site_name, 0)
            task = DraftTask(req, site_name, k, catchup if catchup > 1 else 1, req.round_id)
            req.tasks.append(task)
            self._local_q.append(task)
            return
        site = self.sites[site_name]
        catchup, nbytes = self._catchup(req, site_name)
        task = DraftTask(req, site_name, k, catchup, req.round_id)
        req.tasks.append(task)
        self._push(self.now + site.link.send(nbytes), self._on_task_at_site, task)  # type: ignore[union-attr]

    def _on_hedge(self, arg: tuple[SimRequest, int, tuple[str, ...], int]) -> None:
        req, rid, backups, k = arg
        if req.round_id == rid and req.round_open:
            for b in backups:
                self._launch(req, b, k)

    def _on_timeout(self, arg: tuple[SimRequest, int]) -> None:
        req, rid = arg
        if req.round_id == rid and req.round_open:
            self._resolve(req, None, 0)

    def _on_task_at_site(self, task: DraftTask) -> None:
        site = self.sites[task.site]
        site.queue.append(task)
        self._kick(site)

    def _kick(self, site: SimSite) -> None:
        """Give free GPUs work: queued draft rounds first, then one draft-ahead pass."""
        while site.free > 0 and site.queue:
            if not self._start_site_job(site):
                break
        if site.free > 0 and not site.streaming and site.streams:
            self._start_stream_pass(site)

    # ---- draft-ahead streams
    def _open_stream(self, req: SimRequest, site_name: str) -> DraftStream:
        st = req.stream = DraftStream(req, self.sites[site_name])
        st.s_catchup, nbytes = self._catchup(req, site_name)
        self._seq += 1
        t = self.now + st.home.link.send(nbytes)  # type: ignore[union-attr]
        heapq.heappush(self._heap, (t, self._seq, self._on_stream_open, (st, t, self._seq)))
        return st

    def _on_stream_open(self, arg: tuple[DraftStream, float, int]) -> None:
        st, t, seq = arg
        if st.closed:
            return
        site = st.home
        if site.pending:
            self._apply_messages(site, t, seq)
        st.at_site = True
        site.streams.append(st)
        self._kick(site)

    def _close_stream(self, st: DraftStream) -> None:
        """Stop a stream (the request finished or drafts elsewhere now); the site hears it later."""
        st.closed = True
        st.req.stream = None
        self.metrics.wasted_rejected += st.close()
        self._seq += 1
        t = self.now + st.home.link.send(self.net.header_bytes)  # type: ignore[union-attr]
        heapq.heappush(self._heap, (t, self._seq, self._on_stream_closed, (st, t, self._seq)))

    def _on_stream_closed(self, arg: tuple[DraftStream, float, int]) -> None:
        st, t, seq = arg
        if st.home.pending:
            self._apply_messages(st.home, t, seq)
        if st.at_site:
            st.at_site = False
            st.home.streams.remove(st)

    def _message_stream(self, st: DraftStream, valid: bool) -> None:
        """After a verification: an acknowledgement, or a correction that starts a new epoch.

        A message that reaches the site while a stream pass runs there only updates the site's
        view of the stream (the busy GPU cannot start another pass), so it waits in
        ``site.pending`` and is applied, in arrival order, before anything at the site reads
        that view: at the end of the pass, or at a stream opening or closing there. If the site
        goes idle first, the waiting messages become ordinary events, with the time and
        sequence number they would have had, so event order and results are unchanged.
        """
        if not valid:
            self.metrics.wasted_rejected += st.restart()
        site = st.home
        t = self.now + site.link.send(self._ack_bytes if valid else self._correction_bytes)  # type: ignore[union-attr]
        self._seq += 1
        msg = (t, self._seq, st, st.epoch, st.consumed)
        if site.streaming:
            site.pending.append(msg)
        else:
            heapq.heappush(self._heap, (t, self._seq, self._on_stream_message, msg))

    def _on_stream_message(self, msg: tuple[float, int, DraftStream, int, int]) -> None:
        t, seq, st, epoch, consumed = msg
        site = st.home
        if site.pending:
            self._apply_messages(site, t, seq)
        if not st.at_site:
            return
        st.hear(epoch, consumed)
        if site.free > 0:  # _kick's test, inlined: most acks reach a site that is busy drafting
            self._kick(site)

    def _apply_messages(self, site: SimSite, t: float, seq: int) -> None:
        """Apply the messages that reached ``site`` before the event ``(t, seq)``, in order:
        what :meth:`_on_stream_message` does, less the kick (the site was streaming)."""
        pending = site.pending
        pending.sort()  # nearly sorted already: sent in time order, with a little jitter
        n = bisect.bisect_left(pending, (t, seq))  # keys are unique: (time, sequence number)
        if not n:
            return
        arrived = pending[:n]
        del pending[:n]
        self.events_processed += n
        for _, _, st, epoch, consumed in arrived:
            if st.at_site:
                st.hear(epoch, consumed)

    def _start_stream_pass(self, site: SimSite) -> None:
        """One batched draft step over every stream at ``site`` that is not ``max_k`` ahead."""
        cap = self.limits.max_k
        run = [st for st in site.streams if st.s_drafted - st.s_known < cap]
        if not run:
            return
        if len(run) > self.limits.max_batch_size:  # the streams furthest behind go first
            run = sorted(run, key=_lead)[: self.limits.max_batch_size]
        n = len(run)
        new = ctx = 0
        for st in run:
            c = st.s_catchup
            if c:
                new += c
                st.s_catchup = 0
            else:
                new += 1
            req = st.req
            ctx += req.prompt_tokens + req.generated
        now = self.now
        dur = site.draft_lat.forward_time(n, new, ctx) * site.load.slowdown(now)  # type: ignore[union-attr]
        site.free -= 1
        site.streaming = True
        m = self.metrics
        m.remote_draft_passes += 1
        m.draft_tokens += n
        self._seq += 1
        t = now + dur
        heapq.heappush(self._heap, (t, self._seq, self._on_stream_pass_done, (site, run, t, self._seq)))

    def _on_stream_pass_done(self, arg: tuple[SimSite, list[DraftStream], float, int]) -> None:
        site, run, t, seq = arg
        if site.pending:
            self._apply_messages(site, t, seq)
        site.free += 1
        site.streaming = False
        for st in run:
            st.s_drafted += 1
        epochs = [st.s_epoch for st in run]
        nbytes = self._header_bytes + len(run) * self._draft_token_bytes
        link = site.link
        d = link.send(nbytes)  # type: ignore[union-attr]
        site.rtt_ewma += 0.1 * (2 * (d - nbytes / link.bytes_per_s) - site.rtt_ewma)  # type: ignore[union-attr]
        self._seq += 1
        heapq.heappush(self._heap, (self.now + d, self._seq, self._on_stream_tokens, (run, epochs)))
        if site.queue:
            self._kick(site)
        elif site.streams:  # _kick without queued rounds: the next pass (a GPU was just freed)
            self._start_stream_pass(site)
        if site.pending and not site.streaming:  # idle now: what is still on its way arrives as events
            heap = self._heap
            on_message = self._on_stream_message
            for msg in site.pending:
                heapq.heappush(heap, (msg[0], msg[1], on_message, msg))
            site.pending.clear()

    def _on_stream_tokens(self, sent: tuple[list[DraftStream], list[int]]) -> None:
        """One token per stream of a pass (drafted in the site's epoch ``epochs[i]``) arrives."""
        run, epochs = sent
        wasted = 0
        ready = self.ready
        for st, epoch in zip(run, epochs):
            if st.closed or epoch != st.epoch:
                wasted += 1  # drafted past a rejection the site had not heard of yet
                continue
            st.arrived += 1
            req = st.req
            if req.stream is not st:
                continue
            avail = st.arrived - st.consumed
            if avail > req.want:
                avail = req.want
            if req.round_open:
                if avail > 0:
                    self._resolve(req, st.site, avail)
            elif req.ready_k < avail and req.ready_site == st.site and req.rid in ready:
                req.ready_k = avail  # the round is still waiting for the verifier: verify more
        if wasted:
            self.metrics.wasted_rejected += wasted

    def _take_batch(self, queue: list[DraftTask]) -> list[DraftTask]:
        now = self.now
        live = [t for t in queue if t.cancel_at > now and t.req.round_id == t.round_id]
        cap = self.limits.max_batch_size
        batch, rest = live[:cap], live[cap:]
        queue[:] = rest
        return batch

    def _draft_job(self, site: SimSite, batch: list[DraftTask]) -> tuple[float, list[tuple[float, list[DraftTask]]], int]:
        """Duration of a batched draft job, when each k-group is done, and its forward passes."""
        lat = site.draft_lat
        slow = site.load.slowdown(self.now)
        by_k: dict[int, list[DraftTask]] = {}
        ctx = 0
        new = 0
        for t in batch:
            by_k.setdefault(t.k, []).append(t)
            ctx += t.req.draft_ctx
            new += t.catchup
        n = len(batch)
        elapsed = 0.0
        groups: list[tuple[float, list[DraftTask]]] = []
        step = 0
        for k in sorted(by_k):
            while step < k:
                step += 1
                elapsed += lat.forward_time(n, new, ctx) * slow  # type: ignore[union-attr]
                ctx += n
                new = n
            groups.append((elapsed, by_k[k]))
            n -= len(by_k[k])
            ctx -= sum(t.req.draft_ctx + k for t in by_k[k])
        drafted = sum(t.k for t in batch)
        self.metrics.draft_tokens += drafted
        return elapsed, groups, step

    def _start_site_job(self, site: SimSite) -> bool:
        batch = self._take_batch(site.queue)
        if not batch:
            return False
        site.free -= 1
        dur, groups, passes = self._draft_job(site, batch)
        self.metrics.remote_draft_passes += passes
        link = site.link
        per_tok = self.net.bytes_per_token + (4 if self.net.send_draft_probs else 0)
        for offset, tasks in groups:
            nbytes = self.net.header_bytes + sum(t.k for t in tasks) * per_tok
            d = link.send(nbytes)  # type: ignore[union-attr]
            site.rtt_ewma += 0.1 * (2 * (d - nbytes / link.bytes_per_s) - site.rtt_ewma)  # type: ignore[union-attr]
            self._push(self.now + offset + d, self._on_drafts_at_target, tasks)
        self._push(self.now + dur, self._on_site_job_done, site)
        return True

    def _on_site_job_done(self, site: SimSite) -> None:
        site.free += 1
        self._kick(site)

    def _start_local_drafts(self) -> None:
        batch = self._take_batch(self._local_q)
        if not batch:
            return
        dur, _, passes = self._draft_job(self.target, batch)
        self.metrics.target_draft_passes += passes
        self.metrics.target_draft_gpu_s += dur
        self._target_busy = True
        self._push(self.now + dur, self._on_local_drafts_done, batch)

    def _on_local_drafts_done(self, batch: list[DraftTask]) -> None:
        self._target_busy = False
        self._on_drafts_at_target(batch)

    def _on_drafts_at_target(self, tasks: list[DraftTask]) -> None:
        m = self.metrics
        for t in tasks:
            req = t.req
            if req.round_id != t.round_id or not req.round_open:
                m.wasted_redundant += t.k  # lost the race, or arrived after the timeout
                continue
            self._resolve(req, t.site, t.k)

    def _resolve(self, req: SimRequest, site: str | None, k: int) -> None:
        """The round's first draft arrived (or the timeout fired): cancel the others."""
        req.round_open = False
        now = self.now
        for t in req.tasks:
            if t.site != site:  # a cancellation message travels to each losing site
                link = self.sites[t.site].link
                t.cancel_at = now + (link.send(self.net.header_bytes) if link is not None else 0.0)
        self._make_ready(req, k, site)

    def _make_ready(self, req: SimRequest, k: int, site: str | None) -> None:
        req.ready_k = k
        req.ready_site = site
        req.ready_since = self.now
        self.ready[req.rid] = req
        self._hold_until = -1.0

    # ---- verification
    def _start_verify(self, rids: list[int]) -> None:
        if not rids and not self._heap:
            # waiting cannot help when nothing else is in flight: verify first come, first served
            rids = fcfs_batch(list(self.ready.values()), self.info)
        if not rids:  # the controller chose to wait
            self._hold_until = self.now + self.limits.batch_wait_s
            self._push(self._hold_until, _noop, None)
            return
        batch, new, ctx = self._take_verify_batch(rids, self.limits)
        dur = self.target_lat.forward_time(len(batch), new, ctx) * self.target.load.slowdown(self.now)
        self._target_busy = True
        m = self.metrics
        m.target_verify_passes += 1
        m.target_verify_gpu_s += dur
        m.batch_sizes_sum += len(batch)
        self._push(self.now + dur, self._on_verify_done, (batch, dur, new, ctx))

    def _on_verify_done(self, arg: tuple[list[SimRequest], float, int, int]) -> None:
        batch, dur, new, ctx = arg
        self._target_busy = False
        self.verify_time_ewma = dur if self.verify_time_ewma == 0 else 0.8 * self.verify_time_ewma + 0.2 * dur
        self.last_batch_size = len(batch)
        now = self.now
        m = self.metrics
        drafter_of = self._drafter_of
        max_k = self.limits.max_k
        plan_q = self._plan_q
        ks = [r.ready_k for r in batch]
        sites = [r.ready_site for r in batch]
        accs: list[int] = []
        # the metrics' integer counters, summed here and added once (the hot path)
        committed = spec_rounds = drafted = accepted = rejected = rejections = streamed = in_spec = 0
        for req in batch:
            k = req.ready_k
            site = req.ready_site
            if req.phase == "prefill":
                req.phase = "decode"
                req.generated = 1
                req.first_token_time = now + req.deliver_s
                committed += 1
                accs.append(0)
            else:
                a = 0
                st = req.stream
                if k > 0:
                    model = drafter_of[site]  # type: ignore[index]
                    L = req.run_len.get(model)  # type: ignore[arg-type]
                    if L is None:  # not peeked: draw it (run_len is cleared below)
                        acc = req.acc.get(model)  # type: ignore[arg-type]
                        L = (acc or self._acceptance(req, model)).run_length()  # type: ignore[arg-type]
                    a = k if L >= k else L
                    if self._carry:
                        req.acc[model].after_round(k, L)  # type: ignore[index]
                    if st is not None and st.site == site:
                        streamed += 1  # at the stream's site, rounds are drafted by the stream
                    if st is not None and (st.site == site or model == st.home.drafter):
                        # the stream stays valid if the bonus token equals the site's next draft
                        # token, i.e. that token would have been accepted (run lengths are capped
                        # at max_k, which then counts as "at least"). A backup running the same
                        # drafter model drafted the very tokens the stream holds.
                        valid = L > k or L >= max_k
                        st.consumed += k + 1 if valid else k
                        self._message_stream(st, valid)
                        st = None
                    req.rounds += 1
                    req.drafted += k
                    req.accepted += a
                    if a < k:
                        req.rejected_rounds += 1
                        rejections += 1
                        req.synced[site] = req.draft_ctx + a  # type: ignore[index]
                    else:
                        req.synced[site] = req.draft_ctx + k - 1  # type: ignore[index]
                    spec_rounds += 1
                    drafted += k
                    accepted += a
                    rejected += k - a
                commit = a + 1
                left = req.max_tokens - req.generated
                if commit > left:
                    commit = left
                if k > 0:
                    in_spec += commit
                req.generated += commit
                committed += commit
                req.last_k = k
                req.last_accepted = a
                accs.append(a)
                if k == 0 and self._carry:  # a plain decode step: nothing drafted, a new run
                    for acc in req.acc.values():
                        acc.run = 0
                if st is not None:  # the round was drafted elsewhere or decoded plainly
                    self._message_stream(st, False)
            if req.run_len:
                req.run_len.clear()
            if req.generated >= req.max_tokens:
                self._complete(req)
            else:
                plan_q.append(req)
        m.tokens_committed += committed
        m.spec_rounds += spec_rounds
        m.drafted_verified += drafted
        m.accepted += accepted
        m.rejections += rejections
        m.stream_rounds += streamed
        m.wasted_rejected += rejected
        m.committed_in_spec_rounds += in_spec
        self._feedback.append(BatchResult(now, dur, [r.rid for r in batch], ks, accs, new, ctx, sites))

    def _run_length(self, req: SimRequest, model: str) -> int:
        L = req.run_len.get(model)
        if L is None:
            st = req.acc.get(model)
            if st is None:
                st = self._acceptance(req, model)
            L = req.run_len[model] = st.run_length()
        return L

    def _acceptance(self, req: SimRequest, model: str) -> AcceptanceState:
        """The request's acceptance state for ``model``, created on first use (seeded by rid)."""
        spec = self.scenario.spec.drafters[model].acceptance
        seed = (self.seed * 1_000_003 + req.rid) * 64 + self._drafter_index[model]
        st = req.acc[model] = AcceptanceState(spec, random.Random(seed), self.limits.max_k)
        return st

    def _complete(self, req: SimRequest) -> None:
        if req.stream is not None:
            self._close_stream(req.stream)
        req.done = True
        req.finish_time = self.now + req.deliver_s
        del self.requests[req.rid]
        self.metrics.records.append(
            RequestRecord(req.arrival, req.first_token_time, req.finish_time, req.generated,
                          req.ttft_slo, req.tpot_slo, req.slo_class)
        )

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        m = self.metrics
        m.dropped += len(self.requests) + self._to_arrive  # unfinished when the drain ended
        m.sim_time = max((r.finish for r in m.records), default=self.now)
        m.wan_bytes = sum(s.link.bytes_sent for s in self.sites.values() if s.link is not None)
        if self._bar is not None:
            self._bar.close()


def _lead(st: DraftStream) -> int:
    """How far a stream's site is ahead of what it knows the target consumed."""
    return st.s_drafted - st.s_known


def _noop(_: Any) -> None:
    """A wake-up event (the controller asked to wait before batching)."""


def _prior_alpha(acc: Any) -> float:
    return acc.table[0] if hasattr(acc, "table") else acc.alpha_mean


def simulate(
    scenario: Scenario,
    controller: Controller,
    seed: int = 0,
    duration: float = 60.0,
    trace: str | None = None,
    rate: float | None = None,
    progress: bool = False,
) -> dict[str, float | int]:
    """One simulated run; returns the metrics summary (``runtime.metrics.KEYS``)."""
    return Simulator(scenario, seed, duration, trace=trace, rate=rate, progress=progress).run(controller)
