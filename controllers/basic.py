"""The two controllers the runtime needs to run alone."""

from __future__ import annotations

from runtime.contract import Controller, RequestView, SystemView


class NoSpec(Controller):
    """Plain target decoding: k = 0 every round (the baseline every speedup is measured against)."""

    name = "no-spec"
    owns = frozenset({"draft_length"})

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return 0


class Static(Controller):
    """Classic co-located speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

    A fixed draft length ``k`` with the drafter on the target site's own GPU, no redundancy,
    first-come-first-served verification batches.
    """

    name = "static"
    owns = frozenset({"draft_length", "drafter_site"})

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        if k < 0:
            raise ValueError(f"static: k must be >= 0, got {k}")
        self.k = k

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return min(self.k, sys.info.max_k, max(req.tokens_left - 1, 0))
