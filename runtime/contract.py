"""The controller-slot contract: what a runtime asks, what a controller answers.

Every backend (the discrete-event simulator, the Gymnasium env that inverts it, the real
multi-process runtime) speaks this one protocol:

    point = runtime.next_decision()        # advance (simulated or wall-clock) time
    while point is not None:
        runtime.apply(controller.decide(point))
        point = runtime.next_decision()

A :class:`DecisionPoint` is either a *plan* point (requests that must be admitted, and requests
that start a new speculation round and need a draft length, a drafter site and a redundancy
rule) or a *batch* point (the target's verifier is idle: which ready drafts does it verify
together). :class:`Controller` answers each with five small per-request methods, one per
decision of DESIGN section 3, so a controller can own any subset and :func:`compose` lets
heuristics fill the rest.

Views are read-only by convention: the simulator passes its own request objects (which
satisfy :class:`RequestView`) rather than copies, because the contract sits on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, Sequence, runtime_checkable

#: The decisions a controller can own (DESIGN section 3, plus admission).
DECISIONS: tuple[str, ...] = ("admission", "drafter_site", "draft_length", "redundancy", "batch")

SiteRole = Literal["target", "remote", "edge"]
Phase = Literal["prefill", "decode"]


class InvalidDecision(ValueError):
    """A controller answered something the runtime cannot do (names the request and the rule)."""


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """Static facts about a site: what it hosts and how far it is from the target."""

    name: str
    role: SiteRole
    index: int
    drafter: str | None  # name of the draft model hosted there (None: cannot draft)
    rtt_s: float  # nominal round-trip time to the target site (0 for the target itself)
    gpus: int


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """Static facts a controller may rely on, given once to :meth:`Controller.bind`."""

    scenario: str
    target_site: str
    sites: tuple[SiteInfo, ...]
    max_k: int
    max_batch_size: int
    max_batch_tokens: int
    max_redundancy: int
    #: Default acceptance rate per drafter model (prior mean), for estimators.
    prior_alpha: dict[str, float] = field(default_factory=dict)
    #: The simulator itself, for clairvoyant controllers only (``None`` on real backends).
    clairvoyant: Any = None
    #: Whether the runtime honours ``Redundancy(ahead=True)`` (draft-ahead streams).
    draft_ahead: bool = False
    #: Whether decisions happen in wall-clock time (the real runtime): there, a controller that
    #: computes for long (the twin's plan) stalls serving unless it works in the background.
    wall_clock: bool = False

    def site(self, name: str) -> SiteInfo:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"unknown site {name!r}; sites are {[s.name for s in self.sites]}")

    @property
    def drafter_sites(self) -> tuple[SiteInfo, ...]:
        return tuple(s for s in self.sites if s.drafter is not None)

    def allowed_sites(self, req: "RequestView") -> list[str]:
        """Sites that may draft for ``req``: any non-edge drafter site, plus its own edge."""
        return [
            s.name
            for s in self.sites
            if s.drafter is not None and (s.role != "edge" or s.name == req.origin)
        ]


@runtime_checkable
class RequestView(Protocol):
    """What a controller may read about a request (the simulator's request objects satisfy it)."""

    rid: int
    arrival: float  # seconds, runtime clock
    origin: str  # site the request came from (an edge device, or the target region)
    slo_class: str
    ttft_slo: float  # seconds
    tpot_slo: float  # seconds per output token
    prompt_tokens: int
    max_tokens: int  # output tokens requested; generation stops there
    generated: int  # output tokens committed so far
    phase: Phase  # "prefill" until the first token is committed
    first_token_time: float  # -1 until the first token
    drafter_site: str | None  # where this request's context is synced for drafting
    rounds: int  # speculation rounds verified so far
    drafted: int  # draft tokens verified so far
    accepted: int  # draft tokens accepted so far
    last_k: int
    last_accepted: int
    ready_k: int  # batch points: draft tokens waiting with this request (0: plain decode)
    ready_site: str | None  # batch points: who delivered the draft
    ready_since: float  # batch points: when it entered the verification queue
    #: The request's own cap on draft length (None: limits.max_k; 0: no speculation). Runtimes
    #: clamp every plan's k to it, so every controller honours it; controllers may read it too.
    spec_max_k: int | None

    @property
    def context_tokens(self) -> int: ...
    @property
    def tokens_left(self) -> int: ...
    def deadline(self) -> float:
        """Time by which the next token must be committed to stay within the SLO."""
        ...
    def alpha_estimate(self, prior: float) -> float:
        """Posterior-mean acceptance rate from this request's verified rounds."""
        ...
    @property
    def ahead_tokens(self) -> int:
        """Draft tokens a draft-ahead stream has already delivered for the next round."""
        ...


class RequestMixin:
    """The derived parts of :class:`RequestView`, defined once for every backend's request type.

    ``deadline`` is when the next token must be committed for the request to keep its TTFT
    (before the first token) or its average TPOT; ``alpha_estimate`` is the geometric MLE of the
    per-token acceptance rate, accepted / (accepted + rejections), with a 4-round prior.
    """

    __slots__ = ()
    prompt_tokens: int
    generated: int
    max_tokens: int
    phase: Phase
    arrival: float
    ttft_slo: float
    tpot_slo: float
    first_token_time: float
    accepted: int
    rejected_rounds: int

    def _start_progress(self) -> None:
        """A new request's progress and round counters, alike on every backend: nothing generated,
        no round verified, nothing ready."""
        self.generated = 0
        self.phase = "prefill"
        self.first_token_time = -1.0
        self.drafter_site: str | None = None
        self.rounds = self.drafted = self.accepted = self.rejected_rounds = 0
        self.last_k = self.last_accepted = 0
        self.ready_k = 0
        self.ready_site: str | None = None

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - self.generated

    def deadline(self) -> float:
        if self.phase == "prefill":
            return self.arrival + self.ttft_slo
        return self.first_token_time + self.tpot_slo * self.generated

    def alpha_estimate(self, prior: float) -> float:
        return (self.accepted + 4 * prior) / (self.accepted + self.rejected_rounds + 4)

    @property
    def ahead_tokens(self) -> int:
        return 0  # backends with draft-ahead streams override this


@dataclass(frozen=True, slots=True)
class SiteState:
    """Live state of one site as a controller sees it."""

    name: str
    load: float  # background utilisation by other tenants, 0..1
    queue: int  # requests waiting for or in a draft job here
    busy: bool
    rtt_s: float  # recent measured round-trip time to the target (EWMA; nominal at start)


@runtime_checkable
class SystemView(Protocol):
    """Live system state at a decision point."""

    now: float
    info: RuntimeInfo

    def site_state(self, name: str) -> SiteState: ...
    @property
    def verify_queue(self) -> int: ...  # requests ready to verify (drafted or plain)
    @property
    def in_flight(self) -> int: ...  # admitted, unfinished requests
    @property
    def verifier_busy(self) -> bool: ...
    @property
    def verify_time_ewma(self) -> float: ...  # recent verification batch time (s)
    @property
    def last_batch_size(self) -> int: ...
    def estimate_verify_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        """The runtime's own latency model for a target forward (controllers may fit their own)."""
        ...
    def estimate_draft_time(self, site: str, n_seqs: int, k: int, context_tokens: int) -> float:
        """Time for ``k`` batched draft steps at ``site`` (without load or queueing)."""
        ...


@dataclass(frozen=True, slots=True)
class Redundancy:
    """How many extra sites draft the same round, and when.

    ``backups`` draft the same tokens as the primary site. Each is launched ``hedge_after_s``
    after the primary if the primary's draft has not reached the target by then (0 launches
    them at once). The first draft to arrive is verified; later ones are cancelled and counted
    as waste. If no draft arrived ``timeout_s`` after the round started, the round falls back to
    a plain target decode step (``None``: wait forever).

    ``ahead`` asks a remote or edge primary to *draft ahead* (SpecEdge's proactive drafting,
    WANSpec's way of hiding the WAN): the site keeps drafting past ``k`` on the assumption that
    its tokens are accepted and streams them to the target, so a round that follows an
    all-accepted round finds its draft already there instead of paying a round trip. A
    rejection resets the stream (the correction travels to the site); tokens drafted past it
    are wasted. Only runtimes with ``RuntimeInfo.draft_ahead`` honour it.
    """

    backups: tuple[str, ...] = ()
    hedge_after_s: float = 0.0
    timeout_s: float | None = None
    ahead: bool = False

    @property
    def degree(self) -> int:
        return 1 + len(self.backups)


NO_REDUNDANCY = Redundancy()


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """One request's next speculation round: draft ``k`` tokens at ``site`` (k=0: plain decode)."""

    k: int
    site: str
    redundancy: Redundancy = NO_REDUNDANCY


@dataclass(slots=True)
class BatchResult:
    """Feedback after each verification forward, for controllers that learn online."""

    time: float  # when the forward finished
    duration: float  # its length in seconds
    rids: list[int]
    ks: list[int]  # draft tokens verified per request (0 = plain decode / prefill)
    accepted: list[int]  # accepted draft tokens per request
    new_tokens: int  # tokens processed in the forward (prefill + k + 1 per request)
    context_tokens: int
    draft_sites: list[str | None]


@dataclass(slots=True)
class DecisionPoint:
    """What the runtime needs decided now; exactly one of the kinds below."""

    kind: Literal["plan", "batch"]
    time: float
    system: SystemView
    admit: list[RequestView] = field(default_factory=list)  # plan: new arrivals
    plan: list[RequestView] = field(default_factory=list)  # plan: requests starting a round
    ready: list[RequestView] = field(default_factory=list)  # batch: verification candidates
    #: Verification forwards finished since the previous point (fed to ``on_batch_done``).
    feedback: list[BatchResult] = field(default_factory=list)


@dataclass(slots=True)
class Decision:
    """A controller's answer. ``admit`` and ``plans`` align with the point's lists."""

    admit: list[bool] = field(default_factory=list)
    plans: list[RoundPlan] = field(default_factory=list)
    #: rids to verify now; [] = wait for more drafts (re-asked after ``limits.batch_wait_s`` or
    #: at the next arrival; when nothing else is in flight the runtime verifies FCFS instead).
    batch: list[int] = field(default_factory=list)


class Controller:
    """Base controller: fills every decision with classic co-located defaults.

    Subclasses override the decisions they own. Defaults: admit everything, draft at the
    target site, ``k = default_k`` (0 = plain decoding), no redundancy, and verify every
    ready request first-come-first-served within the batch limits.
    """

    name: ClassVar[str] = "base"
    #: Decisions this class makes itself (documentation and composition checks).
    owns: ClassVar[frozenset[str]] = frozenset()
    default_k: int = 0

    def __init__(self) -> None:
        self.info: RuntimeInfo | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def bind(self, info: RuntimeInfo) -> None:
        """Called once per run/episode before the first decision."""
        self.info = info

    def prepare(self, point: DecisionPoint) -> None:
        """Called before the per-request methods of a point (joint policies compute here)."""

    def on_batch_done(self, result: BatchResult) -> None:
        """Called after every verification forward (online estimators learn here)."""

    # -- the five decisions --------------------------------------------------------------------
    def admit(self, req: RequestView, sys: SystemView) -> bool:
        return True

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return min(self.default_k, req.tokens_left - 1) if req.tokens_left > 1 else 0

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        return NO_REDUNDANCY

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        return fcfs_batch(ready, sys.info)

    # -- dispatch --------------------------------------------------------------------------------
    def plan_round(self, req: RequestView, sys: SystemView) -> RoundPlan:
        site = self.drafter_site(req, sys)
        k = self.draft_length(req, sys, site)
        red = self.redundancy(req, sys, site, k) if k > 0 else NO_REDUNDANCY
        return RoundPlan(k, site, red)

    def decide(self, point: DecisionPoint) -> Decision:
        for result in point.feedback:
            self.on_batch_done(result)
        self.prepare(point)
        sys = point.system
        if point.kind == "batch":
            return Decision(batch=self.select_batch(point.ready, sys))
        return Decision(
            admit=[self.admit(r, sys) for r in point.admit],
            plans=[self.plan_round(r, sys) for r in point.plan],
        )


def fcfs_batch(ready: Sequence[RequestView], info: RuntimeInfo) -> list[int]:
    """First come, first served within the batch-size and batched-token limits."""
    out: list[int] = []
    tokens = 0
    for r in sorted(ready, key=lambda r: r.ready_since):
        t = batch_tokens(r)
        if out and (len(out) >= info.max_batch_size or tokens + t > info.max_batch_tokens):
            break
        out.append(r.rid)
        tokens += t
    return out


def batch_tokens(req: RequestView) -> int:
    """New tokens a request adds to a verification forward (the whole prompt for a prefill)."""
    return req.prompt_tokens if req.phase == "prefill" else req.ready_k + 1


class Composite(Controller):
    """Routes each decision to the controller that owns it; ``base`` answers the rest."""

    name = "composite"

    def __init__(self, base: Controller, **owners: Controller) -> None:
        super().__init__()
        unknown = set(owners) - set(DECISIONS)
        if unknown:
            raise ValueError(f"unknown decision(s) {sorted(unknown)}; valid: {list(DECISIONS)}")
        self.base = base
        self.route = {d: owners.get(d, base) for d in DECISIONS}
        self.parts = list(dict.fromkeys([base, *owners.values()]))
        self.owns = frozenset(DECISIONS)
        self.name = "+".join(p.name for p in self.parts)

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        for p in self.parts:
            p.bind(info)

    def prepare(self, point: DecisionPoint) -> None:
        for p in self.parts:
            p.prepare(point)

    def on_batch_done(self, result: BatchResult) -> None:
        for p in self.parts:
            p.on_batch_done(result)

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        return self.route["admission"].admit(req, sys)

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return self.route["drafter_site"].drafter_site(req, sys)

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return self.route["draft_length"].draft_length(req, sys, site)

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        return self.route["redundancy"].redundancy(req, sys, site, k)

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        return self.route["batch"].select_batch(ready, sys)


def compose(base: Controller, **owners: Controller) -> Composite:
    """``compose(WanSpec(), draft_length=policy)``: the policy picks k, WanSpec the rest."""
    return Composite(base, **owners)


class Runtime(Protocol):
    """A backend the contract drives: the simulator, or the real multi-process runtime."""

    info: RuntimeInfo

    def next_decision(self) -> DecisionPoint | None:
        """Advance time until something must be decided; ``None`` when the run is over."""
        ...

    def apply(self, decision: Decision) -> None:
        """Carry out the answer to the point last returned by :meth:`next_decision`."""
        ...


def drive(runtime: Runtime, controller: Controller) -> None:
    """Run ``runtime`` to completion with ``controller`` in the slot (feedback rides on points)."""
    controller.bind(runtime.info)
    point = runtime.next_decision()
    while point is not None:
        runtime.apply(controller.decide(point))
        point = runtime.next_decision()
