"""Request arrivals: Poisson, bursty (Markov-modulated), diurnal, or replayed from a trace.

:func:`arrivals` yields :class:`Arrival` records in time order until ``duration``. The stream
depends only on the scenario and the seed, never on the controller, so every controller in
a comparison serves exactly the same requests.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.scenario import (
    BurstyArrivals,
    DiurnalArrivals,
    LengthDist,
    PoissonArrivals,
    Scenario,
    ScenarioError,
    TraceArrivals,
    resolve_data_path,
)


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    prompt_tokens: int
    output_tokens: int
    origin: str
    slo_class: str
    ttft_s: float
    tpot_s: float


def _lengths(d: LengthDist, rng: np.random.Generator) -> int:
    # lognormal parameterised by its mean: mu = ln(mean) - sigma^2 / 2
    x = rng.lognormal(math.log(d.mean) - d.sigma**2 / 2, d.sigma) if d.sigma > 0 else d.mean
    return int(min(max(round(x), d.min), d.max))


def read_trace(path: str | Path, max_prompt: int = 1 << 30, max_output: int = 1 << 30) -> list[tuple[float, int, int]]:
    """(seconds since first request, prompt tokens, output tokens) from an Azure-format CSV."""
    p = resolve_data_path(str(path))
    if not p.is_file():
        raise ScenarioError(f"trace file {path} does not exist")
    out: list[tuple[float, int, int]] = []
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ScenarioError(f"trace {path}: needs columns {sorted(need)} (Azure LLM trace format), has {reader.fieldnames}")
        t0 = None
        for i, row in enumerate(reader, start=2):
            try:
                ts = row["TIMESTAMP"].strip()
                t = float(ts) if ts.replace(".", "", 1).isdigit() else datetime.fromisoformat(ts[:26]).timestamp()
                prompt, gen = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (ValueError, TypeError) as e:
                raise ScenarioError(f"trace {path}, line {i}: cannot parse ({e})") from None
            if t0 is None:
                t0 = t
            if prompt < 1 or gen < 1:
                continue  # requests with no prompt or no output carry no decode work
            out.append((t - t0, min(prompt, max_prompt), min(gen, max_output)))
    if not out:
        raise ScenarioError(f"trace {path} has no usable rows")
    out.sort()
    return out


def arrivals(scenario: Scenario, seed: int, duration: float, trace: str | None = None,
             rate: float | None = None) -> Iterator[Arrival]:
    """The workload of ``scenario`` until ``duration``; ``rate`` overrides the arrival rate
    (for traces: rescales time so the mean rate becomes ``rate``)."""
    w = scenario.spec.workload
    rng = np.random.default_rng([seed, 0xA11])
    classes = w.slo_classes
    weights = np.array([c.weight for c in classes], float)
    weights /= weights.sum()
    origins = scenario.origins
    spec = w.arrivals
    if trace is not None:
        spec = TraceArrivals(kind="trace", path=trace)

    def make(t: float, prompt: int | None = None, output: int | None = None) -> Arrival:
        c = classes[int(rng.choice(len(classes), p=weights))] if len(classes) > 1 else classes[0]
        o = origins[int(rng.integers(len(origins)))] if len(origins) > 1 else origins[0]
        return Arrival(
            t,
            prompt if prompt is not None else _lengths(w.prompt_tokens, rng),
            output if output is not None else _lengths(w.output_tokens, rng),
            o, c.name, c.ttft_s, c.tpot_s,
        )

    if isinstance(spec, TraceArrivals):
        rows = read_trace(spec.path, spec.max_prompt_tokens, spec.max_output_tokens)
        scale = spec.time_scale
        if rate is not None and len(rows) > 1 and rows[-1][0] > 0:
            scale = (len(rows) - 1) / rows[-1][0] / rate
        for t, p, g in rows:
            if t * scale >= duration:
                return
            yield make(t * scale, p, g)
        return

    base = rate if rate is not None else spec.rate
    t = 0.0
    if isinstance(spec, PoissonArrivals):
        while True:
            t += rng.exponential(1.0 / base)
            if t >= duration:
                return
            yield make(t)
    elif isinstance(spec, DiurnalArrivals):
        peak = base * (1 + spec.amplitude)
        while True:  # thinning of a Poisson process at the peak rate
            t += rng.exponential(1.0 / peak)
            if t >= duration:
                return
            lam = base * (1 + spec.amplitude * math.sin(2 * math.pi * t / spec.period_s))
            if rng.random() * peak <= lam:
                yield make(t)
    elif isinstance(spec, BurstyArrivals):
        # two-state MMPP whose long-run mean rate is ``base``
        pc, pb = spec.mean_calm_s, spec.mean_burst_s
        calm_rate = base * (pc + pb) / (pc + spec.burst_factor * pb)
        bursting, switch = False, rng.exponential(pc)
        while True:
            lam = calm_rate * (spec.burst_factor if bursting else 1.0)
            nxt = t + rng.exponential(1.0 / lam)
            if nxt >= switch:
                t = switch
                bursting = not bursting
                switch = t + rng.exponential(pb if bursting else pc)
                if t >= duration:
                    return
                continue
            t = nxt
            if t >= duration:
                return
            yield make(t)
    else:  # pragma: no cover - the schema admits nothing else
        raise ScenarioError(f"unknown arrival kind {spec!r}")
