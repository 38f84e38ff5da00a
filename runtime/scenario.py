"""Scenario files: sites, links, models, workload and limits, validated on load.

A scenario is a YAML file (the schema is documented in the README and enforced here with
pydantic). ``load_scenario("wan-4region")`` reads a shipped scenario by name; any path works
too. Every problem raises :class:`ScenarioError` with one line that names the field and what
to do about it.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.latency import GPUS, MODELS, GPUSpec, ModelSpec

SCENARIO_DIR = Path(str(resources.files("runtime") / "scenarios"))
DATA_DIR = Path(str(resources.files("runtime") / "data"))


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- acceptance ------------------------------------------------------------------------------
class IIDAcceptance(_Strict):
    """Each draft token accepted independently with probability alpha; alpha ~ Beta per request."""

    kind: Literal["iid"] = "iid"
    alpha_mean: float = Field(0.7, gt=0, lt=1)
    alpha_std: float = Field(0.1, ge=0, lt=0.5)


class PositionAcceptance(_Strict):
    """Acceptance probability of the i-th draft token given the previous ones were accepted.

    ``table`` gives positions 1..n (the last entry repeats); each request scales it by a factor
    ~ N(1, scale_std), clipped. "Heavy-head" Llama acceptance is a falling table.

    Positions count from the round's first draft token, or with ``across_rounds`` from the last
    rejection: a round that follows a fully accepted one goes on where it ended (past its bonus
    token). A draft-ahead stream drafts deep into such runs, and the real tiny pair's acceptance
    falls along them (``runtime.real.replay.acceptance_by_run`` fits such a table).
    """

    kind: Literal["position"]
    table: list[Annotated[float, Field(gt=0, lt=1)]] = Field(min_length=1)
    scale_std: float = Field(0.1, ge=0, lt=1)
    across_rounds: bool = False


class DriftAcceptance(_Strict):
    """i.i.d. acceptance whose alpha drifts within a request (mean-reverting random walk per round)."""

    kind: Literal["drift"]
    alpha_mean: float = Field(0.7, gt=0, lt=1)
    alpha_std: float = Field(0.1, ge=0, lt=0.5)
    drift_std: float = Field(0.05, ge=0, lt=0.5)  # per-round step
    reversion: float = Field(0.05, ge=0, le=1)  # pull toward the request's mean per round


Acceptance = Annotated[Union[IIDAcceptance, PositionAcceptance, DriftAcceptance], Field(discriminator="kind")]


class DrafterSpec(_Strict):
    model: str | None = None  # architecture from the catalog (defaults to the drafter's name)
    acceptance: Acceptance = IIDAcceptance()


# -- background load -------------------------------------------------------------------------
class ConstantLoad(_Strict):
    kind: Literal["constant"] = "constant"
    level: float = Field(0.0, ge=0, lt=1)

    @property
    def long_run_mean(self) -> float:
        return self.level


class DiurnalLoad(_Strict):
    kind: Literal["diurnal"]
    mean: float = Field(ge=0, lt=1)
    amplitude: float = Field(ge=0, lt=1)
    period_s: float = Field(gt=0)
    phase: float = 0.0  # fraction of a period

    @property
    def long_run_mean(self) -> float:
        return self.mean

    @model_validator(mode="after")
    def _bounds(self) -> "DiurnalLoad":
        if self.mean + self.amplitude >= 1 or self.mean - self.amplitude < 0:
            raise ValueError("mean +/- amplitude must stay within [0, 1)")
        return self


class MarkovLoad(_Strict):
    """Markov-modulated bursts: the load level jumps between ``levels``, dwelling ~Exp(mean_dwell_s)."""

    kind: Literal["markov"]
    levels: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=2)
    mean_dwell_s: list[Annotated[float, Field(gt=0)]] = Field(min_length=2)

    @property
    def long_run_mean(self) -> float:
        """Levels weighted by their dwell: every level is entered equally often (each hop goes to
        one of the others uniformly), so time shares follow the mean dwells."""
        return sum(x * d for x, d in zip(self.levels, self.mean_dwell_s)) / sum(self.mean_dwell_s)

    @model_validator(mode="after")
    def _same_len(self) -> "MarkovLoad":
        if len(self.levels) != len(self.mean_dwell_s):
            raise ValueError("levels and mean_dwell_s need the same length")
        return self


Load = Annotated[Union[ConstantLoad, DiurnalLoad, MarkovLoad], Field(discriminator="kind")]


# -- sites -------------------------------------------------------------------------------------
class RttRange(_Strict):
    low: float = Field(ge=0)
    high: float = Field(ge=0)


class SiteSpec(_Strict):
    name: str = Field(min_length=1)
    role: Literal["target", "remote", "edge"]
    gpu: str = "A100"
    gpus: int = Field(1, ge=1)
    tp: int = Field(1, ge=1)  # tensor parallel degree of the target model (target site)
    drafter: str | None = None  # draft model hosted here
    region: str | None = None  # AWS region: RTT to the target from the shipped table
    rtt_ms: float | RttRange | None = None  # explicit RTT to the target (a range for groups)
    jitter_ms: float | None = Field(None, ge=0)
    bandwidth_mbps: float | None = Field(None, gt=0)
    count: int = Field(1, ge=1)  # >1 expands to NAME-000..: a fleet of identical sites
    load: Load = ConstantLoad()
    #: Measured latency profiles (CSV) by hosted model name; the rest use the roofline.
    profiles: dict[str, str] = Field(default_factory=dict)

    @field_validator("rtt_ms")
    @classmethod
    def _rtt_nonneg(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError("RTT must be >= 0 ms")
        return v


# -- workload ----------------------------------------------------------------------------------
class PoissonArrivals(_Strict):
    kind: Literal["poisson"] = "poisson"
    rate: float = Field(4.0, gt=0)  # requests per second


class BurstyArrivals(_Strict):
    """Markov-modulated Poisson: base ``rate``, ``burst_factor`` x during bursts."""

    kind: Literal["bursty"]
    rate: float = Field(gt=0)
    burst_factor: float = Field(4.0, ge=1)
    mean_burst_s: float = Field(5.0, gt=0)
    mean_calm_s: float = Field(20.0, gt=0)


class DiurnalArrivals(_Strict):
    kind: Literal["diurnal"]
    rate: float = Field(gt=0)
    amplitude: float = Field(0.5, ge=0, lt=1)  # fraction of rate
    period_s: float = Field(600.0, gt=0)


class TraceArrivals(_Strict):
    """Replay a CSV with the Azure trace columns TIMESTAMP, ContextTokens, GeneratedTokens."""

    kind: Literal["trace"]
    path: str = "azure_conv_sample.csv"  # relative paths also resolve in runtime/data
    time_scale: float = Field(1.0, gt=0)  # >1 stretches inter-arrival gaps (less load)
    max_prompt_tokens: int = Field(8192, ge=1)
    max_output_tokens: int = Field(2048, ge=1)


Arrivals = Annotated[
    Union[PoissonArrivals, BurstyArrivals, DiurnalArrivals, TraceArrivals], Field(discriminator="kind")
]


class LengthDist(_Strict):
    """Token counts ~ lognormal with the given mean, clipped to [min, max]."""

    mean: float = Field(gt=0)
    sigma: float = Field(0.6, ge=0)
    min: int = Field(1, ge=1)
    max: int = Field(8192, ge=1)

    @model_validator(mode="after")
    def _order(self) -> "LengthDist":
        if self.min > self.max:
            raise ValueError("min must be <= max")
        return self


class SLOClass(_Strict):
    name: str
    ttft_s: float = Field(gt=0)
    tpot_s: float = Field(gt=0)
    weight: float = Field(1.0, gt=0)


class WorkloadSpec(_Strict):
    arrivals: Arrivals = PoissonArrivals()
    prompt_tokens: LengthDist = LengthDist(mean=512, sigma=0.8, min=16, max=4096)
    output_tokens: LengthDist = LengthDist(mean=128, sigma=0.6, min=8, max=1024)
    #: Sites (or fleet names) requests come from; default: the target site.
    origins: list[str] | None = None
    slo_classes: list[SLOClass] = Field(
        default_factory=lambda: [SLOClass(name="interactive", ttft_s=2.0, tpot_s=0.1)], min_length=1
    )


class LimitsSpec(_Strict):
    max_k: int = Field(8, ge=1, le=64)
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)
    max_redundancy: int = Field(3, ge=1)
    max_inflight: int = Field(1024, ge=1)  # admitted, unfinished requests; more are dropped
    batch_wait_s: float = Field(0.002, gt=0)  # re-ask after a controller chose to wait
    drain_s: float = Field(300.0, ge=0)  # after the arrival window; unfinished then = dropped


class NetworkSpec(_Strict):
    jitter_ms: float = Field(0.5, ge=0)  # default per-link jitter (std of the half-normal)
    spike_prob: float = Field(0.0, ge=0, le=1)  # chance a message hits a delay spike
    spike_ms: float = Field(50.0, ge=0)  # mean extra delay of a spike (exponential)
    bandwidth_mbps: float = Field(1000.0, gt=0)
    header_bytes: int = Field(64, ge=0)
    bytes_per_token: int = Field(4, ge=1)  # token ids on the wire
    send_draft_probs: bool = False  # also ship one float32 probability per draft token


class ScenarioSpec(_Strict):
    name: str
    description: str = ""
    target_model: str = "llama-3.1-8b"
    models: dict[str, ModelSpec] = Field(default_factory=dict)  # custom architectures
    gpu_specs: dict[str, GPUSpec] = Field(default_factory=dict)  # custom GPUs
    drafters: dict[str, DrafterSpec] = Field(default_factory=dict)
    sites: list[SiteSpec] = Field(min_length=1)
    network: NetworkSpec = NetworkSpec()
    workload: WorkloadSpec = WorkloadSpec()
    limits: LimitsSpec = LimitsSpec()


# -- resolved scenario -----------------------------------------------------------------------
class Site(BaseModel):
    """One concrete site after fleets are expanded and RTTs resolved."""

    model_config = ConfigDict(frozen=True)
    name: str
    role: Literal["target", "remote", "edge"]
    index: int
    gpu: GPUSpec
    gpus: int
    tp: int
    drafter: str | None
    rtt_ms: float
    jitter_ms: float
    bandwidth_mbps: float
    load: Any
    profiles: dict[str, str]
    group: str  # the spec entry it came from (fleet name)


class Scenario(BaseModel):
    """A validated scenario, ready for a runtime."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    spec: ScenarioSpec
    sites: tuple[Site, ...]
    target: Site
    target_model: ModelSpec
    model_specs: dict[str, ModelSpec]  # drafter name -> architecture
    origins: tuple[str, ...]
    source: str

    @property
    def name(self) -> str:
        return self.spec.name

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


