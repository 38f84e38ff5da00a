"""Metrics of DESIGN section 5, defined once and used by every backend and report.

Per request: TTFT, TPOT, end-to-end latency, SLO met. System: goodput, latency percentiles,
target-site draft passes and GPU-seconds, wasted draft tokens, batch sizes, acceptance, WAN
bytes. :meth:`Metrics.summary` gives the JSON-able dict the CLIs print (keys in ``KEYS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Keys of the summary, in print order, with their meaning (the README's metrics table).
KEYS: dict[str, str] = {
    "requests_arrived": "requests that arrived in the arrival window",
    "requests_completed": "requests that finished all their output tokens",
    "requests_dropped": "requests rejected at admission or unfinished when the drain ended",
    "goodput_rps": "SLO-meeting completed requests per second of arrival window",
    "goodput_tps": "output tokens of SLO-meeting requests per second of arrival window",
    "throughput_tps": "all committed output tokens per second of arrival window",
    "slo_attainment": "fraction of arrived requests that completed within both TTFT and TPOT SLOs",
    "ttft_p50_s": "time to first token, median (at the request's origin)",
    "ttft_p95_s": "time to first token, 95th percentile",
    "ttft_p99_s": "time to first token, 99th percentile",
    "tpot_p50_s": "time per output token after the first, median",
    "tpot_p95_s": "time per output token, 95th percentile",
    "tpot_p99_s": "time per output token, 99th percentile",
    "e2e_p50_s": "end-to-end latency, median",
    "e2e_p95_s": "end-to-end latency, 95th percentile",
    "e2e_p99_s": "end-to-end latency, 99th percentile",
    "target_draft_forward_passes": "draft-model forward passes run on the target site's GPU",
    "target_draft_gpu_s": "GPU-seconds the target site spent drafting",
    "target_verify_forward_passes": "target-model forwards (verification, plain decode, prefill)",
    "target_verify_gpu_s": "GPU-seconds the target site spent in target-model forwards",
    "remote_draft_forward_passes": "draft forward passes at remote and edge sites",
    "mean_batch_size": "mean requests per target forward",
    "mean_accepted_per_round": "accepted draft tokens per speculative round (k > 0)",
    "mean_tokens_per_round": "committed tokens per speculative round (accepted + bonus)",
    "acceptance_rate": "accepted / verified draft tokens",
    "stream_rounds": "speculative rounds whose draft came from a draft-ahead stream (the rest: round-by-round drafts)",
    "acceptance_per_token": ("per-token acceptance of the draft model (i.i.d. estimate: accepted / (accepted + "
                             "rejections)); unlike acceptance_rate it does not fall with k"),
    "draft_tokens": "draft tokens produced at all sites",
    "wasted_draft_tokens": "rejected + redundant-loser + late (timed-out) draft tokens",
    "wasted_rejected_tokens": "draft tokens the target rejected, or drafted ahead past a rejection",
    "wasted_redundant_tokens": "draft tokens from redundant sites that lost the race or arrived late",
    "wan_bytes": "bytes sent between different sites",
    "sim_time_s": "simulated seconds until the last request finished",
}


def acceptance_per_token(accepted: int, rejections: int) -> float:
    """The maximum-likelihood per-token acceptance under i.i.d. acceptance: each round's draft is
    accepted token by token until the first rejection (or its end), so ``alpha`` is accepted
    tokens over accepted tokens plus rejections, whatever mix of draft lengths the rounds had."""
    return accepted / (accepted + rejections) if accepted + rejections else 0.0


@dataclass(slots=True)
class RequestRecord:
    arrival: float
    first_token: float
    finish: float
    output_tokens: int
    ttft_slo: float
    tpot_slo: float
    slo_class: str

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        return (self.finish - self.first_token) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0

    @property
    def slo_met(self) -> bool:
        return self.ttft <= self.ttft_slo and self.tpot <= self.tpot_slo


@dataclass(slots=True)
class Metrics:
    """Counters a backend fills in while it runs."""

    window_s: float = 0.0  # arrival window (the run's --duration)
    arrived: int = 0
    dropped: int = 0
    records: list[RequestRecord] = field(default_factory=list)
    target_draft_passes: int = 0
    target_draft_gpu_s: float = 0.0
    target_verify_passes: int = 0
    target_verify_gpu_s: float = 0.0
    remote_draft_passes: int = 0
    batch_sizes_sum: int = 0
    spec_rounds: int = 0
    drafted_verified: int = 0
    accepted: int = 0
    rejections: int = 0  # speculative rounds that ended at a rejected draft token (accepted < k)
    stream_rounds: int = 0
    committed_in_spec_rounds: int = 0
    draft_tokens: int = 0
    wasted_rejected: int = 0
    wasted_redundant: int = 0
    tokens_committed: int = 0
    wan_bytes: int = 0
    sim_time: float = 0.0

    def summary(self) -> dict[str, float | int]:
        recs = self.records
        w = max(self.window_s, 1e-9)
        met = [r for r in recs if r.slo_met]

        def pct(vals: list[float], q: float) -> float:
            return float(np.percentile(vals, q)) if vals else float("nan")

        ttft = [r.ttft for r in recs]
        tpot = [r.tpot for r in recs if r.output_tokens > 1]
        e2e = [r.finish - r.arrival for r in recs]
        rounds = max(self.spec_rounds, 1)
        out: dict[str, float | int] = {
            "requests_arrived": self.arrived,
            "requests_completed": len(recs),
            "requests_dropped": self.dropped,
            "goodput_rps": len(met) / w,
            "goodput_tps": sum(r.output_tokens for r in met) / w,
            "throughput_tps": self.tokens_committed / w,
            "slo_attainment": len(met) / self.arrived if self.arrived else float("nan"),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "ttft_p99_s": pct(ttft, 99),
            "tpot_p50_s": pct(tpot, 50), "tpot_p95_s": pct(tpot, 95), "tpot_p99_s": pct(tpot, 99),
            "e2e_p50_s": pct(e2e, 50), "e2e_p95_s": pct(e2e, 95), "e2e_p99_s": pct(e2e, 99),
            "target_draft_forward_passes": self.target_draft_passes,
            "target_draft_gpu_s": self.target_draft_gpu_s,
            "target_verify_forward_passes": self.target_verify_passes,
            "target_verify_gpu_s": self.target_verify_gpu_s,
            "remote_draft_forward_passes": self.remote_draft_passes,
            "mean_batch_size": self.batch_sizes_sum / max(self.target_verify_passes, 1),
            "mean_accepted_per_round": self.accepted / rounds if self.spec_rounds else 0.0,
            "mean_tokens_per_round": self.committed_in_spec_rounds / rounds if self.spec_rounds else 0.0,
            "acceptance_rate": self.accepted / self.drafted_verified if self.drafted_verified else 0.0,
            "stream_rounds": self.stream_rounds,
            "acceptance_per_token": acceptance_per_token(self.accepted, self.rejections),
            "draft_tokens": self.draft_tokens,
            "wasted_draft_tokens": self.wasted_rejected + self.wasted_redundant,
            "wasted_rejected_tokens": self.wasted_rejected,
            "wasted_redundant_tokens": self.wasted_redundant,
            "wan_bytes": self.wan_bytes,
            "sim_time_s": self.sim_time,
        }
        return out
