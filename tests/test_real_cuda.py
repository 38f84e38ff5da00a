"""The real runtime on a GPU: the target and the drafter site processes on CUDA.

Skipped where CUDA is absent (CI has none). On a GPU host: ``pytest tests/test_real_cuda.py``.
The other real-runtime tests keep every model on the CPU (tests/conftest.py), so this file is
where the CUDA path (device transfers, CUDA generators, per-process CUDA contexts) is checked.

Greedy output must be the target's own ``generate(do_sample=False)`` on the same device and
dtype. In float32 that is exact. In bfloat16 a batched verification rounds differently from a
one-sequence ``generate`` (other kernel shapes), so a near-tie in the logits may go the other way:
there the test asks for most tokens to agree, and prints the figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from controllers import make_controller
from runtime.real.deploy import Deployment, load_deployment
from runtime.real.models import load_model, tiny_prompts
from runtime.real.runtime import RealRuntime, SiteProcesses
from tests.real_fixtures import N_TOKENS, RemoteFirst, greedy_reference, run, tiny_dir  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_deployment(tiny_dir: Path, dtype: str, **overrides: Any) -> Deployment:
    """tiny-local with the target and every drafter on CUDA in ``dtype``."""
    ref = {"device": "cuda", "dtype": dtype}
    return load_deployment(models_dir=tiny_dir, target_model={"path": str(tiny_dir / "target"), **ref},
                           drafters={"tiny-draft": {"path": str(tiny_dir / "draft"), **ref}}, **overrides)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def on_cuda(request, tiny_dir):
    """``(dtype, prompts, references, site addresses)``: the target's own greedy output on CUDA
    in that dtype, and the two drafter sites started as processes on CUDA."""
    dtype = request.param
    target, tok = load_model(tiny_dir / "target", "cuda", dtype)
    prompts = [tok(p)["input_ids"] for p in tiny_prompts(tiny_dir)[:6]]
    with torch.inference_mode():
        refs = [greedy_reference(target, p, N_TOKENS, tok.eos_token_id) for p in prompts]
    del target
    dep = cuda_deployment(tiny_dir, dtype)
    procs = SiteProcesses()
    try:
        yield dtype, prompts, refs, procs.launch({n: dep.drafter_for(n) for n in ("near", "far")})
    finally:
        procs.stop()


def agreement(outputs: list[list[int]], refs: list[list[int]]) -> float:
    """The share of reference tokens matched, position by position."""
    return sum(a == b for o, r in zip(outputs, refs) for a, b in zip(o, r)) / sum(len(r) for r in refs)


@pytest.mark.parametrize("spec", ["static:k=4", "wanspec", "wanspec:ahead=false", "wisp", "remote"])
def test_greedy_output_on_cuda_is_the_targets_own(spec, on_cuda, tiny_dir):
    dtype, prompts, refs, addresses = on_cuda
    rt = RealRuntime(cuda_deployment(tiny_dir, dtype, sites={n: {"address": a} for n, a in addresses.items()}))
    controller = RemoteFirst("near", backups=("far",)) if spec == "remote" else make_controller(spec)
    reqs = run(rt, controller, prompts)
    s = rt.summary()
    assert s["requests_completed"] == len(prompts) and s["requests_dropped"] == 0
    assert s["draft_tokens"] > 0
    if spec == "remote":  # (wanspec may verify only the target's backup rounds before a stream lands)
        assert s["remote_draft_forward_passes"] > 0
    outputs = [r.output for r in reqs]
    share = agreement(outputs, refs)
    print(f"{spec} on cuda/{dtype}: {share:.3f} of the target's greedy tokens, {s['acceptance_rate']:.2f} acceptance")
    if dtype == "float32":
        assert outputs == refs
    else:
        assert share >= 0.75, f"bfloat16 output agrees with the target's own on only {share:.3f} of its tokens"


def test_sampling_on_cuda_completes(on_cuda, tiny_dir):
    dtype, prompts, _, addresses = on_cuda
    rt = RealRuntime(cuda_deployment(tiny_dir, dtype, sites={n: {"address": a} for n, a in addresses.items()}))
    reqs = run(rt, RemoteFirst("far", ahead=True), prompts, temperature=0.8)
    assert all(r.finish_reason in ("length", "stop") for r in reqs)
    s = rt.summary()
    assert 0 < s["acceptance_rate"] < 1 and s["stream_rounds"] > 0
