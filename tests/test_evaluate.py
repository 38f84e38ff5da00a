"""The evaluation harness and MLflow tracking setup."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

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
