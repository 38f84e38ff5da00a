"""Acceptance models: how many of a round's draft tokens the target accepts.

A round's outcome is summarised by its *run length* ``L``: the number of leading draft tokens
the target would accept if the drafter had proposed infinitely many. With ``k`` drafted,
``min(k, L)`` are accepted and one bonus/correction token is committed. Drawing ``L`` at
round start (i.i.d. Bernoulli gives ``P(L >= j) = alpha**j``) keeps the outcome independent of
``k``, so the clairvoyant oracle can see it and every controller faces the same luck
(common random numbers: each request has its own stream seeded by ``(seed, rid)``).
"""

from __future__ import annotations

import math
import random

from runtime.scenario import DriftAcceptance, IIDAcceptance, PositionAcceptance


def _clip(x: float, lo: float = 0.01, hi: float = 0.995) -> float:
    return lo if x < lo else hi if x > hi else x


def beta_sample(rng: random.Random, mean: float, std: float) -> float:
    """Beta(mean, std) via moments; std=0 gives ``mean`` exactly."""
    if std <= 0:
        return mean
    var = min(std * std, mean * (1 - mean) * 0.99)
    nu = mean * (1 - mean) / var - 1
    return _clip(rng.betavariate(mean * nu, (1 - mean) * nu))


class AcceptanceState:
    """One request's acceptance behaviour for one drafter model."""

    __slots__ = ("spec", "rng", "alpha", "mean", "scale", "cap", "_log_alpha", "_probs", "carry", "run")

    def __init__(self, spec: IIDAcceptance | PositionAcceptance | DriftAcceptance, rng: random.Random, cap: int) -> None:
        self.spec = spec
        self.rng = rng  # this (request, drafter model)'s own stream
        self.cap = cap  # run lengths beyond max_k never matter
        self.scale = 1.0
        if isinstance(spec, PositionAcceptance):
            self.scale = max(0.2, rng.gauss(1.0, spec.scale_std)) if spec.scale_std > 0 else 1.0
            self.alpha = self.mean = _clip(spec.table[0] * self.scale)
        else:
            self.alpha = self.mean = beta_sample(rng, spec.alpha_mean, spec.alpha_std)
        # i.i.d.: alpha never changes, so neither does its log (run_length's hot path); by
        # position: neither do the per-position acceptance probabilities
        self._log_alpha = math.log(self.alpha) if type(spec) is IIDAcceptance else None
        self._probs: list[float] = []
        # positions counted across rounds (PositionAcceptance.across_rounds): tokens committed
        # since the last rejection, bonus tokens included; see after_round
        self.carry = isinstance(spec, PositionAcceptance) and spec.across_rounds
        self.run = 0
        if isinstance(spec, PositionAcceptance):
            table = spec.table
            n_probs = len(table) + cap if self.carry else cap  # a run may start deep in the table
            self._probs = [_clip(table[min(n, len(table) - 1)] * self.scale) for n in range(n_probs)]

    def run_length(self) -> int:
        """Draw this round's run length (advances a drifting alpha by one round)."""
        log_alpha = self._log_alpha
        if log_alpha is not None:
            n = int(math.log(1.0 - self.rng.random()) / log_alpha)
            return n if n < self.cap else self.cap
        spec, rng = self.spec, self.rng
        if isinstance(spec, PositionAcceptance):
            n = 0
            probs = self._probs
            start = min(self.run, len(probs) - self.cap)  # beyond the table its last entry repeats
            for i in range(start, start + self.cap):  # one per position below the cap
                if rng.random() >= probs[i]:
                    break
                n += 1
            return n
        if isinstance(spec, DriftAcceptance):
            a = self.alpha + spec.reversion * (self.mean - self.alpha) + rng.gauss(0.0, spec.drift_std)
            self.alpha = _clip(a)
        u = 1.0 - rng.random()  # (0, 1]
        n = int(math.log(u) / math.log(self.alpha))
        return n if n < self.cap else self.cap

    def expected_probs(self, drawn: bool) -> list[float]:
        """The conditional acceptance of the next round's draft positions, as this state knows it
        (its current rate, its position in the table; not the round's draw). ``drawn``: this
        round's run length was already drawn, so a drifting rate has already moved."""
        spec = self.spec
        if isinstance(spec, PositionAcceptance):
            start = min(self.run, len(self._probs) - self.cap) if self.carry else 0
            return self._probs[start : start + self.cap]
        a = self.alpha
        if isinstance(spec, DriftAcceptance) and not drawn:
            a = _clip(a + spec.reversion * (self.mean - a))
        return [a] * self.cap

    def after_round(self, k: int, run_length: int) -> None:
        """A round of ``k`` drafted tokens with this run length was verified: a rejection starts
        a new run, a fully accepted round extends it by its tokens and the bonus token. Only
        positions counted ``across_rounds`` use it."""
        self.run = self.run + k + 1 if run_length >= k else 0
