"""Replay a scenario's workload through the real runtime, and calibrate the simulator to it.

The simulator and the real runtime see the *same* arrivals (``runtime.workload.arrivals`` with
the same seed and window): arrival times, prompt and output lengths, origins and SLO classes.
Real prompts of the drawn lengths are cut from the tiny corpus (or any token stream).
:func:`calibrated_scenario` gives the simulator this host's measured latency profiles and the
real drafter's measured acceptance rate, so the two can be compared (``benchmarks/real_sim_vs_real.py``).
"""

from __future__ import annotations

from typing import Any

from runtime.contract import Controller, drive
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


def calibrated_scenario(scenario: Scenario, profiles: dict[str, str], alpha: float,
                        round_trip_s: dict[str, float] | None = None) -> Scenario:
    """The scenario as measured: latency profiles on every site hosting the profiled models,
    i.i.d. acceptance ``alpha``, and per site the measured draft round trip beyond compute
    (``RealRuntime.transport_overhead_s``: emulated WAN + RPC + queueing) as its RTT."""
    raw: dict[str, Any] = scenario.spec.model_dump(mode="json", exclude_none=True)
    for site in raw["sites"]:
        if round_trip_s and site["name"] in round_trip_s and site.get("count", 1) == 1:
            site["rtt_ms"] = round_trip_s[site["name"]] * 1000.0
            site["jitter_ms"] = 0.0
        hosted = {raw["target_model"], site.get("drafter")} if site["role"] == "target" else {site.get("drafter")}
        site["profiles"] = {m: p for m, p in profiles.items() if m in hosted}
    for d in raw["drafters"].values():
        d["acceptance"] = {"kind": "iid", "alpha_mean": min(max(alpha, 0.01), 0.99), "alpha_std": 0.05}
    return build_scenario(raw, source=f"{scenario.source} (calibrated)")


def mean_tpot(records: list[Any]) -> float:
    vals = [r.tpot for r in records if r.output_tokens > 1]
    return sum(vals) / len(vals) if vals else float("nan")
