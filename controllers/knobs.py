"""Knob control: a slow policy sets the knobs of fast per-request rules.

Admission and site choices play out over tens of seconds, draft lengths over milliseconds. A
:class:`KnobController` splits the two time scales: every ``interval_s`` it reads a
site-agnostic summary of the system (:data:`KNOB_FEATURES`: load, queues, pace, acceptance and
the *shape* of the sites - nearest remote RTT, its load, edge devices or not, what a drafted
token costs at each kind of site - never their names) and sets four knobs; between ticks a
heuristic carries them out request by request:

| knob | levels | what it does |
|---|---|---|
| ``mode`` | the ``modes`` heuristics (default wanspec, wisp, centralized) | which heuristic answers site, k, redundancy and batches |
| ``cap`` | :data:`CAP_LEVELS` x ``max_batch_size`` requests, or none | admission: admit while at most that many are in flight |
| ``k_cap`` | :data:`K_CAP_LEVELS` (clipped to ``max_k``) | the most draft tokens any round may have |
| ``hedge`` | off / on | whether the heuristic's redundant backups run |

With fixed knobs it is a heuristic with a cap (``knobs:mode=wanspec,cap=2,k_cap=8``); with a
policy (``act``) it is a learned controller that deploys on any set of sites, because nothing
it observes or chooses names a site. The same :meth:`observation` runs in the env
(``specctl/SpecKnobs-v0``) and deployed, so training and serving cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from runtime.contract import (
    DECISIONS,
    Controller,
    Decision,
    DecisionPoint,
    Redundancy,
    RequestView,
    RuntimeInfo,
    SystemView,
)

#: Admission caps, in requests in flight per slot of the target's max batch (inf: no cap).
CAP_LEVELS: tuple[float, ...] = (1.0, 1.5, 1.75, 2.0, 2.5, 3.0, math.inf)
#: Draft-length caps (clipped to the scenario's max_k).
K_CAP_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
DEFAULT_MODES: tuple[str, ...] = ("wanspec", "wisp", "centralized")
KNOB_VERSION = 2

#: Observation features, in order; every one is scale-free (ratios to the scenario's own limits
#: and SLOs) and site-agnostic. ``mode_*``/``valid_*`` blocks follow, one entry per mode.
KNOB_FEATURES: tuple[str, ...] = (
    "arrival_rate",  # arrivals per second over the last interval / max_batch_size
    "admitted_share",  # admitted / arrived over the last interval
    "in_flight",  # requests in flight / (4 * max_batch_size)
    "verify_queue",  # ready to verify / max_batch_size
    "batch_size",  # mean verification batch over the interval / max_batch_size
    "verify_pace",  # mean verification forward time / tightest TPOT SLO seen
    "target_load",  # the target site's background load
    "acceptance",  # accepted / verified draft tokens over the interval
    "behind_share",  # requests starting a round past their next-token deadline
    "slack",  # median slack of requests starting a round, in TPOT units / 16 (clipped +-1)
    "tokens_per_s",  # tokens committed per second / (max_batch_size * 20)
    "has_remote",  # the scenario has remote drafter sites
    "remote_rtt",  # the nearest remote site's measured RTT / 100 ms
    "remote_load",  # the nearest remote site's background load
    "remote_queue",  # the nearest remote site's draft queue / 32
    "remote_load_mean",  # mean background load over remote sites
    "has_edge",  # requests can draft on their own edge devices
    "edge_rtt",  # mean edge RTT / 100 ms
    "target_drafts",  # the target site hosts a drafter
    "draft_ahead",  # the runtime streams draft-ahead tokens
    # GPU speed, as what it costs here: one drafted token's step at a site / one verification
    # step of the target / 2 (a single sequence at the window's mean context, background load included)
    "target_draft_cost",  # the target's own drafter (0: none)
    "remote_draft_cost",  # the nearest remote site's drafter (0: none)
    "edge_draft_cost",  # the mean edge device's drafter (0: none)
    "context",  # mean context of requests starting a round / 2048 tokens
    "edge_origin_share",  # share of arrivals that come from edge devices
    "cap",  # current cap level / (levels - 1)
    "k_cap",  # current k cap level / (levels - 1)
    "hedge",  # current hedge knob
)


@dataclass(frozen=True)
class KnobLayout:
    """What a knob policy's network was trained against (saved with it as ``codec.json``)."""

    modes: tuple[str, ...]
    interval_s: float
    version: int = KNOB_VERSION

    def to_dict(self) -> dict[str, object]:
        return {"kind": "knobs", "version": self.version, "modes": list(self.modes), "interval_s": self.interval_s,
                "features": list(KNOB_FEATURES), "cap_levels": [str(c) for c in CAP_LEVELS], "k_cap_levels": list(K_CAP_LEVELS)}


