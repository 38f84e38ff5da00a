"""Where the oracle's lead over a baseline comes from: knowing the future, or control.

    python -m training.oracle_gap --scenario edge-fleet --rate 32 \\
        --baseline "wanspec:k=2,switch_gain=1,backup_k=2,max_rtt_s=0.11,backup=false+inflight-cap:max_inflight=272"

The oracle (:mod:`controllers.oracle`) is the reference a learned policy's gain is measured
against, but it knows two things no deployment knows: each round's acceptance run length and
each link's next delay. This runs the baseline, the oracle, and the oracle with each piece of
knowledge taken away (and then its admission control or its SLO-aware batches as well) on the
final comparison's test seeds, and prints each row's goodput against the baseline (paired BCa
CI) and its share of the oracle's lead: ``(row - baseline) / (oracle - baseline)``, with a
paired percentile-bootstrap CI, and goodput's ceiling (every arrival meets its SLO). The rows
without knowledge are control a deployment could run; how far they fall is how much of its lead
the oracle owes to the future (a better controller without that knowledge may win part of it
back; the ceiling bounds every controller).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

#: (row name, oracle parameters): each piece of knowledge off, then control parts off as well.
ABLATIONS: tuple[tuple[str, str], ...] = (
    ("oracle", ""),
    ("without run lengths", "know_runs=false"),
    ("without link delays", "know_delays=false"),
    ("control only (neither)", "know_runs=false,know_delays=false"),
    ("control only, no admission control", "know_runs=false,know_delays=false,max_behind=1"),
    ("control only, first-come batches", "know_runs=false,know_delays=false,slo_batching=false"),
)


def oracle_spec(params: str) -> str:
    return f"oracle:{params}" if params else "oracle"


def gap_share_ci(row: np.ndarray, base: np.ndarray, oracle: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The row's share of the oracle's lead over the baseline, with a 95% paired percentile
    bootstrap CI over seeds (a resample whose oracle does not lead is left out)."""
    lead = oracle.mean() - base.mean()
    share = float((row.mean() - base.mean()) / lead) if lead > 0 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(n_boot, len(base)))
    b, o, r = base[idx].mean(1), oracle[idx].mean(1), row[idx].mean(1)
    ok = (o - b) > 1e-12
    if not ok.any():
        return share, float("nan"), float("nan")
    draws = (r[ok] - b[ok]) / (o[ok] - b[ok])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return share, float(lo), float(hi)


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser
    from training.compare import ceiling_ratio, ratio_ci
    from training.judge import add_judge_args, checked_scenario, judged_seeds, with_baselines

    p = OneLineParser(prog="python -m training.oracle_gap", description=__doc__.split("\n")[0])
    add_judge_args(p)
    p.add_argument("--row", action="append", default=[], metavar="NAME=SPEC",
                   help="another controller to place in the gap (repeatable), e.g. 'tuned wisp=wisp:min_accept=0.35'")
    a = p.parse_args(argv)
    rows = {name: oracle_spec(params) for name, params in ABLATIONS}
    for extra in a.row:
        name, eq, spec = extra.partition("=")
        if not eq or not name.strip() or not spec.strip():
            p.error(f"--row {extra!r}: expected NAME=SPEC, e.g. --row 'tuned wisp=wisp:min_accept=0.35'")
        if name.strip() in rows or name.strip() == "baseline":
            p.error(f"--row {extra!r}: the name {name.strip()!r} is taken; choose another")
        rows[name.strip()] = spec.strip()
    scenario = checked_scenario(p, a, [("--row", s) for s in rows.values()])
    seeds = judged_seeds(a)
    cmp, baseline = with_baselines(a, scenario, rows, seeds)
    base, oracle = cmp.values("baseline"), cmp.values("oracle")
    where = a.distribution or a.scenario
    print(f"{where} at {a.rate or 'its'} req/s, {len(seeds)} test seeds x {a.duration:g} s; {baseline}")
    print("| row | controller | goodput (req/s) | vs the baseline | share of the oracle's lead |")
    print("|---|---|---|---|---|")
    oracle_low = 0.0
    for name, spec in rows.items():
        v = cmp.values(name)
        r, lo, hi = ratio_ci(v, base)
        oracle_low = lo if name == "oracle" else oracle_low
        s, slo, shi = gap_share_ci(v, base, oracle)
        share = f"{s:+.2f} [{slo:+.2f}, {shi:+.2f}]" if np.isfinite([s, slo, shi]).all() else "n/a (the oracle does not lead)"
        print(f"| {name} | `{spec}` | {v.mean():.3f} | {r:.3f}x [{lo:.3f}, {hi:.3f}] | {share} |")
    r, lo, hi = ceiling_ratio(cmp, "baseline")
    print(f"| ceiling: every arrival meets its SLO | | {cmp.mean('baseline', 'offered_rps'):.3f} | {r:.3f}x [{lo:.3f}, {hi:.3f}] | |")
    if oracle_low <= 1.0:
        print("The oracle's lead is not significant here (its CI reaches 1.0), so the shares of it are not either.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
