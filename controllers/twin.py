"""A digital twin: probe the system, build a simulator of it from what the probe measured, and
hold the knob setting that runs best in that simulator.

The learned selector maps probe features to a setting through a model fitted on other systems,
so it knows only systems like those; the lookahead planner simulates the very system it runs
on, which needs that system's simulator (the oracle's privilege). The twin sits between them.
For ``probe_s`` it runs the first portfolio setting and measures what a deployment can measure:
- the sites, their roles, GPUs per site and nominal RTTs (:class:`~runtime.contract.RuntimeInfo`);
- each GPU's forward times, sampled from the runtime's own estimates (on the real runtime,
  its profiles) into tables, with the background load at the time divided out;
- each site's background load (the mean over the probe's windows);
- the arrival rate, and the prompt lengths, output lengths, origins and SLOs of the requests seen;
- each drafter's per-token acceptance, from the verifications (the runtime's prior for drafters
  the probe did not use).

From these it writes a scenario (:func:`twin_scenario`), runs every portfolio setting in it for
``horizon_s`` on ``seeds`` workloads (the same workloads for every setting), and holds the one
with the most SLO-meeting requests. What it cannot see it assumes: Poisson arrivals, constant
loads, i.i.d. acceptance with the default spread across requests, the default network jitter;
and, in the stressed twins it also scores on (below), bursts, load flips and drift.
It learns the system, not a mapping from other systems, so it moves to any set of sites; the
docs/twin.md measures what it gains and where the assumptions cost. It drops the
constant-load assumption where the system contradicts it (``replan``, on by default): it keeps
measuring, and when a site's load jumps to a regime it has not shown before, it plans again with
that site's load as a Markov process over the regimes seen (:func:`load_process`), at least
``replan_gap_s`` after the last plan, and switches only if the new best is ``replan_margin``
better in the twin than what it holds. It also scores every setting on ``stress`` (by default 2)
stressed twins (:func:`stressed_raw`), in which the bursts, load flips and acceptance drift a
probe cannot see are drawn from the training mix's ranges, so a setting that collapses under
them scores low (``stress=0``: the measured twin alone).

A plan takes 6-30 s of one core on the shipped files (3.3-16 s on the measured twin alone,
``stress=0``; :attr:`Twin.plan_s` sums a run's plans, up to ``1 + replan`` of them). In the
simulator it runs in the decision call (simulated time stands still meanwhile); on the real
runtime it runs in a spawned process while the current setting keeps serving.
"""

from __future__ import annotations

import copy
import math
import random
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runtime.contract import Decision, DecisionPoint, RuntimeInfo, SystemView
from runtime.latency import LatencyModel, ProfileTable
from runtime.scenario import Scenario, build_scenario

from controllers.knobs import CAP_LEVELS, DEFAULT_MODES, K_CAP_LEVELS, fixed_controller, setting_key
from controllers.lookahead import PORTFOLIO, load_portfolio
from controllers.selector import Selector, SelectorModel, load_selector

