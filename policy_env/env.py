"""Gymnasium environments that invert the runtime's control loop.

``step(action)`` answers the current decision point and runs the runtime to the next point the
agent owns; points it does not own are answered by a heuristic controller on the way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from runtime.contract import Controller
from runtime.scenario import Scenario, load_scenario
from runtime.sim import Simulator

from policy_env.codec import AGENT_DECISIONS, Codec
from policy_env.control import build_controller

#: Reward terms and their default weights (see the class docstring).
DEFAULT_REWARD: dict[str, float] = {
    "slo_request": 1.0,
    "slo_tokens": 0.0,
    "on_pace_tokens": 0.01,
    "tokens": 0.0,
    "late_request": 0.0,
    "dropped_request": 0.0,
    "target_draft_pass": 0.0005,
    "wasted_token": 0.0005,
}
#: Reset draws simulator seeds below this; evaluation uses seeds at or above it (held out).
TRAIN_SEED_MAX = 1_000_000_000


class SpecControlEnv(gym.Env[np.ndarray, np.ndarray]):
    """Control speculative decoding across sites: admission, draft length, drafter site, redundancy, batches.

    ## Description
    A discrete-event simulation of one scenario (sites, links, models, workload) runs until a
    decision point the agent owns: a *plan* point (arrivals need admitting or turning away;
    requests starting a speculation round need ``k``, a drafter site and a redundancy rule) or a
    *batch* point (the idle verifier needs the
    set of ready requests to verify together). The agent answers up to ``n_slots`` requests per
    step: at a plan point its arrivals first (arrival order), then its round starts by earliest
    deadline; at a batch point the most urgent ready requests. A plan point with more requests takes several
    steps (chunks) before the simulation moves on, a batch point shows its ``n_slots`` most
    urgent requests and verifies the others first-come-first-served after them. Decisions the
    agent does not own are answered by the heuristic ``base`` controller.

    ## Observation space
    ``Box(-1, 1, (G + 4*S + 14*n_slots,), float32)``, all features scaled to [-1, 1] (an env that
    does not own admission has G=9 and 13 per slot, without the admission features):

    | part | features |
    |---|---|
    | global (G=10) | point kind (+1 plan, -1 batch), requests at the point /64, chunks left /4, verify queue /64, in-flight (admitted or awaiting admission, unfinished) /256, verifier busy, verify-time EWMA /100 ms, last batch size /64, target background load, arrivals awaiting admission /8 |
    | per drafter site (S, not edges) | background load, draft queue /32, measured RTT /100 ms, busy |
    | per slot | present, SLO slack (deadline - now in TPOT units /32, clipped), tokens left /512, context /4096, acceptance estimate, last k /max_k, last accepted /max_k, in prefill, drafted tokens waiting /max_k, time waiting to verify (TPOT units), TPOT SLO /200 ms, drafter is the target site, draft tokens already streamed in by a draft-ahead site /max_k, awaiting admission (the slot's accept bit admits it) |

    Empty slots are all zeros (``present = 0``).

    ## Action space
    ``MultiDiscrete([max_k+1, n_site_options, 2, 2] * n_slots)``: per slot the draft length ``k``
    (0 = plain decode), the drafter site option (the target, each remote site, ``edge`` = the
    request's own device), redundancy (0 none, 1 one hedged backup: the target when drafting
    remotely, else the nearest other site, launched when the primary is late, or at once when a
    draft-ahead primary has streamed nothing in yet; where the runtime supports draft-ahead,
    every remote or edge round drafts ahead) and the accept
    bit: include in this verification batch at batch points; at plan points, for an arrival
    awaiting admission, admit it (1) or turn it away (0; it counts as dropped). Dimensions the agent does not own, empty slots, ``k`` beyond what a
    request can use, sites that cannot draft for it, and plan dimensions at batch points (and
    vice versa) are masked: :meth:`action_masks` gives the flat mask MaskablePPO expects.
    Unmasked invalid choices are repaired (k clipped, site replaced by the heuristic's).

    ## Reward
    Per step, over the simulated time since the previous step (weights: ``reward=`` dict):

    | term | default weight | per |
    |---|---|---|
    | ``slo_request`` | 1.0 | request completed within its TTFT and TPOT SLOs (goodput) |
    | ``slo_tokens`` | 0.0 | 100 output tokens of such requests |
    | ``on_pace_tokens`` | 0.01 | output token committed to a request still within its SLO after the commit (TTFT met, next-token deadline not passed): the dense, immediate form of goodput |
    | ``tokens`` | 0.0 | output token committed, on pace or not (throughput) |
    | ``late_request`` | 0.0 | request completed late (subtracted) |
    | ``dropped_request`` | 0.0 | request dropped: turned away at admission, over ``max_inflight``, or unfinished when the drain ended (subtracted; 0 by default: a request turned away costs only the reward it would have earned) |
    | ``target_draft_pass`` | 0.0005 | draft forward pass on the target site's GPU (subtracted) |
    | ``wasted_token`` | 0.0005 | wasted draft token: rejected, or a losing redundant draft (subtracted) |

    ## Starting state
    An empty system at time 0; the simulator seed is drawn from the env's RNG (``reset(seed=)``)
    below ``TRAIN_SEED_MAX``, so evaluation seeds at or above it are never trained on.

    ## Episode end
    Terminated when the simulation has nothing left to decide; truncated when simulated time
    reaches the end of the arrival window (``duration`` seconds), or after ``max_steps`` steps.

    ## Arguments
    ``gymnasium.make("specctl/SpecControl-v0", scenario="wan-4region", rate=None, duration=60.0,
    n_slots=16, base="static", owns=(...), reward=None, max_steps=None, admission_teacher=None)``: ``scenario`` is a
    shipped name, a YAML path or a :class:`runtime.scenario.Scenario`; ``rate`` overrides the
    arrival rate; ``base`` is the heuristic controller spec (``controllers.make_controller``);
    ``owns`` the decisions the agent makes (a subset of ``policy_env.codec.AGENT_DECISIONS``).
    ``make_runtime(scenario, seed, duration, rate)`` builds the backend for each episode (default:
    the simulator); any :class:`runtime.contract.Runtime` that exposes ``now`` and a
    :class:`runtime.metrics.Metrics` as ``metrics`` works, e.g. the real runtime, where
    ``next_decision()`` blocks in wall-clock time.

    ## Version history
    * v0: initial version (codec version 1); codec version 2 adds admission (the accept bit at
      plan points, the ``arrivals`` and ``awaiting admission`` features). ``admission_teacher``
      (any controller spec, e.g. ``inflight-cap:max_inflight=N`` from :mod:`controllers.admission`)
      labels arrivals in :meth:`expert_action` instead of ``base``: cloning data only.
      Codec version 3 adds the ``ahead`` slot feature and draft-ahead remote rounds.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        scenario: str | Scenario = "wan-4region",
        rate: float | None = None,
        duration: float = 60.0,
        n_slots: int = 16,
        base: str = "static",
        owns: Sequence[str] = AGENT_DECISIONS,
        reward: dict[str, float] | None = None,
        max_steps: int | None = None,
        admission_teacher: str | None = None,
        make_runtime: Callable[[Scenario, int, float, float | None], Any] | None = None,
    ) -> None:
        from controllers import make_controller

        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        if duration <= 0:
            raise ValueError(f"duration must be > 0 simulated seconds, got {duration}")
        unknown = set(reward or {}) - set(DEFAULT_REWARD)
        if unknown:
            raise ValueError(f"unknown reward term(s) {sorted(unknown)}; valid: {sorted(DEFAULT_REWARD)}")
        self.rate = rate
        self.duration = duration
        self.max_steps = max_steps
        self.base_spec = base
        self.weights = {**DEFAULT_REWARD, **(reward or {})}
        self.heuristic: Controller = make_controller(base)
        self.admission_teacher_spec = admission_teacher
        self.teacher: Controller | None = make_controller(admission_teacher) if admission_teacher else None
        self.make_runtime = make_runtime or _simulator
        probe = Simulator(self.scenario, 0, duration, rate=rate)
        self.codec = Codec.for_runtime(probe.info, owns, n_slots)
        self.observation_space = self.codec.observation_space()
        self.action_space = self.codec.action_space()
        self.controller, self.part = build_controller(self.codec, self.heuristic)
        self.sim: Simulator | None = None
        self.sim_seed = 0
        self._obs = np.zeros(self.codec.obs_size, dtype=np.float32)
        self._mask = np.ones(int(self.action_space.nvec.sum()), dtype=bool)
        self._steps = 0
        self._seen = (0, 0, 0, 0)
        self._records = 0
        self._on_pace = 0
        self._expert_point = None
        self._offsets = np.concatenate([[0], np.cumsum(self.action_space.nvec)[:-1]])

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.sim_seed = int(self.np_random.integers(0, TRAIN_SEED_MAX))
        if options and "sim_seed" in options:
            self.sim_seed = int(options["sim_seed"])
        self.sim = self.make_runtime(self.scenario, self.sim_seed, self.duration, self.rate)
        self.controller.bind(self.sim.info)
        if self.teacher is not None:
            self.teacher.bind(self.sim.info)
        self._steps = 0
        self._seen = (0, 0, 0, 0)
        self._records = 0
        self._on_pace = 0
        self._expert_point = None
        if self._advance():  # nothing to decide at all (an empty workload)
            self._obs[:] = 0.0
        return self._obs.copy(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        sim, part = self.sim, self.part
        if sim is None or part.point is None:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        self._steps += 1
        action = np.asarray(action)
        if not part.take(action):  # more chunks of this plan point to answer
            part.observe(self._obs)
            self._mask = part.masks()
            return self._obs.copy(), 0.0, False, self._truncate(), self._info()
        sim.apply(self.controller.decide(part.point))
        terminated = self._advance()
        reward = self._reward()
        truncated = not terminated and (sim.now >= self.duration or self._truncate())
        return self._obs.copy(), reward, terminated, truncated, self._info()

    def action_masks(self) -> np.ndarray:
        """Valid choices for the current step (flat, MaskablePPO's layout)."""
        return self._mask.copy()

    def expert_action(self) -> np.ndarray:
        """What the heuristic ``base`` would answer for the current step, as an action.

        Used to warm-start a policy by behaviour cloning (``pretrain`` in training/train.py):
        the redundancy bit is 1 when the heuristic launches any backup, and the include bits
        mark the slots the heuristic would verify now.
        """
        part, h = self.part, self.heuristic
        point = part.point
        if point is None:
            raise RuntimeError("call reset() before expert_action()")
        sys = point.system
        action = np.zeros(len(self.action_space.nvec), dtype=np.int64)
        chunk = part.chunk
        if point.kind == "plan":
            if self._expert_point is not point:  # prepare the heuristic once per point
                h.prepare(point)
                self._expert_point = point
            opts = self.codec.site_options
            na = part.chunk_admit
            for j, req in enumerate(chunk):
                if j < na:  # an arrival: admit or turn away
                    action[4 * j + 3] = 1 if (self.teacher or h).admit(req, sys) else 0
                    continue
                site = h.drafter_site(req, sys)
                k = h.draft_length(req, sys, site)
                red = h.redundancy(req, sys, site, k) if k > 0 else None
                opt = site if site in opts else "edge"
                action[4 * j] = k
                action[4 * j + 1] = opts.index(opt) if opt in opts else 0
                action[4 * j + 2] = 1 if red is not None and red.backups else 0
        else:
            chosen = set(h.select_batch(point.ready, sys))
            for j, req in enumerate(chunk):
                action[4 * j + 3] = 1 if req.rid in chosen else 0
        # dimensions the agent does not own (masked to option 0) keep option 0
        offsets = self._offsets
        valid = self._mask[offsets + np.minimum(action, self.action_space.nvec - 1)]
        action[~valid] = 0
        return action

    # ------------------------------------------------------------------ internals
    def _advance(self) -> bool:
        """Run the runtime until the agent must decide; ``True`` when the run is over."""
        sim, codec, part, ctl = self.sim, self.codec, self.part, self.controller
        while True:
            point = sim.next_decision()  # type: ignore[union-attr]
            if point is None:
                part.point = None
                return True
            if point.kind == "plan" and point.plan:
                self._on_pace += _on_pace_tokens(point.plan, point.time)
            if codec.wants(point):
                part.begin(point)
                part.observe(self._obs)
                self._mask = part.masks()
                return False
            sim.apply(ctl.decide(point))  # type: ignore[union-attr]

    def _truncate(self) -> bool:
        return self.max_steps is not None and self._steps >= self.max_steps

    def _reward(self) -> float:
        m = self.sim.metrics  # type: ignore[union-attr]
        recs = m.records
        met = met_tokens = late = 0
        for r in recs[self._records :]:
            if r.slo_met:
                met += 1
                met_tokens += r.output_tokens
            else:
                late += 1
        self._records = len(recs)
        on_pace, self._on_pace = self._on_pace, 0
        now = (m.tokens_committed, m.target_draft_passes, m.wasted_rejected + m.wasted_redundant, m.dropped)
        prev = self._seen
        self._seen = now  # type: ignore[assignment]
        w = self.weights
        return float(
            w["slo_request"] * met
            + w["slo_tokens"] * met_tokens / 100.0
            + w["on_pace_tokens"] * on_pace
            + w["tokens"] * (now[0] - prev[0])
            - w["late_request"] * late
            - w["dropped_request"] * (now[3] - prev[3])
            - w["target_draft_pass"] * (now[1] - prev[1])
            - w["wasted_token"] * (now[2] - prev[2])
        )

    def _info(self) -> dict[str, Any]:
        sim = self.sim
        return {"sim_time": sim.now if sim else 0.0, "sim_seed": self.sim_seed}


def _on_pace_tokens(reqs: Any, now: float) -> int:
    """Tokens just committed to requests (a plan point lists those a verification just advanced)
    that are still within their SLO: first token in time, next-token deadline not yet passed."""
    total = 0
    for r in reqs:
        if r.first_token_time - r.arrival <= r.ttft_slo and r.deadline() >= now:
            total += 1 if r.generated == 1 else r.last_accepted + 1
    return total


def _simulator(scenario: Scenario, seed: int, duration: float, rate: float | None) -> Simulator:
    return Simulator(scenario, seed, duration, rate=rate)
