"""Evaluation harness: controllers x scenarios x seeds -> goodput, capacity, CIs, MLflow, Markdown.

    python -m training.evaluate --scenarios wan-4region edge-fleet --controllers centralized wisp oracle
    python -m training.evaluate --controllers static:k=6 policy:checkpoints/<run>/best --seeds 0 1 2 --load 2
    python -m training.evaluate --capacity --markdown results/eval/results.md
    python -m training.evaluate --scenarios wan-4region --controllers static centralized wanspec --rtt-sweep 5 20 80 150
    python -m training.evaluate --capacity --seeds 0 1 2 3 4 5 6 7 --ray auto    # as Ray tasks on a cluster

Every (scenario, controller, seed) runs in the simulator at the scenario's own arrival rate
times ``--load`` (or ``--rate``) and reports goodput and the other ``runtime.metrics`` keys;
``--capacity`` also searches, per seed, the highest arrival rate that keeps SLO attainment at
or above ``--target-slo`` (DESIGN section 5). Controllers are any ``controllers.make_controller``
spec, including ``policy:<checkpoint>``; one that does not apply to a scenario (it raises at
``bind``) is reported as n/a with its reason. Means come with Student-t 95% confidence
intervals over seeds. Jobs run in a pool of ``--workers`` processes, or as Ray tasks with
``--ray [ADDRESS]`` or ``RAY_ADDRESS`` (``training.backend``; the same rows either way).
Results go to ``--out`` (runs.csv, summary.csv, results.md, plots) and to MLflow (one run per
invocation, the files as artifacts).

``--rtt-sweep`` also reruns every scenario with remote sites with each remote site's RTT to the
target set to each given value (variants written to ``<out>/rtt/``), to show where drafting
over the WAN stops paying: rtt_sweep.csv, rtt_sweep.png and an "RTT sweep" Markdown section.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from runtime.flags import OneLineParser, positive, positive_float
from training.backend import add_ray_flag

#: Metrics summarized per (scenario, controller), in table order.
SUMMARY_METRICS: tuple[str, ...] = (
    "goodput_rps",
    "slo_attainment",
    "tpot_p50_s",
    "ttft_p50_s",
    "target_draft_forward_passes",
    "wasted_draft_tokens",
    "mean_tokens_per_round",
)
#: Metrics of the RTT sweep table (rtt_sweep.csv), in column order.
SWEEP_METRICS: tuple[str, ...] = (
    "goodput_rps",
    "tpot_p50_s",
    "ttft_p50_s",
    "target_draft_forward_passes",
    "slo_attainment",
)
#: The ratios the README reports: (controller, baseline).
HEADLINE_RATIOS: tuple[tuple[str, str], ...] = (("wisp", "centralized"), ("wisp", "sled"))


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker: a goodput run at ``rate``, or a capacity search."""

    kind: str  # "run" | "capacity"
    scenario: str
    controller: str
    seed: int
    duration: float
    rate: float | None = None
    target_slo: float = 0.9
    iters: int = 6


def run_once(scenario: str, controller: str, seed: int, duration: float, rate: float | None) -> dict[str, Any]:
    """One simulated run; the metrics summary (``runtime.metrics.KEYS``) plus wall time."""
    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    t0 = time.perf_counter()
    sim = Simulator(load_scenario(scenario), seed, duration, rate=rate)
    summary = sim.run(make_controller(controller))
    return {**summary, "wall_s": time.perf_counter() - t0}


