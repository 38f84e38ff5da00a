"""Background load of other tenants at a site: a utilisation level u(t) in [0, 1).

Work started at time t runs 1 / (1 - u(t)) times slower (processor sharing with the other
tenants), and controllers see u(t) in :class:`runtime.contract.SiteState`.
"""

from __future__ import annotations

import math
import random

from runtime.scenario import ConstantLoad, DiurnalLoad, MarkovLoad


class LoadProcess:
    """u(t) for one site; queried with non-decreasing t (Markov segments are drawn lazily)."""

    __slots__ = ("spec", "rng", "_t_end", "_state", "_level")

    def __init__(self, spec: ConstantLoad | DiurnalLoad | MarkovLoad, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self._state = 0
        self._t_end = 0.0
        self._level = spec.level if isinstance(spec, ConstantLoad) else 0.0
        if isinstance(spec, MarkovLoad):
            self._level = spec.levels[0]
            self._t_end = rng.expovariate(1.0 / spec.mean_dwell_s[0])

    def reseed(self, rng: random.Random, now: float) -> None:
        """Draw the future from ``rng``: the level at ``now`` stays, its remaining dwell is drawn
        anew (memoryless), and so are the hops after it."""
        self.rng = rng
        if isinstance(self.spec, MarkovLoad):
            self.level(now)
            self._t_end = now + rng.expovariate(1.0 / self.spec.mean_dwell_s[self._state])

    def level(self, t: float) -> float:
        spec = self.spec
        if isinstance(spec, ConstantLoad):
            return self._level
        if isinstance(spec, DiurnalLoad):
            return spec.mean + spec.amplitude * math.sin(2 * math.pi * (t / spec.period_s + spec.phase))
        while t >= self._t_end:  # Markov: hop to a different level
            n = len(spec.levels)
            self._state = (self._state + 1 + self.rng.randrange(n - 1)) % n if n > 1 else 0
            self._level = spec.levels[self._state]
            self._t_end += self.rng.expovariate(1.0 / spec.mean_dwell_s[self._state])
        return self._level

    def slowdown(self, t: float) -> float:
        return 1.0 / (1.0 - self.level(t))
