"""The controller registry: build any controller by name (``static:k=4``, ``A+B``, ``policy:<ref>``).

A module of its own that imports only controllers which build nothing by name, so the two
that do (the knob controller builds its modes, a trained policy its heuristic) import it
without an import cycle; :mod:`controllers` registers those two when the package loads.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from typing import Any, Callable

from pydantic import TypeAdapter, ValidationError

from runtime.contract import Controller, RuntimeInfo, compose

from controllers.admission import InflightCap
from controllers.basic import NoSpec, Static
from controllers.centralized import Centralized
from controllers.dynamic_k import BanditK, VllmDynamicK
from controllers.oracle import Oracle
from controllers.sled import Sled
from controllers.wanspec import WanSpec
from controllers.wisp import Wisp


class ControllerError(ValueError):
    """Bad controller name or parameter; the message lists what is valid."""


#: name -> factory. Other modules add themselves with :func:`register`.
REGISTRY: dict[str, Callable[..., Controller]] = {
    "no-spec": NoSpec,
    "static": Static,
    "centralized": Centralized,
    "sled": Sled,
    "wanspec": WanSpec,
    "wisp": Wisp,
    "vllm-dynamic-k": VllmDynamicK,
    "bandit-k": BanditK,
    "oracle": Oracle,
    "inflight-cap": InflightCap,
}
#: The heuristics: what ``baselines: [all]`` means in a training config. The registry above but
#: the clairvoyant oracle (a reference) and the admission cap alone (a building block); the knob
#: controller and those that choose between its settings (lookahead, selector, twin) register later.
HEURISTICS: tuple[str, ...] = tuple(n for n in REGISTRY if n not in ("oracle", "inflight-cap"))
#: Controllers named by a reference instead of parameters (``policy:<checkpoint>``): name ->
#: ``loader(ref)``. :mod:`controllers` adds ``policy``, whose code imports this module.
LOADERS: dict[str, Callable[[str], Controller]] = {}


def register(name: str, factory: Callable[..., Controller]) -> None:
    REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(REGISTRY) + ["policy:<checkpoint>"]


def _top_level(spec: str) -> list[bool]:
    """For each character of ``spec``: whether it lies outside every YAML flow collection
    (``[...]``, ``{...}``) and quoted string, where a ``,`` or ``+`` separates spec items. So a
    value can be a list: ``knobs:modes=[wanspec, wisp]``, ``twin:modes=["wanspec:k=5,switch_gain=1.4", wisp]``."""
    out, depth, quote, prev = [], 0, "", "="
    for ch in spec:
        if quote:
            out.append(False)
            quote = "" if ch == quote else quote
            continue
        if ch in "\"'" and prev in "=[{,:":  # a quote opens a value (YAML's rule), not o'neil
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise ControllerError(f"controller {spec!r}: {ch!r} closes nothing; balance the brackets of its values")
        out.append(depth == 0 and not quote)
        prev = ch if not ch.isspace() else prev
    if depth or quote:
        what = f"quote {quote}" if quote else "'[' or '{'"
        raise ControllerError(f"controller {spec!r}: an unclosed {what}; close it (e.g. modes=[wanspec, wisp])")
    return out


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"static:k=6"`` -> ("static", {"k": 6}); values are parsed as YAML, so a list is written
    in YAML's flow form (``knobs:modes=[wanspec, wisp]``), its commas not splitting items."""
    import yaml

    if spec.startswith("policy:"):
        return "policy", {"ref": spec.removeprefix("policy:")}
    name, _, rest = spec.partition(":")
    top = _top_level(rest)
    cuts = [-1, *(i for i, ch in enumerate(rest) if ch == "," and top[i]), len(rest)]
    params: dict[str, Any] = {}
    for item in filter(None, (rest[a + 1:b] for a, b in zip(cuts, cuts[1:]))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ControllerError(f"controller {spec!r}: parameter {item!r} needs the form key=value")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0]
            raise ControllerError(f"controller {spec!r}: the value of {key.strip()!r} is not valid YAML ({first}); "
                                  "quote it or fix its brackets") from None
    return name, params