def find_capacity(
    attainment: Callable[[float], float], start: float, target: float = 0.9, iters: int = 6, max_steps: int = 8
) -> float:
    """Highest arrival rate whose SLO attainment is >= ``target`` (0 if even ``start``/256 fails).

    Brackets from ``start`` by doubling (or halving) until the answer changes, then bisects
    ``iters`` times: the result is within ``bracket / 2**iters`` of the boundary, always on the
    passing side. Attainment is assumed to fall with load (true up to simulation noise).
    """
    lo, hi = 0.0, math.inf
    rate = start
    for _ in range(max_steps):
        if attainment(rate) >= target:
            lo = rate
            if hi < math.inf:
                break
            rate *= 2
        else:
            hi = rate
            if lo > 0:
                break
            rate /= 2
    if hi == math.inf or lo == 0.0:
        return lo  # never failed within max_steps doublings, or never passed
    for _ in range(iters):
        mid = (lo + hi) / 2
        if attainment(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def execute(job: Job) -> dict[str, Any]:
    """Run one job (in a worker process); returns one row for runs.csv."""
    row: dict[str, Any] = {"kind": job.kind, "scenario": job.scenario, "controller": job.controller, "seed": job.seed}
    if job.kind == "run":
        row.update(rate=job.rate, **run_once(job.scenario, job.controller, job.seed, job.duration, job.rate))
        return row
    probes: list[tuple[float, float]] = []

    def attainment(rate: float) -> float:
        slo = run_once(job.scenario, job.controller, job.seed, job.duration, rate)["slo_attainment"]
        probes.append((rate, slo))
        return slo

    t0 = time.perf_counter()
    row["capacity_rps"] = find_capacity(attainment, job.rate or 1.0, job.target_slo, job.iters)
    row["probes"] = len(probes)
    row["wall_s"] = time.perf_counter() - t0
    return row


def run_jobs(jobs: Sequence[Job], workers: int, progress: bool = True, ray: str | None = None) -> list[dict[str, Any]]:
    """Run jobs on ``workers`` processes (1: in this process) or as Ray tasks (``ray``: an
    address, see ``training.backend``), with a progress bar; rows in job order either way."""
    from training.backend import map_jobs

    return map_jobs(execute, jobs, workers=workers, ray=ray, desc="evaluate", progress=progress)


def applicability(scenarios: Iterable[str], controllers: Iterable[str]) -> dict[tuple[str, str], str | None]:
    """For each pair, ``None`` if the controller can run the scenario, else the reason it cannot.

    Builds each controller and binds it to the scenario (cheap), so bad names, bad parameters
    and scenarios a controller does not support are all found before any simulation starts.
    """
    from controllers import refusal
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    out: dict[tuple[str, str], str | None] = {}
    for sc in scenarios:
        info = Simulator(load_scenario(sc), 0, 1.0).info
        for spec in controllers:
            out[sc, spec] = refusal(spec, info)  # raises ControllerError for bad specs: a user error
    return out


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    m = float(arr.mean())
    if arr.size < 2 or float(arr.std(ddof=1)) == 0.0:
        return m, 0.0
    lo, _ = stats.t.interval(confidence, arr.size - 1, loc=m, scale=stats.sem(arr))
    return m, m - float(lo)


def summarize(rows: list[dict[str, Any]], na: dict[tuple[str, str], str | None]) -> pd.DataFrame:
    """One row per (scenario, controller): mean and CI half-width of each metric over seeds."""
    df = pd.DataFrame(rows)
    out: list[dict[str, Any]] = []
    for (sc, ctrl), reason in na.items():
        status = "ok" if reason is None else f"n/a: {reason}"
        rec: dict[str, Any] = {"scenario": sc, "controller": ctrl, "status": status}
        if reason is None and not df.empty:
            part = df[(df.scenario == sc) & (df.controller == ctrl)]
            runs = part[part.kind == "run"]
            caps = part[part.kind == "capacity"]
            rec["seeds"] = int(runs.seed.nunique()) if len(runs) else int(caps.seed.nunique())
            if len(runs):
                rate = runs.rate.iloc[0]
                rec["rate"] = math.nan if rate is None else float(rate)  # None: a trace sets the rate
                for key in SUMMARY_METRICS:
                    rec[key], rec[f"{key}_ci"] = mean_ci(runs[key].tolist())
            if len(caps):
                rec["capacity_rps"], rec["capacity_rps_ci"] = mean_ci(caps.capacity_rps.tolist())
        out.append(rec)
    return pd.DataFrame(out)


def ratio(summary: pd.DataFrame, scenario: str, metric: str, a: str, b: str) -> float | None:
    """``a``'s mean ``metric`` over ``b``'s in ``scenario`` (None if either is missing or zero)."""
    if metric not in summary:
        return None
    rows = summary[summary.scenario == scenario].set_index("controller")
    if a not in rows.index or b not in rows.index:
        return None
    va, vb = rows.at[a, metric], rows.at[b, metric]
    if pd.isna(va) or pd.isna(vb) or vb == 0:
        return None
    return float(va / vb)


def _cell(mean: float, ci: float, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}g} ± {ci:.2g}" if ci else f"{mean:.{digits}g}"


