"""Deployment config: which checkpoints and addresses realise a scenario's sites.

A scenario (``runtime/scenario.py``) says what the system looks like (sites, RTTs, limits,
workload, SLOs) and is shared with the simulator; a deployment says how to run it for real.
Kept separate so the simulator's schema carries no host names or file paths::

    scenario: wan-4region            # shipped name or YAML path
    target_model: {path: /models/Llama-3.1-8B-Instruct, device: cuda, dtype: bfloat16}
    drafters:                        # scenario drafter name -> checkpoint
      llama-3.2-1b: {path: /models/Llama-3.2-1B-Instruct, device: cuda, dtype: bfloat16}
    sites:                           # sites with an address run elsewhere; others start locally
      us-east-2: {address: 10.0.1.7:50061}
    emulate_wan: false               # real WAN between hosts: no emulated delay
    emulate_load: false              # real tenants share the GPUs: no emulated background load

Unset models default to the tiny pair (``python -m runtime.real.models build-tiny``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.load import emulates_nothing
from runtime.scenario import Scenario, ScenarioError, format_validation_error, load_scenario, read_yaml_mapping, shipped_scenarios

REAL_SCENARIO_DIR = Path(__file__).parent / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    path: str
    device: str = "auto"  # auto: cuda when present
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu


class SiteDeploy(_Strict):
    address: str | None = None  # host:port of a site started elsewhere (`python -m runtime.real.serve --site`)
    device: str | None = None
    dtype: str | None = None


class DeploymentSpec(_Strict):
    scenario: str = "tiny-local"
    target_model: ModelRef | None = None
    drafters: dict[str, ModelRef] = Field(default_factory=dict)
    sites: dict[str, SiteDeploy] = Field(default_factory=dict)
    emulate_wan: bool = True  # delay/jitter/bandwidth of the scenario's links in the transport
    # each site's scenario load: (other tenants) emulated by stretching its forwards; off where
    # real tenants share the GPUs
    emulate_load: bool = True
    draft_timeout_s: float = Field(2.0, gt=0)  # a draft RPC slower than this fails over
    health_interval_s: float = Field(0.5, gt=0)
    max_context: int | None = Field(None, ge=8)  # prompt + max_tokens limit (default: the model's)


class Deployment:
    """A validated deployment: the scenario plus resolved checkpoints per site."""

    def __init__(self, spec: DeploymentSpec, models_dir: str | Path | None = None) -> None:
        self.spec = spec
        self.scenario: Scenario = load_scenario(_scenario_path(spec.scenario))
        unknown = set(spec.sites) - {s.name for s in self.scenario.sites}
        if unknown:
            raise ScenarioError(f"deployment sites {sorted(unknown)} are not in scenario {self.scenario.name!r}; "
                                f"sites are {[s.name for s in self.scenario.sites]}")
        unknown = set(spec.drafters) - set(self.scenario.spec.drafters)
        if unknown:
            raise ScenarioError(f"deployment drafters {sorted(unknown)} are not declared in scenario "
                                f"{self.scenario.name!r}; drafters are {sorted(self.scenario.spec.drafters)}")
        self._models_dir = models_dir

    def _tiny(self, which: str) -> ModelRef:
        from runtime.real.models import ensure_tiny

        return ModelRef(path=str(ensure_tiny(self._models_dir) / which), device="auto", dtype="auto")

    @property
    def target(self) -> ModelRef:
        return self.spec.target_model or self._tiny("target")

    def drafter_for(self, site: str) -> ModelRef | None:
        """The checkpoint the site drafts with (None: the site hosts no drafter)."""
        name = self.scenario.site(site).drafter
        if name is None:
            return None
        ref = self.spec.drafters.get(name) or self._tiny("draft")
        over = self.spec.sites.get(site)
        if over is not None and (over.device or over.dtype):
            ref = ref.model_copy(update={k: v for k, v in (("device", over.device), ("dtype", over.dtype)) if v})
        return ref

    def with_addresses(self, addresses: dict[str, str]) -> "Deployment":
        """A copy (same scenario object) where these sites run at these addresses."""
        new = copy.copy(self)
        sites = {**self.spec.sites, **{n: SiteDeploy(address=a) for n, a in addresses.items()}}
        new.spec = self.spec.model_copy(update={"sites": sites})
        return new

    def address(self, site: str) -> str | None:
        d = self.spec.sites.get(site)
        return d.address if d is not None else None

    def emulated_load(self, site: str) -> Any:
        """The load spec to emulate at ``site`` (its scenario ``load:``), or None: idle, or
        ``emulate_load`` off (real tenants, or none)."""
        load = self.scenario.site(site).load
        return None if not self.spec.emulate_load or emulates_nothing(load) else load

    def load_seed(self, site: str, seed: int) -> int:
        """The seed of ``site``'s emulated load in a run seeded ``seed`` (the same wherever it runs):
        the simulator's for that site, so both backends draw the same load path, and apart from the
        seeds of the emulated links (``seed * 7919 + index``), whose jitter must not follow it."""
        return seed * 7919 + 104729 * (self.scenario.site(site).index + 1)

    def site_args(self, site: str, seed: int) -> list[str]:
        """More ``python -m runtime.real.site`` arguments for ``site``: its emulated load, if any."""
        load = self.emulated_load(site)
        return [] if load is None else ["--load", load.model_dump_json(), "--load-seed", str(self.load_seed(site, seed))]


def _scenario_path(name: str) -> str:
    """Scenario names also resolve in ``runtime/real/scenarios`` (deployable tiny scenarios)."""
    local = REAL_SCENARIO_DIR / f"{name}.yaml"
    if Path(name).suffix or Path(name).exists() or local.is_file():
        return str(local) if local.is_file() and not Path(name).suffix else name
    deployable = sorted(p.stem for p in REAL_SCENARIO_DIR.glob("*.yaml"))
    raise ScenarioError(
        f"unknown scenario {name!r}: deployable scenarios are {deployable}, shipped simulator scenarios are "
        f"{shipped_scenarios()}, or pass a YAML path"
    )


def load_deployment(path: str | Path | None = None, scenario: str | None = None,
                    models_dir: str | Path | None = None, **overrides: Any) -> Deployment:
    """Read a deployment YAML (or defaults), optionally overriding its scenario and fields."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ScenarioError(f"deployment file {p} does not exist")
        raw = read_yaml_mapping(p, "deployment", ScenarioError, "a mapping of fields at the top level", empty_ok=True)
    if scenario is not None:
        raw["scenario"] = scenario
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        spec = DeploymentSpec.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(f"deployment {path or '<defaults>'}: {format_validation_error(e)}") from None
    return Deployment(spec, models_dir)