#: Where the forward-time tables are sampled: new tokens per forward, and context tokens.
NEW_TOKENS: tuple[int, ...] = tuple(2**i for i in range(15))  # 1 .. 16384
CONTEXTS: tuple[int, ...] = (0, *(2**i for i in range(9, 21)))  # 0, 512 .. 1M
#: Below this many verified draft rounds a drafter's acceptance is the runtime's prior.
MIN_ROUNDS = 50
#: A refinement step moves to a neighbouring setting only if it meets this share more SLOs in the twin.
REFINE_GAIN = 0.01
#: The guard: after the switch it skips GUARD_SETTLE windows, then reverts to the probe's setting
#: when the mean live score of the last GUARD_WINDOWS windows is GUARD_DROP below the probe's.
GUARD_SETTLE, GUARD_WINDOWS, GUARD_DROP = 3, 3, 0.15
#: Replanning, the default since it passed its rule on unseen systems of the mix (docs/twin.md): up to
#: REPLAN more plans a run, at least REPLAN_GAP_S apart, each switching only for REPLAN_MARGIN more SLOs.
REPLAN, REPLAN_GAP_S, REPLAN_MARGIN = 3, 10.0, 0.02
#: A plan leaves the probe's setting only for a setting that meets this share more SLOs in the twin
#: (``probe_margin``; 0: off. 0.02 lost on unseen mix systems and was not adopted, docs/twin.md).
PROBE_MARGIN = 0.0
#: With a learned selector (``selector=FILE``), the first plan holds the twin's best over the
#: selector's choice only if it meets this share more SLOs in the twin: the replans' margin, not tuned.
SELECTOR_MARGIN = REPLAN_MARGIN
#: Load levels of one site that lie more than this apart are distinct regimes (replanning, ``replan=N``).
LOAD_GAP = 0.15
#: Stressed twin workloads (``stress=N``) draw what a probe cannot see from the training mix's own
#: ranges (training/configs/scenario-mix.yaml): bursts (factor, mean burst and calm seconds), each
#: site's load flipping to a busy level with STRESS_FLIP_PROB (busy level, mean dwell idle and busy),
#: and each drafter's acceptance drifting within requests with STRESS_DRIFT_PROB.
STRESS_BURST_FACTOR, STRESS_BURST_S, STRESS_CALM_S = (1.5, 3.0), (3.0, 15.0), (10.0, 40.0)
STRESS_FLIP_PROB, STRESS_BUSY, STRESS_DWELL_S = 0.3, (0.4, 0.8), ((10.0, 60.0), (5.0, 30.0))
STRESS_DRIFT_PROB = 0.3
#: Stressed twins per plan, the default since it passed its rule on unseen systems of the mix (docs/twin.md).
STRESS = 2
#: The twin's probe and the start of its averaging (s): shorter than the selector's 10 s, since a probe
#: runs the default setting, which can be far from a system's best, and the twin needs only rates,
#: lengths, loads and acceptance from it (docs/twin.md, "A 4-s probe"). With a learned selector
#: (``selector=FILE``) it probes as long as the selector was fitted on.
TWIN_PROBE_S, TWIN_WARMUP_S = 4.0, 1.0


@dataclass
class Measured:
    """What a probe saw, beyond the knob features: the twin's raw material."""

    arrivals: list[tuple[str, int, int, str, float, float]] = field(default_factory=list)  # origin, prompt, output, SLO
    loads: dict[str, list[float]] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # by drafter model
    rejections: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)

    def alpha(self, drafter: str, prior: float) -> float:
        """Per-token acceptance: accepted / (accepted + rejections), the geometric run length's
        estimate with fully accepted rounds censored; ``prior`` below :data:`MIN_ROUNDS` rounds."""
        a, r = self.accepted.get(drafter, 0), self.rejections.get(drafter, 0)
        if self.rounds.get(drafter, 0) < MIN_ROUNDS or a + r == 0:
            return prior
        return a / (a + r)


def _length_dist(xs: Sequence[int]) -> dict[str, Any]:
    """A lognormal (the scenario schema's length distribution) with the samples' mean, log spread and range."""
    x = np.asarray(xs, dtype=float)
    sigma = float(np.std(np.log(x))) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "sigma": sigma, "min": int(x.min()), "max": int(x.max())}


def _table(forward: Callable[[int, int], float]) -> ProfileTable:
    """A forward-time table over :data:`NEW_TOKENS` x :data:`CONTEXTS` from ``forward(new, ctx)`` seconds."""
    return ProfileTable([(n, c, max(forward(n, c), 1e-9) * 1000.0) for c in CONTEXTS for n in NEW_TOKENS], "twin")


def measured_latency(sys: SystemView, info: RuntimeInfo) -> tuple[LatencyModel, dict[str, LatencyModel]]:
    """The target's verification and every drafting site's draft step as tables, from the
    runtime's estimates now, with the background load's slowdown (1 / (1 - load), the
    simulator's model of sharing) divided out: the twin applies its own loads."""
    def free(site: str) -> float:
        return 1.0 - min(sys.site_state(site).load, 0.99)

    t = free(info.target_site)
    verify = _table(lambda n, c: sys.estimate_verify_time(1, n, c) * t)
    drafts: dict[str, LatencyModel] = {}
    for s in info.sites:
        if s.drafter:
            f = free(s.name)
            drafts[s.name] = _table(lambda n, c, name=s.name, f=f: sys.estimate_draft_time(name, n, 1, c) * f)
    return verify, drafts


