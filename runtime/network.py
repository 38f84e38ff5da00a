"""Links between the target site and every other site (a star: drafts only go to the target).

One-way delay = RTT/2 + half-normal jitter + an occasional exponential spike + bytes/bandwidth.
Each link draws from its own random stream so that :meth:`Link.peek_delay` (used by the
clairvoyant oracle) tells exactly what the next message on that link will take.
"""

from __future__ import annotations

import random

from runtime.scenario import NetworkSpec, Site


class Link:
    __slots__ = ("site", "base_s", "jitter_s", "spike_prob", "spike_s", "bytes_per_s", "rng", "_next", "bytes_sent", "messages")

    def __init__(self, site: Site, net: NetworkSpec, rng: random.Random) -> None:
        self.site = site.name
        self.base_s = site.rtt_ms / 2000.0
        self.jitter_s = site.jitter_ms / 2000.0
        self.spike_prob = net.spike_prob
        self.spike_s = net.spike_ms / 1000.0
        self.bytes_per_s = site.bandwidth_mbps * 1e6 / 8.0
        self.rng = rng
        self.bytes_sent = 0
        self.messages = 0
        self._next = self._draw()

    def _draw(self) -> float:
        rng = self.rng
        d = self.base_s + abs(rng.gauss(0.0, self.jitter_s)) if self.jitter_s > 0 else self.base_s
        if self.spike_prob > 0 and rng.random() < self.spike_prob:
            d += rng.expovariate(1.0 / self.spike_s) if self.spike_s > 0 else 0.0
        return d

    def peek_delay(self, nbytes: int) -> float:
        """The delay the next message of ``nbytes`` will see (without sending it)."""
        return self._next + nbytes / self.bytes_per_s

    def send(self, nbytes: int) -> float:
        """Send a message: returns its one-way delay in seconds."""
        d = self._next + nbytes / self.bytes_per_s
        # self._draw(), inlined (keep the two alike): every message of the simulator comes here
        rng = self.rng
        nxt = self.base_s + abs(rng.gauss(0.0, self.jitter_s)) if self.jitter_s > 0 else self.base_s
        if self.spike_prob > 0 and rng.random() < self.spike_prob:
            nxt += rng.expovariate(1.0 / self.spike_s) if self.spike_s > 0 else 0.0
        self._next = nxt
        self.bytes_sent += nbytes
        self.messages += 1
        return d