@dataclass(frozen=True)
class Knobs:
    """One setting of the knobs, as level indices (what a policy outputs)."""

    mode: int = 0
    cap: int = len(CAP_LEVELS) - 1
    k_cap: int = len(K_CAP_LEVELS) - 1
    hedge: int = 1

    def as_action(self) -> np.ndarray:
        return np.array([self.mode, self.cap, self.k_cap, self.hedge], dtype=np.int64)


#: ``act(observation, action_mask) -> action`` (mode, cap, k_cap, hedge level indices); the
#: flat mask (MaskablePPO's layout) rules out modes that cannot run on the scenario.
KnobAct = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Window:
    """What the controller saw since the last tick (reset when the knobs are set)."""

    __slots__ = ("start", "arrived", "admitted", "batches", "batch_reqs", "batch_s", "drafted", "accepted",
                 "committed", "behind", "planned", "slacks", "context", "from_edge")

    def __init__(self, start: float) -> None:
        self.start = start
        self.arrived = self.admitted = self.batches = self.batch_reqs = 0
        self.drafted = self.accepted = self.committed = self.behind = self.planned = 0
        self.context = self.from_edge = 0
        self.batch_s = 0.0
        self.slacks: list[float] = []


class KnobController(Controller):
    """A heuristic per mode, run with the current knobs; a policy (``act``) resets them every tick.

    Every mode is bound and sees every verification's feedback, so its estimators stay warm
    while another mode answers. A mode that cannot run on the scenario (``bind`` refuses) is
    invalid: choosing it answers with the first valid mode instead (and :meth:`valid_modes`
    tells a masked policy).
    """

    name = "knobs"
    owns = frozenset(DECISIONS)

    def __init__(
        self,
        mode: str | int = 0,
        cap: float | Literal["none"] | None = None,
        k_cap: int | None = None,
        hedge: bool = True,
        modes: Sequence[str] = DEFAULT_MODES,
        interval_s: float = 1.0,
        act: KnobAct | None = None,
    ) -> None:
        super().__init__()
        from controllers.registry import make_controller

        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        if not modes:
            raise ValueError("modes must name at least one heuristic, e.g. modes=[wanspec, wisp]")
        self.mode_specs = tuple(str(m) for m in modes)
        self.modes: list[Controller] = [make_controller(m) for m in self.mode_specs]
        self.interval_s = float(interval_s)
        self.act = act
        self.knobs = Knobs(
            mode=_mode_index(mode, self.mode_specs),
            cap=cap_level(cap),
            k_cap=k_cap_level(k_cap),
            hedge=int(bool(hedge)),
        )
        self.valid: list[bool] = [False] * len(self.modes)
        #: control intervals run under each setting since :meth:`bind`, by :meth:`spec` string:
        #: which decisions a policy made (``training.knobs`` reports them per scenario)
        self.usage: dict[str, int] = {}
        self.next_tick = 0.0
        self._win = _Window(0.0)
        self._tpot_ref = math.inf
        self._active: Controller = self.modes[self.knobs.mode]  # until bind() checks that it runs

    # ------------------------------------------------------------------ setup
    @property
    def layout(self) -> KnobLayout:
        return KnobLayout(self.mode_specs, self.interval_s)

    @property
    def n_features(self) -> int:
        return len(KNOB_FEATURES) + 2 * len(self.modes)

    @property
    def action_dims(self) -> list[int]:
        return [len(self.modes), len(CAP_LEVELS), len(K_CAP_LEVELS), 2]

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        self.valid = []
        self._edge_sites = frozenset(s.name for s in info.sites if s.role == "edge")
        for m in self.modes:
            try:
                m.bind(info)
                self.valid.append(True)
            except ValueError:
                self.valid.append(False)
        if not any(self.valid):
            raise ValueError(f"none of the knob modes {list(self.mode_specs)} runs on {info.scenario}; add one that does (e.g. centralized)")
        self.usage = {}
        self.next_tick = 0.0
        self._win = _Window(0.0)
        self._tpot_ref = math.inf
        self.set_knobs(self.knobs.as_action(), 0.0)
        if self.act is not None:
            self.take_over()

    def take_over(self) -> None:
        """A policy sets the knobs from the first decision on (after :meth:`bind`): the knobs the
        controller was built with never run, so they count no interval."""
        self.next_tick, self.usage = 0.0, {}

    def action_for(self, knobs: Mapping[str, Any]) -> np.ndarray:
        """A knobs mapping (defaults: :func:`knob_setting`) as an action, with a mode that cannot
        run here repaired to the first that can."""
        k = knob_setting(knobs)
        mode = k["mode"] if self.valid[k["mode"]] else self.valid.index(True)
        return np.array([mode, cap_level(k["cap"]), k_cap_level(k["k_cap"]), k["hedge"]])

    def valid_modes(self) -> list[bool]:
        return list(self.valid)

    def action_mask(self) -> np.ndarray:
        """Flat mask over every level of every knob: modes that cannot run here are masked."""
        mask = np.ones(sum(self.action_dims), dtype=bool)
        mask[: len(self.modes)] = self.valid
        return mask

    # ------------------------------------------------------------------ the slow loop
    def due(self, now: float) -> bool:
        return now >= self.next_tick

    def set_knobs(self, action: Sequence[int] | np.ndarray, now: float) -> None:
        """Apply a policy's action (level indices; out-of-range values are clipped) until the next tick."""
        a = [int(x) for x in action]
        dims = self.action_dims
        a = [min(max(v, 0), d - 1) for v, d in zip(a, dims)]
        self.knobs = Knobs(*a)
        mode = a[0] if self.valid[a[0]] else self.valid.index(True)
        self._active = self.modes[mode]
        self.next_tick = now + self.interval_s
        self._win = _Window(now)
        key = self.spec()
        self.usage[key] = self.usage.get(key, 0) + 1

    def spec(self, knobs: Knobs | None = None) -> str:
        """A setting (by default the current one, with the mode that answers) as a fixed-knob
        controller spec, e.g. ``knobs:mode=wisp,cap=2,k_cap=8,hedge=true``, which runs that setting
        alone. A mode whose spec has parameters goes by its index in :attr:`mode_specs` (a spec
        cannot nest one)."""
        k = knobs or replace(self.knobs, mode=self.modes.index(self._active))
        mode = self.mode_specs[k.mode]
        cap = CAP_LEVELS[k.cap]
        return (f"knobs:mode={k.mode if ':' in mode or ',' in mode else mode},cap={'none' if math.isinf(cap) else f'{cap:g}'},"
                f"k_cap={K_CAP_LEVELS[k.k_cap]},hedge={'true' if k.hedge else 'false'}")

    def observation(self, sys: SystemView, out: np.ndarray | None = None) -> np.ndarray:
        """The site-agnostic features of :data:`KNOB_FEATURES` (+ mode one-hot and validity)."""
        info = self.info
        assert info is not None, "bind() first"
        w = self._win
        span = max(sys.now - w.start, 1e-6)
        mb = float(info.max_batch_size)
        tpot = self._tpot_ref if math.isfinite(self._tpot_ref) else 0.05
        remotes = [s for s in info.sites if s.role == "remote" and s.drafter]
        edges = [s for s in info.sites if s.role == "edge" and s.drafter]
        states = [sys.site_state(s.name) for s in remotes]
        near = min(states, key=lambda s: s.rtt_s) if states else None
        target_drafts = bool(info.site(info.target_site).drafter)
        ctx = w.context / w.planned if w.planned else 512.0
        verify = max(sys.estimate_verify_time(1, 1, int(ctx)), 1e-6)

        def cost(site: str) -> float:
            return sys.estimate_draft_time(site, 1, 1, int(ctx)) / verify / 2.0

        slack = float(np.median(w.slacks)) if w.slacks else 16.0
        f = [
            w.arrived / span / mb,
            w.admitted / w.arrived if w.arrived else 1.0,
            sys.in_flight / (4 * mb),
            sys.verify_queue / mb,
            w.batch_reqs / w.batches / mb if w.batches else 0.0,
            w.batch_s / w.batches / tpot if w.batches else 0.0,
            sys.site_state(info.target_site).load,
            w.accepted / w.drafted if w.drafted else 0.0,
            w.behind / w.planned if w.planned else 0.0,
            max(-1.0, min(1.0, slack / 16.0)),
            w.committed / span / (mb * 20.0),
            1.0 if remotes else 0.0,
            near.rtt_s / 0.1 if near else 0.0,
            near.load if near else 0.0,
            near.queue / 32.0 if near else 0.0,
            float(np.mean([s.load for s in states])) if states else 0.0,
            1.0 if edges else 0.0,
            float(np.mean([s.rtt_s for s in edges])) / 0.1 if edges else 0.0,
            1.0 if target_drafts else 0.0,
            1.0 if info.draft_ahead else 0.0,
            cost(info.target_site) if target_drafts else 0.0,
            cost(near.name) if near else 0.0,
            float(np.mean([cost(s.name) for s in edges])) if edges else 0.0,
            ctx / 2048.0,
            w.from_edge / w.arrived if w.arrived else 0.0,
            self.knobs.cap / (len(CAP_LEVELS) - 1),
            self.knobs.k_cap / (len(K_CAP_LEVELS) - 1),
            float(self.knobs.hedge),
        ]
        f += [1.0 if i == self.knobs.mode else 0.0 for i in range(len(self.modes))]
        f += [1.0 if v else 0.0 for v in self.valid]
        arr = np.clip(np.asarray(f, dtype=np.float32), -5.0, 5.0)
        if out is None:
            return arr
        out[:] = arr
        return out

    # ------------------------------------------------------------------ Controller
    def see(self, point: DecisionPoint) -> None:
        """Account a point in the current window and pass its feedback to every mode."""
        w = self._win
        for r in point.feedback:
            w.batches += 1
            w.batch_reqs += len(r.rids)
            w.batch_s += r.duration
            w.drafted += sum(r.ks)
            w.accepted += sum(r.accepted)
            w.committed += sum(r.accepted) + len(r.rids)
            for m, ok in zip(self.modes, self.valid):
                if ok:
                    m.on_batch_done(r)
        if point.kind == "plan":
            w.arrived += len(point.admit)
            now = point.time
            for r in point.admit:
                self._tpot_ref = min(self._tpot_ref, r.tpot_slo)
                w.from_edge += r.origin in self._edge_sites
            for r in point.plan:
                w.context += r.context_tokens
                slack = (r.deadline() - now) / r.tpot_slo
                w.behind += slack < 0
                w.planned += 1
                if len(w.slacks) < 256:
                    w.slacks.append(slack)

    def decide(self, point: DecisionPoint) -> Decision:
        self.see(point)
        if self.act is not None and self.due(point.time):
            self.set_knobs(self.act(self.observation(point.system), self.action_mask()), point.time)
        return self.answer(point)

    def answer(self, point: DecisionPoint) -> Decision:
        """The decision under the current knobs (the env calls this after :meth:`set_knobs`)."""
        active = self._active
        active.prepare(point)
        sys = point.system
        if point.kind == "batch":
            return Decision(batch=active.select_batch(point.ready, sys))
        admit = [self.admit(r, sys) for r in point.admit]
        self._win.admitted += sum(admit)
        return Decision(admit=admit, plans=[self.plan_round(r, sys) for r in point.plan])

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        cap = CAP_LEVELS[self.knobs.cap] * self.info.max_batch_size  # type: ignore[union-attr]
        return sys.in_flight <= cap and self._active.admit(req, sys)

    # plan_round: Controller's, over the three methods below
    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return self._active.drafter_site(req, sys)

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return min(self._active.draft_length(req, sys, site), K_CAP_LEVELS[self.knobs.k_cap])

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        red = self._active.redundancy(req, sys, site, k)
        return red if self.knobs.hedge or not red.backups else replace(red, backups=())

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        return self._active.select_batch(ready, sys)


