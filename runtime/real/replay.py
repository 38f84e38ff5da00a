"""Replay a scenario's workload through the real runtime, and calibrate the simulator to it.

The simulator and the real runtime see the *same* arrivals (``runtime.workload.arrivals`` with
the same seed and window): arrival times, prompt and output lengths, origins and SLO classes.
Real prompts of the drawn lengths are cut from the tiny corpus (or any token stream).
:func:`calibrated_scenario` gives the simulator this host's measured latency profiles and the
real run's measured per-token acceptance, round trips and forward speeds (:func:`measure_run`),
so the two can be compared (``benchmarks/real_sim_vs_real.py``).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runtime.contract import Controller, drive
from runtime.latency import ProfileTable
from runtime.metrics import acceptance_per_token
from runtime.real.runtime import RealRequest, RealRuntime
from runtime.scenario import Scenario, build_scenario
from runtime.workload import arrivals


def token_stream(runtime: RealRuntime, texts: list[str], need: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < need:
        for t in texts:
            ids += runtime.encode(t)
    return ids


def replay(runtime: RealRuntime, controller: Controller, duration: float, seed: int = 0,
           texts: list[str] | None = None, temperature: float = 0.0) -> list[RealRequest]:
    """Submit the scenario's arrivals over ``duration`` seconds and drive them to completion."""
    reqs = submit_workload(runtime, duration, seed, texts, temperature)  # also sets the metrics window
    drive(runtime, controller)
    return reqs


def submit_workload(runtime: RealRuntime, duration: float, seed: int = 0, texts: list[str] | None = None,
                    temperature: float = 0.0) -> list[RealRequest]:
    """Schedule the scenario's arrivals (same draws as the simulator's) and close the workload."""
    from runtime.real.models import tiny_prompts

    arr = list(arrivals(runtime.scenario, seed, duration))
    limit = runtime.max_context - runtime.limits.max_k - 2
    stream = token_stream(runtime, texts or tiny_prompts(), sum(a.prompt_tokens for a in arr) + limit)
    reqs = []
    pos = 0
    for a in arr:
        n = min(a.prompt_tokens, limit - 1)
        out = max(1, min(a.output_tokens, limit - n))
        reqs.append(runtime.submit(stream[pos:pos + n], out, temperature, origin=a.origin, slo_class=a.slo_class,
                                   at=a.time))
        pos += n
    runtime.end_of_workload()
    runtime.metrics.window_s = duration
    return reqs


def with_rate(scenario: Scenario, rate: float) -> Scenario:
    """The scenario with Poisson arrivals at ``rate`` requests/s."""
    raw: dict[str, Any] = scenario.spec.model_dump(mode="json", exclude_none=True)
    raw["workload"]["arrivals"] = {"kind": "poisson", "rate": rate}
    return build_scenario(raw, source=scenario.source)


@dataclass
class RunMeasures:
    """What a real run measured that the simulator takes as given (see :func:`measure_run`)."""

    alpha: float  # per-token acceptance of the drafter (i.i.d. estimate)
    # acceptance by position in the run since the last rejection (see acceptance_by_run)
    table: list[float] = field(default_factory=list)
    round_trip_s: dict[str, float] = field(default_factory=dict)  # per site: median draft round trip beyond compute
    speed: dict[str, dict[str, float]] = field(default_factory=dict)  # per site and model: forward s / profiled s
    control: float = 0.0  # the driver's work between forwards, per second of the target's forwards


def measure_run(runtime: RealRuntime, profiles: dict[str, str]) -> RunMeasures:
    """The run's acceptance, round trips and forward speeds against the latency ``profiles``.

    ``speed`` is, per site and model, the run's forward seconds over what the profiles predict
    for the same passes (sequences, new and context tokens): above 1 the site ran slower than where it was
    profiled, e.g. because emulated sites share this host's cores with the target, so that the
    simulator is given the compute the real run actually had. The target site's speeds also carry
    ``control``: the driver thread's own work between forwards (decisions, draft replies, stream
    messages), which holds the target up as forwards do but which the simulator does not model.
    """
    m = runtime.metrics
    tables = {model: ProfileTable.from_csv(path) for model, path in profiles.items()}
    real: dict[tuple[str, str], float] = {}
    predicted: dict[tuple[str, str], float] = {}
    for site, model, n, new, ctx, seconds in runtime.forward_log:
        table = tables.get(model)
        if table is not None:
            real[site, model] = real.get((site, model), 0.0) + seconds
            predicted[site, model] = predicted.get((site, model), 0.0) + table.forward_time(n, new, ctx)
    forwards = m.target_verify_gpu_s + m.target_draft_gpu_s
    control = max(m.sim_time - runtime.driver_idle_s - forwards, 0.0) / forwards if forwards > 0 else 0.0
    speed: dict[str, dict[str, float]] = {}
    for (site, model), t in real.items():
        if predicted[site, model] > 0:
            held_up = 1.0 + control if site == runtime.target_name else 1.0
            speed.setdefault(site, {})[model] = t / predicted[site, model] * held_up
    return RunMeasures(
        alpha=acceptance_per_token(m.accepted, m.rejections), table=acceptance_by_run(runtime.round_log),
        round_trip_s={site: statistics.median(v) for site, v in runtime.transport_overhead_s.items() if v},
        speed=speed, control=control,
    )


