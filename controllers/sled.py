"""SLED-like edge speculative decoding (Li et al., 2025): drafts where the user is, static batches.

Each request drafts a fixed ``k`` on its own edge device (or, for requests that have none, on
the nearest remote data center by nominal RTT); the shared server verifies with static
batching: it waits until ``batch_size`` drafts are ready (default: the runtime's largest
batch), or the oldest has waited ``max_wait_s``, then verifies them first come first served.
No redundancy, no SLO awareness: the baseline WISP improves on.
"""

from __future__ import annotations

from typing import Sequence

from runtime.contract import Controller, RequestView, RuntimeInfo, SystemView

from controllers.estimators import offload_sites, static_batch


class Sled(Controller):
    """Fixed-k drafting at the edge (else the nearest remote site) and static verification batches."""

    name = "sled"
    owns = frozenset({"drafter_site", "draft_length", "batch"})

    def __init__(self, k: int = 4, batch_size: int | None = None, max_wait_s: float = 0.02) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.k = k
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._nearest_remote: str | None = None

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        sites = offload_sites(info)
        if not sites:
            raise ValueError(
                f"sled drafts on edge devices or remote sites, and {info.scenario} has none "
                f"(only {info.target_site!r} hosts a drafter); use centralized or wisp there"
            )
        remotes = [info.site(s) for s in sites if info.site(s).role == "remote"]
        self._nearest_remote = min(remotes, key=lambda s: s.rtt_s).name if remotes else None

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        info = sys.info
        if req.origin != info.target_site and info.site(req.origin).drafter is not None:
            return req.origin
        return self._nearest_remote or info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return max(min(self.k, sys.info.max_k, req.tokens_left - 1), 0)

    def select_batch(self, ready: Sequence[RequestView], sys: SystemView) -> list[int]:
        return static_batch(ready, sys, self.batch_size or sys.info.max_batch_size, self.max_wait_s)