def load_regimes(history: Sequence[float]) -> list[int]:
    """Each window's regime: the loads sorted and split wherever neighbours are more than
    :data:`LOAD_GAP` apart, numbered from the lowest (a smooth drift stays one regime)."""
    order = sorted(range(len(history)), key=lambda i: history[i])
    labels, regime = [0] * len(history), 0
    for prev, i in zip(order, order[1:]):
        regime += history[i] - history[prev] > LOAD_GAP
        labels[i] = regime
    return labels


def constant_load(history: Sequence[float]) -> dict[str, Any]:
    """A site's load as constant at its windows' mean (below 0.95: the twin's sites stay usable)."""
    return {"kind": "constant", "level": min(float(np.mean(history)), 0.95)}


def load_process(history: Sequence[float], window_s: float) -> dict[str, Any]:
    """A site's load as the twin models it from its windows' loads: constant at their mean if they
    form one regime (:func:`load_regimes`); otherwise a Markov process over the regimes' means,
    starting in the current one, each regime's mean dwell the mean length of its finished runs
    (one with no finished run: the longer of its current run and the others' mean dwell)."""
    if not history:
        return {"kind": "constant", "level": 0.0}
    labels = load_regimes(history)
    n = max(labels) + 1
    if n == 1:
        return constant_load(history)
    runs: list[tuple[int, int]] = []  # (regime, windows), in time order
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    finished = [[w * window_s for r, w in runs[:-1] if r == g] for g in range(n)]
    known = [float(np.mean(f)) for f in finished if f]
    now, current_run = runs[-1]
    dwell = [float(np.mean(f)) if f else max(current_run * window_s if g == now else 0.0, float(np.mean(known)))
             for g, f in enumerate(finished)]
    levels = [min(float(np.mean([x for x, lab in zip(history, labels) if lab == g])), 0.95) for g in range(n)]
    order = [now] + [g for g in range(n) if g != now]  # the simulator starts in the first level
    return {"kind": "markov", "levels": [levels[g] for g in order], "mean_dwell_s": [dwell[g] for g in order]}


def twin_scenario(info: RuntimeInfo, seen: Measured, now: float, drain_s: float,
                  load_window_s: float | None = None) -> Scenario:
    """The scenario a probe's measurements describe (its forward times come separately, from
    :func:`measured_latency`). Every site is its own entry, so origins are weighted by listing
    each arrival's; the drafters' architectures are placeholders that the measured tables replace.
    Loads are constant at the windows' mean, or, given ``load_window_s`` (the windows' length),
    the regimes and dwells the windows show (:func:`load_process`)."""
    return build_scenario(twin_raw(info, seen, now, drain_s, load_window_s), source=f"<twin of {info.scenario}>")


