"""The real backend: wall-clock speculative decoding across site processes, driven by any controller.

:class:`RealRuntime` implements :class:`runtime.contract.Runtime` (``next_decision``/``apply``)
and :class:`runtime.contract.SystemView`, with the same decision points, request views and
feedback as the simulator, so every controller runs unchanged. Threads:

* the *driver* (whoever calls :func:`runtime.contract.drive`) owns all request state, runs the
  target model (verification forwards, and drafting for rounds the controller put on the
  target site) and answers decision points;
* the *transport* loop (:mod:`runtime.real.transport`) talks gRPC to the drafter sites, with
  emulated WAN delays, and posts replies back to the driver as events;
* callers (the HTTP server, benchmarks) :meth:`submit` requests from any thread and get tokens
  through a listener callback.

Failover: a draft RPC that errors or misses its deadline marks the site down; the round's
other sites (redundancy) may still deliver, and if none is left the request goes back to the
controller for a new plan this same round. A plan that names a down site uses its first live
backup, or becomes a plain target decode step. Requests are never lost nor duplicated: tokens
are only committed by the target's verification.

Draft-ahead (``Redundancy(ahead=True)`` at a remote or edge site) follows the simulator's
protocol over one gRPC stream per (request, site): the site keeps drafting up to
``limits.max_k`` tokens past what the target acknowledged, and a round verifies what has
arrived (up to ``k``). The target keeps a stream valid while its arrived tokens agree with the
committed ones (a bonus token equal to the site's next draft token keeps it going); the first
disagreement sends a correction that starts a new epoch. A stream that fails (or delivers
nothing within ``draft_timeout_s`` while a round waits on it) marks the site down and the round
fails over like a failed draft RPC.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from runtime.contract import (
    BatchResult,
    DecisionPoint,
    RequestMixin,
    RoundPlan,
    RuntimeInfo,
    SiteInfo,
    SiteState,
    fcfs_batch,
)
from runtime.core import AheadLedger, DecisionLoop, check_plan, drafting_sites
from runtime.latency import ProfileTable
from runtime.load import EmulatedLoad
from runtime.metrics import KEYS, Metrics, RequestRecord
from runtime.real.models import check_pair, load_model
from runtime.real.deploy import Deployment
from runtime.real.engine import Draft, DraftJob, SeqCache, VerifyJob, draft_batch, verify_batch
from runtime.real import site_pb2 as pb
from runtime.real.site import SWITCH_INTERVAL_S
from runtime.real.transport import AheadStream, DraftResult, SiteClient, Transport, draft_of

#: ``listener(new_tokens, finish_reason)``: finish_reason is None while streaming, then
#: "length", "stop", or "error: <why>".
Listener = Callable[[list[int], str | None], None]

#: One committed token's log-probability under the target and its ``top`` alternatives.
TokenLogprob = tuple[float, list[tuple[int, float]]]

log = logging.getLogger("specctl.sites")


class RealRequest(RequestMixin):
    """A request in the real runtime; satisfies :class:`runtime.contract.RequestView`."""

    def __init__(self, rid: int, prompt: list[int], max_tokens: int, temperature: float, origin: str,
                 slo: Any, arrival: float, listener: Listener | None, seed: int, spec_max_k: int | None = None,
                 ignore_eos: bool = False, logprobs: int | None = None) -> None:
        self.rid = rid
        self.arrival = arrival
        self.origin = origin
        self.slo_class = slo.name
        self.ttft_slo = slo.ttft_s
        self.tpot_slo = slo.tpot_s
        self.prompt_tokens = len(prompt)
        self.max_tokens = max_tokens
        self._start_progress()
        self.ready_since = arrival
        self.spec_max_k = spec_max_k
        # internal
        self.ignore_eos = ignore_eos
        self.logprobs = logprobs  # top alternatives to report per token (None: no log-probabilities)
        self.token_logprobs: list[TokenLogprob] = []  # one per output token when logprobs is set
        self.site_rounds: collections.Counter[str] = collections.Counter()  # verified drafts per site
        self.temperature = temperature
        self.listener = listener
        self.context = list(prompt)
        self.output: list[int] = []
        self.cache = SeqCache()  # the target model's KV cache
        self.local_cache = SeqCache()  # the target site's drafter cache
        # committed tokens since the last rejected draft token or plain decode step: where the
        # next draft token stands in its run (acceptance falls along a run)
        self.run = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.synced: dict[str, int] = {}  # committed tokens each drafter site holds
        self.round_id = 0
        self.round_open = False
        self.round_k = 0
        self.pending: set[str] = set()  # sites still drafting this round
        self.ready_draft: Draft | None = None
        self.ready_stream = False  # the ready draft came from the draft-ahead stream
        self.stream: _Stream | None = None
        self.want = 0  # draft tokens the open round takes from its stream
        self.finish_reason: str | None = None
        self.finish_time = -1.0

    @property
    def ahead_tokens(self) -> int:
        st = self.stream
        return 0 if st is None else max(len(st.tokens) - (len(self.context) - st.base), 0)

    def __repr__(self) -> str:
        return f"RealRequest(rid={self.rid}, gen={self.generated}/{self.max_tokens}, phase={self.phase})"


class OnlineLatency:
    """Least-squares fit ``t = a + b*new_tokens + c*context`` over recent forwards (no profile given)."""

    def __init__(self, prior_s: float = 0.002) -> None:
        self.obs: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=256)
        self.seen = 0
        self.coef = np.array([prior_s, 0.0, 0.0])

    def observe(self, new: int, ctx: int, t: float) -> None:
        self.obs.append((new, ctx, t))
        self.seen += 1
        if self.seen % 16 == 0 or self.seen < 8:  # refitting is cheap but not free
            a = np.array([[1.0, n, c] for n, c, _ in self.obs])
            y = np.array([t for _, _, t in self.obs])
            coef, *_ = np.linalg.lstsq(a, y, rcond=None)
            self.coef = np.maximum(coef, 0.0) if len(self.obs) >= 3 else np.array([y.mean(), 0.0, 0.0])

    def forward_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        return float(max(self.coef @ np.array([1.0, new_tokens, context_tokens]), 1e-5))


class SiteProcesses:
    """Drafter sites launched as local OS processes (each prints ``READY <port>`` when serving).

    A supervisor thread reaps a site that exits, logs it, and starts it again after a backoff
    that doubles while restarts keep failing (``backoff_s`` up to ``max_backoff_s``; back to
    ``backoff_s`` once a site has stayed up for ``stable_s``). The new process listens on a new
    port; ``on_restart(name, address)`` tells the caller where. After :meth:`drain` (the runtime
    is shutting down) a site that exits is not started again: Ctrl-C in a terminal, or a signal
    to the whole process group, reaches the sites as it reaches the server.
    """

    def __init__(self, on_restart: Callable[[str, str], None] | None = None, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, stable_s: float = 10.0, ready_timeout_s: float = 90.0) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self.on_restart = on_restart
        self.backoff_s, self.max_backoff_s, self.stable_s = backoff_s, max_backoff_s, stable_s
        self.ready_timeout_s = ready_timeout_s
        self._refs: dict[str, Any] = {}
        self._args: dict[str, list[str]] = {}  # per site: more command-line arguments (its emulated load)
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._supervisor: threading.Thread | None = None

    def launch(self, sites: dict[str, Any], timeout_s: float | None = None,
               args: dict[str, list[str]] | None = None) -> dict[str, str]:
        """Start one process per ``{name: ModelRef}`` (in parallel; ``args``: more arguments of
        ``python -m runtime.real.site`` per site) and supervise them; returns their addresses."""
        self._refs.update(sites)
        self._args.update(args or {})
        for name in sites:
            self._spawn(name)
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        for name in sites:
            addr = self._await_ready(name, deadline)
            if addr is None:
                code = self.procs[name].poll()
                self.stop()
                raise RuntimeError(f"drafter site {name} did not start (exit code {code}); see its error above")
            self.addresses[name] = addr
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="specctl-sites", daemon=True)
            self._supervisor.start()
        return dict(self.addresses)

    def _spawn(self, name: str) -> None:
        ref = self._refs[name]
        cmd = [sys.executable, "-m", "runtime.real.site", "--name", name, "--model", ref.path,
               "--device", ref.device, "--dtype", ref.dtype, "--exit-with-parent", *self._args.get(name, [])]
        with self._lock:
            if self._stopping.is_set():
                return
            self.procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self._started[name] = time.monotonic()

    def _await_ready(self, name: str, deadline: float) -> str | None:
        """The site's address once it prints ``READY <port>``; None if it exits or misses ``deadline``."""
        proc = self.procs.get(name)
        if proc is None or proc.stdout is None:
            return None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(max(deadline - time.monotonic(), 0.1))
        if not line or not line[0].startswith("READY "):
            return None
        return f"127.0.0.1:{int(line[0].split()[1])}"

    def _supervise(self) -> None:
        backoff = dict.fromkeys(self._refs, self.backoff_s)
        ended: set[str] = set()  # exited while draining: reported once, never restarted
        while not self._stopping.wait(0.2):
            for name in list(self.procs):
                if name in ended:
                    continue
                proc = self.procs[name]
                code = proc.poll()  # reaps it: no zombie
                if code is None:
                    continue
                if proc.stdout is not None:
                    proc.stdout.close()
                uptime = time.monotonic() - self._started[name]
                if self._draining.is_set():
                    log.info("drafter site %s (pid %d) exited with code %s during shutdown; not restarted", name, proc.pid, code)
                    ended.add(name)
                    continue
                backoff[name] = self.backoff_s if uptime >= self.stable_s else backoff[name]
                log.warning("drafter site %s (pid %d) exited with code %s after %.1f s; restarting in %.1f s",
                            name, proc.pid, code, uptime, backoff[name])
                if self._stopping.wait(backoff[name]):
                    return
                if self._draining.is_set():  # the shutdown began during the backoff
                    log.info("drafter site %s not restarted: shutting down", name)
                    ended.add(name)
                    continue
                wait, backoff[name] = backoff[name], min(backoff[name] * 2, self.max_backoff_s)
                self._spawn(name)
                addr = self._await_ready(name, time.monotonic() + self.ready_timeout_s)
                if self._stopping.is_set():
                    return
                if addr is None:
                    log.error("drafter site %s did not restart (exit code %s); next try in %.1f s",
                              name, self.procs[name].poll(), backoff[name])
                    if self.procs[name].poll() is None:
                        self.procs[name].kill()
                    continue
                self.addresses[name] = addr
                self.restarts[name] += 1
                log.info("drafter site %s restarted at %s (pid %d) after a %.1f s backoff",
                         name, addr, self.procs[name].pid, wait)
                if self.on_restart is not None:
                    self.on_restart(name, addr)

    def drain(self) -> None:
        """The runtime is shutting down: keep the sites that run, start none that exits."""
        self._draining.set()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)


