"""Scenario distributions: train one policy over many systems (domain randomisation).

A distribution is a YAML file naming base scenarios and ranges to draw their knobs from::

    name: wan-edge-mix
    scenarios: [{scenario: wan-4region, weight: 1}, {scenario: edge-fleet, weight: 1}]
    rate_scale: {low: 1.4, high: 2.2}      # x the base scenario's own arrival rate
    bursty_prob: 0.5                       # arrivals become Markov-modulated bursts
    burst_factor: {low: 1.5, high: 3.0}
    load_scale: {low: 0.5, high: 1.5}      # every site's background load levels
    load_flip_prob: 0.3                    # a site's load becomes an idle/busy Markov flip
    tier_load: {remote: {low: 0.0, high: 0.8}}   # a whole role's mean load, drawn once per system
    rtt_scale: {low: 0.5, high: 2.0}       # remote and edge RTTs
    alpha_shift: {low: -0.1, high: 0.08}   # drafter acceptance
    drift_prob: 0.3                        # acceptance drifts within a request
    slo_scale: {low: 0.8, high: 1.3}       # TTFT and TPOT deadlines
    tpot_scale: {low: 0.6, high: 1.2}      # TPOT deadlines again, drawn apart (ttft_scale: TTFT's)
    prompt_scale: {low: 0.5, high: 3.0}    # mean prompt length (its clip range stretches with it)
    output_scale: {low: 0.5, high: 1.5}    # mean output length
    gpus: {target: [H100, A100], remote: [A10G, L4, A100]}   # GPU types drawn per site role
    rate_per_capacity: true                # rates relative to the drawn system's capacity

:meth:`ScenarioDistribution.sample` draws a validated :class:`~runtime.scenario.Scenario` and
an arrival rate from a seeded RNG, so an episode's system is reproducible from its seed.
``python -m runtime check-dist FILE`` validates a file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.latency import site_latency
from runtime.scenario import Scenario, ScenarioError, beside, build_scenario, format_validation_error, load_scenario, read_yaml_mapping


class DistributionError(ValueError):
    """A distribution file is invalid; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self) -> "Range":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    @property
    def is_unit(self) -> bool:
        """Always 1: a scale that changes nothing, and whose draw is skipped."""
        return self.low == self.high == 1.0


class BaseEntry(_Strict):
    scenario: str
    weight: float = Field(1.0, gt=0)


def _one() -> Range:
    return Range(low=1.0, high=1.0)


