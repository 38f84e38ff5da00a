"""Fixtures for the real-runtime tests: the tiny model pair, built once and cached on disk.

The models live in ``SPECCTL_TINY_DIR`` (default ``~/.cache/specctl/tiny-v1``); the first
test session builds them (~20 s on one core), later sessions reuse them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


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
    """The target alone: ``generate(do_sample=False)``, cut after the first EOS."""
    x = torch.tensor([prompt])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out
