"""The learned acceptance estimator and its training CLI (``python -m training.acceptance``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controllers import ControllerError, make_controller
import controllers.acceptance as acceptance_module
from controllers.acceptance import FEATURES, FORMAT, LearnedAcceptance
from controllers.estimators import AcceptanceTable
from runtime.scenario import load_scenario
from runtime.sim import Simulator
from training import acceptance as train_acceptance


def write_model(path, weights, bias=0.0, **extra):
    path.write_text(json.dumps({"format": FORMAT, "features": list(FEATURES), "weights": list(weights), "bias": bias, **extra}))
    return path


def test_with_the_identity_weights_it_estimates_as_the_table(tmp_path, monkeypatch):
    """Zero weights but the table's: the learned estimator's starting point is the heuristic's
    (with every estimate refreshed at each result; by default the shared shape refreshes late)."""
    monkeypatch.setattr(acceptance_module, "REFRESH_EVERY", 1)
    model = write_model(tmp_path / "identity.json", train_acceptance.identity())
    pairs = []
    read = LearnedAcceptance.for_request

    def recorded(self, req):
        got = read(self, req)
        pairs.append((got, AcceptanceTable.for_request(self, req)))
        return got

    monkeypatch.setattr(LearnedAcceptance, "for_request", recorded)
    Simulator(load_scenario("training/scenarios/eu-3region-bursty.yaml"), 0, 5.0).run(make_controller(f"wisp:acceptance={model}"))
    assert len(pairs) > 100
    for got, table in pairs:
        assert got == pytest.approx([min(max(p, 0.01), 0.99) for p in table], abs=1e-9)


def test_a_learned_model_tracks_drifting_acceptance(tmp_path):
    """Weight on the fast rate: after a run of rejections a drifting request's estimate falls
    faster than the whole-history table's, and the run is deterministic."""
    w = np.zeros(len(FEATURES))
    w[FEATURES.index("fast")] = 1.0
    model = write_model(tmp_path / "fast.json", w)
    info = Simulator(load_scenario("wan-4region"), 0, 1.0).info
    est = LearnedAcceptance.load(model, info, 4)
    table = AcceptanceTable(info, 4)

    class Req:
        rid, rounds, accepted, rejected_rounds = 7, 0, 0, 0

        def alpha_estimate(self, prior):
            return (self.accepted + 4 * prior) / (self.accepted + self.rejected_rounds + 4)

    req = Req()
    from runtime.contract import BatchResult

    for a in [4] * 10 + [0] * 4:  # ten full rounds, then four rejections at the first token
        req.rounds += 1
        req.accepted += a
        req.rejected_rounds += a < 4
        est.update(BatchResult(0.0, 0.01, [7], [4], [a], 5, 100, ["x"]))
    assert est.for_request(req)[0] < table.for_request(req)[0] - 0.1
    rng = np.random.default_rng(1)
    for w in [rng.normal(size=len(FEATURES)) for _ in range(3)]:  # the fused prediction is the model's
        other = LearnedAcceptance(info, 4, w, 0.3)
        other._state = est._state
        z = other.features(req) @ w + 0.3
        assert other.for_request(req) == pytest.approx(np.minimum(1 / (1 + np.exp(-z)), 0.99).tolist())
    spec = f"wisp:acceptance={model}"
    a = Simulator(load_scenario("training/scenarios/eu-3region-bursty.yaml"), 0, 5.0).run(make_controller(spec))
    assert a == Simulator(load_scenario("training/scenarios/eu-3region-bursty.yaml"), 0, 5.0).run(make_controller(spec))


@pytest.mark.parametrize("content, match", [
    (None, "no such model file; use acceptance=table, acceptance=peek"),
    ("not json", "not a JSON model file"),
    (json.dumps({"format": "other"}), f"not a {FORMAT} model; retrain it"),
    (json.dumps({"format": FORMAT, "features": ["table"], "weights": [1.0], "bias": 0}), "are not this version's"),
])
def test_a_bad_model_file_is_refused_when_the_controller_is_built(tmp_path, content, match):
    path = tmp_path / "model.json"
    if content is not None:
        path.write_text(content)
    for name in ("wisp", "centralized"):
        with pytest.raises(ControllerError, match=match):
            make_controller(f"{name}:acceptance={path}")


def test_fit_moves_weight_to_the_feature_that_predicts_acceptance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, len(FEATURES)))
    y = (rng.random(4000) < 1 / (1 + np.exp(-2 * x[:, 1]))).astype(float)  # only "fast" matters
    w, b = train_acceptance.fit(x, y)
    assert w[1] > 1.5 and abs(w[0]) < 0.2
    assert train_acceptance.log_loss(x, y, w, b) < train_acceptance.log_loss(x, y, train_acceptance.identity(), 0.0) - 0.1


def test_the_training_cli_writes_a_model_wisp_and_centralized_run(tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert train_acceptance.main(["--systems", "2", "--validation", "1", "--duration", "8", "--workers", "1",
                                  "--check", "edge-fleet:32", "--seeds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "log-loss per position" in text and "edge-fleet: log-loss" in text and f"wisp:acceptance={out}" in text
    model = json.loads(out.read_text())
    assert model["features"] == list(FEATURES) and "edge-fleet" in model["log_loss"]
    for name in ("wisp", "centralized"):
        assert Simulator(load_scenario("edge-fleet"), 0, 3.0).run(make_controller(f"{name}:acceptance={out}"))["goodput_rps"] > 0
    with pytest.raises(SystemExit):
        train_acceptance.main(["--check", "no-rate.yaml", "--out", str(out)])
    assert "expected FILE:RATE" in capsys.readouterr().err