class DistributionSpec(_Strict):
    name: str
    description: str = ""
    scenarios: list[BaseEntry] = Field(min_length=1)
    rate_scale: Range = Field(default_factory=_one)
    bursty_prob: float = Field(0.0, ge=0, le=1)
    burst_factor: Range = Field(default_factory=lambda: Range(low=1.5, high=3.0))
    mean_burst_s: Range = Field(default_factory=lambda: Range(low=3.0, high=15.0))
    mean_calm_s: Range = Field(default_factory=lambda: Range(low=10.0, high=40.0))
    load_scale: Range = Field(default_factory=_one)
    load_flip_prob: float = Field(0.0, ge=0, le=1)
    #: per site role, the long-run mean background load of all its sites, drawn once per system
    #: (a busy or an idle hour across a whole tier of regions), instead of load_scale x the
    #: base's; sites that flip (load_flip_prob) keep their flip
    tier_load: dict[Literal["target", "remote", "edge"], Range] = Field(default_factory=dict)
    rtt_scale: Range = Field(default_factory=_one)
    alpha_shift: Range = Field(default_factory=lambda: Range(low=0.0, high=0.0))
    drift_prob: float = Field(0.0, ge=0, le=1)
    slo_scale: Range = Field(default_factory=_one)
    #: each a second factor on one deadline of every SLO class, drawn independently of the other
    #: (a code-completion service with a tight per-token pace but a lax first token, or the reverse)
    ttft_scale: Range = Field(default_factory=_one)
    tpot_scale: Range = Field(default_factory=_one)
    prompt_scale: Range = Field(default_factory=_one)
    output_scale: Range = Field(default_factory=_one)
    #: scale each drawn rate by the drawn system's nominal capacity against its base's
    #: (:func:`nominal_service_s`), so rate_scale means the same load on a slower GPU or longer prompts
    rate_per_capacity: bool = False
    #: GPU types to draw per site role (``target``, ``remote``, ``edge``); a role not listed keeps its GPUs
    gpus: dict[Literal["target", "remote", "edge"], list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _positive(self) -> "DistributionSpec":
        for name in ("rate_scale", "rtt_scale", "slo_scale", "ttft_scale", "tpot_scale", "prompt_scale", "output_scale",
                     "burst_factor", "mean_burst_s", "mean_calm_s"):
            if getattr(self, name).low <= 0:
                raise ValueError(f"{name}.low must be > 0")
        if self.load_scale.low < 0:
            raise ValueError("load_scale.low must be >= 0")
        for role, r in self.tier_load.items():
            if r.low < 0 or r.high > 0.9:
                raise ValueError(f"tier_load.{role} must lie within [0, 0.9] (a utilisation), got [{r.low}, {r.high}]")
        return self


#: Fields added after data was recorded on distributions: left out of the fingerprint where they draw nothing.
_LATER_FIELDS = ("ttft_scale", "tpot_scale")


class ScenarioDistribution:
    """Base scenarios plus ranges; :meth:`sample` draws one concrete scenario and rate."""

    def __init__(self, spec: DistributionSpec, source: str = "<dict>") -> None:
        self.spec = spec
        self.source = source
        self.bases: list[Scenario] = []
        self.raws: list[dict[str, Any]] = []
        for entry in spec.scenarios:
            try:
                base = load_scenario(beside(entry.scenario, source))
            except ScenarioError as e:
                raise DistributionError(f"{source}: scenarios: {e}") from None
            if base.spec.workload.arrivals.kind == "trace":
                raise DistributionError(f"{source}: scenario {entry.scenario!r} replays a trace; use a scenario with a rate")
            self.bases.append(base)
            self.raws.append(read_yaml_mapping(Path(base.source), "scenario", ScenarioError, "a mapping"))

    @property
    def name(self) -> str:
        return self.spec.name

    def fingerprint(self) -> str:
        """``name@digest`` of what the distribution draws (its spec and its base scenarios'
        contents): data recorded on its systems names it, so data from an edited mix is refused."""
        unit = {name for name in _LATER_FIELDS if getattr(self.spec, name).is_unit}  # (they draw nothing: files keep their digest)
        spec = self.spec.model_dump(mode="json", exclude=unit)
        blob = json.dumps({"spec": spec, "bases": self.raws}, sort_keys=True, default=str)
        return f"{self.name}@{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    @classmethod
    def load(cls, path: str | Path) -> "ScenarioDistribution":
        p = Path(path)
        if not p.is_file():
            raise DistributionError(f"scenario distribution {p} does not exist; pass a YAML file (see runtime/distribution.py)")
        raw = read_yaml_mapping(p, "scenario distribution", DistributionError, "a mapping with name and scenarios")
        return cls.from_dict(raw, source=str(p))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> "ScenarioDistribution":
        try:
            spec = DistributionSpec.model_validate(raw)
        except ValidationError as e:
            raise DistributionError(f"{source}: {format_validation_error(e)}") from None
        return cls(spec, source)

    def draw(self, seed: int) -> tuple[Scenario, float]:
        """The system (and rate) that ``seed`` stands for: one seed, one system, wherever it is
        drawn (the knob env's episodes, the judge's test systems, ``check-dist``)."""
        return self.sample(random.Random(seed))

    def sample(self, rng: random.Random) -> tuple[Scenario, float]:
        """One scenario (validated) and its mean arrival rate, drawn from ``rng``."""
        s = self.spec
        i = rng.choices(range(len(self.bases)), weights=[e.weight for e in s.scenarios])[0]
        base, raw = self.bases[i], copy.deepcopy(self.raws[i])
        raw["name"] = f"{base.name}~{s.name}"
        # arrivals: the mean rate scales; bursts keep that mean
        arr = base.spec.workload.arrivals
        rate = float(arr.rate) * s.rate_scale.draw(rng)  # type: ignore[union-attr]
        work = raw.setdefault("workload", {})
        if rng.random() < s.bursty_prob:
            factor, burst, calm = s.burst_factor.draw(rng), s.mean_burst_s.draw(rng), s.mean_calm_s.draw(rng)
            # a bursty process's rate is its long-run mean (runtime.workload)
            work["arrivals"] = {"kind": "bursty", "rate": rate, "burst_factor": factor, "mean_burst_s": burst, "mean_calm_s": calm}
        else:
            work["arrivals"] = {"kind": "poisson", "rate": rate}
        slo = s.slo_scale.draw(rng)
        classes = base.spec.workload.slo_classes
        work["slo_classes"] = [
            {"name": c.name, "ttft_s": c.ttft_s * slo, "tpot_s": c.tpot_s * slo, "weight": c.weight} for c in classes
        ]
        # sites: background load and RTTs
        load_k, rtt_k = s.load_scale.draw(rng), s.rtt_scale.draw(rng)
        steady: list[tuple[dict[str, Any], Any]] = []  # (raw site, base load) of the sites that do not flip
        for site in raw["sites"]:
            resolved = [x for x in base.sites if x.group == site["name"]]
            if rng.random() < s.load_flip_prob:
                lo, hi = rng.uniform(0.0, 0.2), rng.uniform(0.4, 0.8)
                site["load"] = {"kind": "markov", "levels": [lo, hi], "mean_dwell_s": [rng.uniform(10, 60), rng.uniform(5, 30)]}
            else:
                site["load"] = _scaled_load(resolved[0].load if resolved else None, load_k)
                steady.append((site, resolved[0].load if resolved else None))
            choices = s.gpus.get(site.get("role", "remote"))
            if choices:
                site["gpu"] = rng.choice(choices)
            if site.get("role") in ("remote", "edge") and resolved:
                rtts = [x.rtt_ms * rtt_k for x in resolved]
                site.pop("region", None)
                site["rtt_ms"] = {"low": min(rtts), "high": max(rtts)} if len(rtts) > 1 else rtts[0]
                site["jitter_ms"] = resolved[0].jitter_ms
        # acceptance
        shift = s.alpha_shift.draw(rng)
        drift = rng.random() < s.drift_prob
        for d in raw.get("drafters", {}).values():
            d["acceptance"] = _shifted_acceptance(d.get("acceptance", {"kind": "iid"}), shift, drift)
        # lengths (drawn last, so a file without these ranges draws the systems it drew before):
        # the lognormal's mean scales, and its clip range with it, up to 8,192 tokens
        for key, scale in (("prompt_tokens", s.prompt_scale), ("output_tokens", s.output_scale)):
            if scale.is_unit:
                continue
            k = scale.draw(rng)
            dist = getattr(base.spec.workload, key)
            work[key] = {"mean": dist.mean * k, "sigma": dist.sigma, "min": dist.min,
                         "max": max(dist.min, min(8192, round(dist.max * k)))}
        # a whole tier's load (drawn after everything else, so a file without tier_load draws the
        # systems it drew before)
        for role, level in ((role, r.draw(rng)) for role, r in s.tier_load.items()):
            for site, load in steady:
                if site.get("role", "remote") == role:
                    site["load"] = _load_with_mean(load, level)
        # each deadline on its own (last too, and only where a range is set)
        for key, scale in (("ttft_s", s.ttft_scale), ("tpot_s", s.tpot_scale)):
            if scale.is_unit:
                continue
            k = scale.draw(rng)
            for c in work["slo_classes"]:
                c[key] *= k
        try:
            drawn = build_scenario(raw, source=f"{base.source} ~ {self.source}")
            if s.rate_per_capacity:
                rate *= nominal_service_s(base) / nominal_service_s(drawn)
                work["arrivals"]["rate"] = rate
                drawn = build_scenario(raw, source=f"{base.source} ~ {self.source}")
            return drawn, rate
        except ScenarioError as e:  # a range that produced an invalid system
            raise DistributionError(f"{self.source}: a sample of {base.name} is invalid ({e}); narrow the ranges") from None


def nominal_service_s(sc: Scenario) -> float:
    """Target GPU seconds per request at half the max batch: a capacity proxy (its inverse is
    roughly the requests per second the target can verify), from the target's latency model (its
    measured profile, else the roofline), the mean lengths and the target's mean background load.
    Only ratios of it are used."""
    t, w = sc.target, sc.spec.workload
    lat = site_latency(t.profiles, sc.spec.target_model, sc.target_model, t.gpu, tp=t.tp)
    prompt, out = w.prompt_tokens.mean, w.output_tokens.mean
    b = max(sc.spec.limits.max_batch_size // 2, 1)
    step = lat.forward_time(b, 3 * b, int(b * (prompt + out / 2)))  # a round of ~3 tokens per sequence
    decode = out * step / (2.5 * b)  # ~2.5 tokens committed per sequence and round
    prefill = lat.forward_time(1, int(prompt), 0)
    return (decode + prefill) / (1.0 - (t.load.long_run_mean if t.load is not None else 0.0))


def _scaled_load(load: Any, k: float) -> dict[str, Any]:
    cap = lambda x: max(0.0, min(0.9, x * k))  # noqa: E731
    if load is None or load.kind == "constant":
        return {"kind": "constant", "level": cap(load.level if load is not None else 0.0)}
    if load.kind == "markov":
        return {"kind": "markov", "levels": [cap(x) for x in load.levels], "mean_dwell_s": list(load.mean_dwell_s)}
    mean = cap(load.mean)
    amp = min(load.amplitude * k, mean, 0.95 - mean)
    return {"kind": "diurnal", "mean": mean, "amplitude": max(0.0, amp), "period_s": load.period_s, "phase": load.phase}


def _load_with_mean(load: Any, level: float) -> dict[str, Any]:
    """``load``'s dynamics moved to the long-run mean ``level``: its swings around its own mean
    scale as the mean does, shrunk where a level would leave [0, 0.9] (so the mean stays exact)."""
    mean = load.long_run_mean if load is not None else 0.0
    if mean <= 0:
        return {"kind": "constant", "level": level}
    if load.kind != "markov":
        return _scaled_load(load, level / mean)  # a constant's or diurnal's mean scales exactly
    k = level / mean
    devs = [x - mean for x in load.levels]  # their dwell-weighted sum is 0: the mean stays level
    for d in devs:
        k = min(k, (0.9 - level) / d if d > 0 else level / -d if d < 0 else k)
    return {"kind": "markov", "levels": [level + d * k for d in devs], "mean_dwell_s": list(load.mean_dwell_s)}


def _shifted_acceptance(acc: dict[str, Any], shift: float, drift: bool) -> dict[str, Any]:
    clip = lambda x: max(0.05, min(0.95, x))  # noqa: E731
    kind = acc.get("kind", "iid")
    if kind == "position":
        return {**acc, "table": [clip(x + shift) for x in acc["table"]]}
    mean = clip(acc.get("alpha_mean", 0.7) + shift)
    std = acc.get("alpha_std", 0.1)
    if drift or kind == "drift":
        return {"kind": "drift", "alpha_mean": mean, "alpha_std": std, "drift_std": acc.get("drift_std", 0.05),
                "reversion": acc.get("reversion", 0.05)}
    return {"kind": "iid", "alpha_mean": mean, "alpha_std": std}