def stressed_raw(raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A twin's raw scenario (:func:`twin_raw`) with what a probe cannot see drawn from the
    training mix's ranges (the ``STRESS_*`` constants): bursty arrivals at the measured mean rate;
    each site whose load the twin holds constant flips, with :data:`STRESS_FLIP_PROB`, between
    that level and a busy one (starting at the measured level); each drafter's acceptance drifts
    within requests with :data:`STRESS_DRIFT_PROB`. Everything measured stays as measured."""
    raw = copy.deepcopy(raw)
    work = raw["workload"]
    work["arrivals"] = {"kind": "bursty", "rate": work["arrivals"]["rate"],
                        "burst_factor": rng.uniform(*STRESS_BURST_FACTOR),
                        "mean_burst_s": rng.uniform(*STRESS_BURST_S), "mean_calm_s": rng.uniform(*STRESS_CALM_S)}
    for site in raw["sites"]:
        load, busy = site["load"], rng.uniform(*STRESS_BUSY)
        if rng.random() < STRESS_FLIP_PROB and load["kind"] == "constant" and load["level"] < busy:
            site["load"] = {"kind": "markov", "levels": [load["level"], busy],
                            "mean_dwell_s": [rng.uniform(*STRESS_DWELL_S[0]), rng.uniform(*STRESS_DWELL_S[1])]}
    for d in raw["drafters"].values():
        if rng.random() < STRESS_DRIFT_PROB:
            d["acceptance"] = {**d["acceptance"], "kind": "drift"}
    return raw


def twin_raw(info: RuntimeInfo, seen: Measured, now: float, drain_s: float,
             load_window_s: float | None = None) -> dict[str, Any]:
    """:func:`twin_scenario`'s raw mapping (before validation)."""
    if not seen.arrivals:
        raise ValueError("the probe saw no arrivals: nothing to build a twin from")
    span = max(now, 1e-3)  # the probe runs from the start
    drafters = sorted({s.drafter for s in info.sites if s.drafter})
    sites = []
    for s in info.sites:
        loads = seen.loads.get(s.name) or [0.0]
        load = load_process(loads, load_window_s) if load_window_s else constant_load(loads)
        entry: dict[str, Any] = {"name": s.name, "role": s.role, "gpus": s.gpus, "drafter": s.drafter, "load": load}
        if s.role != "target":
            entry["rtt_ms"] = s.rtt_s * 1000.0
        sites.append(entry)
    classes: dict[tuple[str, float, float], int] = {}
    for _, _, _, name, ttft, tpot in seen.arrivals:
        classes[(name, ttft, tpot)] = classes.get((name, ttft, tpot), 0) + 1
    raw = {
        "name": f"twin-of-{info.scenario}",
        "description": "built by controllers.twin from a probe's measurements",
        "drafters": {d: {"model": "llama-3.2-1b", "acceptance": {
            "kind": "iid", "alpha_mean": min(max(seen.alpha(d, info.prior_alpha.get(d, 0.7)), 0.02), 0.98)}}
            for d in drafters},
        "sites": sites,
        "workload": {
            "arrivals": {"kind": "poisson", "rate": len(seen.arrivals) / span},
            "prompt_tokens": _length_dist([a[1] for a in seen.arrivals]),
            "output_tokens": _length_dist([a[2] for a in seen.arrivals]),
            "origins": [a[0] for a in seen.arrivals],
            "slo_classes": [{"name": f"{name}-{i}", "ttft_s": ttft, "tpot_s": tpot, "weight": n}
                            for i, ((name, ttft, tpot), n) in enumerate(classes.items())],
        },
        "limits": {"max_k": info.max_k, "max_batch_size": info.max_batch_size, "max_batch_tokens": info.max_batch_tokens,
                   "max_redundancy": info.max_redundancy, "drain_s": drain_s},
    }
    return raw


class Twin(Selector):
    """Probes with the portfolio's first setting for ``probe_s``, then holds the setting that
    meets the most SLOs in a simulator built from the probe's measurements.

    ``horizon_s``: each twin run's arrival window; ``seeds``: twin workloads per setting (common
    to every setting). ``portfolio``/``modes``: the candidate knob settings (default: the
    lookahead planner's six, the selector's), or a portfolio file with its own modes and
    settings (``python -m training.portfolio`` learns one). ``refine``: after the portfolio, up
    to that many hill-climbing steps in the twin to a neighbouring setting (the cap or the k cap
    one level away, or hedging flipped) that meets :data:`REFINE_GAIN` more SLOs there (each step costs
    up to five more settings' runs). ``guard``: watch the held setting live and go back to the
    probe's setting, for good, when its live score (admitted share x share of rounds started on
    their SLO pace) falls :data:`GUARD_DROP` below the probe's: the twin cannot see load swings,
    bursts or acceptance drift, and a setting it favours can collapse under them. ``replan``: keep
    measuring after the probe, model each site's load by the regimes it has shown
    (:func:`load_process`), and plan again, up to that many times, when a site's load enters a
    regime not seen before (a load swing the probe could not see). ``replan_gap_s``: at least that
    long between two plans' starts (a new regime seen sooner waits for it), so the replans are not
    all spent on the first swings after the probe. ``replan_margin``: a replan switches away from
    the held setting only if the best setting meets that share more SLOs than the held one in the
    twin (a noisy twin's best is often no better than what runs now). ``probe_margin``: any plan,
    the first included, holds a setting other than the probe's only if it meets that share more
    SLOs than the probe's setting in the twin (after the replan margin's check), so where the
    twin's runs cannot tell them apart it keeps the setting it probed with (by default the one
    tuned over the training mix; 0: hold the twin's best). ``race``: score every setting
    on two heats (the first workload of the measured twin and of a stressed one) and only the
    ``race`` best (and the held one) on the other workloads: a cheaper plan for a large portfolio
    (default 0: every setting on every workload). ``stress``: that many more
    twin workloads per setting, each in a stressed twin (:func:`stressed_raw`: bursts, load flips
    and acceptance drift the probe could not see, drawn from the training mix's ranges), so a
    setting that collapses under them scores low. ``selector``: a learned selector's model file
    (``python -m training.selector --out FILE``, fitted on the twin's portfolio and probe): the
    first plan holds the selector's choice unless the twin's best meets ``selector_margin`` more
    SLOs than it in the twin. The selector knows systems like those it was fitted on, better than
    the twin's assumptions do; the twin overrules it where its runs say the choice is clearly
    worse, which is where a system lies outside what the selector saw. ``background``: plan in a
    separate process while the current setting keeps serving, and switch at the first decision
    after the plan is done; default: on runtimes that run in wall-clock time (the real one, whose
    serving would otherwise wait for the plan), not in the simulator (where the switch time would
    then depend on the machine's speed)."""

    name = "twin"

    def __init__(self, horizon_s: float = 30.0, seeds: int = 2, probe_s: float | None = None,
                 warmup_s: float | None = None,
                 portfolio: Sequence[dict[str, Any]] | str | Path = PORTFOLIO, modes: Sequence[str] = DEFAULT_MODES,
                 refine: int = 0,
                 guard: bool = False, replan: int = REPLAN, replan_gap_s: float = REPLAN_GAP_S,
                 replan_margin: float = REPLAN_MARGIN, probe_margin: float = PROBE_MARGIN, stress: int = STRESS,
                 race: int = 0, selector: str | Path | SelectorModel | None = None,
                 selector_margin: float = SELECTOR_MARGIN, background: bool | None = None) -> None:
        if horizon_s <= 0 or seeds < 1 or min(refine, replan, stress, race) < 0:
            raise ValueError(f"horizon_s must be > 0, seeds >= 1, and refine, replan, stress and race >= 0, got "
                             f"{horizon_s}, {seeds}, {refine}, {replan}, {stress} and {race}")
        if replan_gap_s < 0 or replan_margin < 0 or probe_margin < 0 or selector_margin < 0:
            raise ValueError(f"replan_gap_s, replan_margin, probe_margin and selector_margin must be >= 0, got "
                             f"{replan_gap_s}, {replan_margin}, {probe_margin} and {selector_margin}")
        prior = load_selector(selector) if isinstance(selector, (str, Path)) else selector
        if probe_s is None:
            probe_s = prior.probe_s if prior is not None else TWIN_PROBE_S
        if warmup_s is None:
            warmup_s = prior.warmup_s if prior is not None else TWIN_WARMUP_S
        if not 0 < warmup_s < probe_s:
            raise ValueError(f"need 0 < warmup_s < probe_s, got {warmup_s} and {probe_s}")
        if isinstance(portfolio, (str, Path)):  # a file from `python -m training.portfolio`
            modes, portfolio = load_portfolio(portfolio)
        super().__init__(settings=portfolio, modes=modes, probe_s=probe_s, warmup_s=warmup_s)
        self.horizon_s, self.seeds, self.refine, self.guard = float(horizon_s), int(seeds), int(refine), bool(guard)
        self.replan, self.background = int(replan), background
        self.replan_gap_s, self.replan_margin = float(replan_gap_s), float(replan_margin)
        self.probe_margin = float(probe_margin)
        self.stress, self.race = int(stress), int(race)
        self.portfolio = list(self.settings)
        self.prior = prior
        if self.prior is not None:
            self._check_prior(str(selector) if isinstance(selector, (str, Path)) else "the selector model")
        self.selector_margin = float(selector_margin)
        self._pool: ProcessPoolExecutor | None = None
        self._future: Future | None = None
        self.seen = Measured()
        self.values: np.ndarray | None = None  # each setting's SLO-met requests in the twin, summed over seeds (NaN: out of the race)
        self.plan_s = 0.0  # wall seconds from each plan's start to its adoption, summed

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        self.settings = list(self.portfolio)  # (a refined setting is appended after the plan)
        self.seen = Measured()
        self.values, self.plan_s = None, 0.0
        self._drafter = {s.name: s.drafter for s in info.sites}
        self.probe_scores: list[float] = []
        self.held_scores: list[float] = []
        self.reverted_at: float | None = None  # when the guard went back to the probe's setting
        self.replanned_at: list[float] = []  # when it planned again (``replan``)
        self.kept_at: list[float] = []  # replans that kept the held setting by the margin (``replan_margin``)
        self.probe_kept_at: list[float] = []  # plans whose best was within ``probe_margin`` of the probe's setting
        self.learned: int | None = None  # the selector's choice (``selector``), made when the probe ends
        self.overruled = False  # whether the first plan held the twin's best instead of it
        self._planned_t = 0.0  # when the last plan started
        self._regime_pending = False  # a site entered a new regime; a replan is due after the gap
        self._background = self.background if self.background is not None else info.wall_clock
        self._future, self._plan_started = None, 0.0

    def _check_prior(self, where: str) -> None:
        """The selector must choose among this twin's settings from features of this twin's probe."""
        m = self.prior
        assert m is not None
        if [setting_key(s) for s in m.settings] != [setting_key(s) for s in self.portfolio] or list(m.modes) != list(self.mode_specs):
            raise ValueError(f"{where} chooses among other settings or modes than this twin's portfolio; fit the selector "
                             "on the twin's portfolio (`python -m training.selector --portfolio FILE`) or pass that portfolio")
        if (m.probe_s, m.warmup_s) != (self.probe_s, self.warmup_s):
            raise ValueError(f"{where} was fitted on a {m.probe_s:g}-s probe averaged from {m.warmup_s:g} s, the twin probes "
                             f"{self.probe_s:g} s from {self.warmup_s:g} s; set probe_s and warmup_s to the model's")

    def live_score(self) -> float:
        """The current window's admitted share x share of rounds started on their SLO pace."""
        w = self._win
        admitted = w.admitted / w.arrived if w.arrived else 1.0
        return admitted * (1.0 - (w.behind / w.planned if w.planned else 0.0))

    def decide(self, point: DecisionPoint) -> Decision:
        due = self.due(point.time)
        if self.probing or self.replan:
            self._measure(point, window_ends=due and point.time > self.warmup_s)
        if self.probing:
            if due and point.time > self.warmup_s:
                self.probe_scores.append(self.live_score())
            return super().decide(point)
        if self._future is not None and self._future.done():  # a plan finished in the background
            plan, self._future = self._future.result(), None
            chosen = self._adopt(plan)
            if self._pool is not None:  # no idle planning process while serving; a replan starts another
                self._pool.shutdown(wait=False)  # (joining it would stall serving while it exits)
                self._pool = None
            if self.reverted_at is None:
                self.chosen = chosen
                return self._hold(point)
        if due and self.guard and self.reverted_at is None and self.chosen:
            self.held_scores.append(self.live_score())
            recent = self.held_scores[GUARD_SETTLE:][-GUARD_WINDOWS:]
            if len(recent) == GUARD_WINDOWS and np.mean(recent) < np.mean(self.probe_scores) - GUARD_DROP:
                self.reverted_at, self.chosen = point.time, 0
                return self._hold(point)
        if due and self.values is not None and len(self.replanned_at) < self.replan and self.reverted_at is None \
                and not self._regime_pending:
            self._regime_pending = self._new_regime()
        if self._regime_pending and self._future is None and self.reverted_at is None \
                and point.time - self._planned_t >= self.replan_gap_s:
            self._regime_pending = False
            self.replanned_at.append(point.time)
            chosen = self._plan(point)
            if chosen is not None:
                self.chosen = chosen
                return self._hold(point)
        return super().decide(point)

    def _hold(self, point: DecisionPoint) -> Decision:
        """Account ``point`` and switch to the chosen setting now."""
        self.see(point)
        self.set_knobs(self.action_for(self.settings[self.chosen or 0]), point.time)
        return self.answer(point)

    def _new_regime(self) -> bool:
        """Whether a site's latest load lies in a regime its earlier loads did not show."""
        for loads in self.seen.loads.values():
            if len(loads) > 1 and max(load_regimes(loads)) > max(load_regimes(loads[:-1])):
                return True
        return False

    def _measure(self, point: DecisionPoint, window_ends: bool) -> None:
        """Account a point's arrivals and verified rounds; at the end of each window after the
        warm-up, every site's load (during the probe, and after it with ``replan``)."""
        seen = self.seen
        for r in point.admit:
            seen.arrivals.append((r.origin, r.prompt_tokens, r.max_tokens, r.slo_class, r.ttft_slo, r.tpot_slo))
        for b in point.feedback:
            for k, a, site in zip(b.ks, b.accepted, b.draft_sites):
                model = self._drafter.get(site) if k > 0 and site is not None else None
                if model is not None:
                    seen.rounds[model] = seen.rounds.get(model, 0) + 1
                    seen.accepted[model] = seen.accepted.get(model, 0) + a
                    seen.rejections[model] = seen.rejections.get(model, 0) + (a < k)
        if window_ends:
            for s in self.info.sites:  # type: ignore[union-attr]
                seen.loads.setdefault(s.name, []).append(point.system.site_state(s.name).load)

    def pick(self, point: DecisionPoint) -> int | None:
        if not self.seen.arrivals:
            return None  # nothing to model a workload from: keep the probe's setting
        return self._plan(point)

    def plan_args(self, point: DecisionPoint) -> tuple[Any, ...]:
        """:func:`plan_settings`' arguments for a plan at ``point``: the twin built from what was
        measured so far, its stressed twins, the measured forward times, and this twin's options."""
        info = self.info
        assert info is not None, "bind() first"
        raw = twin_raw(info, self.seen, point.time, drain_s=self.horizon_s,
                       load_window_s=self.interval_s if self.replan else None)
        source = f"<twin of {info.scenario}>"
        scenario = build_scenario(raw, source=source)
        stressed = tuple(build_scenario(stressed_raw(raw, random.Random(j)), source=f"<stressed {source}>")
                         for j in range(self.stress))
        held = self.chosen if self.chosen is not None and self.chosen < len(self.portfolio) else None
        if held is None and self.prior is not None:  # the first plan: a race keeps the selector's choice
            held = self.learned = self.prior.choose(self.probe_features())
        return (scenario, *measured_latency(point.system, info), self.portfolio, self.mode_specs, self.horizon_s,
                self.seeds, self.refine, stressed, self.race, held)

    def _plan(self, point: DecisionPoint) -> int | None:
        """Plan from what was measured so far and return the index of the setting the twin runs
        best; in the background, start that and return None (keep the current setting)."""
        args = self.plan_args(point)
        self._plan_started, self._planned_t = time.perf_counter(), point.time
        if not self._background:
            return self._adopt(plan_settings(*args))
        if self._pool is None:  # spawned: the parent may hold a GPU context, which fork would copy
            self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        self._future = self._pool.submit(plan_settings, *args)
        return None

    def _adopt(self, plan: tuple[np.ndarray, dict[str, Any]]) -> int:
        """Take a finished plan: the portfolio's values, and the index of the setting to hold."""
        self.values, best = plan
        self.plan_s += time.perf_counter() - self._plan_started
        self.settings = list(self.portfolio)
        if setting_key(best) not in {setting_key(s) for s in self.settings}:
            self.settings.append(best)  # a refined setting
        chosen, held = [setting_key(s) for s in self.settings].index(setting_key(best)), self.chosen
        values = self.values
        learned = None if self.replanned_at else self.learned  # (set only with a selector, at the first plan)
        if learned is not None and chosen != learned and chosen < len(values) \
                and not values[chosen] > values[learned] * (1 + self.selector_margin):
            chosen = learned  # the twin's best is not clearly better than the selector's choice
        self.overruled = self.overruled or (learned is not None and chosen != learned)
        if self.replanned_at and held is not None and held != chosen and max(chosen, held) < len(values) \
                and values[chosen] < values[held] * (1 + self.replan_margin):
            self.kept_at.append(self.replanned_at[-1])
            chosen = held  # not enough better in the twin to switch
        if self.probe_margin and chosen != 0 and chosen < len(values) \
                and values[chosen] < values[0] * (1 + self.probe_margin):
            self.probe_kept_at.append(self._planned_t)
            return 0  # within the margin of the probe's setting: hold that
        return chosen

    def wait(self) -> None:
        """Block until a plan running in the background is done (it is adopted at the next decision)."""
        if self._future is not None:
            self._future.result()


Workload = tuple[Scenario, int]  # a twin and the seed of one of its workloads


def twin_workloads(scenario: Scenario, seeds: int, stressed: Sequence[Scenario] = ()) -> list[Workload]:
    """The workloads a plan runs every setting on: ``seeds`` of the measured twin, then one of
    each stressed twin (seeds continue, so no two share arrivals)."""
    return [(scenario, seed) for seed in range(seeds)] + [(sc, seeds + j) for j, sc in enumerate(stressed)]


def slo_met(setting: dict[str, Any], modes: Sequence[str], on: Sequence[Workload], horizon_s: float,
            verify: LatencyModel, drafts: dict[str, LatencyModel]) -> float:
    """Requests that met their SLOs with ``setting`` held, summed over the workloads ``on``."""
    from runtime.sim import Simulator  # the twin's engine: imported where it plans

    total = 0.0
    for sc, seed in on:
        sim = Simulator(sc, seed=seed, duration=horizon_s, verify_latency=verify, draft_latency=drafts)
        sim.run(fixed_controller(setting, modes))
        total += sum(r.slo_met for r in sim.metrics.records)
    return total


def plan_settings(scenario: Scenario, verify: LatencyModel, drafts: dict[str, LatencyModel],
                  portfolio: Sequence[dict[str, Any]], modes: Sequence[str], horizon_s: float, seeds: int,
                  refine: int, stressed: Sequence[Scenario] = (), race: int = 0,
                  keep: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Every portfolio setting's SLO-met requests in the twin (summed over ``seeds`` workloads, and
    one workload in each ``stressed`` twin, the same for every setting), and the setting to hold:
    the best, then up to ``refine`` hill-climbing steps to a neighbour that meets
    :data:`REFINE_GAIN` more. ``race``: when the portfolio holds more settings than that, score
    every setting on the heats (:func:`race_heats`), and only the ``race`` best of them (and
    ``keep``, the setting held now) on the other workloads; the rest are NaN. A plain function of
    picklable arguments, so it runs here or in a planning process alike."""
    runs = twin_workloads(scenario, seeds, stressed)

    def met(setting: dict[str, Any], on: Sequence[Workload] = runs) -> float:
        return slo_met(setting, modes, on, horizon_s, verify, drafts)

    if 0 < race < len(portfolio):
        heats = race_heats(seeds, len(stressed))
        first = np.array([met(s, [runs[j] for j in heats]) for s in portfolio])
        alive = set(race_leaders(first, race)) | ({keep} if keep is not None else set())
        rest = [r for j, r in enumerate(runs) if j not in heats]
        values = np.full(len(portfolio), np.nan)
        for i in sorted(alive):
            values[i] = first[i] + met(portfolio[i], rest)
    else:
        values = np.array([met(s) for s in portfolio])
    best = int(np.nanargmax(values))
    current, value = dict(portfolio[best]), float(values[best])
    tried = {setting_key(s) for s in portfolio}
    for _ in range(refine):
        around = [n for n in _neighbours(current) if setting_key(n) not in tried]
        tried.update(setting_key(n) for n in around)
        scored = [(met(n), n) for n in around]
        if not scored or max(v for v, _ in scored) <= value * (1 + REFINE_GAIN):
            break
        value, current = max(scored, key=lambda vn: vn[0])
    return values, current


def race_heats(seeds: int, stressed: int) -> list[int]:
    """The workloads (indices into :func:`twin_workloads`) every setting runs in a race: the first
    of the measured twin and of the first stressed twin. On 16 training systems of the mix the
    18-setting grid's full-plan best was never below third on these two (docs/twin.md), while on the
    measured twin's first workload alone it was tenth on one."""
    return [0, seeds] if stressed else [0]


def race_leaders(heat_scores: np.ndarray, race: int) -> list[int]:
    """The ``race`` settings that met the most SLOs in the heats (ties: the earlier setting)."""
    return np.argsort(-np.asarray(heat_scores), kind="stable")[:race].tolist()


def _setting(mode: int, cap: int, k_cap: int, hedge: int) -> dict[str, Any]:
    """A knobs mapping from level indices."""
    c = CAP_LEVELS[cap]
    return {"mode": mode, "cap": None if math.isinf(c) else c, "k_cap": K_CAP_LEVELS[k_cap], "hedge": hedge}


def _neighbours(setting: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings one level away in the admission cap or the k cap, or with hedging flipped (same mode)."""
    mode, cap, k_cap, hedge = setting_key(setting)
    levels = [(c, k_cap, hedge) for c in (cap - 1, cap + 1) if 0 <= c < len(CAP_LEVELS)]
    levels += [(cap, q, hedge) for q in (k_cap - 1, k_cap + 1) if 0 <= q < len(K_CAP_LEVELS)]
    levels.append((cap, k_cap, 1 - hedge))
    return [_setting(mode, *lv) for lv in levels]