@cache
def aws_rtt_table() -> dict[frozenset[str], tuple[float, float]]:
    """Mean RTT and jitter (ms) per AWS region pair, from the shipped table."""
    out: dict[frozenset[str], tuple[float, float]] = {}
    with (DATA_DIR / "aws_rtt_ms.csv").open() as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            out[frozenset((row["region_a"], row["region_b"]))] = (float(row["rtt_ms"]), float(row["jitter_ms"]))
    return out


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("function-after", "tagged-union")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see the scenario schema in the README)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    more = f" (+{len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"  # a whole-model check has no location


def load_scenario(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Load a shipped scenario by name, or a YAML file by path, and validate it."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ScenarioError(
                f"unknown scenario {str(name_or_path)!r}: shipped scenarios are {shipped_scenarios()}, or pass a YAML path"
            )
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} does not exist")
    raw = read_yaml_mapping(path, "scenario", ScenarioError, "a mapping of fields at the top level")
    if overrides:
        raw = deep_merge(raw, overrides)
    return build_scenario(raw, source=str(path))


def beside(name: str, source: str) -> str:
    """A path named in a config file, resolved against that file's folder when it exists there;
    anything else (a shipped name without a suffix, an absolute path, a path relative to the
    working directory) is returned as given."""
    p = Path(name)
    if p.suffix and not p.is_absolute() and source != "<dict>":
        q = Path(source).parent / p
        if q.exists():
            return str(q)
    return name


