"""The two controllers the runtime needs to run alone."""

from __future__ import annotations

from runtime.contract import Controller, RequestView, RuntimeInfo, SystemView


class NoSpec(Controller):
    """Plain target decoding: k = 0 every round (the baseline every speedup is measured against)."""

    name = "no-spec"
    owns = frozenset({"draft_length"})

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return 0


class Static(Controller):
    """Classic co-located speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

    A fixed draft length ``k`` with the drafter on the target site's own GPU, no redundancy,
    first-come-first-served verification batches. ``site`` pins drafting to another site
    instead (useful to measure what one link costs).
    """

    name = "static"
    owns = frozenset({"draft_length", "drafter_site"})

    def __init__(self, k: int = 4, site: str | None = None) -> None:
        super().__init__()
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.site = site

    def bind(self, info: RuntimeInfo) -> None:
        super().bind(info)
        if self.site is not None and self.site not in {s.name for s in info.drafter_sites}:
            raise ValueError(
                f"site {self.site!r} hosts no drafter in {info.scenario}; drafter sites: {[s.name for s in info.drafter_sites]}"
            )

    def drafter_site(self, req: RequestView, sys: SystemView) -> str:
        return self.site or sys.info.target_site

    def draft_length(self, req: RequestView, sys: SystemView, site: str) -> int:
        return min(self.k, sys.info.max_k, max(req.tokens_left - 1, 0))
