"""Model-predictive knob selection (simulator only, like the oracle): hold the portfolio setting
whose simulated future is best.

At the first decision point and every ``replan_s`` after it, the controller forks the simulator
it runs in and resamples the fork's future ``futures`` times, the same draws for every
candidate (common random numbers). It runs each portfolio setting for ``horizon_s`` from the
current state, as a fixed-knob :class:`~controllers.knobs.KnobController`, and holds the
setting whose forks met the most SLOs (plus credit for what is on track) until the next plan.

It is a planner, not a learned policy: it needs a simulator of the system it runs on
(``info.clairvoyant``), which a real backend does not have, so :meth:`bind` refuses there.
``python -m training.lookahead`` judges it; the README gives the figures.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.contract import Decision, DecisionPoint, RuntimeInfo

from controllers.knobs import (
    CAP_LEVELS,
    DEFAULT_MODES,
    K_CAP_LEVELS,
    KnobController,
    checked_settings,
    fixed_controller,
    knob_setting,
)

#: Knob settings (modes index :data:`~controllers.knobs.DEFAULT_MODES`: wanspec, wisp,
#: centralized). The first is the default knob policy's tuned setting; the others give each
#: mode a tight and a loose admission cap.
PORTFOLIO: tuple[dict[str, Any], ...] = (
    {"mode": 2, "cap": 1.0, "k_cap": 8, "hedge": 0},
    {"mode": 2, "cap": 2.0, "k_cap": 8, "hedge": 0},
    {"mode": 0, "cap": 1.0, "k_cap": 3, "hedge": 0},
    {"mode": 0, "cap": 2.0, "k_cap": 8, "hedge": 1},
    {"mode": 1, "cap": 1.5, "k_cap": 8, "hedge": 0},
    {"mode": 1, "cap": 2.5, "k_cap": 3, "hedge": 0},
)


def load_portfolio(path: str | Path) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """A portfolio file: ``modes`` (controller specs) and ``settings`` (knob mappings indexing
    them). A clear error names what is wrong."""
    from runtime.scenario import read_yaml_mapping

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"portfolio file {str(p)!r} not found; write one with `python -m training.portfolio --out {p}`")
    expected = ("a mapping with `modes` (a list of controller specs) and `settings` (a list of knob mappings); "
                "write one with `python -m training.portfolio`")
    data = read_yaml_mapping(p, "portfolio file", ValueError, expected)
    if not isinstance(data.get("modes"), list) or not isinstance(data.get("settings"), list):
        raise ValueError(f"portfolio file {p}: expected {expected}")
    modes = tuple(str(m) for m in data["modes"])
    return modes, checked_settings(data["settings"], len(modes), str(p))


def on_track_credit(sim: Any) -> float:
    """Requests still in flight, counted as met by their share of tokens generated when they
    are on track for their SLOs (TTFT met, TPOT so far within its SLO): what a horizon that
    ends mid-request would otherwise count as lost."""
    credit = 0.0
    for req in sim.requests.values():
        first = req.first_token_time
        if (first >= 0 and first - req.arrival <= req.ttft_slo
                and (sim.now - first) / max(req.generated - 1, 1) <= req.tpot_slo):
            credit += req.generated / max(req.max_tokens, 1)
    return credit


class Lookahead(KnobController):
    """Plans every ``replan_s`` by simulating each portfolio setting ``horizon_s`` ahead on
    ``futures`` resampled futures; between plans it runs the chosen setting's heuristic."""

    name = "lookahead"

    def __init__(self, horizon_s: float = 20.0, replan_s: float = 15.0, futures: int = 2,
                 portfolio: Sequence[dict[str, Any]] | str | Path = PORTFOLIO, modes: Sequence[str] = DEFAULT_MODES,
                 include: Sequence[str] = (), known_acceptance: bool = True) -> None:
        """``portfolio``: knob settings over ``modes``, or a portfolio file (its own modes and
        settings; ``python -m training.portfolio`` learns one). ``include``: whole controller
        specs added to the portfolio as they are (e.g. the best tuned heuristic with its
        admission cap: the knobs' own cap, k cap and hedging stay off), so the planner switches
        away from them only where a simulated future says it pays.
        ``known_acceptance=False``: the forks forget each request's own acceptance rate and
        redraw it from the scenario's distribution (what a deployed planner could know)."""
        if isinstance(portfolio, (str, Path)):  # a file from `python -m training.portfolio`
            modes, portfolio = load_portfolio(portfolio)
        if horizon_s <= 0 or replan_s <= 0 or futures < 1:
            raise ValueError(f"horizon_s and replan_s must be > 0 and futures >= 1, got {horizon_s}, {replan_s}, {futures}")
        if not portfolio and not include:
            raise ValueError("portfolio must hold at least one knob setting")
        super().__init__(modes=[*modes, *include])
        self.horizon_s, self.replan_s, self.futures = float(horizon_s), float(replan_s), int(futures)
        self.known_acceptance = bool(known_acceptance)
        self.portfolio = [knob_setting(k) for k in checked_settings(portfolio, len(modes), "knob settings")] if portfolio else []
        self.portfolio += [knob_setting({"mode": len(modes) + j}) for j in range(len(include))]
        self.included = {len(modes) + j: str(spec) for j, spec in enumerate(include)}
        self.plans: list[int] = []  # the portfolio index chosen at each plan
        self._next_plan = 0.0

    def spec(self, knobs: Any = None) -> str:
        """As :meth:`KnobController.spec`, but an included controller held as it is goes by its own spec."""
        k = knobs or replace(self.knobs, mode=self.modes.index(self._active))
        if k.mode in self.included and list(k.as_action()[1:]) == [len(CAP_LEVELS) - 1, len(K_CAP_LEVELS) - 1, 1]:
            return self.included[k.mode]
        return super().spec(knobs)

    def bind(self, info: RuntimeInfo) -> None:
        sim = info.clairvoyant
        if sim is None or not hasattr(sim, "resample_future"):
            raise ValueError("lookahead plans in the simulator it runs in (info.clairvoyant), which a real backend "
                             "does not have; run it with `python -m runtime simulate` or training.evaluate")
        super().bind(info)
        self.usage = {}  # (binding set the default knobs; the first plan sets the first real ones)
        self.sim = sim
        self.plans = []
        self._next_plan = 0.0

    def values(self, point: DecisionPoint) -> np.ndarray:
        """Each portfolio setting's SLO-met requests over ``horizon_s`` from ``point`` (pending in
        the simulator), summed over the resampled futures; the simulator is not advanced."""
        values = np.zeros(len(self.portfolio))
        end = point.time + self.horizon_s
        for j in range(self.futures):
            future = zlib.crc32(f"{getattr(self.sim, 'seed', 0)}:{point.time:.6f}:{j}".encode())
            for i, k in enumerate(self.portfolio):
                fork = copy.deepcopy(self.sim)
                fork.resample_future(future, keep_acceptance=self.known_acceptance)
                ctl = fixed_controller(k, self.mode_specs)  # (binding repairs a mode that cannot run here)
                ctl.bind(fork.info)
                done = len(fork.metrics.records)
                fork.apply(ctl.decide(point))
                p = fork.next_decision()
                while p is not None and p.time < end:
                    fork.apply(ctl.decide(p))
                    p = fork.next_decision()
                values[i] += sum(r.slo_met for r in fork.metrics.records[done:]) + on_track_credit(fork)
        return values

    def decide(self, point: DecisionPoint) -> Decision:
        self.see(point)
        if point.time >= self._next_plan:
            best = int(np.argmax(self.values(point)))
            self.plans.append(best)
            self.set_knobs(self.action_for(self.portfolio[best]), point.time)
            self._next_plan = point.time + self.replan_s
        elif self.due(point.time):
            self.set_knobs(self.knobs.as_action(), point.time)  # the same setting, another interval
        return self.answer(point)