def _mode_index(mode: str | int, specs: Sequence[str]) -> int:
    if isinstance(mode, int):
        if not 0 <= mode < len(specs):
            raise ValueError(f"mode index {mode} is out of range for modes {list(specs)}")
        return mode
    if mode not in specs:
        raise ValueError(f"mode {mode!r} is not one of the modes {list(specs)}")
    return specs.index(mode)


def knob_setting(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """A knobs mapping (a recipe's ``warm_start.knobs``, possibly partial) with its defaults: mode
    0, no admission cap, the largest k cap, hedging on."""
    return {"mode": int(knobs.get("mode", 0)), "cap": knobs.get("cap"), "k_cap": knobs.get("k_cap"),
            "hedge": int(knobs.get("hedge", 1))}


def setting_key(knobs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """A knobs mapping's level indices (defaults: :func:`knob_setting`): equal for settings that
    run the same (e.g. cap 2 and 2.0)."""
    k = knob_setting(knobs)
    return k["mode"], cap_level(k["cap"]), k_cap_level(k["k_cap"]), k["hedge"]


def fixed_controller(knobs: Mapping[str, Any], modes: Sequence[str], interval_s: float = 1.0) -> KnobController:
    """A knobs mapping (defaults: :func:`knob_setting`) as the KnobController that holds it."""
    k = knob_setting(knobs)
    return KnobController(mode=k["mode"], cap=k["cap"], k_cap=k["k_cap"], hedge=bool(k["hedge"]), modes=modes,
                          interval_s=interval_s)


def checked_settings(settings: Any, n_modes: int, where: str) -> list[dict[str, Any]]:
    """Knob settings from a file (a portfolio, a selector model), each checked: a mapping of
    mode (an index into ``n_modes`` modes), cap, k_cap and hedge at valid levels."""
    out = []
    for i, s in enumerate(settings):
        if not isinstance(s, dict) or set(s) - {"mode", "cap", "k_cap", "hedge"}:
            raise ValueError(f"{where}: settings[{i}] must map mode, cap, k_cap and hedge, got {s!r}")
        mode = s.get("mode", 0)
        if not isinstance(mode, int) or not 0 <= mode < n_modes:
            raise ValueError(f"{where}: settings[{i}].mode must index modes (0..{n_modes - 1}), got {mode!r}; give a "
                             "mode for every index the settings use, or settings written for these modes")
        try:
            cap_level(s.get("cap")), k_cap_level(s.get("k_cap"))
        except ValueError as e:
            raise ValueError(f"{where}: settings[{i}]: {e}") from None
        out.append(dict(s))
    if not out:
        raise ValueError(f"{where}: settings is empty; at least one knob setting is needed")
    return out


def cap_level(cap: float | str | None) -> int:
    """The :data:`CAP_LEVELS` index of an admission cap (``None`` or ``"none"``: no cap)."""
    return _level(CAP_LEVELS, math.inf if cap in (None, "none") else float(cap), "cap")


def k_cap_level(k_cap: int | None) -> int:
    """The :data:`K_CAP_LEVELS` index of a draft-length cap (``None``, or above the largest: the largest)."""
    return _level(K_CAP_LEVELS, K_CAP_LEVELS[-1] if k_cap is None else min(int(k_cap), K_CAP_LEVELS[-1]), "k_cap")


def _level(levels: Sequence[float], value: float, what: str) -> int:
    if value not in levels:
        shown = ["none" if math.isinf(v) else v for v in levels]
        raise ValueError(f"{what}={value} is not a level; choose one of {shown}")
    return list(levels).index(value)
