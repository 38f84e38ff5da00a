"""The action-backed controller: the one decode path shared by the env and the deployed policy.

:class:`ActionController` answers the decisions the agent owns from actions decoded by the
:class:`~policy_env.codec.Codec`; it is composed with a heuristic that answers the rest
(``compose(heuristic, draft_length=part, ...)``). In the env, the agent's actions are pushed in
with :meth:`ActionController.take` one slot-chunk at a time; deployed, ``act`` (the policy's
forward pass) is called for every chunk in :meth:`ActionController.prepare`. Either way the
same observation, mask and decode code runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from runtime.contract import (
    Composite,
    Controller,
    DecisionPoint,
    Redundancy,
    RequestView,
    RuntimeInfo,
    SystemView,
    compose,
)

from policy_env.codec import Codec, _hedged_backup, drafting_ahead, hedged_backup

#: ``act(observations, action_masks) -> actions``: a policy's deterministic forward pass over a
#: batch (one row per slot chunk of a decision point).
ActFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ActionController(Controller):
    """Answers the agent-owned decisions of one point from decoded actions.

    Per-request answers the agent did not give (a decision it does not own, a repaired invalid
    choice) come from ``fallback``, the heuristic it is composed with.
    """

    name = "policy"

    def __init__(self, codec: Codec, fallback: Controller, act: ActFn | None = None) -> None:
        super().__init__()
        self.codec = codec
        self.fallback = fallback
        self.act = act
        self.owns = frozenset(codec.owns)
        self.plans: dict[int, tuple[int, str | None, Redundancy | None]] = {}
        self.admits: dict[int, bool] = {}
        self.batch: list[int] | None = None
        self.n_admit = 0  # the point's first slots that are arrivals awaiting admission
        self.point: DecisionPoint | None = None
        self.slots: list[RequestView] = []
        self.pos = 0
        self._batch_obs = np.zeros((4, codec.obs_size), dtype=np.float32)

    # ------------------------------------------------------------------ stepping a point
    def begin(self, point: DecisionPoint) -> None:
        """Start deciding ``point``: its requests become slots, most urgent first."""
        self.point = point
        self.slots = self.codec.slots(point)
        self.n_admit = self.codec.admitting(point)
        self.pos = 0
        self.plans.clear()
        self.admits.clear()
        self.batch = None

    @property
    def chunk(self) -> list[RequestView]:
        return self.slots[self.pos : self.pos + self.codec.n_slots]

    @property
    def chunk_admit(self) -> int:
        """How many of the current chunk's (first) slots are arrivals awaiting admission."""
        return max(0, min(self.n_admit - self.pos, self.codec.n_slots))

    def observe(self, out: np.ndarray) -> np.ndarray:
        n = self.codec.n_slots
        chunks_left = max(0, (len(self.slots) - self.pos - 1) // n)
        return self.codec.encode(self.point, self.chunk, chunks_left, out, self.chunk_admit)  # type: ignore[arg-type]

    def masks(self) -> np.ndarray:
        return self.codec.action_masks(self.point, self.chunk, self.info, self.chunk_admit)  # type: ignore[arg-type]

    def take(self, action: np.ndarray) -> bool:
        """Record the answer for the current chunk; ``True`` once the whole point is decided."""
        point, codec = self.point, self.codec
        assert point is not None, "begin(point) first"
        chunk = self.chunk
        if point.kind == "plan":
            na = self.chunk_admit
            if na:
                for req, ok in zip(chunk[:na], codec.decode_admit(action, chunk[:na])):
                    self.admits[req.rid] = ok
            plans = chunk[na:]
            if plans:
                for req, choice in zip(plans, codec.decode_plans(action, plans, self.info, skip=na)):  # type: ignore[arg-type]
                    self.plans[req.rid] = choice
            self.pos += codec.n_slots
            return self.pos >= len(self.slots)
        shown = {r.rid for r in chunk}
        rest = [r for r in point.ready if r.rid not in shown]  # the runtime lists them first come, first served
        self.batch = codec.decode_batch(action, chunk, sorted(rest, key=_ready_since) if _unordered(rest) else rest)
        return True

    # ------------------------------------------------------------------ Controller
    def prepare(self, point: DecisionPoint) -> None:
        """Deployed: run the policy over every chunk of the point (no-op inside the env)."""
        if self.act is None:
            return
        self.plans.clear()
        self.admits.clear()
        self.batch = None
        if not self.codec.wants(point):
            return
        self.begin(point)
        # every chunk's observation is known before any is answered (time does not move within
        # a point), so all chunks go through the policy in one batched forward pass
        n = self.codec.n_slots
        chunks = max(1, -(-len(self.slots) // n))
        if self._batch_obs.shape[0] < chunks:
            self._batch_obs = np.zeros((chunks, self.codec.obs_size), dtype=np.float32)
        obs = self._batch_obs[:chunks]
        masks = []
        for c in range(chunks):
            self.pos = c * n
            self.observe(obs[c])
            masks.append(self.masks())
        actions = self.act(obs, np.stack(masks))
        self.pos = 0
        for c in range(chunks):
            self.take(actions[c])

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        ok = self.admits.get(req.rid)
        return self.fallback.admit(req, sys) if ok is None else ok

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        choice = self.plans.get(req.rid)
        if choice is None or choice[1] is None:
            return self.fallback.drafter_site(req, sys)
        return choice[1]

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        choice = self.plans.get(req.rid)
        if choice is None or choice[0] < 0:
            return self.fallback.draft_length(req, sys, site)
        return choice[0]

    def redundancy(self, req: RequestView, sys: SystemView, site: str, k: int) -> Redundancy:
        choice = self.plans.get(req.rid)
        if choice is None or choice[2] is None:
            return self.fallback.redundancy(req, sys, site, k)
        if choice[2] is _hedged_backup:
            return hedged_backup(self.codec, req, sys, self.info, site, k)  # type: ignore[arg-type]
        return drafting_ahead(self.info, site, choice[2])  # type: ignore[arg-type]

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        if self.batch is None:
            return self.fallback.select_batch(ready, sys)
        batch, self.batch = self.batch, None
        return batch


def build_controller(codec: Codec, heuristic: Controller, act: ActFn | None = None) -> tuple[Composite, ActionController]:
    """``compose(heuristic, <owned decision>=part, ...)``: the agent's part and the heuristic."""
    part = ActionController(codec, heuristic, act)
    return compose(heuristic, **{d: part for d in codec.owns}), part


def _ready_since(req: RequestView) -> float:
    return req.ready_since


def _unordered(reqs: Sequence[RequestView]) -> bool:
    """Cheap check that a backend listed ready requests out of arrival order (the simulator does not)."""
    return any(a.ready_since > b.ready_since for a, b in zip(reqs, reqs[1:]))


__all__ = ["ActFn", "ActionController", "RuntimeInfo", "build_controller"]
