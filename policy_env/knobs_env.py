"""``specctl/SpecKnobs-v0``: set the knobs of per-request heuristics every few simulated seconds.

The per-request envs (``SpecControl-v0`` ...) take ~200 decisions per simulated second, so a
per-step discount of 0.99 sees about half a simulated second ahead while admission and site
choices play out over tens of seconds. Here a step is a fixed control interval (``interval_s``
simulated seconds): the agent sets the :class:`controllers.knobs.KnobController` knobs (mode,
admission cap, k cap, hedging) and the heuristics carry them out until the next step. The
discount is per simulated time: :func:`gamma_for` turns a half-life in seconds into the
per-step gamma. Observations describe sites by features, never by name, so one policy trains
over a :class:`runtime.distribution.ScenarioDistribution` and deploys on unseen sites.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from controllers.knobs import DEFAULT_MODES, Knobs, KnobController, fixed_controller
from runtime.distribution import ScenarioDistribution
from runtime.scenario import Scenario, load_scenario
from runtime.sim import Simulator

from policy_env.env import TRAIN_SEED_MAX


def gamma_for(half_life_s: float, interval_s: float) -> float:
    """Per-step discount whose credit halves every ``half_life_s`` simulated seconds."""
    if half_life_s <= 0 or interval_s <= 0:
        raise ValueError(f"half_life_s and interval_s must be > 0, got {half_life_s} and {interval_s}")
    return float(0.5 ** (interval_s / half_life_s))


class SpecKnobsEnv(gym.Env[np.ndarray, np.ndarray]):
    """Set the knobs of per-request heuristics every ``interval_s`` simulated seconds.

    ## Observation space
    ``Box(-5, 5, (23 + 2 * len(modes),), float32)``: :data:`controllers.knobs.KNOB_FEATURES`
    (arrival rate, admitted share, in flight, verify queue, batch size and pace, target load,
    acceptance, share of requests behind their deadline, median slack, tokens/s; the nearest
    remote site's RTT, load and queue, mean remote load, edge devices and their RTT; the current
    knobs) then the current mode (one-hot) and which modes can run here.

    ## Action space
    ``MultiDiscrete([len(modes), 7, 6, 2])``: mode, admission cap level, k cap level, hedge.
    A mode that cannot run on the episode's scenario is replaced by the first that can
    (:meth:`action_masks` masks it for MaskablePPO).

    ## Reward
    Requests completed within their SLOs during the step, divided by ``reward_scale`` (so the
    undiscounted return is goodput x arrival window / reward_scale). After the arrival window
    one last step drains the system with the knobs left as they are.

    With ``baseline`` (a fixed knobs mapping, e.g. the warm start's; :meth:`set_baseline`), a
    shadow simulator of the same system and seed runs that setting alongside, and each step's
    reward is the policy's SLO-met requests minus the shadow's over the same simulated time. The
    two runs share arrivals, loads, links and acceptance draws, so most of an episode's luck
    cancels, while the return still differs from the plain one by a sum the policy cannot change
    (the baseline's): a control variate that leaves the policy gradient's expectation as it is.

    ## Episodes
    ``reset`` draws the simulator seed below ``TRAIN_SEED_MAX`` (evaluation seeds lie above) and,
    with ``distribution``, a scenario and rate from it (the same seed gives the same system).
    It returns the observation at the first decision point, so the first action runs from the
    start, and later ones every ``interval_s``.

    ## Arguments
    ``gym.make("specctl/SpecKnobs-v0", scenario="wan-4region", rate=None, distribution=None,
    duration=60.0, interval_s=1.0, modes=("wanspec", "wisp", "centralized"), reward_scale=10.0,
    baseline=None)``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        scenario: str | Scenario = "wan-4region",
        rate: float | None = None,
        distribution: str | ScenarioDistribution | None = None,
        duration: float = 60.0,
        interval_s: float = 1.0,
        modes: Sequence[str] = DEFAULT_MODES,
        reward_scale: float = 10.0,
        baseline: Mapping[str, Any] | None = None,
    ) -> None:
        if duration <= 0 or interval_s <= 0 or reward_scale <= 0:
            raise ValueError(f"duration, interval_s and reward_scale must be > 0, got {duration}, {interval_s}, {reward_scale}")
        self.distribution = ScenarioDistribution.load(distribution) if isinstance(distribution, str) else distribution
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.rate = rate
        self.duration = float(duration)
        self.interval_s = float(interval_s)
        self.modes = tuple(modes)
        self.reward_scale = float(reward_scale)
        self.controller = KnobController(modes=self.modes, interval_s=self.interval_s)
        n = self.controller.n_features
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (n,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(self.controller.action_dims)
        self.sim: Simulator | None = None
        self.sim_seed = 0
        self.episode_scenario: Scenario = self.scenario
        self.episode_rate: float | None = rate
        self._point = None
        self._records = 0
        self.baseline: dict[str, Any] | None = None
        self._shadow: Simulator | None = None
        self._shadow_ctl: KnobController | None = None
        self._shadow_point = None
        self._shadow_records = 0
        self.set_baseline(baseline)

    def set_baseline(self, knobs: Mapping[str, Any] | None) -> None:
        """Reward against this fixed setting from the next episode on (None: the plain reward)."""
        if knobs is not None:
            fixed_controller(knobs, self.modes, self.interval_s)  # a bad mapping fails here, not at reset
        self.baseline = dict(knobs) if knobs is not None else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.sim_seed = int(self.np_random.integers(0, TRAIN_SEED_MAX))
        if options and "sim_seed" in options:
            self.sim_seed = int(options["sim_seed"])
        self.episode_scenario, self.episode_rate = self.draw(self.sim_seed)
        self.sim = Simulator(self.episode_scenario, self.sim_seed, self.duration, rate=self.episode_rate)
        self.controller.knobs = Knobs()
        self.controller.bind(self.sim.info)
        self.controller.take_over()  # the agent's first action runs from the first decision
        self._records = 0
        self._point = None
        self._shadow = self._shadow_ctl = self._shadow_point = None
        if self.baseline is not None:
            self._shadow = Simulator(self.episode_scenario, self.sim_seed, self.duration, rate=self.episode_rate)
            self._shadow_ctl = fixed_controller(self.baseline, self.modes, self.interval_s)
            self._shadow_ctl.bind(self._shadow.info)
            self._shadow_records = 0
        self._advance()
        return self._observe(), self._info()

    def draw(self, sim_seed: int) -> tuple[Scenario, float | None]:
        """The episode's system for ``sim_seed``: a draw from the distribution, else the scenario."""
        if self.distribution is None:
            return self.scenario, self.rate
        return self.distribution.draw(sim_seed)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        sim, ctl = self.sim, self.controller
        if sim is None or self._point is None:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        ctl.set_knobs(np.asarray(action).reshape(-1), self._point.time)
        sim.apply(ctl.answer(self._point))
        self._point = None
        draining = sim.now >= self.duration
        terminated = self._advance(drain=draining)
        reward = self._reward()
        if self._shadow is not None:
            self._advance_shadow(None if terminated else sim.now)
            reward -= self._shadow_reward()
        return self._observe(), reward, terminated, False, self._info()

    def action_masks(self) -> np.ndarray:
        """Flat mask (MaskablePPO's layout): modes that cannot run here are masked."""
        if self.sim is None:
            return np.ones(int(sum(self.controller.action_dims)), dtype=bool)
        return self.controller.action_mask()

    # ------------------------------------------------------------------ internals
    def _advance(self, drain: bool = False) -> bool:
        """Run until the next tick (or, draining, to the end); ``True`` when the run is over."""
        sim, ctl = self.sim, self.controller
        while True:
            point = sim.next_decision()  # type: ignore[union-attr]
            if point is None:
                return True
            ctl.see(point)
            if not drain and ctl.due(point.time):
                self._point = point
                return False
            sim.apply(ctl.answer(point))  # type: ignore[union-attr]

    def _advance_shadow(self, until: float | None) -> None:
        """Run the baseline's shadow to its first decision at or after ``until`` (None: to the end)."""
        shadow, ctl = self._shadow, self._shadow_ctl
        while True:
            if self._shadow_point is None:
                self._shadow_point = shadow.next_decision()  # type: ignore[union-attr]
                if self._shadow_point is None:
                    return
            if until is not None and self._shadow_point.time >= until:
                return
            shadow.apply(ctl.decide(self._shadow_point))  # type: ignore[union-attr]
            self._shadow_point = None

    def _shadow_reward(self) -> float:
        met, self._shadow_records = _slo_met_since(self._shadow, self._shadow_records)  # type: ignore[arg-type]
        return met / self.reward_scale

    def _observe(self) -> np.ndarray:
        if self._point is None:
            return np.zeros(self.observation_space.shape, dtype=np.float32)
        return self.controller.observation(self._point.system)

    def _reward(self) -> float:
        met, self._records = _slo_met_since(self.sim, self._records)  # type: ignore[arg-type]
        return met / self.reward_scale

    def _info(self) -> dict[str, Any]:
        sim = self.sim
        return {"sim_time": sim.now if sim else 0.0, "sim_seed": self.sim_seed, "scenario": self.episode_scenario.name}


def _slo_met_since(sim: Simulator, seen: int) -> tuple[int, int]:
    """Requests of ``sim`` that met their SLOs among those finished after the first ``seen``,
    and how many have finished now."""
    recs = sim.metrics.records
    return sum(1 for r in recs[seen:] if r.slo_met), len(recs)