def markdown(summary: pd.DataFrame, command: str, duration: float, seeds: Sequence[int]) -> str:
    """The results section: one table per scenario, then the headline ratios."""
    lines = [
        f"Generated by `{command}` ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}, "
        f"{duration:g} simulated s of arrivals per run; "
        "mean ± 95% CI half-width over seeds).",
        "",
    ]
    has_cap = "capacity_rps" in summary
    for sc, part in summary.groupby("scenario", sort=False):
        rate = part["rate"].dropna().iloc[0] if "rate" in part and part["rate"].notna().any() else None
        lines.append(f"**{sc}**" + (f" (goodput at {rate:g} req/s)" if rate is not None else ""))
        lines.append("")
        head = ["controller"] + (["capacity (req/s)"] if has_cap else [])
        head += ["goodput (req/s)", "SLO met", "TPOT p50 (ms)", "TTFT p50 (ms)"]
        head += ["target draft passes", "wasted draft tokens"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for _, r in part.iterrows():
            if r.status != "ok":
                lines.append(f"| {r.controller} | " + " | ".join(["n/a"] * (len(head) - 1)) + " |")
                continue
            cells = [r.controller]
            if has_cap:
                cells.append(_cell(r.get("capacity_rps"), r.get("capacity_rps_ci")))
            if "goodput_rps" in r and not pd.isna(r.get("goodput_rps")):
                cells += [
                    _cell(r.goodput_rps, r.goodput_rps_ci),
                    _cell(r.slo_attainment, r.slo_attainment_ci, 2),
                    _cell(r.tpot_p50_s * 1e3, r.tpot_p50_s_ci * 1e3),
                    _cell(r.ttft_p50_s * 1e3, r.ttft_p50_s_ci * 1e3),
                    _cell(r.target_draft_forward_passes, r.target_draft_forward_passes_ci),
                    _cell(r.wasted_draft_tokens, r.wasted_draft_tokens_ci),
                ]
            else:
                cells += ["-"] * 6
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    notes = [r for _, r in summary.iterrows() if r.status != "ok"]
    for r in notes:
        lines.append(f"- n/a {r.controller} on {r.scenario}: {r.status.removeprefix('n/a: ')}")
    ratio_lines = []
    for sc in summary.scenario.unique():
        for a, b in HEADLINE_RATIOS:
            parts = []
            for metric, label in (("capacity_rps", "capacity"), ("goodput_rps", "goodput")):
                v = ratio(summary, sc, metric, a, b)
                if v is not None:
                    parts.append(f"{label} {v:.2f}x")
            if parts:
                ratio_lines.append(f"- {sc}: {a} vs {b}: " + ", ".join(parts))
    if ratio_lines:
        lines += ["", "Ratios of means:", "", *ratio_lines]
    return "\n".join(lines).rstrip() + "\n"


def plot(summary: pd.DataFrame, path: Path) -> Path | None:
    """Bar chart of capacity (or goodput) per scenario and controller, with CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "capacity_rps" if "capacity_rps" in summary else "goodput_rps"
    ok = summary[summary.status == "ok"]
    if metric not in ok or ok[metric].isna().all():
        return None
    scenarios = list(ok.scenario.unique())
    controllers = list(ok.controller.unique())
    width = 0.8 / max(len(controllers), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(scenarios), 3.6))
    for i, ctrl in enumerate(controllers):
        part = ok[ok.controller == ctrl].set_index("scenario")
        xs = [j + i * width for j, sc in enumerate(scenarios) if sc in part.index]
        ys = [part.at[sc, metric] for sc in scenarios if sc in part.index]
        err = [part.at[sc, f"{metric}_ci"] for sc in scenarios if sc in part.index]
        ax.bar(xs, ys, width, yerr=err, label=ctrl, capsize=2)
    ax.set_xticks([j + width * (len(controllers) - 1) / 2 for j in range(len(scenarios))], scenarios)
    ax.set_ylabel("capacity (req/s at SLO)" if metric == "capacity_rps" else "goodput (req/s)")
    ax.legend(fontsize=8, ncols=min(len(controllers), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- RTT sweep ---------------------------------------------------------------------------------
positive_ms = positive("RTT in milliseconds")


def scenario_label(scenario: str) -> str:
    """A shipped name as is; a YAML path by its file stem (for tables and file names)."""
    return Path(scenario).stem if Path(scenario).suffix else scenario


def write_rtt_variants(scenario: str, rtts: Sequence[float], out_dir: Path) -> dict[float, Path]:
    """Write one YAML per RTT in which every ``remote`` site is that far (ms) from the target.

    The scenario's own YAML is copied field for field except, on remote sites, ``rtt_ms`` (set;
    it takes precedence over ``region`` in ``runtime.scenario``, and ``region`` is dropped so the
    file says what it means) and ``jitter_ms`` (pinned to the jitter the site had, since an
    explicit ``rtt_ms`` would otherwise fall back to ``network.jitter_ms``). Each file is read
    back with ``load_scenario`` and checked. Returns ``{}`` when the scenario has no remote site.
    """
    from runtime.scenario import ScenarioError, load_scenario, read_yaml_mapping

    base = load_scenario(scenario)
    jitter = {s.group: s.jitter_ms for s in base.sites if s.role == "remote"}
    if not jitter:
        return {}
    raw = read_yaml_mapping(Path(base.source), "scenario", ScenarioError, "a mapping of fields at the top level")
    out_dir.mkdir(parents=True, exist_ok=True)
    label = scenario_label(scenario)
    paths: dict[float, Path] = {}
    for ms in rtts:
        variant = copy.deepcopy(raw)
        variant["name"] = f"{base.name}-rtt{ms:g}"
        note = f"RTT sweep variant of {base.name}: every remote site at {ms:g} ms RTT to the target, jitter kept."
        variant["description"] = f"{str(raw.get('description') or '').strip()} [{note}]".strip()
        for site in variant["sites"]:
            if site.get("role") == "remote":
                site.pop("region", None)
                site["rtt_ms"] = float(ms)
                site["jitter_ms"] = jitter[site["name"]]
        path = out_dir / f"{label}-rtt{ms:g}.yaml"
        path.write_text(f"# generated by training.evaluate --rtt-sweep from {base.source}\n"
                        + yaml.safe_dump(variant, sort_keys=False))
        check = load_scenario(path)
        wrong = [(s.name, s.rtt_ms, s.jitter_ms) for s in check.sites
                 if s.role == "remote" and (s.rtt_ms != ms or s.jitter_ms != jitter[s.group])]
        if wrong:  # would mean runtime.scenario changed how it resolves RTTs
            raise ScenarioError(f"RTT variant {path}: remote sites did not get {ms:g} ms: {wrong}")
        paths[ms] = path
    return paths


def summarize_sweep(
    rows: list[dict[str, Any]], na: dict[tuple[str, str], str | None], variants: dict[str, tuple[str, float]]
) -> pd.DataFrame:
    """:func:`summarize` of the sweep's runs, one row per (scenario, rtt_ms, controller).

    ``variants`` maps each variant's path (the jobs' scenario) to (scenario label, RTT in ms).
    """
    df = summarize(rows, na)
    df["variant"] = df.scenario
    df.insert(1, "rtt_ms", [variants[p][1] for p in df.variant])
    df["scenario"] = [variants[p][0] for p in df.variant]
    return df


def sweep_markdown(sweep: pd.DataFrame, seeds: Sequence[int]) -> str:
    """The "RTT sweep" section: per scenario, controllers x RTTs, cells "TPOT p50 ms / goodput"."""
    lines = [
        "#### RTT sweep",
        "",
        "Every `remote` site's RTT to the target set to each value (jitter and everything else kept). "
        f"Cells: p50 TPOT (ms) / goodput (req/s), means over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}; "
        "95% CIs and TTFT, target draft passes and SLO attainment are in `rtt_sweep.csv`.",
        "",
    ]
    for sc, part in sweep.groupby("scenario", sort=False):
        rtts = sorted(part.rtt_ms.unique())
        rate = part["rate"].dropna().iloc[0] if "rate" in part and part["rate"].notna().any() else None
        lines += [f"**{sc}**" + (f" (at {rate:g} req/s)" if rate is not None else ""), ""]
        lines.append("| controller | " + " | ".join(f"{ms:g} ms" for ms in rtts) + " |")
        lines.append("|---|" + "---:|" * len(rtts))
        for ctrl, rows in part.groupby("controller", sort=False):
            by_rtt = rows.set_index("rtt_ms")
            cells = []
            for ms in rtts:
                r = by_rtt.loc[ms]
                if r.status != "ok":
                    cells.append("n/a")
                elif pd.isna(r.get("tpot_p50_s")) and pd.isna(r.get("goodput_rps")):
                    cells.append("-")
                else:
                    cells.append(f"{r.tpot_p50_s * 1e3:.1f} / {r.goodput_rps:.2f}")
            lines.append(f"| {ctrl} | " + " | ".join(cells) + " |")
        lines.append("")
        ok = part[part.status == "ok"]
        ok = ok[ok.tpot_p50_s.notna()] if "tpot_p50_s" in ok else ok.iloc[0:0]
        best = [f"{ms:g} ms {ok.loc[ok[ok.rtt_ms == ms].tpot_p50_s.idxmin()].controller}"
                for ms in rtts if (ok.rtt_ms == ms).any()]
        if best:
            lines += ["Lowest p50 TPOT: " + "; ".join(best) + ".", ""]
        notes = part[part.status != "ok"]
        for (ctrl, status), rows in notes.groupby(["controller", "status"], sort=False):
            at = ", ".join(f"{ms:g}" for ms in sorted(rows.rtt_ms))
            lines.append(f"- n/a {ctrl} at {at} ms: {status.removeprefix('n/a: ')}")
        if len(notes):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_sweep(sweep: pd.DataFrame, path: Path) -> Path | None:
    """Goodput and p50 TPOT vs RTT, one line per controller (with CI bands), one row per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sweep[sweep.status == "ok"] if "goodput_rps" in sweep else sweep.iloc[0:0]
    if ok.empty or ok.goodput_rps.isna().all():
        return None
    scenarios = list(ok.scenario.unique())
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(10, 3.8 * len(scenarios)), squeeze=False)
    for row, sc in zip(axes, scenarios):
        part = ok[ok.scenario == sc]
        for ax, key, scale, label in ((row[0], "goodput_rps", 1.0, "goodput (req/s)"),
                                      (row[1], "tpot_p50_s", 1e3, "p50 TPOT (ms)")):
            means: list[float] = []
            for ctrl, rows in part.groupby("controller", sort=False):
                rows = rows.sort_values("rtt_ms")
                y = rows[key].to_numpy(float) * scale
                ci = rows[f"{key}_ci"].fillna(0).to_numpy(float) * scale
                ax.errorbar(rows.rtt_ms, y, yerr=ci, marker="o", ms=3, capsize=2, elinewidth=0.8, label=ctrl)
                means += [v for v in y if not math.isnan(v)]
            if means:  # scale to the means: with few seeds the CIs would flatten every line
                lo, hi = min(means), max(means)
                pad = max(0.15 * (hi - lo), 0.05 * abs(hi), 1e-9)
                ax.set_ylim(max(0.0, lo - pad), hi + pad)
            ax.set_ylabel(label)
            ax.set_xlabel("remote-site RTT to the target (ms)")
            ax.set_title(f"{sc}: {label} vs RTT (bars: 95% CI, may be clipped)", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_mlflow(
    uri: str | None, experiment: str, params: dict[str, Any], summary: pd.DataFrame, files: list[Path],
    sweep: pd.DataFrame | None = None, artifact_dirs: dict[str, list[Path]] | None = None,
) -> str:
    """One MLflow run per invocation: parameters, per-cell means as metrics, files as artifacts.

    ``sweep`` (the RTT sweep summary) adds ``rtt/<scenario>/<ms>/<controller>/<metric>`` metrics;
    ``artifact_dirs`` logs more files under an artifact folder each (the RTT variants under rtt/).
    """
    import mlflow

    from training.tracking import setup_tracking

    experiment_id = setup_tracking(uri, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="evaluate") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {}
        for _, r in summary[summary.status == "ok"].iterrows():
            for key in ("capacity_rps", *SUMMARY_METRICS):
                v = r.get(key)
                if v is not None and not pd.isna(v):
                    metrics[_metric_name(f"{r.scenario}/{r.controller}/{key}")] = float(v)
        if sweep is not None and "goodput_rps" in sweep:
            for _, r in sweep[sweep.status == "ok"].iterrows():
                for key in SWEEP_METRICS:
                    v = r.get(key)
                    if v is not None and not pd.isna(v):
                        metrics[_metric_name(f"rtt/{r.scenario}/{r.rtt_ms:g}ms/{r.controller}/{key}")] = float(v)
        mlflow.log_metrics(metrics)
        for f in files:
            mlflow.log_artifact(str(f))
        for folder, paths in (artifact_dirs or {}).items():
            for f in paths:
                mlflow.log_artifact(str(f), artifact_path=folder)
        return run.info.run_id


def _metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_-./ `` and ``:``; map anything else to ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in name)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["wan-4region", "edge-fleet", "colocated"],
                   help="shipped scenario names or YAML paths (default: all shipped)")
    p.add_argument("--controllers", nargs="+", default=["centralized", "sled", "wanspec", "wisp", "oracle"],
                   help="controller specs NAME[:key=value,...] or policy:<checkpoint> "
                   "(default: the heuristics and the oracle)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="random seeds (default: 0 1 2)")
    p.add_argument("--duration", type=positive_float, default=60.0,
                   help="arrival window per run, simulated s (default: 60)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--load", type=positive("load factor"), default=1.0,
                      help="goodput runs at the scenario's arrival rate times this (default: 1)")
    load.add_argument("--rate", type=positive("rate in requests/s"), help="goodput runs at this arrival rate (req/s) in every scenario")
    p.add_argument("--capacity", action="store_true", help="also search each controller's capacity (slower)")
    p.add_argument("--target-slo", type=float, default=0.9, help="SLO attainment that defines capacity (default: 0.9)")
    p.add_argument("--capacity-duration", type=positive_float, default=30.0,
                   help="arrival window of each capacity probe, simulated s (default: 30)")
    p.add_argument("--capacity-iters", type=int, default=6, help="bisection steps of the capacity search (default: 6)")
    p.add_argument("--rtt-sweep", nargs="+", type=positive_ms, metavar="MS",
                   help="also sweep RTT: for every scenario with remote sites (others are skipped with a note), "
                   "rerun the controllers x seeds with every remote site at each RTT (ms) to the target, at the "
                   "same rate; writes rtt/<scenario>-rtt<MS>.yaml, rtt_sweep.csv, rtt_sweep.png and an 'RTT "
                   "sweep' Markdown section. The normal grid runs too, in the same worker pool")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2; 1 runs in this process)")
    add_ray_flag(p)
    p.add_argument("--out", type=Path, default=Path("results/eval"), help="output folder (default: results/eval)")
    p.add_argument("--markdown", type=Path, help="also write the Markdown results to this file")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.add_argument("--experiment", default="specctl-evaluate", help="MLflow experiment (default: specctl-evaluate)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table on stdout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from controllers import ControllerError
    from runtime.contract import InvalidDecision
    from runtime.scenario import ScenarioError, load_scenario

    parser = build_parser()
    args = parser.parse_args(argv)
    args.scenarios = list(dict.fromkeys(args.scenarios))
    args.controllers = list(dict.fromkeys(args.controllers))
    if not 0 < args.target_slo <= 1:
        parser.error(f"--target-slo must be in (0, 1], got {args.target_slo}")
    if args.capacity_iters < 0 or args.workers < 1:
        parser.error("--capacity-iters must be >= 0 and --workers >= 1")
    try:
        base_rate = {sc: _base_rate(load_scenario(sc)) for sc in args.scenarios}
        na = applicability(args.scenarios, args.controllers)
        jobs: list[Job] = []
        for (sc, ctrl), reason in na.items():
            if reason is not None:
                continue
            rate = args.rate or (base_rate[sc] * args.load if base_rate[sc] else None)
            for seed in args.seeds:
                jobs.append(Job("run", sc, ctrl, seed, args.duration, rate))
                if args.capacity:
                    start = base_rate[sc] or rate or 1.0
                    jobs.append(Job("capacity", sc, ctrl, seed, args.capacity_duration, start,
                                    args.target_slo, args.capacity_iters))
        if not jobs:
            raise ValueError(
                f"none of the controllers {args.controllers} applies to {args.scenarios}: "
                + "; ".join(str(r) for r in na.values())
            )
        # the RTT sweep: one scenario variant (a YAML file) per (scenario with remote sites, RTT)
        variants: dict[str, tuple[str, float]] = {}  # variant path -> (scenario label, RTT ms)
        variant_rate: dict[str, float | None] = {}
        for sc in args.scenarios if args.rtt_sweep else []:
            paths = write_rtt_variants(sc, sorted(set(args.rtt_sweep)), args.out / "rtt")
            if not paths:
                print(f"note: --rtt-sweep skips {sc}: it has no site with role 'remote'", file=sys.stderr)
            for ms, path in paths.items():
                variants[str(path)] = (scenario_label(sc), ms)
                variant_rate[str(path)] = args.rate or (base_rate[sc] * args.load if base_rate[sc] else None)
        sweep_na = applicability(list(variants), args.controllers)
        for (path, ctrl), reason in sweep_na.items():
            if reason is None:
                jobs += [Job("run", path, ctrl, seed, args.duration, variant_rate[path]) for seed in args.seeds]
        rows = run_jobs(jobs, args.workers, progress=not args.quiet, ray=args.ray)
    except (ScenarioError, ControllerError, InvalidDecision, ValueError) as e:  # BackendError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    sweep_rows = [r for r in rows if r["scenario"] in variants]
    rows = [r for r in rows if r["scenario"] not in variants]
    summary = summarize(rows, na)
    command = "python -m training.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(summary, command.strip(), args.duration, args.seeds)
    sweep = summarize_sweep(sweep_rows, sweep_na, variants) if variants else None
    if sweep is not None:
        md += "\n" + sweep_markdown(sweep, args.seeds)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "runs.csv", out / "summary.csv", out / "results.md"]
    pd.DataFrame(rows).sort_values(["scenario", "controller", "kind", "seed"]).to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    if sweep is not None:
        files += [out / "rtt_sweep.csv", out / "rtt_sweep_runs.csv"]
        sweep.to_csv(files[-2], index=False)
        per_seed = pd.DataFrame(sweep_rows)
        if not per_seed.empty:
            per_seed.insert(1, "rtt_ms", [variants[v][1] for v in per_seed.scenario])
            per_seed = per_seed.rename(columns={"scenario": "variant"})
            per_seed.insert(0, "scenario", [variants[v][0] for v in per_seed.variant])
            per_seed = per_seed.sort_values(["scenario", "rtt_ms", "controller", "seed"])
        per_seed.to_csv(files[-1], index=False)
        sweep_figure = plot_sweep(sweep, out / "rtt_sweep.png")
        if sweep_figure is not None:
            files.append(sweep_figure)
    files[2].write_text(md)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md)
    figure = plot(summary, out / "capacity.png" if args.capacity else out / "goodput.png")
    if figure is not None:
        files.append(figure)
    if not args.quiet:
        print(md)
        print(f"wrote {', '.join(str(f) for f in files)}"
              + (f" and {len(variants)} RTT variants in {out / 'rtt'}" if variants else ""))
    if not args.no_mlflow:
        try:
            params = {k: v for k, v in vars(args).items() if k not in ("quiet", "no_mlflow")}
            run_id = log_mlflow(args.tracking_uri, args.experiment, params, summary, files,
                                sweep=sweep, artifact_dirs={"rtt": [Path(v) for v in variants]})
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"mlflow run {run_id} in experiment {args.experiment!r}")
    return 0


def _base_rate(scenario: Any) -> float | None:
    """The scenario's own mean arrival rate (None for trace replay, which has no rate to scale)."""
    arrivals = scenario.spec.workload.arrivals
    return getattr(arrivals, "rate", None)


if __name__ == "__main__":
    sys.exit(main())
