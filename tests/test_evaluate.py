"""The evaluation harness and MLflow tracking setup."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from runtime.scenario import load_scenario
from training.evaluate import find_capacity, main, mean_ci, markdown, summarize
from training.tracking import resolve_tracking_uri, setup_tracking


def test_find_capacity_brackets_then_bisects_on_the_passing_side():
    calls: list[float] = []

    def attainment(rate: float) -> float:  # a clean knee at 37 req/s
        calls.append(rate)
        return 1.0 if rate <= 37.0 else 0.5

    cap = find_capacity(attainment, start=10.0, target=0.9, iters=8)
    assert 37.0 - 40.0 / 2**8 <= cap <= 37.0
    assert len(calls) <= 3 + 8  # 10, 20, 40 then bisection
    # a start above the knee halves down first
    assert 37.0 - 80.0 / 2**8 <= find_capacity(attainment, start=80.0, iters=8) <= 37.0
    # never passing gives 0, never failing gives the last rate tried
    assert find_capacity(lambda r: 0.0, start=1.0, max_steps=4) == 0.0
    assert find_capacity(lambda r: 1.0, start=1.0, max_steps=4) == 8.0


def test_mean_ci_is_the_student_t_interval():
    values = [1.0, 2.0, 4.0]
    m, half = mean_ci(values)
    lo, hi = stats.t.interval(0.95, 2, loc=m, scale=stats.sem(values))
    assert m == pytest.approx(7 / 3) and half == pytest.approx((hi - lo) / 2)
    assert mean_ci([5.0]) == (5.0, 0.0)
    assert math.isnan(mean_ci([])[0])


def test_summary_and_markdown_report_ratios_and_inapplicable_controllers():
    rows = [
        {"kind": "run", "scenario": "s", "controller": c, "seed": seed, "rate": 10.0, "goodput_rps": g,
         "slo_attainment": 1.0, "tpot_p50_s": 0.02, "ttft_p50_s": 0.1, "target_draft_forward_passes": 0,
         "wasted_draft_tokens": 0, "mean_tokens_per_round": 2.0}
        for c, gs in (("wisp", (6.0, 6.0)), ("centralized", (3.0, 3.0))) for seed, g in enumerate(gs)
    ]
    na = {("s", "wisp"): None, ("s", "centralized"): None, ("s", "sled"): "sled needs edge sites in s"}
    summary = summarize(rows, na)
    md = markdown(summary, "python -m training.evaluate", 60.0, [0, 1])
    assert "| wisp |" in md and "| sled | n/a" in md
    assert "sled needs edge sites in s" in md
    assert "s: wisp vs centralized: goodput 2.00x" in md


def test_tracking_uri_precedence_and_plain_file_store_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("sqlite:///flag.db") == "sqlite:///flag.db"
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None).endswith("/mlflow.db")
    with pytest.raises(ValueError, match="plain file store"):
        setup_tracking(str(tmp_path / "mlruns"), "x")


def test_bad_controller_or_scenario_is_one_line_error(capsys):
    assert main(["--scenarios", "colocated", "--controllers", "nope", "--no-mlflow", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown controller 'nope'") and "\n" not in err
    assert main(["--scenarios", "atlantis", "--controllers", "static", "--no-mlflow", "--quiet"]) == 2
    assert "unknown scenario 'atlantis'" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_end_to_end_writes_tables_plots_and_an_mlflow_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval"
    args = ["--scenarios", "colocated", "--controllers", "static:k=4", "centralized", "sled", "oracle",
            "--seeds", "0", "1", "--duration", "5", "--load", "1.5", "--capacity", "--capacity-duration", "5",
            "--capacity-iters", "2", "--workers", "1", "--out", str(out), "--tracking-uri", uri,
            "--experiment", "test-eval", "--markdown", str(tmp_path / "section.md"), "--quiet"]
    assert main(args) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs.controller) == {"static:k=4", "centralized", "oracle"}  # sled does not apply here
    assert len(runs[runs.kind == "run"]) == 6 and len(runs[runs.kind == "capacity"]) == 6
    assert (runs[runs.kind == "capacity"].capacity_rps > 0).all()
    summary = pd.read_csv(out / "summary.csv").set_index("controller")
    assert summary.at["sled", "status"].startswith("n/a: ")
    assert summary.at["oracle", "goodput_rps"] >= summary.at["static:k=4", "goodput_rps"]
    assert (out / "capacity.png").stat().st_size > 1000
    assert (tmp_path / "section.md").read_text() == (out / "results.md").read_text()

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("test-eval")
    assert exp.artifact_location.startswith((tmp_path / "mlruns").as_uri())
    run = mlflow.search_runs([exp.experiment_id], output_format="list")[0]
    assert run.data.metrics["colocated/oracle/goodput_rps"] == pytest.approx(summary.at["oracle", "goodput_rps"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"runs.csv", "summary.csv", "results.md", "capacity.png"} <= artifacts


def test_rtt_sweep_writes_variants_csv_plot_and_tpot_grows_with_rtt_for_remote_drafting(tmp_path, capsys):
    from runtime.scenario import load_scenario

    remote = "static:k=4,site=us-east-2"
    args = ["--scenarios", "wan-4region", "colocated", "--controllers", remote, "static", "--seeds", "0",
            "--duration", "5", "--rtt-sweep", "5", "120", "--workers", "1", "--no-mlflow", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert "--rtt-sweep skips colocated" in capsys.readouterr().err  # no remote sites there
    sweep = pd.read_csv(tmp_path / "rtt_sweep.csv")
    assert set(sweep.scenario) == {"wan-4region"}
    assert set(zip(sweep.rtt_ms, sweep.controller)) == {(r, c) for r in (5.0, 120.0) for c in (remote, "static")}
    assert (sweep.status == "ok").all()
    variant = load_scenario(tmp_path / "rtt" / "wan-4region-rtt120.yaml")
    remotes = [s for s in variant.sites if s.role == "remote"]
    assert len(remotes) == 3 and all(s.rtt_ms == 120.0 for s in remotes)
    # jitter is the site's own (from the AWS table), not the network default an explicit rtt_ms would get
    base = load_scenario("wan-4region")
    assert [s.jitter_ms for s in remotes] == [s.jitter_ms for s in base.sites if s.role == "remote"]
    assert (tmp_path / "rtt_sweep.png").stat().st_size > 1000
    tpot = sweep.set_index(["controller", "rtt_ms"]).tpot_p50_s
    assert tpot[remote, 120.0] > tpot[remote, 5.0] + 0.02  # every remote round pays the RTT
    assert tpot["static", 120.0] == pytest.approx(tpot["static", 5.0], rel=0.05)  # drafts on the target
    md = (tmp_path / "results.md").read_text()
    assert "#### RTT sweep" in md and "| controller | 5 ms | 120 ms |" in md
    assert set(pd.read_csv(tmp_path / "runs.csv").scenario) == {"wan-4region", "colocated"}  # the grid ran too


def test_rtt_sweep_rejects_non_positive_rtt_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--rtt-sweep", "0", "--no-mlflow", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--rtt-sweep" in err and "positive" in err and "\n" not in err


def test_several_grids_in_one_pool_give_each_grids_own_runs_seed_by_seed():
    """The final comparison runs every scenario in one pool: each grid's figures are the ones it
    gets alone (runs are seeded, so order is free), and the runs go seed by seed, so each stretch
    of the progress bar holds the same mix of controllers."""
    import training.compare as compare

    grids = [(load_scenario("colocated"), {"static": "static", "centralized": "centralized"}, 6.0),
             (load_scenario("wan-4region"), {"wanspec": "wanspec"}, 10.0)]
    submitted: list[tuple[int, str, str]] = []
    real = compare.pool_map

    def spy(fn, jobs, *args, **kwargs):  # type: ignore[no-untyped-def]
        submitted.extend((job[3], job[2].name, job[0]) for job in jobs)
        return real(fn, jobs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "pool_map", spy)
        together = compare.evaluate_grids(grids, [1, 2], 2.0, workers=1)
    stretch = [("colocated", "static"), ("colocated", "centralized"), ("wan-4region", "wanspec")]
    assert submitted == [(seed, *run) for seed in (1, 2) for run in stretch]
    for (scenario, controllers, rate), cmp in zip(grids, together):
        alone = compare.evaluate_controllers(scenario, controllers, [1, 2], 2.0, rate)
        assert list(cmp.rows) == list(controllers) and cmp.rows == alone.rows