def split_composite(spec: str) -> list[str]:
    """``"wanspec:k=5+inflight-cap:max_inflight=9"`` -> its parts. Only a ``+`` outside a value's
    brackets and quotes, followed by a registered name, splits, so values (``1e+3``), lists of
    specs and checkpoint paths keep theirs."""
    top = _top_level(spec) if not spec.startswith("policy:") else [True] * len(spec)
    cuts = [m.start() for m in re.finditer(r"\+([A-Za-z][\w-]*)", spec) if m.group(1) in REGISTRY and top[m.start()]]
    bounds = [0, *cuts, len(spec)]
    return [spec[a:b].lstrip("+").strip() for a, b in zip(bounds, bounds[1:])]


def make_controller(spec: str, **params: Any) -> Controller:
    """Build a controller from ``NAME[:key=value,...]``, ``policy:<checkpoint>`` or ``A+B+...``
    (``A`` answers what the later parts do not own; ``params`` go to ``A``)."""
    parts = split_composite(spec)
    if len(parts) > 1:
        base = make_controller(parts[0], **params)
        owners: dict[str, Controller] = {}
        for part in parts[1:]:
            c = make_controller(part)
            if not c.owns:
                raise ControllerError(f"controller {part!r} in {spec!r} owns no decision to compose")
            clash = sorted(set(owners) & set(c.owns))
            if clash:
                raise ControllerError(f"controllers in {spec!r} both own {clash}; give each decision one owner")
            owners.update({d: c for d in c.owns})
        return compose(base, **owners)
    name, parsed = parse_spec(spec)
    parsed.update(params)
    loader = LOADERS.get(name)
    if loader is not None:
        return loader(**parsed)
    factory = REGISTRY.get(name)
    if factory is None:
        raise ControllerError(f"unknown controller {name!r}; valid: {', '.join(available())}")
    sig = inspect.signature(factory)
    valid = [p for p in sig.parameters if p not in ("self",)]
    bad = [p for p in parsed if p not in valid]
    if bad:
        raise ControllerError(
            f"controller {name!r} has no parameter(s) {bad}; valid: {valid or 'none'}"
        )
    hints = parameter_types(factory)
    for key, value in parsed.items():
        if key in hints:
            _check_type(name, key, value, hints[key])
    try:
        return factory(**parsed)
    except (TypeError, ValueError) as e:
        raise ControllerError(f"controller {name!r}: {e}") from None


def refusal(spec: str, info: RuntimeInfo) -> str | None:
    """Why the controller ``spec`` refuses the system ``info`` describes at ``bind()`` (e.g. a
    heuristic that needs remote sites, on a single site), or None if it runs there. A bad spec
    raises :class:`ControllerError`: that is the caller's to fix, not a property of the system."""
    controller = make_controller(spec)
    try:
        controller.bind(info)
    except ValueError as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=None)
def parameter_types(factory: Callable[..., Controller]) -> dict[str, Any]:
    """The annotated type of each of a factory's parameters (a class: its ``__init__``'s); once
    per factory, as knob controllers build their modes by spec in every run."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    hints = typing.get_type_hints(target)
    hints.pop("return", None)
    return hints


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _type_name(annotation: Any) -> str:
    """``float | 'none' | None`` rather than ``Union[float, Literal['none'], NoneType]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _check_type(name: str, key: str, value: Any, annotation: Any) -> None:
    """A spec's value against the parameter's annotation, so ``twin:stress=abc`` is refused by
    name and type instead of failing somewhere inside the controller."""
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as e:
        raise ControllerError(f"controller {name!r}: parameter {key}={value!r} must be {_type_name(annotation)} "
                              f"({e.errors()[0]['msg']}); fix the value in the spec `{name}:{key}=...`"
                              + (" (a list in brackets: [a, b])" if "Sequence" in _type_name(annotation) else "")) from None
