"""Small scenario builders shared by the foundation tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from runtime.scenario import Scenario, build_scenario


def base_spec(alpha: float = 0.7, rtt_ms: float | None = None) -> dict[str, Any]:
    """One target site with a co-located drafter, and (with ``rtt_ms``) one idle remote site."""
    spec: dict[str, Any] = {
        "name": "test",
        "target_model": "llama-3.1-8b",
        "drafters": {"llama-3.2-1b": {"acceptance": {"kind": "iid", "alpha_mean": alpha, "alpha_std": 0.0}}},
        "sites": [{"name": "dc", "role": "target", "gpu": "H100", "drafter": "llama-3.2-1b"}],
        "network": {"jitter_ms": 0.0},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": 2.0},
            "prompt_tokens": {"mean": 128, "sigma": 0.0, "min": 1, "max": 4096},
            "output_tokens": {"mean": 64, "sigma": 0.0, "min": 1, "max": 4096},
            "slo_classes": [{"name": "x", "ttft_s": 5.0, "tpot_s": 1.0}],
        },
    }
    if rtt_ms is not None:
        spec["sites"].append({"name": "far", "role": "remote", "gpu": "H100", "drafter": "llama-3.2-1b",
                              "rtt_ms": rtt_ms, "jitter_ms": 0.0})
    return spec


def scenario(spec: dict[str, Any] | None = None, **overrides: Any) -> Scenario:
    s = copy.deepcopy(spec or base_spec())
    s.update(overrides)
    return build_scenario(s)


def one_request_trace(tmp_path: Path, prompt: int, output: int) -> str:
    path = tmp_path / "one.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0000000,{prompt},{output}\n")
    return str(path)


def local_ray_instance() -> Any:
    """A fresh local Ray (2 CPUs, no dashboard) for one test module; the caller shuts it down.
    Skips where the ``ray`` extra is not installed."""
    import pytest

    pytest.importorskip("ray")
    from training.backend import connect

    return connect("local", num_cpus=2)
