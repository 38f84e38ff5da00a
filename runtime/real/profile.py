"""``python -m runtime profile``: measure this deployment's forward passes for the simulator.

Times the real engine's own calls on this machine: target verification (``verify_batch``:
one ragged forward, acceptance, KV rollback) over a grid of batched new tokens and total
context, and one draft step (``draft_batch`` with k=1) over batch sizes and context. Writes
one CSV per model in the format :class:`runtime.latency.ProfileTable` reads
(``new_tokens,context_tokens,ms`` plus ``batch_size``) and prints the ``profiles:`` lines to
put on the scenario's sites, so the simulator's latency model is calibrated to this host.

    python -m runtime profile --scenario tiny-local --out profiles/
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers load only when profiling, not for `python -m runtime --help`
    import torch

TARGET_NEW = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DRAFT_SEQS = (1, 2, 4, 8, 16, 32)
CONTEXTS = (0, 64, 256, 1024, 4096)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _ragged(total: int, parts: int, gen: "torch.Generator") -> list[int]:
    """A random split of ``total`` (each part >= 1 when possible): real batches mix context lengths,
    and the padding that costs is part of what a verification forward takes."""
    import torch

    if parts == 1 or total < parts:
        return _split(total, parts)
    w = torch.rand(parts, generator=gen) + 0.25
    sizes = [max(1, int(x)) for x in (w / w.sum() * total).tolist()]
    sizes[0] += total - sum(sizes)
    return sizes if min(sizes) >= 1 else _split(total, parts)


def _contexts(model: Any, lengths: list[int], vocab: int, gen: "torch.Generator") -> list[Any]:
    import torch

    from runtime.real.engine import SeqCache, batched_forward

    caches = [SeqCache() for _ in lengths]
    live = [(c, torch.randint(3, vocab, (n,), generator=gen).tolist()) for c, n in zip(caches, lengths) if n > 0]
    if live:
        batched_forward(model, live)
    return caches


def verify_seqs(new_tokens: int, context_tokens: int, max_seq: int) -> int | None:
    """Sequences realising a grid point: k+1 <= ~5 new tokens each, each within the model's positions."""
    if context_tokens == 0:
        return 1 if new_tokens <= max_seq else None
    seqs = max(1, min(new_tokens // 5 if new_tokens >= 5 else new_tokens, 16), -(-context_tokens // (max_seq // 2)))
    return seqs if seqs <= new_tokens else None


def time_verify(model: Any, new_tokens: int, context_tokens: int, repeats: int, gen: "torch.Generator",
                seqs: int = 1) -> float:
    """Mean seconds (after a warm-up) of a verification forward: ``new_tokens`` and the context split over ``seqs``."""
    import torch

    from runtime.real.engine import Draft, VerifyJob, verify_batch

    vocab = model.config.vocab_size
    news = _split(new_tokens, seqs)
    times = []
    for _ in range(repeats + 1):
        caches = _contexts(model, _ragged(context_tokens, seqs, gen), vocab, gen)
        jobs = []
        for c, n in zip(caches, news):
            context = c.tokens + torch.randint(3, vocab, (1,), generator=gen).tolist()
            draft = Draft(torch.randint(3, vocab, (n - 1,), generator=gen).tolist()) if n > 1 else None
            if not c.tokens:  # a prefill: the whole new segment is context
                context = torch.randint(3, vocab, (n,), generator=gen).tolist()
                draft = None
            jobs.append(VerifyJob(c, context, draft))
        t0 = time.perf_counter()
        verify_batch(model, jobs)
        times.append(time.perf_counter() - t0)
    return statistics.fmean(times[1:])


def time_draft_step(model: Any, seqs: int, context_tokens: int, repeats: int, gen: "torch.Generator") -> float:
    """Mean seconds (after a warm-up) of one batched draft step (one new token per sequence)."""
    from runtime.real.engine import DraftJob, draft_batch

    vocab = model.config.vocab_size
    ctxs = [max(c, 1) for c in _split(context_tokens, seqs)]
    times = []
    for _ in range(repeats + 1):
        caches = _contexts(model, [c - 1 for c in ctxs], vocab, gen)
        jobs = [DraftJob(c, c.tokens + [5], 1) for c in caches]
        t0 = time.perf_counter()
        draft_batch(model, jobs)
        times.append(time.perf_counter() - t0)
    return statistics.fmean(times[1:])


def _write(path: Path, rows: list[tuple[int, int, float, int]], note: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        f.write(f"# {note}\n")
        w = csv.writer(f)
        w.writerow(["new_tokens", "context_tokens", "ms", "batch_size"])
        for new, ctx, s, b in rows:
            w.writerow([new, ctx, f"{s * 1000:.4f}", b])


def profile(deployment: Any, out: str | Path, repeats: int = 3, max_context: int = 4096,
            max_new: int = 256, quiet: bool = False) -> dict[str, str]:
    """Profile the deployment's target and target-site drafter; returns {model name: csv path}."""
    import torch

    from runtime.real.models import load_model

    sc = deployment.scenario
    out = Path(out)
    gen = torch.Generator().manual_seed(0)
    written: dict[str, str] = {}
    ref = deployment.target
    target, _ = load_model(ref.path, ref.device, ref.dtype)
    limit = int(getattr(target.config, "max_position_embeddings", max_context))
    contexts = [c for c in CONTEXTS if c <= max_context]
    rows = []
    for ctx in contexts:
        for new in (n for n in TARGET_NEW if n <= max_new):
            seqs = verify_seqs(new, ctx, limit)
            if seqs is not None:
                rows.append((new, ctx, time_verify(target, new, ctx, repeats, gen, seqs), seqs))
    name = sc.spec.target_model
    _write(out / f"{name}.csv", rows, f"target verification, {ref.path} on {ref.device}/{ref.dtype}, by python -m runtime profile")
    written[name] = str(out / f"{name}.csv")
    del target
    drafter_name = sc.target.drafter or next(iter(sc.spec.drafters), None)
    site = sc.target.name if sc.target.drafter else next((s.name for s in sc.sites if s.drafter), None)
    if drafter_name is not None and site is not None:
        dref = deployment.drafter_for(site)
        draft, _ = load_model(dref.path, dref.device, dref.dtype)
        drows = [(n, ctx, time_draft_step(draft, n, ctx, repeats, gen), n)
                 for ctx in contexts for n in DRAFT_SEQS if (ctx == 0 or ctx >= n) and ctx / n < limit - 2]
        _write(out / f"{drafter_name}.csv", drows, f"draft step, {dref.path} on {dref.device}/{dref.dtype}")
        written[drafter_name] = str(out / f"{drafter_name}.csv")
    if not quiet:
        print(json.dumps({"profiles": written}))
        print("# add to the scenario's sites (the target site, and drafter sites on the same hardware):")
        print(f"#   profiles: {json.dumps(written)}")
    return written


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="measure this deployment's forward latencies into ProfileTable CSVs")
    p.add_argument("--scenario", help="scenario (default: the deployment's, else tiny-local)")
    p.add_argument("--deploy", help="deployment YAML naming the checkpoints (runtime/real/deploy.py)")
    p.add_argument("--models", help="tiny-model directory where the deployment names no checkpoint")
    p.add_argument("--out", default="profiles", help="output directory (default: profiles/)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per point, averaged: the mean includes this host's usual interference (default: 5)")
    p.add_argument("--max-context", type=int, default=4096, help="largest total context to profile")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def cmd_profile(args: Any) -> int:
    import torch

    from runtime.real.deploy import load_deployment

    torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    dep = load_deployment(args.deploy, scenario=args.scenario, models_dir=args.models)
    profile(dep, args.out, args.repeats, args.max_context)
    return 0

