"""`python -m runtime`: readable table, JSON with documented keys, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtime.metrics import KEYS

REQUIRED = [
    "requests_arrived", "requests_completed", "requests_dropped", "goodput_rps", "goodput_tps",
    "slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s",
    "target_draft_forward_passes", "target_verify_forward_passes", "mean_accepted_per_round",
    "wasted_draft_tokens", "wan_bytes",
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=120)


def test_simulate_json_has_documented_keys():
    p = run("simulate", "--scenario", "wan-4region", "--controller", "static", "--duration", "5", "--seed", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(REQUIRED) <= set(out) and set(KEYS) <= set(out)
    assert out["requests_arrived"] == out["requests_completed"] + out["requests_dropped"]


def test_simulate_table_and_trace(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:00:00.0,100,20\n2023-11-16 18:00:00.5,200,30\n2023-11-16 18:00:01.0,50,5\n")
    p = run("simulate", "--scenario", "colocated", "--controller", "no-spec", "--duration", "5", "--trace", str(trace))
    assert p.returncode == 0, p.stderr
    assert "requests_completed" in p.stdout and "goodput_rps" in p.stdout
    line = next(l for l in p.stdout.splitlines() if l.strip().startswith("requests_completed"))
    assert line.split()[-1] == "3"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["simulate", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["simulate", "--controller", "magic"], "unknown controller 'magic'"),
        (["simulate", "--controller", "static:q=1"], "has no parameter(s) ['q']"),
        (["simulate", "--duration", "-1"], "must be a positive number"),
        (["simulate", "--seed", "abc"], "invalid int value"),
        (["simulate", "--bogus"], "unrecognized arguments: --bogus"),
        (["simulate", "--trace", "/no/such.csv", "--duration", "1"], "does not exist"),
        (["simulate", "--controller", "static:site=mars", "--duration", "1"], "hosts no drafter"),
    ],
)
def test_bad_input_gives_one_line(args, needle):
    p = run(*args)
    assert p.returncode == 2
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0] and lines[0].startswith("error: ")


def test_bad_scenario_file_gives_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsites:\n  - {name: a, role: target, gpu: H100}\nworkload:\n  arrivals: {kind: poisson, rate: -2}\n")
    p = run("check", str(bad))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "rate" in p.stderr and "greater than 0" in p.stderr


def test_check_dist_validates_a_distribution_by_drawing_from_it(tmp_path):
    p = run("check-dist", "training/configs/scenario-mix.yaml", "--samples", "30")
    assert p.returncode == 0, p.stderr
    assert "ok: scenario-mix: 30 systems drawn and validated" in p.stdout
    from pathlib import Path

    from runtime.distribution import ScenarioDistribution
    from training.selector import SelectorData

    repo = Path(__file__).resolve().parents[1]
    shipped = SelectorData.load(repo / "training" / "models" / "selector-mix-data.npz").distribution  # its labels' mix
    assert f"  fingerprint: {shipped} (recorded with selector labels" in p.stdout
    assert ScenarioDistribution.load(repo / "training" / "configs" / "scenario-mix.yaml").fingerprint() == shipped
    assert "mix-wan-edge-hybrid" in p.stdout and "edge GPUs:" in p.stdout and "remote load:" in p.stdout
    busy = tmp_path / "busy.yaml"
    busy.write_text("name: busy\nscenarios: [{scenario: wan-4region}]\ntier_load: {remote: {low: 0.6, high: 0.6}}\n")
    p = run("check-dist", str(busy), "--samples", "3")
    assert "bases:  wan-4region 100%" in p.stdout
    assert "remote load:  mean background load 0.60-0.60 (median 0.60)" in p.stdout, p.stdout
    assert "SLOs:   TTFT 1.50-5.00 s, TPOT 50-150 ms" in p.stdout  # wan-4region's two classes
    busy.write_text("name: busy\nscenarios: [{scenario: wan-4region}]\ntpot_scale: {low: 0.8, high: 0.8}\n")
    assert "SLOs:   TTFT 1.50-5.00 s, TPOT 40-120 ms" in run("check-dist", str(busy), "--samples", "3").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenarios: [{scenario: wan-4region}]\nprompt_scale: {low: 0, high: 2}\n")
    p = run("check-dist", str(bad))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "prompt_scale.low must be > 0" in p.stderr
    p = run("check-dist", "training/configs/scenario-mix.yaml", "--samples", "0")
    assert p.returncode == 2 and "--samples: must be a whole number >= 1, got 0" in p.stderr


def test_scenarios_lists_each_shipped_scenario_with_a_summary_cut_at_a_word():
    from runtime.scenario import load_scenario

    p = run("scenarios")
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(maxsplit=1) for line in p.stdout.splitlines())
    assert {"colocated", "edge-fleet", "wan-4region"} <= set(lines)
    for name, rest in lines.items():
        summary = rest.split("sites", 1)[1].strip()
        words = " ".join(load_scenario(name).spec.description.split())
        body = summary.removesuffix(" ...")
        assert len(summary) <= 100 and words.startswith(body), (summary, words)
        assert body == words or (summary.endswith(" ...") and words[len(body)] == " "), summary  # whole words only