class _Stream:
    """The target's side of one draft-ahead stream (driver thread; ``handle`` is the transport's).

    This epoch's tokens continue the committed context from ``base`` on: token ``i`` stands for
    ``context[base + i]``. ``matched`` tokens were checked against committed ones, ``verified``
    were seen by a verification (rejected ones included), ``acked`` is the last acknowledgement.
    ``opened`` is when this epoch was asked for, until its first tokens arrive (a round trip).
    """

    __slots__ = ("req", "site", "ledger", "base", "tokens", "ids", "probs", "matched", "verified", "acked",
                 "closed", "handle", "opened")

    def __init__(self, req: RealRequest, site: str) -> None:
        self.req = req
        self.site = site
        self.ledger = AheadLedger()
        self.closed = False
        self.handle: AheadStream | None = None
        self.new_epoch(len(req.context))

    def new_epoch(self, base: int) -> None:
        self.base = base
        self.tokens: list[int] = []
        self.ids: list[torch.Tensor] = []  # sampled drafts: each token's top-m ids and probabilities
        self.probs: list[torch.Tensor] = []
        self.matched = self.verified = self.acked = 0
        self.opened: float | None = time.perf_counter()

    def draft(self, n: int) -> Draft:
        """The next ``n`` tokens past the committed context, as a draft to verify."""
        p = len(self.req.context) - self.base
        d = Draft(self.tokens[p:p + n])
        if self.ids:
            d.probs_ids, d.probs = torch.stack(self.ids[p:p + n]), torch.stack(self.probs[p:p + n])
        return d


