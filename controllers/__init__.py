"""Everything that fills the controller slot, by name.

``make_controller("static", k=4)`` or ``make_controller("static:k=4")``. Unknown names or
parameters raise :class:`ControllerError` listing the valid ones. ``A+B`` composes: ``A``
answers every decision except those ``B`` owns, e.g. ``wanspec:k=5+inflight-cap:max_inflight=120``.
The registry itself is :mod:`controllers.registry`; this package adds the controllers that
build others by name.
"""

from __future__ import annotations

from runtime.contract import Controller

from controllers.knobs import KnobController
from controllers.lookahead import Lookahead
from controllers.selector import Selector
from controllers.twin import Twin
from controllers.registry import (
    HEURISTICS,
    LOADERS,
    REGISTRY,
    ControllerError,
    available,
    make_controller,
    parse_spec,
    refusal,
    register,
    split_composite,
)

__all__ = ["HEURISTICS", "REGISTRY", "ControllerError", "available", "make_controller", "parse_spec", "refusal", "register", "split_composite"]


def _load_policy(ref: str) -> Controller:
    """``policy:<ref>``, imported on first use: torch, safetensors and MLflow load only then."""
    try:
        from controllers.policy import PolicyController
    except ImportError as e:  # pragma: no cover - depends on optional install
        raise ControllerError(f"policy controllers are not available: {e}") from None
    return PolicyController.load(ref)


register("knobs", KnobController)
register("lookahead", Lookahead)
register("selector", Selector)
register("twin", Twin)
LOADERS["policy"] = _load_policy