def read_yaml_mapping(path: Path, what: str, error: type[ValueError], expected: str, empty_ok: bool = False) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; every problem is one ``error`` line naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{what} {path}: expected {expected}")
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings merge instead of being replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_scenario(raw: dict[str, Any], source: str = "<dict>") -> Scenario:
    """Validate a scenario given as a dict (what a YAML file parses to)."""
    try:
        spec = ScenarioSpec.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(f"scenario {source}: {format_validation_error(e)}") from None
    try:
        return _resolve(spec, source)
    except ScenarioError as e:
        raise ScenarioError(f"scenario {source}: {e}") from None


def _resolve(spec: ScenarioSpec, source: str) -> Scenario:
    gpus = {**GPUS, **spec.gpu_specs}
    models = {**MODELS, **spec.models}
    if spec.target_model not in models:
        raise ScenarioError(f"target_model: unknown model {spec.target_model!r}; known: {sorted(models)} (or define it under models:)")
    model_specs: dict[str, ModelSpec] = {}
    for dname, d in spec.drafters.items():
        arch = d.model or dname
        if arch not in models:
            raise ScenarioError(f"drafters.{dname}: unknown model {arch!r}; known: {sorted(models)} (or define it under models:)")
        model_specs[dname] = models[arch]

    targets = [s for s in spec.sites if s.role == "target"]
    if len(targets) != 1:
        raise ScenarioError(f"sites: need exactly one site with role 'target', found {len(targets)}")
    target_spec = targets[0]
    if target_spec.count != 1:
        raise ScenarioError(f"sites.{target_spec.name}: the target site cannot have count > 1")
    names: set[str] = set()
    rtt_table = aws_rtt_table()
    sites: list[Site] = []
    for i, s in enumerate(spec.sites):
        where = f"sites[{i}] ({s.name})"
        if s.gpu not in gpus:
            raise ScenarioError(f"{where}.gpu: unknown GPU {s.gpu!r}; known: {sorted(gpus)} (or define it under gpu_specs:)")
        if s.drafter is not None and s.drafter not in spec.drafters:
            raise ScenarioError(f"{where}.drafter: unknown drafter {s.drafter!r}; declared drafters: {sorted(spec.drafters)}")
        # RTT to the target
        if s.role == "target":
            rtts: list[float] = [0.0]
            jitter = 0.0
        elif s.rtt_ms is not None:
            if isinstance(s.rtt_ms, RttRange):
                lo, hi = s.rtt_ms.low, s.rtt_ms.high
                rtts = [lo + (hi - lo) * j / max(s.count - 1, 1) for j in range(s.count)]
            else:
                rtts = [float(s.rtt_ms)] * s.count
            jitter = spec.network.jitter_ms if s.jitter_ms is None else s.jitter_ms
        elif s.region is not None and target_spec.region is not None:
            if s.region == target_spec.region:
                rtts, jitter = [0.5] * s.count, 0.05
            else:
                pair = rtt_table.get(frozenset((s.region, target_spec.region)))
                if pair is None:
                    raise ScenarioError(
                        f"{where}: no RTT for the pair ({s.region}, {target_spec.region}) in the AWS table; "
                        f"set rtt_ms on the site"
                    )
                rtts = [pair[0]] * s.count
                jitter = pair[1] if s.jitter_ms is None else s.jitter_ms
        else:
            raise ScenarioError(
                f"{where}: no RTT to the target site: set rtt_ms, or give both it and the target an AWS region"
            )
        hosted = {spec.target_model, s.drafter} if s.role == "target" else {s.drafter}
        profiles: dict[str, str] = {}
        for model, p in s.profiles.items():
            if model not in hosted:
                raise ScenarioError(f"{where}.profiles: model {model!r} is not hosted here; hosted: {sorted(filter(None, hosted))}")
            if not resolve_data_path(p).is_file():
                raise ScenarioError(f"{where}.profiles.{model}: file {p!r} does not exist")
            profiles[model] = str(resolve_data_path(p))
        for j in range(s.count):
            name = s.name if s.count == 1 else f"{s.name}-{j:03d}"
            if name in names:
                raise ScenarioError(f"{where}: duplicate site name {name!r}")
            names.add(name)
            sites.append(
                Site(
                    name=name, role=s.role, index=len(sites), gpu=gpus[s.gpu], gpus=s.gpus, tp=s.tp,
                    drafter=s.drafter, rtt_ms=rtts[j], jitter_ms=jitter,
                    bandwidth_mbps=s.bandwidth_mbps or spec.network.bandwidth_mbps, load=s.load,
                    profiles=profiles, group=s.name,
                )
            )
    target = next(s for s in sites if s.role == "target")

    groups: dict[str, list[str]] = {}
    for s in sites:
        groups.setdefault(s.group, []).append(s.name)
    origins: list[str] = []
    for o in spec.workload.origins or [target.name]:
        if o not in groups:
            raise ScenarioError(f"workload.origins: unknown site {o!r}; sites are {sorted(groups)}")
        origins.extend(groups[o])
    if spec.workload.arrivals.kind == "trace" and not resolve_data_path(spec.workload.arrivals.path).is_file():
        raise ScenarioError(f"workload.arrivals.path: trace file {spec.workload.arrivals.path!r} does not exist")
    return Scenario(
        spec=spec, sites=tuple(sites), target=target, target_model=models[spec.target_model],
        model_specs=model_specs, origins=tuple(origins), source=source,
    )


def resolve_data_path(p: str) -> Path:
    """A path as given, or the shipped file of that name in runtime/data."""
    path = Path(p)
    if not path.is_absolute() and not path.exists() and (DATA_DIR / p).exists():
        return DATA_DIR / p
    return path