def acceptance_by_run(rounds: Iterable[tuple[int, int, int]], min_trials: int = 30,
                      max_len: int = 24) -> list[float]:
    """Acceptance of a draft token by its position in its run (tokens committed since the last
    rejection), from ``(run, k, accepted)`` rounds (``RealRuntime.round_log``): the share of
    trials at each position that were accepted.

    Positions with fewer than ``min_trials`` trials, and all after the first such, share one
    pooled estimate (the table's last entry, which repeats). A real drafter's acceptance is far
    from i.i.d. along a run: the tiny pair agrees on ~95% of the first two tokens after a
    rejection and on under half past the fifth, and a draft-ahead stream drafts deep into runs."""
    trials = [0] * max_len
    hits = [0] * max_len
    for run, k, accepted in rounds:
        for i in range(min(k, accepted + 1)):
            pos = min(run + i, max_len - 1)
            trials[pos] += 1
            hits[pos] += i < accepted
    table: list[float] = []
    for pos in range(max_len):
        if trials[pos] < min_trials:
            rest_t, rest_h = sum(trials[pos:]), sum(hits[pos:])
            if rest_t:
                table.append(rest_h / rest_t)
            break
        table.append(hits[pos] / trials[pos])
    return [min(max(p, 0.01), 0.99) for p in table]


def calibrated_scenario(scenario: Scenario, profiles: dict[str, str], alpha: float,
                        round_trip_s: dict[str, float] | None = None,
                        speed: dict[str, dict[str, float]] | None = None, table: list[float] | None = None) -> Scenario:
    """The scenario as measured: latency profiles on every site hosting the profiled models
    (scaled by the measured ``speed`` of that model at that site), i.i.d. acceptance ``alpha``
    or, given a ``table`` (:func:`acceptance_by_run`), acceptance by position counted across
    rounds, and per site the measured draft round trip beyond compute (``RealRuntime.transport_overhead_s``:
    emulated WAN + RPC + queueing) as its RTT. Scaled profiles are written beside the originals."""
    raw: dict[str, Any] = scenario.spec.model_dump(mode="json", exclude_none=True)
    for site in raw["sites"]:
        if round_trip_s and site["name"] in round_trip_s and site.get("count", 1) == 1:
            site["rtt_ms"] = round_trip_s[site["name"]] * 1000.0
            site["jitter_ms"] = 0.0
        hosted = {raw["target_model"], site.get("drafter")} if site["role"] == "target" else {site.get("drafter")}
        factors = (speed or {}).get(site["name"], {})
        site["profiles"] = {m: _scaled(p, factors.get(m, 1.0)) for m, p in profiles.items() if m in hosted}
    for d in raw["drafters"].values():
        d["acceptance"] = ({"kind": "position", "table": table, "scale_std": 0.0, "across_rounds": True} if table else
                           {"kind": "iid", "alpha_mean": min(max(alpha, 0.01), 0.99), "alpha_std": 0.05})
    return build_scenario(raw, source=f"{scenario.source} (calibrated)")


def _scaled(path: str, factor: float) -> str:
    """``path``'s profile with every time times ``factor``, as a CSV beside it (``path`` if 1)."""
    if factor == 1.0:
        return path
    src = Path(path)
    out = src.with_name(f"{src.stem}-x{factor:.4f}.csv")
    with src.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    with out.open("w", newline="") as f:
        f.write(f"# {src.name} with every time x{factor:.4f} (measured speed of a real run)\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "ms": f"{float(r['ms']) * factor:.4f}"})
    return str(out)


def mean_tpot(records: list[Any]) -> float:
    vals = [r.tpot for r in records if r.output_tokens > 1]
    return sum(vals) / len(vals) if vals else float("nan")
