"""Fixtures for the real-runtime tests: the tiny model pair, built once and cached on disk.

The models live in ``SPECCTL_TINY_DIR`` (default ``~/.cache/specctl/tiny-v2``); the first
test session builds them (~20 s on one core), later sessions reuse them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.contract import Controller, Redundancy, drive
from runtime.real.runtime import RealRuntime


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from runtime.real.models import ensure_tiny

    torch.set_num_threads(1)
    return ensure_tiny()


@pytest.fixture(scope="session")
def tiny_models(tiny_dir: Path) -> tuple[Any, Any, Any]:
    """``(target, draft, tokenizer)`` in float32 on the CPU."""
    from runtime.real.models import load_model

    target, tok = load_model(tiny_dir / "target", "cpu", "float32")
    draft, _ = load_model(tiny_dir / "draft", "cpu", "float32")
    return target, draft, tok


def greedy_reference(model: Any, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """The target alone: ``generate(do_sample=False)`` on the model's device, cut after the first EOS."""
    x = torch.tensor([prompt], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out


N_TOKENS = 24  # tokens each test request generates


class RemoteFirst(Controller):
    """Drafts at ``site`` with optional backups (a test controller exercising redundancy)."""

    name = "remote-first"

    def __init__(self, site: str = "near", backups: tuple[str, ...] = (), hedge_after_s: float = 0.0,
                 timeout_s: float | None = None, k: int = 4, ahead: bool = False) -> None:
        super().__init__()
        self.site, self.backups, self.hedge, self.timeout, self.k = site, backups, hedge_after_s, timeout_s, k
        self.ahead = ahead

    def drafter_site(self, req, sys):
        return self.site

    def draft_length(self, req, sys, site):
        return min(self.k, max(req.tokens_left - 1, 0))

    def redundancy(self, req, sys, site, k):
        return Redundancy(self.backups, self.hedge, self.timeout, self.ahead)


def run(rt: RealRuntime, controller: Controller, prompts: list[list[int]], temperature: float = 0.0) -> list:
    """Serve ``prompts`` (one every 20 ms) to the end under ``controller``; the requests."""
    with rt:
        reqs = [rt.submit(p, N_TOKENS, temperature, at=0.02 * i) for i, p in enumerate(prompts)]
        rt.end_of_workload()
        drive(rt, controller)
    return reqs
