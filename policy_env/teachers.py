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

from controllers.admission import InflightCap
from runtime.contract import Controller

TEACHERS = {"inflight-cap": InflightCap}


def make_teacher(spec: str) -> Controller:
    """``inflight-cap[:max_inflight=N]`` or any ``controllers.make_controller`` spec."""
    from controllers import make_controller

    return make_controller(spec)
