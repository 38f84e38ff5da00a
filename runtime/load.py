"""Background load of other tenants at a site: a utilisation level u(t) in [0, 1).

Work started at time t runs 1 / (1 - u(t)) times slower (processor sharing with the other
tenants), and controllers see u(t) in :class:`runtime.contract.SiteState`. The simulator draws
u(t) on simulated time (:class:`LoadProcess`); the real backend on the wall clock, stretching a
site's forwards by the same factor (:class:`EmulatedLoad`).
"""

from __future__ import annotations

import math
import random
import threading
import time

import yaml
from pydantic import TypeAdapter, ValidationError

from runtime.scenario import ConstantLoad, DiurnalLoad, Load, MarkovLoad, format_validation_error


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


def parse_load(text: str) -> ConstantLoad | DiurnalLoad | MarkovLoad:
    """A load spec from JSON or YAML flow text, as a scenario's site ``load:`` is written
    (e.g. ``{kind: markov, levels: [0.05, 0.8], mean_dwell_s: [10, 10]}``)."""
    try:
        data = yaml.safe_load(text)
        return TypeAdapter(Load).validate_python(data)
    except yaml.YAMLError as e:
        raise ValueError(f"load spec {text!r} is not YAML/JSON ({e}); write it as a scenario's site load:, "
                         "e.g. '{kind: constant, level: 0.5}'") from None
    except ValidationError as e:
        raise ValueError(f"load spec {text!r}: {format_validation_error(e)}; write it as a scenario's site load:, "
                         "e.g. '{kind: markov, levels: [0.05, 0.8], mean_dwell_s: [10, 10]}'") from None


class EmulatedLoad:
    """A site's load process on the wall clock, for the real backend: other tenants are
    emulated by stretching each forward that starts at load u to 1 / (1 - u) of its compute
    time (the simulator's processor sharing), as the transport emulates the WAN's delay."""

    def __init__(self, spec: ConstantLoad | DiurnalLoad | MarkovLoad, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self._lock = threading.Lock()  # read by a site's drafting thread and its health checks
        self.restart()

    def restart(self) -> None:
        """Start the process again from time 0 now (same seed: the same levels and dwells)."""
        with self._lock:
            self.process = LoadProcess(self.spec, random.Random(self.seed))
            self._t0 = time.monotonic()

    def level(self) -> float:
        """Other tenants' utilisation now."""
        with self._lock:
            return self.process.level(time.monotonic() - self._t0)

    def stretch(self, level: float, compute_s: float) -> float:
        """Hold the GPU (sleep) for the share other tenants take of a forward that started at
        ``level`` and computed for ``compute_s``; returns the forward's whole duration."""
        extra = compute_s * level / (1.0 - level)
        if extra > 0:
            time.sleep(extra)
        return compute_s + extra


def emulates_nothing(spec: ConstantLoad | DiurnalLoad | MarkovLoad) -> bool:
    """Whether a load spec is the idle default (nothing to emulate)."""
    return isinstance(spec, ConstantLoad) and spec.level == 0
