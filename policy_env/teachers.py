"""Teachers for behaviour cloning: controllers whose answers label the warm-start data only.

A teacher is never part of a deployed policy: it labels the decisions the agent owns while the
env collects cloning data (``SpecControlEnv(admission_teacher=...)``, ``pretrain`` in
``training/train.py``); the deployed policy answers from its observation alone.

``inflight-cap:max_inflight=N`` admits an arrival while at most ``N`` requests are in flight
(the ``in_flight`` global feature the agent observes), turning it away otherwise: under
overload, serving fewer requests within their SLOs beats serving all of them late. Any other
spec is a registered controller (``controllers.make_controller``), e.g. ``oracle``.
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


TEACHERS = {"inflight-cap": InflightCap}


def make_teacher(spec: str) -> Controller:
    """``inflight-cap[:max_inflight=N]`` or any ``controllers.make_controller`` spec."""
    from controllers import ControllerError, make_controller, parse_spec

    name, params = parse_spec(spec)
    if name in TEACHERS:
        try:
            return TEACHERS[name](**params)
        except (TypeError, ValueError) as e:
            raise ControllerError(f"teacher {spec!r}: {e}") from None
    return make_controller(spec)
