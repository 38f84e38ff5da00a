"""Golden figures: the simulator's metrics for every shipped controller x scenario, fixed seeds.

Why: issue 10 moves the request lifecycle into one core shared by the simulator and the real
runtime, and speeds up the simulator; neither may change a simulated result. Each cell runs a
short fixed-seed simulation and compares every key of ``runtime.metrics.KEYS`` with
``tests/data/sim_golden.json`` (integers exactly, floats to a relative 1e-9 so that only a
re-association of float sums passes, never a changed event). A controller that refuses a
scenario at ``bind()`` is stored as ``"refused"`` and must keep refusing.

Regenerate only for a deliberate behaviour change, and say in the commit which figures moved
and why::

    PYTHONPATH=. python tests/test_sim_golden.py --regenerate
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "sim_golden.json"

#: Every scenario the project ships (simulator, held-out training, deployable real), by path.
SCENARIOS = {
    "colocated": "runtime/scenarios/colocated.yaml",
    "edge-fleet": "runtime/scenarios/edge-fleet.yaml",
    "wan-4region": "runtime/scenarios/wan-4region.yaml",
    "eu-3region-bursty": "training/scenarios/eu-3region-bursty.yaml",
    "apac-hybrid": "training/scenarios/apac-hybrid.yaml",
    "us-code-edge": "training/scenarios/us-code-edge.yaml",
    "sa-qwen-bursty": "training/scenarios/sa-qwen-bursty.yaml",
    "eu-jetson-fleet": "training/scenarios/eu-jetson-fleet.yaml",
    "mix-wan-edge-hybrid": "training/configs/mix-wan-edge-hybrid.yaml",
    "tiny-local": "runtime/real/scenarios/tiny-local.yaml",
}
#: Every registered controller (``policy:`` needs a trained checkpoint and is left out), plus
#: the variants that take other code paths: round-by-round wanspec, composed admission, other knobs.
CONTROLLERS = [
    "no-spec", "static", "centralized", "sled", "wanspec", "wanspec:ahead=false", "wisp",
    "vllm-dynamic-k", "bandit-k", "oracle", "static+inflight-cap:max_inflight=16", "knobs",
    "knobs:mode=1,cap=1,k_cap=2,hedge=false", "lookahead:horizon_s=4,futures=1",
    "selector:model=training/models/selector-mix.json",  # (refitting the shipped model moves its cells)
    "twin:horizon_s=4,seeds=1,probe_s=3,warmup_s=1",
]
#: (arrival rate as a multiple of the scenario's, seed, arrival window in simulated seconds):
#: the scenario's own load, and an overload that exercises queues, drops and admission.
LOADS = [(1.0, 3, 8.0), (3.0, 5, 8.0)]


def cell_key(scenario: str, controller: str, load: float, seed: int, duration: float) -> str:
    return f"{scenario}|{controller}|load={load:g}|seed={seed}|duration={duration:g}"


def run_cell(scenario: str, controller: str, load: float, seed: int, duration: float) -> dict[str, float | int | None] | str:
    """The cell's metrics summary (NaN as None, as JSON stores it), or ``"refused"``."""
    from controllers import make_controller
    from runtime.scenario import load_scenario
    from runtime.sim import Simulator

    sc = load_scenario(ROOT / SCENARIOS[scenario])
    sim = Simulator(sc, seed=seed, duration=duration, rate=sc.spec.workload.arrivals.rate * load)
    try:
        make_controller(controller).bind(sim.info)  # a throwaway: does it run here at all?
    except ValueError:
        return "refused"
    out = sim.run(make_controller(controller))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def all_cells() -> list[tuple[str, str, float, int, float]]:
    return [(s, c, load, seed, dur) for load, seed, dur in LOADS for s in SCENARIOS for c in CONTROLLERS]


def regenerate() -> None:
    figures = {cell_key(*cell): run_cell(*cell) for cell in all_cells()}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(figures)} cells to {GOLDEN}")


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_covers_every_shipped_controller_and_scenario(golden: dict) -> None:
    from controllers import REGISTRY
    from runtime.scenario import SCENARIO_DIR

    named = {c.split(":")[0].split("+")[0] for c in CONTROLLERS} | {
        part.split(":")[0] for c in CONTROLLERS for part in c.split("+")[1:]}
    assert set(REGISTRY) <= named, f"add {sorted(set(REGISTRY) - named)} to CONTROLLERS and regenerate"
    shipped = {p.relative_to(ROOT).as_posix() for d in (SCENARIO_DIR, ROOT / "training" / "scenarios",
                                                         ROOT / "runtime" / "real" / "scenarios")
               for p in d.glob("*.yaml")}
    assert shipped <= set(SCENARIOS.values()), f"add {sorted(shipped - set(SCENARIOS.values()))} to SCENARIOS"
    assert set(golden) == {cell_key(*c) for c in all_cells()}, "stored cells differ from the grid: regenerate"


@pytest.mark.parametrize("cell", all_cells(), ids=lambda c: cell_key(*c))
def test_same_seed_same_metrics(cell: tuple[str, str, float, int, float], golden: dict) -> None:
    want = golden[cell_key(*cell)]
    got = run_cell(*cell)
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
        return
    assert set(got) == set(want)
    diff = {k: (want[k], got[k]) for k in want if not _same(want[k], got[k])}
    assert not diff, f"{cell_key(*cell)}: (stored, now) {diff}"


def _same(a: float | int | None, b: float | int | None) -> bool:
    if a is None or b is None or isinstance(a, int) and isinstance(b, int):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()
