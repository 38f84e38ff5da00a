"""The simulated backend: the protocol core (:mod:`runtime.core`) driven by simulated time.

What only the simulator needs lives here: the discrete-event engine (:mod:`.simulator`) and
the draws of how many drafted tokens the target accepts (:mod:`.acceptance`). Models the real
backend uses too stay one level up: latency (its profiles), workload (replayed arrivals),
network (the transport's emulated WAN delay) and load (other tenants' use of a site's GPU,
emulated there by stretching the site's forwards). ``runtime/real/`` is the other backend, on wall-clock asyncio, gRPC and torch.
"""

from runtime.sim.simulator import Simulator, simulate

__all__ = ["Simulator", "simulate"]
