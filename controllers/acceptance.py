"""The acceptance estimators a heuristic's ``acceptance`` parameter names, beside the table.

* ``table``: :class:`~controllers.estimators.AcceptanceTable` (the default).
* ``peek``: :class:`TrueAcceptance`, the simulator's true current acceptance (sim-only; what
  better estimates could be worth at most).
* a model file: :class:`LearnedAcceptance`, a filter for acceptance that drifts, fitted on
  simulated feedback.

:class:`~controllers.estimators.AcceptanceTable` scales a learned position shape by the
request's *whole-history* acceptance rate, so it lags a request whose acceptance drifts (code
after prose, a topic change). The true current rate is worth 3.4% goodput to the tuned ``wisp``
on one held-out file and at most 1.5% on four others (``acceptance=peek``, README), so this
is a small lever. :class:`LearnedAcceptance` predicts each draft position's
acceptance with a logistic model over what a runtime observes: the table's own estimate,
exponentially-weighted recent rates, how many rounds the estimate rests on, and where the
request stands in its current run of accepted tokens. ``python -m training.acceptance`` fits
it on rounds recorded over a scenario distribution; with zero weights but the table's it *is*
the table, so it can only learn away from the heuristic's estimator where the data say so.

Only :class:`~runtime.contract.BatchResult` feedback and the request views are read, so it
runs unchanged on a real backend.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import BatchResult, RequestView, RuntimeInfo

from controllers.estimators import AcceptanceTable


class TrueAcceptance(AcceptanceTable):
    """The request's true current acceptance, read from the simulator (sim-only).

    Not a deployable estimator: the most any estimator of a request's acceptance could know
    short of the round's draw. A heuristic run with it (``wisp:acceptance=peek``) measures how
    much better acceptance estimates are worth to that heuristic.
    """

    def __init__(self, info: RuntimeInfo, k_max: int) -> None:
        super().__init__(info, k_max)
        sim = info.clairvoyant
        if sim is None or not hasattr(sim, "peek_acceptance"):
            raise ValueError(
                "acceptance=peek reads the simulator's true acceptance, which a real backend does not have; "
                "use acceptance=table there"
            )
        self._peek = sim.peek_acceptance
        self._drafters = [s.name for s in info.drafter_sites]
        self._has_drafter = set(self._drafters)

    def for_request(self, req: RequestView) -> list[float]:
        site = req.drafter_site if req.drafter_site in self._has_drafter else self._drafters[0]
        return [min(p, 0.99) for p in self._peek(req, site)] or super().for_request(req)


#: The model file's format tag; a file of another format is refused.
FORMAT = "specctl-acceptance/1"
#: Feature names, in the order of the weights (per draft position j of the next round).
FEATURES: tuple[str, ...] = (
    "table",  # logit of the table's estimate: whole-history rate x position shape
    "fast",  # logit of a fast EWMA rate x shape
    "slow",  # logit of a slower EWMA rate x shape
    "prior",  # logit of the drafter's prior rate x shape
    "evidence",  # log1p(verified rounds) / 4: how much the request's own rates rest on
    "disagreement",  # |fast - table| in logits: the request's acceptance has moved
    "last_full",  # the last round was accepted in full
    "run",  # log1p(tokens since the last rejection + j) / 3: depth into an accepted run
)
#: EWMA decay per verified round of the fast and slow rates.
DECAYS = (0.6, 0.85)
#: Verification results between refreshes of every cached estimate (a request's own result
#: refreshes its estimate at once; the shared position shape moves slowly).
REFRESH_EVERY = 16
#: Requests whose state is kept (oldest evicted first): bounds memory on a long-running server.
MAX_TRACKED = 8192


def _logit(p: float) -> float:
    p = 0.01 if p < 0.01 else 0.99 if p > 0.99 else p
    return math.log(p / (1.0 - p))


class LearnedAcceptance(AcceptanceTable):
    """Per-position acceptance from a logistic model over the request's observed history.

    ``weights=None`` keeps the table's estimate (the identity model); ``record=True`` keeps
    every verified position's features and outcome in :attr:`rows` (how training data is made).
    """

    def __init__(self, info: RuntimeInfo, k_max: int, weights: np.ndarray | None = None, bias: float = 0.0,
                 record: bool = False) -> None:
        super().__init__(info, k_max)
        if weights is None:
            weights = np.zeros(len(FEATURES))
            weights[0] = 1.0
        self.weights = np.asarray(weights, dtype=float)
        self._w = self.weights.tolist()
        self.bias = float(bias)
        self.k_max = k_max
        # rid -> [fast accepted, fast rejections, slow accepted, slow rejections, run, last full]
        self._state: OrderedDict[int, list[float]] = OrderedDict()
        self._cache: dict[int, list[float]] = {}
        self._pending: dict[int, np.ndarray] = {}
        self._updates = 0
        self.record = record
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []  # (features of reached positions, accepted?)

    @classmethod
    def load(cls, path: str | Path, info: RuntimeInfo, k_max: int) -> "LearnedAcceptance":
        model = read_model(path)
        return cls(info, k_max, np.array(model["weights"]), model["bias"])

    def _history(self, req: RequestView) -> tuple[float, float, float, float, float, float]:
        """(whole-history rate, fast rate, slow rate, prior, tokens since the last rejection,
        last round accepted in full) of the request."""
        st = self._state.get(req.rid)
        prior = self.prior
        if st is None:
            return self.rate(req), prior, prior, prior, 0.0, 0.0
        fast = (st[0] + 2 * prior) / (st[0] + st[1] + 2)
        slow = (st[2] + 2 * prior) / (st[2] + st[3] + 2)
        return self.rate(req), fast, slow, prior, st[4], st[5]

    def _rows(self, req: RequestView) -> list[list[float]]:
        """Per draft position of the next round, the values of :data:`FEATURES`."""
        rate, fast, slow, prior, run, last_full = self._history(req)
        evidence = math.log1p(req.rounds) / 4
        rows = []
        for j, s in enumerate(self.shape):
            table, f_fast = _logit(rate * s), _logit(fast * s)
            rows.append([table, f_fast, _logit(slow * s), _logit(prior * s), evidence, abs(f_fast - table),
                         last_full, math.log1p(run + j) / 3])
        return rows

    def features(self, req: RequestView) -> np.ndarray:
        """The (k_max, len(FEATURES)) feature matrix of the request's next round."""
        return np.array(self._rows(req))

    def for_request(self, req: RequestView) -> list[float]:
        if self.record:
            return super().for_request(req)  # the same estimate as the identity model, cheaper
        got = self._cache.get(req.rid)
        if got is None:
            got = self._cache[req.rid] = self._predict(req)
        return got

    def _predict(self, req: RequestView) -> list[float]:
        """sigmoid(features @ weights + bias) per position, capped at 0.99: :meth:`_rows` and
        the dot product fused, as this runs once per request and round."""
        w_table, w_fast, w_slow, w_prior, w_evidence, w_disagree, w_full, w_run = self._w
        rate, fast, slow, prior, run, last_full = self._history(req)
        base = self.bias + w_evidence * math.log1p(req.rounds) / 4 + w_full * last_full
        log, exp, log1p = math.log, math.exp, math.log1p
        out = []
        for j, s in enumerate(self.shape):
            t, f, sl, pr = rate * s, fast * s, slow * s, prior * s
            t = 0.01 if t < 0.01 else 0.99 if t > 0.99 else t
            f = 0.01 if f < 0.01 else 0.99 if f > 0.99 else f
            sl = 0.01 if sl < 0.01 else 0.99 if sl > 0.99 else sl
            pr = 0.01 if pr < 0.01 else 0.99 if pr > 0.99 else pr
            t, f = log(t / (1.0 - t)), log(f / (1.0 - f))
            z = (base + w_table * t + w_fast * f + w_slow * log(sl / (1.0 - sl)) + w_prior * log(pr / (1.0 - pr))
                 + w_disagree * abs(f - t) + w_run * log1p(run + j) / 3)
            out.append(0.0 if z < -30 else min(1.0 / (1.0 + exp(-z)), 0.99))
        return out

    def note(self, req: RequestView) -> None:
        super().note(req)
        if self.record and req.rid not in self._pending:  # its state is the same until its verification
            self._pending[req.rid] = self.features(req)

    def update(self, result: BatchResult) -> None:
        super().update(result)
        cache = self._cache
        self._updates += 1
        if self._updates % REFRESH_EVERY == 0:  # the shape moves slowly: others keep theirs a while
            cache.clear()
        state = self._state
        d_fast, d_slow = DECAYS
        for rid, k, a in zip(result.rids, result.ks, result.accepted):
            cache.pop(rid, None)
            if k <= 0:
                continue
            if self.record:
                feats = self._pending.pop(rid, None)
                if feats is not None:
                    reached = min(a + 1, k, self.k_max)
                    self.rows.append((feats[:reached], (np.arange(reached) < a).astype(np.float32)))
            st = state.pop(rid, None) or [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            rejected = 1.0 if a < k else 0.0
            st[0] = d_fast * st[0] + a
            st[1] = d_fast * st[1] + rejected
            st[2] = d_slow * st[2] + a
            st[3] = d_slow * st[3] + rejected
            st[4] = 0.0 if rejected else st[4] + k + 1
            st[5] = 1.0 - rejected
            state[rid] = st  # most recently verified last
            if len(state) > MAX_TRACKED:
                state.popitem(last=False)


def read_model(path: str | Path) -> dict[str, Any]:
    """A model file written by ``python -m training.acceptance``, checked, or a clear error."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"acceptance={path}: no such model file; use acceptance=table, acceptance=peek (sim-only), "
            f"or a file from `python -m training.acceptance` (training/models/acceptance-mix.json ships)"
        )
    try:
        model = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"acceptance={path}: not a JSON model file ({e}); retrain it with python -m training.acceptance") from e
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise ValueError(f"acceptance={path}: not a {FORMAT} model; retrain it with python -m training.acceptance")
    if list(model.get("features", [])) != list(FEATURES) or len(model.get("weights", [])) != len(FEATURES):
        raise ValueError(
            f"acceptance={path}: its features {model.get('features')} are not this version's {list(FEATURES)}; "
            f"retrain it with python -m training.acceptance"
        )
    return model


def acceptance_estimator(info: RuntimeInfo, kind: str) -> AcceptanceTable:
    """The estimator an ``acceptance`` parameter names: ``table``, ``peek`` or a model's path."""
    k_max = max(info.max_k, 1)
    if kind == "peek":
        return TrueAcceptance(info, k_max)
    if kind == "table":
        return AcceptanceTable(info, k_max)
    return LearnedAcceptance.load(kind, info, k_max)


def check_acceptance(kind: str) -> None:
    """Refuse a bad ``acceptance`` parameter when the controller is built, not at its first run."""
    if kind not in ("table", "peek"):
        read_model(kind)
