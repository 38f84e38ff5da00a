"""Admission controllers: they own only the admission decision and compose with any other.

``wanspec+inflight-cap:max_inflight=120`` (see :func:`controllers.make_controller`) is WANSpec
with an in-flight cap: under overload, serving fewer requests within their SLOs beats serving
all of them late, so every heuristic gets a tuned cap before a learned policy is compared
with it (otherwise a policy's gain could be admission alone).
"""

from __future__ import annotations

from runtime.contract import Controller, RequestView, SystemView


class InflightCap(Controller):
    """Admit while at most ``max_inflight`` requests are in flight (admission only)."""

    name = "inflight-cap"
    owns = frozenset({"admission"})

    def __init__(self, max_inflight: int = 120) -> None:
        super().__init__()
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = int(max_inflight)

    def admit(self, req: RequestView, sys: SystemView) -> bool:
        return sys.in_flight <= self.max_inflight