@dataclass
class _LocalTask:
    req: RealRequest
    round_id: int
    k: int


class RealRuntime(DecisionLoop):
    """Wall-clock runtime over real models and site processes (see the module docstring)."""

    def __init__(self, deployment: Deployment, seed: int = 0, launch_sites: bool = True, ignore_eos: bool = False) -> None:
        self.deployment = deployment
        sc = self.scenario = deployment.scenario
        self.limits = sc.spec.limits
        self.seed = seed
        self.target_name = sc.target.name
        self.info = RuntimeInfo(
            scenario=sc.name, target_site=sc.target.name,
            sites=tuple(SiteInfo(s.name, s.role, s.index, s.drafter, s.rtt_ms / 1000.0, s.gpus) for s in sc.sites),
            max_k=self.limits.max_k, max_batch_size=self.limits.max_batch_size,
            max_batch_tokens=self.limits.max_batch_tokens, max_redundancy=self.limits.max_redundancy,
            prior_alpha={n: _prior_alpha(d.acceptance) for n, d in sc.spec.drafters.items()},
            draft_ahead=True,
            wall_clock=True,
        )
        self._allowed = drafting_sites(sc)
        self._drafter_of = {s.name: s.drafter or "" for s in sc.sites}  # per reply, off Scenario.site's scan
        ref = deployment.target
        self.model, self.tokenizer = load_model(ref.path, ref.device, ref.dtype)
        #: Tokens that end a request (the tokenizer's EOS and the generation config's, e.g. Llama-3's
        #: <|eot_id|>); none with ignore_eos (fixed output lengths, for benchmarks).
        self.stop_ids: frozenset[int] = frozenset() if ignore_eos else _stop_ids(self.model, self.tokenizer)
        self.max_context = deployment.spec.max_context or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.local_model = None
        local_ref = deployment.drafter_for(sc.target.name)
        if local_ref is not None:
            self.local_model, dtok = load_model(local_ref.path, local_ref.device, local_ref.dtype)
            check_pair(self.tokenizer, dtok, ref.path, local_ref.path)
        self.processes = SiteProcesses(on_restart=self._on_site_restart)
        self.clients: dict[str, SiteClient] = {}
        self._launch_sites = launch_sites
        self.target_lat: Any = (ProfileTable.from_csv(sc.target.profiles[sc.spec.target_model])
                                if sc.spec.target_model in sc.target.profiles else OnlineLatency())
        # per site: its drafter's forward time by batch and context (the profile where the
        # site has one, else fitted to the site's jobs as they come back), as the simulator
        # estimates it; one step time for all batch sizes made a busy site's big batches look
        # like its pace for one request, and wanspec moved requests to a farther site
        self._draft_lat: dict[str, Any] = {
            s.name: ProfileTable.from_csv(s.profiles[s.drafter]) if s.drafter in s.profiles else OnlineLatency()
            for s in sc.sites if s.drafter}

        #: other tenants on the target's GPU, emulated (the scenario's ``load:``; see ``emulate_load``)
        target_load = deployment.emulated_load(sc.target.name)
        self.target_load = (EmulatedLoad(target_load, deployment.load_seed(sc.target.name, seed))
                            if target_load is not None else None)

        self.metrics = Metrics()
        self._t0 = time.perf_counter()
        # what other threads hand the driver (arrivals, replies, stream tokens); SimpleQueue's C
        # put and get wake the driver ~10 us sooner than Queue's Condition on this host
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._rids = itertools.count()
        self.requests: dict[int, RealRequest] = {}
        self._admit_q: list[RealRequest] = []
        self._plan_q: list[RealRequest] = []
        self.ready: dict[int, RealRequest] = {}
        self._local_q: list[_LocalTask] = []
        self._feedback: list[BatchResult] = []
        self._pending: DecisionPoint | None = None
        self._hold_until = -1.0
        self._target_busy = False
        self.verify_time_ewma = 0.0
        self.last_batch_size = 0
        self._expected = 0  # scheduled arrivals not yet arrived
        self.closed = False  # no new requests (shutdown, or a replayed workload is complete)
        self._grace_deadline = math.inf
        self._finished = False
        self._remote_passes = 0.0
        #: Per site, per remote draft and per stream epoch: reply (or first tokens) received minus
        #: launch (or the opening or correction) minus the site's queueing and draft compute (RPC,
        #: serialisation, thread hops, plus the emulated WAN delay when on).
        self.transport_overhead_s: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=100_000))
        #: Per forward pass (target verifications and drafts, remote draft steps from the sites'
        #: replies): ``(site, model, sequences, new tokens, context tokens, seconds)``, to hold
        #: the run against its latency profiles (:func:`runtime.real.replay.measure_run`).
        self.forward_log: collections.deque[tuple[str, str, int, int, int, float]] = collections.deque(maxlen=100_000)
        #: Every verified round: ``(run, k, accepted)``, the request's tokens committed since its
        #: last rejected draft token, and the round's drafted and accepted tokens;
        #: :func:`runtime.real.replay.measure_run` fits acceptance by position in the run from it.
        self.round_log: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=100_000)
        #: Seconds the driver waited with nothing to do; the rest of its time is the target's
        #: forwards and the control work between them (decisions, replies, stream messages).
        self.driver_idle_s = 0.0
        self.started = False
        #: Observers called on the driver thread (the server's Prometheus metrics): after every
        #: verification forward, and when a request completes (not on errors).
        self.on_batch: Callable[[BatchResult], None] | None = None
        self.on_finish: Callable[[RealRequest], None] | None = None

    def _load_of(self, site: str) -> float:
        """Other tenants' utilisation at ``site``: emulated here for the target, as reported by a drafter site."""
        if site == self.target_name:
            return self.target_load.level() if self.target_load is not None else 0.0
        c = self.clients.get(site)
        return c.background if c is not None else 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "RealRuntime":
        """Start (or connect to) the drafter sites and the transport; resets the clock."""
        dep = self.deployment
        sc = self.scenario
        remote = [s for s in sc.sites if s.role != "target" and s.drafter is not None]
        to_launch = {s.name: dep.drafter_for(s.name) for s in remote if dep.address(s.name) is None}
        if to_launch and not self._launch_sites:
            raise RuntimeError(f"sites {sorted(to_launch)} have no address in the deployment and launching is off")
        args = {name: dep.site_args(name, self.seed) for name in to_launch}
        launched = self.processes.launch(to_launch, args=args) if to_launch else {}
        for s in remote:
            addr = dep.address(s.name) or launched[s.name]
            self.clients[s.name] = SiteClient(s, addr, sc.spec.network, dep.spec.emulate_wan,
                                              dep.spec.draft_timeout_s, self.seed * 7919 + s.index)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.transport = Transport(self.clients, dep.spec.health_interval_s)
        self.transport.start()
        self._t0 = time.perf_counter()
        if self.target_load is not None:  # its time 0 is the runtime's
            self.target_load.restart()
        self.started = True
        return self

    def _on_site_restart(self, name: str, address: str) -> None:
        """A supervised site came back on a new port: point its client there (it is up once health checks pass)."""
        client = self.clients.get(name)
        if client is not None and hasattr(self, "transport"):
            self.transport.call(client.reconnect(address))

    def close(self) -> None:
        """Stop the transport and any site processes this runtime launched."""
        if hasattr(self, "transport"):
            self.transport.close()
        self.processes.stop()

    def __enter__(self) -> "RealRuntime":
        return self.start() if not self.started else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def now(self) -> float:
        return time.perf_counter() - self._t0

    # ------------------------------------------------------------------ requests in
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def validate(self, prompt: Sequence[int], max_tokens: int) -> None:
        """Raise ValueError with a user-facing message if the request cannot be served."""
        if not prompt:
            raise ValueError("prompt is empty")
        vocab = self.model.config.vocab_size
        if any(not (0 <= t < vocab) for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if len(prompt) + max_tokens + self.limits.max_k + 1 > self.max_context:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the context limit "
                             f"of {self.max_context - self.limits.max_k - 1} tokens")

    def submit(self, prompt: Sequence[int], max_tokens: int, temperature: float = 0.0, *,
               origin: str | None = None, slo_class: str | None = None, listener: Listener | None = None,
               at: float | None = None, seed: int | None = None, spec_max_k: int | None = None,
               ignore_eos: bool = False, logprobs: int | None = None) -> RealRequest:
        """Queue a request (thread-safe); ``at`` schedules it at that runtime time (replays).

        ``seed`` makes a sampled request reproducible (its target and drafter random streams).
        ``spec_max_k`` caps this request's draft length whatever the controller plans (0: plain
        decoding only); ``ignore_eos`` generates exactly ``max_tokens``; ``logprobs`` records each
        output token's target log-probability and that many top alternatives."""
        if self.closed:
            raise RuntimeError("the runtime is shutting down")
        self.validate(prompt, max_tokens)
        origin = origin or self.target_name
        if origin not in self._allowed:
            raise ValueError(f"unknown origin site {origin!r}")
        classes = self.scenario.spec.workload.slo_classes
        slo = next((c for c in classes if c.name == slo_class), None) if slo_class else classes[0]
        if slo is None:
            raise ValueError(f"unknown slo_class {slo_class!r}; valid: {[c.name for c in classes]}")
        rid = next(self._rids)
        if spec_max_k is not None and spec_max_k < 0:
            raise ValueError("spec_max_k must be >= 0")
        req = RealRequest(rid, list(prompt), max_tokens, temperature, origin, slo, -1.0, listener,
                          seed=self.seed * 1_000_003 + rid if seed is None else seed, spec_max_k=spec_max_k,
                          ignore_eos=ignore_eos, logprobs=logprobs)
        if at is None:
            self._events.put((self._on_arrival, req))
        else:
            self._expected += 1
            self._events.put((self._schedule, (at, self._on_scheduled_arrival, req)))
        return req

    def cancel(self, req: RealRequest, reason: str = "error: cancelled by the client") -> None:
        """Stop working on ``req`` (thread-safe). The default reason (the client went away) counts it
        as dropped; ``"stop"`` (the caller found a stop string) as completed."""
        self._events.put((self._on_cancel, (req, reason)))

    @property
    def backlog(self) -> int:
        """Requests in flight plus submissions the driver has not taken in yet (for admission)."""
        return len(self.requests) + self._events.qsize()

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop taking requests; in-flight ones finish within ``grace_s`` or fail cleanly."""
        self.processes.drain()
        self._events.put((self._on_shutdown, grace_s))

    def end_of_workload(self) -> None:
        """No more requests will be submitted: the run ends when the last one finishes."""
        self._events.put((self._on_shutdown, math.inf))

    # ------------------------------------------------------------------ SystemView
    @property
    def system(self) -> "RealRuntime":
        return self

    def site_state(self, name: str) -> SiteState:
        if name == self.target_name:
            return SiteState(name, self._load_of(name), len(self._local_q), self._target_busy, 0.0)
        c = self.clients.get(name)
        if c is None:
            s = self.scenario.site(name)
            return SiteState(name, 0.0, 0, False, s.rtt_ms / 1000.0)
        if not c.up:  # a down site looks fully loaded, busy and far away
            return SiteState(name, 1.0, c.in_flight, True, 10.0)
        # load is other tenants' use (SiteState), as the site reports it; our own drafting there
        # shows in the queue (in flight) and in busy: counted as load too, a site drafting for
        # us looked up to 10x slower and wanspec fled to a farther one (the simulator does not)
        return SiteState(name, c.background, c.in_flight, c.load > 0.9, c.rtt_s)

    def site_up(self, name: str) -> bool:
        return name == self.target_name or (name in self.clients and self.clients[name].up)

    # the forward time, as the simulator estimates it: the latency model (profile or fitted to
    # the compute alone) times the site's slowdown from other tenants now
    def estimate_verify_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        return self.target_lat.forward_time(n_seqs, new_tokens, context_tokens) * _slowdown(self._load_of(self.target_name))

    def estimate_draft_time(self, site: str, n_seqs: int, k: int, context_tokens: int) -> float:
        lat = self._draft_lat.get(site)
        if k <= 0 or lat is None:
            return 0.0
        return lat.forward_time(n_seqs, n_seqs, context_tokens) * k * _slowdown(self._load_of(site))

    # ------------------------------------------------------------------ Runtime protocol
    def next_decision(self) -> DecisionPoint | None:
        if self._pending is not None:
            raise RuntimeError("apply() the decision for the previous point before asking for the next")
        if not self.started:
            self.start()
        while True:
            self._drain(block_s=0.0)
            self._fire_timers()
            if self.closed and self.requests and self.now >= self._grace_deadline:
                for req in list(self.requests.values()):
                    self.metrics.dropped += 1  # unfinished when the grace period ended (the sim's drain)
                    self._finish_request(req, "error: server shut down before the request finished")
                self._local_q.clear()
            if self._admit_q or self._plan_q:
                return self._plan_point(self.now)
            if self._local_q:
                self._run_local_drafts()
                continue
            now = self.now
            if self.ready and now >= self._hold_until:
                return self._batch_point(now)
            if self.closed and not self.requests and not self._expected and not self._admit_q:
                self._finish()
                return None
            wake = min(self._timers[0][0], now + 0.25) if self._timers else now + 0.25
            if self.ready:
                wake = min(wake, self._hold_until)
            if self.closed and self.requests:
                wake = min(wake, self._grace_deadline)
            self._drain(block_s=max(wake - now, 0.0))

    def _admit(self, req: RealRequest) -> None:
        self._make_ready(req, None, None)

    def _reject(self, req: RealRequest) -> None:
        self.metrics.dropped += 1
        self._finish_request(req, "error: rejected by admission control")

    def summary(self) -> dict[str, float | int]:
        m = self.metrics
        m.remote_draft_passes = round(self._remote_passes)
        m.wan_bytes = sum(c.bytes_sent for c in self.clients.values())
        if not self._finished:
            m.window_s = max(self.now, 1e-9)
            m.sim_time = self.now
        return m.summary()

    def totals(self) -> dict[str, tuple[str, float]]:
        """Cumulative counts since start, ``{name: (meaning, value)}``: cheap enough for every scrape."""
        m = self.metrics
        return {
            "requests_arrived": (KEYS["requests_arrived"], m.arrived),
            "requests_completed": (KEYS["requests_completed"], len(m.records)),
            "requests_dropped": (KEYS["requests_dropped"], m.dropped),
            "generation_tokens": ("output tokens committed", m.tokens_committed),
            "draft_tokens": (KEYS["draft_tokens"], m.draft_tokens),
            "wasted_rejected_tokens": (KEYS["wasted_rejected_tokens"], m.wasted_rejected),
            "wasted_redundant_tokens": (KEYS["wasted_redundant_tokens"], m.wasted_redundant),
            "target_draft_forward_passes": (KEYS["target_draft_forward_passes"], m.target_draft_passes),
            "target_draft_seconds": (KEYS["target_draft_gpu_s"], m.target_draft_gpu_s),
            "target_verify_forward_passes": (KEYS["target_verify_forward_passes"], m.target_verify_passes),
            "target_verify_seconds": (KEYS["target_verify_gpu_s"], m.target_verify_gpu_s),
            "remote_draft_forward_passes": (KEYS["remote_draft_forward_passes"], round(self._remote_passes)),
            "wan_bytes": (KEYS["wan_bytes"], sum(c.bytes_sent for c in self.clients.values())),
        }

    # ------------------------------------------------------------------ events and timers
    def _post(self, fn: Callable[[Any], None], arg: Any) -> None:
        self._events.put((fn, arg))

    def _drain(self, block_s: float) -> None:
        try:
            if block_s > 0:
                t0 = time.perf_counter()
                try:
                    fn, arg = self._events.get(timeout=block_s)
                finally:
                    self.driver_idle_s += time.perf_counter() - t0
            else:
                fn, arg = self._events.get_nowait()
        except queue.Empty:
            return
        fn(arg)
        while True:
            try:
                fn, arg = self._events.get_nowait()
            except queue.Empty:
                return
            fn(arg)

    def _schedule(self, arg: tuple[float, Callable[[Any], None], Any]) -> None:
        t, fn, x = arg
        heapq.heappush(self._timers, (t, next(self._seq), fn, x))

    def _call_at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        self._schedule((t, fn, arg))

    def _fire_timers(self) -> None:
        now = self.now
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, arg = heapq.heappop(self._timers)
            fn(arg)

    def _on_shutdown(self, grace_s: float) -> None:
        self.closed = True
        self._grace_deadline = min(self._grace_deadline, self.now + grace_s)

    def _on_cancel(self, arg: tuple[RealRequest, str]) -> None:
        req, reason = arg
        if req.rid in self.requests:
            if reason.startswith("error"):
                self.metrics.dropped += 1
            req.listener = None  # nobody is listening any more
            self._finish_request(req, reason)

    def _on_scheduled_arrival(self, req: RealRequest) -> None:
        self._expected -= 1
        self._on_arrival(req)

    def _on_arrival(self, req: RealRequest) -> None:
        req.arrival = req.ready_since = self.now
        self.metrics.arrived += 1
        if len(self.requests) >= self.limits.max_inflight:
            self.metrics.dropped += 1
            self._finish_request(req, "error: overloaded (too many requests in flight)")
            return
        self.requests[req.rid] = req
        self._admit_q.append(req)

    # ------------------------------------------------------------------ speculation rounds
    def _start_round(self, req: RealRequest, plan: RoundPlan) -> None:
        k = plan.k if req.spec_max_k is None else min(plan.k, req.spec_max_k)  # the request's own cap
        req.round_id += 1
        req.pending.clear()
        req.round_open = False
        if k <= 0:
            self._make_ready(req, None, None)
            return
        check_plan(req.rid, k, plan, self.limits, self._allowed[req.origin])
        red = plan.redundancy
        live = [s for s in (plan.site, *red.backups) if self.site_up(s)]
        st = req.stream
        if not live:  # every named site is down: a plain decode step keeps the request moving
            if st is not None:
                self._close_stream(st)
            self._make_ready(req, None, None)
            return
        site, backups = live[0], tuple(live[1:])
        req.round_open = True
        req.round_k = k
        req.drafter_site = site
        if red.ahead and site != self.target_name:  # as in the simulator: only a site with a link streams
            st = self._stream_to(req, site)
            req.want = k
            req.pending.add(site)
            avail = req.ahead_tokens
            if avail > 0:  # verify what is here; more may join until the batch starts
                self._resolve_from_stream(st, min(k, avail))
                return
            self._schedule((self.now + self.deployment.spec.draft_timeout_s, self._on_stream_stall,
                            (req, req.round_id, st)))
        else:
            self._draft_round(req, site, k)
        if backups or red.timeout_s is not None:
            self._start_races(req, red, backups, k, self.now)

    def _launch(self, req: RealRequest, site: str, k: int) -> None:
        req.pending.add(site)
        if site == self.target_name:
            self._local_q.append(_LocalTask(req, req.round_id, k))
            return
        client = self.clients[site]
        start = min(req.synced.get(site, 0), len(req.context))
        seed = (req.seed * 1009 + req.round_id) % (1 << 63)
        rid, round_id = req.rid, req.round_id
        coro = client.draft(rid, list(req.context), start, k, req.temperature, seed)
        sent = time.perf_counter()

        def done(res: DraftResult | None, err: BaseException | None) -> None:
            if res is not None:  # transport time: the driver may still be busy verifying
                self.transport_overhead_s[site].append(time.perf_counter() - sent - res.job_s - res.wait_s)
            self._post(self._on_draft_reply, (req, round_id, site, k, res, err))

        self.transport.submit(coro, done)

    def _on_hedge(self, arg: tuple[RealRequest, int, tuple[str, ...], int]) -> None:
        req, round_id, backups, k = arg
        if req.round_id == round_id and req.round_open:
            for b in backups:
                if self.site_up(b) and b not in req.pending:
                    self._launch(req, b, k)

    def _on_timeout(self, arg: tuple[RealRequest, int]) -> None:
        req, round_id = arg
        if req.round_id == round_id and req.round_open and req.rid in self.requests:
            req.round_open = False
            self._make_ready(req, None, None)

    def _on_draft_reply(self, arg: tuple[RealRequest, int, str, int, DraftResult | None, BaseException | None]) -> None:
        req, round_id, site, k, res, err = arg
        current = req.round_id == round_id and req.round_open and req.rid in self.requests
        if err is not None or res is None:
            req.synced.pop(site, None)
            if current:
                self._drop_drafter(req, site)
            return
        self._count_remote_draft(site, len(res.draft.tokens), res.passes, res.job_size, res.job_s * (1 - res.background),
                                 len(req.context))
        req.synced[site] = res.known
        if current and len(res.draft.tokens) == k:
            req.pending.discard(site)
            req.round_open = False
            self._make_ready(req, res.draft, site)
            return
        self.metrics.wasted_redundant += len(res.draft.tokens)  # lost the race, or arrived after the timeout
        if current:  # a short (superseded) draft
            self._drop_drafter(req, site)

    def _count_remote_draft(self, site: str, tokens: int, passes: int, job_size: int, job_s: float,
                            context: int) -> None:
        """A remote site's drafted tokens, and what its batched job tells of its pace (its
        sequences' context is taken to be about this request's, ``context`` tokens each;
        ``job_s`` without other tenants' share, which the estimates apply as the load is now)."""
        self.metrics.draft_tokens += tokens
        self._remote_passes += passes / max(job_size, 1)
        if passes:
            self._observe_draft(site, job_size, job_size * context, job_s / passes)

    def _observe_draft(self, site: str, n_seqs: int, context: int, step_s: float) -> None:
        """A draft job's pace: one forward of ``n_seqs`` sequences took ``step_s``."""
        self.forward_log.append((site, self._drafter_of[site], n_seqs, n_seqs, context, step_s))
        lat = self._draft_lat.get(site)
        if isinstance(lat, OnlineLatency):
            lat.observe(n_seqs, context, step_s)

    def _drop_drafter(self, req: RealRequest, site: str) -> None:
        """``site`` no longer drafts ``req``'s open round; with nobody left, the controller plans it again."""
        req.pending.discard(site)
        if not req.pending:
            req.round_open = False
            self._plan_q.append(req)

    # ---- draft-ahead streams
    def _open_stream(self, req: RealRequest, site: str) -> _Stream:
        st = req.stream = _Stream(req, site)
        self._stream_send(st, pb.StreamMsg(rid=req.rid, tokens=req.context, temperature=req.temperature,
                                           seed=(req.seed * 1013 + req.round_id) % (1 << 63),
                                           max_ahead=self.limits.max_k))
        return st

    def _stream_send(self, st: _Stream, msg: pb.StreamMsg) -> None:
        self.transport.post(self._stream_send_on_loop, st, msg)

    def _stream_send_on_loop(self, st: _Stream, msg: pb.StreamMsg) -> None:
        """(Transport loop) the stream's first message opens the call; the rest follow in order."""
        if st.handle is None:
            if msg.cancel:
                return
            try:
                st.handle = AheadStream(self.clients[st.site],
                                        lambda r: self._post(self._on_stream_tokens, (st, r, time.perf_counter())),
                                        lambda why: self._post(self._on_stream_error, (st, why)))
            except Exception as e:  # no channel (the site is restarting)
                self._post(self._on_stream_error, (st, f"site {st.site}: {e}"))
                return
        st.handle.send(msg)

    def _close_stream(self, st: _Stream, cancel: bool = True) -> None:
        """Stop a stream (the request finished, drafts elsewhere now, or the stream failed)."""
        st.closed = True
        if st.req.stream is st:
            st.req.stream = None
        self.metrics.wasted_rejected += st.ledger.close()
        if cancel:
            self._stream_send(st, pb.StreamMsg(rid=st.req.rid, epoch=st.ledger.epoch, cancel=True))

    def _check_stream(self, st: _Stream) -> bool:
        """Hold the stream's tokens against the committed ones: acknowledge what was consumed, or
        send a correction (a new epoch) at the first disagreement. False if it was corrected."""
        ctx = st.req.context
        committed = len(ctx) - st.base
        n = min(len(st.tokens), committed)
        for i in range(st.matched, n):
            if st.tokens[i] != ctx[st.base + i]:
                st.ledger.consumed = max(i, st.verified)
                self.metrics.wasted_rejected += st.ledger.restart()
                old = st.base
                st.new_epoch(len(ctx))
                self._stream_send(st, pb.StreamMsg(rid=st.req.rid, epoch=st.ledger.epoch, start=old, tokens=ctx[old:]))
                return False
        st.matched = n
        st.ledger.consumed = max(st.ledger.consumed, committed)
        if committed > st.acked:
            st.acked = committed
            self._stream_send(st, pb.StreamMsg(rid=st.req.rid, epoch=st.ledger.epoch, consumed=committed))
        return True

    def _resolve_from_stream(self, st: _Stream, n: int) -> None:
        req = st.req
        req.round_open = False
        req.pending.clear()
        self._make_ready(req, st.draft(n), st.site)
        req.ready_stream = True

    def _on_stream_tokens(self, arg: tuple[_Stream, pb.StreamTokens, float]) -> None:
        st, reply, landed = arg
        n = len(reply.tokens)
        # a stream's pace is the site's whole job cycle (its site drafts job after job)
        self._count_remote_draft(st.site, n, reply.passes, reply.job_size, reply.cycle_s - reply.job_s * reply.background,
                                 len(st.req.context))
        if st.closed or reply.pos != st.ledger.arrived or not st.ledger.arrive(reply.epoch, n):
            self.metrics.wasted_rejected += n  # drafted past a correction the site had not heard of yet
            return
        if st.opened is not None:  # an epoch's first tokens: a round trip, as for a draft RPC
            self.transport_overhead_s[st.site].append(landed - st.opened - reply.cycle_s - reply.wait_s)
            st.opened = None
        d = draft_of(reply)
        st.tokens += d.tokens
        if d.probs is not None:
            st.ids += d.probs_ids.unbind(0)
            st.probs += d.probs.unbind(0)
        if not self._check_stream(st):
            return
        req = st.req
        avail = min(req.ahead_tokens, req.want)
        if req.round_open and st.site in req.pending:
            if avail > 0:
                self._resolve_from_stream(st, avail)
        elif req.ready_stream and req.rid in self.ready and req.ready_k < avail:
            req.ready_draft = st.draft(avail)  # still waiting for the verifier: verify more
            req.ready_k = avail

    def _on_stream_error(self, arg: tuple[_Stream, str]) -> None:
        st, why = arg
        if not st.closed:
            self._stream_failed(st, f"failed: {why}", cancel=False)

    def _on_stream_stall(self, arg: tuple[RealRequest, int, _Stream]) -> None:
        req, round_id, st = arg
        if st.closed or req.round_id != round_id or not req.round_open or st.site not in req.pending:
            return
        self._stream_failed(st, f"nothing within {self.deployment.spec.draft_timeout_s:.1f} s", cancel=True)

    def _stream_failed(self, st: _Stream, why: str, cancel: bool) -> None:
        """Mark the stream's site down (health checks mark it up again once it answers), close
        the stream, and fail a round waiting on it over like a failed draft RPC."""
        log.warning("draft-ahead stream of request %d at %s: %s", st.req.rid, st.site, why)
        self.clients[st.site].up = False
        self._close_stream(st, cancel=cancel)
        req = st.req
        if req.round_open and st.site in req.pending and req.rid in self.requests:
            self._drop_drafter(req, st.site)

    def _run_local_drafts(self) -> None:
        tasks = [t for t in self._local_q if t.req.round_id == t.round_id and t.req.round_open]
        self._local_q = []
        if not tasks:
            return
        tasks = tasks[: self.limits.max_batch_size]
        jobs = [DraftJob(t.req.local_cache, t.req.context, t.k, t.req.temperature, t.req.generator) for t in tasks]
        load = self._load_of(self.target_name)
        t0 = time.perf_counter()
        self._target_busy = True
        try:
            drafts = draft_batch(self.local_model, jobs)
            dur = time.perf_counter() - t0  # the compute; stretched by other tenants' share (emulated)
            held = self.target_load.stretch(load, dur) if self.target_load is not None else dur
        finally:
            self._target_busy = False
        m = self.metrics
        steps = max(t.k for t in tasks)
        m.target_draft_passes += steps
        m.target_draft_gpu_s += held
        self._observe_draft(self.target_name, len(tasks), sum(len(t.req.context) for t in tasks), dur / steps)
        for t, d in zip(tasks, drafts):
            m.draft_tokens += len(d.tokens)
            # queued behind what landed while the driver drafted (stream tokens, draft replies),
            # so a race goes to whoever finished first, as in the simulator's event order
            self._post(self._on_draft_reply, (t.req, t.round_id, self.target_name, t.k,
                                              DraftResult(d, len(t.req.context), held, 0, len(tasks), 0, 0), None))

    def _make_ready(self, req: RealRequest, draft: Draft | None, site: str | None) -> None:
        req.ready_draft = draft
        req.ready_stream = False
        req.ready_k = len(draft.tokens) if draft is not None else 0
        req.ready_site = site
        req.ready_since = self.now
        self.ready[req.rid] = req
        self._hold_until = -1.0

    # ------------------------------------------------------------------ verification
    def _start_verify(self, rids: list[int]) -> None:
        lim = self.limits
        if not rids and len(self.ready) >= len(self.requests) and not self._local_q:
            # every request is waiting for verification, so no draft can arrive: waiting cannot help
            rids = fcfs_batch(list(self.ready.values()), self.info)
        if not rids:  # the controller chose to wait
            self._hold_until = self.now + lim.batch_wait_s
            return
        batch, new, ctx = self._take_verify_batch(rids, lim)
        jobs = [VerifyJob(r.cache, r.context, r.ready_draft, r.temperature, r.generator, r.logprobs) for r in batch]
        load = self._load_of(self.target_name)
        t0 = time.perf_counter()
        self._target_busy = True
        try:
            verdicts = verify_batch(self.model, jobs)
            dur = time.perf_counter() - t0  # the compute; stretched by other tenants' share (emulated)
            held = self.target_load.stretch(load, dur) if self.target_load is not None else dur
        finally:
            self._target_busy = False
        if isinstance(self.target_lat, OnlineLatency):
            self.target_lat.observe(new, ctx, dur)
        self.verify_time_ewma = held if self.verify_time_ewma == 0 else 0.8 * self.verify_time_ewma + 0.2 * held
        self.last_batch_size = len(batch)
        m = self.metrics
        m.target_verify_passes += 1
        m.target_verify_gpu_s += held
        self.forward_log.append((self.target_name, self.scenario.spec.target_model, len(batch), new, ctx, dur))
        m.batch_sizes_sum += len(batch)
        now = self.now
        ks, accs, sites = [], [], []
        for req, v in zip(batch, verdicts):
            k = req.ready_k
            ks.append(k)
            sites.append(req.ready_site)
            accs.append(v.accepted if k else 0)
            self._commit(req, v.tokens, v.accepted, k, now, v.logprobs)
        result = BatchResult(now, dur, rids, ks, accs, new, ctx, sites)
        self._feedback.append(result)
        if self.on_batch is not None:
            self.on_batch(result)

    def _commit(self, req: RealRequest, tokens: list[int], accepted: int, k: int, now: float,
                logprobs: list[TokenLogprob] | None = None) -> None:
        m = self.metrics
        toks = tokens[: req.tokens_left]
        reason = "length" if len(toks) == req.tokens_left else None
        for i, t in enumerate(toks):
            if t in self.stop_ids and not req.ignore_eos:
                toks = toks[: i + 1]
                reason = "stop"
                break
        decoding = req.phase == "decode"
        if not decoding:
            req.phase = "decode"
            req.first_token_time = now
        elif k > 0:
            req.rounds += 1
            req.drafted += k
            req.accepted += accepted
            req.site_rounds[req.ready_site or self.target_name] += 1
            if accepted < k:
                req.rejected_rounds += 1
                m.rejections += 1
            if req.ready_stream:
                m.stream_rounds += 1
            m.spec_rounds += 1
            m.drafted_verified += k
            m.accepted += accepted
            m.wasted_rejected += k - accepted
            m.committed_in_spec_rounds += len(toks)
        req.last_k = k
        req.last_accepted = accepted
        st = req.stream
        if st is not None and req.ready_stream:  # these stream tokens were verified (some perhaps rejected)
            st.verified = max(st.verified, len(req.context) - st.base + k)
        req.ready_stream = False
        req.context.extend(toks)
        req.output.extend(toks)
        if logprobs is not None:
            req.token_logprobs.extend(logprobs[: len(toks)])
        req.generated += len(toks)
        m.tokens_committed += len(toks)
        req.ready_draft = None
        if decoding:
            self._track_run(req, k, accepted)
        if reason is not None:
            self._finish_request(req, reason, toks)
        else:
            if st is not None:
                self._check_stream(st)
            if req.listener is not None:
                req.listener(toks, None)
            self._plan_q.append(req)

    def _track_run(self, req: RealRequest, k: int, accepted: int) -> None:
        """Log the round at its position in the request's run (draft tokens since the last
        rejection, bonus tokens included), then move the run on: a rejection or a plain step
        starts a new one, a fully accepted round extends it by its tokens and the bonus."""
        if k == 0:
            req.run = 0
            return
        self.round_log.append((req.run, k, accepted))
        req.run = req.run + k + 1 if accepted == k else 0

    def _finish_request(self, req: RealRequest, reason: str, last: list[int] | None = None) -> None:
        req.finish_reason = reason
        req.finish_time = self.now
        req.round_open = False
        if req.stream is not None:
            self._close_stream(req.stream)
        self.requests.pop(req.rid, None)
        self.ready.pop(req.rid, None)
        for q in (self._plan_q, self._admit_q):  # a cancelled or failed request is decided no more
            if req in q:
                q.remove(req)
        if not reason.startswith("error"):
            self.metrics.records.append(RequestRecord(
                req.arrival, req.first_token_time, req.finish_time, req.generated, req.ttft_slo, req.tpot_slo,
                req.slo_class))
            if self.on_finish is not None:
                self.on_finish(req)
        for site in req.synced:
            if site in self.clients:
                self.transport.call(self.clients[site].release([req.rid]))
        if req.listener is not None:
            req.listener(last or [], reason)

    def _finish(self) -> None:
        if self._finished:
            return
        self.summary()
        self._finished = True


def _slowdown(load: float) -> float:
    """How much slower other tenants at ``load`` make a forward (a load reported as a float32
    just under 1 can round to 1: capped at 1000x)."""
    return 1.0 / max(1.0 - load, 1e-3)


def _stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return frozenset(i for i in ids if i is not None)


def _prior_alpha(acc: Any) -> float:
    return acc.table[0] if hasattr(acc, "table") else acc.alpha_mean
