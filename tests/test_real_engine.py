"""The speculative engine: ragged batched forwards, KV rollback, lossless greedy and sampled verification."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import stats

from runtime.real.models import tiny_prompts
from runtime.real.engine import (
    DraftJob, SeqCache, VerifyJob, batched_forward, draft_batch, speculative_accept, verify_batch,
)
from tests.real_fixtures import greedy_reference, tiny_dir, tiny_models  # noqa: F401


def test_ragged_batched_forward_matches_single_forwards(tiny_models):
    target, _, tok = tiny_models
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:4]]
    # grow caches of different lengths, then feed ragged new tokens to all in one forward
    caches = [SeqCache() for _ in prompts]
    batched_forward(target, [(c, p[:-2]) for c, p in zip(caches, prompts)])
    news = [p[-2:] + [5] * i for i, p in enumerate(prompts)]
    out = batched_forward(target, list(zip(caches, news)))
    for p, n, lg, c in zip(prompts, news, out, caches):
        full = target(input_ids=torch.tensor([p[:-2] + n])).logits[0, -len(n):]
        assert torch.allclose(lg, full, atol=1e-4), "padded batch forward differs from a single forward"
        assert len(c) == len(p) - 2 + len(n) and c.kv[0][0].shape[1] == len(c)


def test_greedy_output_identical_to_generate_for_any_batch_mix(tiny_models):
    target, draft, tok = tiny_models
    rng = random.Random(3)
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:8]]
    n = 40
    refs = [greedy_reference(target, p, n, tok.eos_token_id) for p in prompts]
    tcache = [SeqCache() for _ in prompts]
    dcache = [SeqCache() for _ in prompts]
    ctx = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    accepted = drafted = 0
    for step in range(400):
        # requests join over time (prefills mixed with decodes), random subsets and draft lengths
        live = [i for i in range(min(len(prompts), 2 + step)) if not done[i]]
        if not live:
            break
        batch = rng.sample(live, rng.randint(1, len(live)))
        jobs = []
        for i in batch:
            k = rng.choice([0, 1, 3, 6]) if out[i] else 0
            d = draft_batch(draft, [DraftJob(dcache[i], ctx[i], k)])[0] if k else None
            drafted += k
            jobs.append(VerifyJob(tcache[i], ctx[i], d))
        for i, v in zip(batch, verify_batch(target, jobs)):
            accepted += v.accepted
            take = v.tokens[: n - len(out[i])]
            if tok.eos_token_id in take:
                take = take[: take.index(tok.eos_token_id) + 1]
                done[i] = True
            out[i] += take
            ctx[i] += take
            done[i] |= len(out[i]) >= n
            assert done[i] or len(tcache[i]) == len(ctx[i]) - 1, "target cache must be rolled back to the accepted prefix"
    assert all(done)
    assert out == refs
    assert 0.2 < accepted / drafted < 0.95, f"tiny pair acceptance {accepted / drafted:.2f} should be non-trivial"


def test_draft_cache_rolls_back_and_resyncs(tiny_models):
    _, draft, tok = tiny_models
    p = tok(tiny_prompts()[0])["input_ids"]
    c = SeqCache()
    d1 = draft_batch(draft, [DraftJob(c, p, 4)])[0]
    assert len(c) == len(p) + 3  # the last draft token is not fed
    # the target rejected everything and committed another token: the cache keeps only the prompt
    other = (d1.tokens[0] + 1) % 50
    draft_batch(draft, [DraftJob(c, p + [other], 2)])
    assert c.tokens[: len(p) + 1] == p + [other]
    fresh = draft_batch(draft, [DraftJob(SeqCache(), p + [other], 2)])[0]
    again = draft_batch(draft, [DraftJob(c, p + [other], 2)])[0]
    assert again.tokens == fresh.tokens


def test_rejection_sampling_is_exact_for_any_draft_distribution():
    gen = torch.Generator().manual_seed(0)
    v, k, n = 6, 2, 6000
    p = torch.softmax(torch.randn(k + 1, v, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(k, v, generator=gen) * 1.5, -1)
    firsts = []
    for _ in range(n):
        draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(k)]
        _, toks = speculative_accept(p, q, draft, gen)
        firsts.append(toks[0])
    counts = np.bincount(firsts, minlength=v)
    assert stats.chisquare(counts, p[0].numpy() * n).pvalue > 1e-3


def test_sampled_speculation_keeps_the_target_distribution(tiny_models):
    """Joint distribution of the first two sampled tokens vs the target's exact one."""
    target, draft, tok = tiny_models
    prompt = tok("<s> alice gave bob a")["input_ids"]
    temp, n = 1.0, 500
    gen = torch.Generator().manual_seed(1)
    pairs = []
    seqs = [(SeqCache(), SeqCache(), list(prompt)) for _ in range(n)]
    # round 1: prefill all in one forward, round 2: 3 sampled drafts each, verified in one forward
    for v, (_, _, ctx) in zip(verify_batch(target, [VerifyJob(t, c, None, temp, gen) for t, _, c in seqs]), seqs):
        ctx += v.tokens
    drafts = draft_batch(draft, [DraftJob(d, c, 3, temp, gen) for _, d, c in seqs])
    for v, (_, _, ctx) in zip(verify_batch(target, [VerifyJob(t, c, d, temp, gen) for (t, _, c), d in zip(seqs, drafts)]), seqs):
        pairs.append((ctx[len(prompt)], v.tokens[0]))
    with torch.no_grad():
        p1 = torch.softmax(target(input_ids=torch.tensor([prompt])).logits[0, -1] / temp, -1)
        firsts = sorted({a for a, _ in pairs})
        p2 = {a: torch.softmax(target(input_ids=torch.tensor([prompt + [a]])).logits[0, -1] / temp, -1) for a in firsts}
    cells = sorted(set(pairs), key=lambda ab: -float(p1[ab[0]] * p2[ab[0]][ab[1]]))
    expected = np.array([float(p1[a] * p2[a][b]) for a, b in cells]) * n
    observed = np.array([pairs.count(c) for c in cells], dtype=float)
    big = expected >= 5
    obs = np.append(observed[big], n - observed[big].sum())
    exp = np.append(expected[big], n - expected[big].sum())
    assert big.sum() >= 3
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_device_auto_follows_specctl_device_and_a_missing_cuda_is_named(monkeypatch, tiny_dir):
    """``device: auto`` is SPECCTL_DEVICE where set (the suite sets cpu), and asking for CUDA where
    there is none is one error that names the fix, not a crash deep in torch."""
    from runtime.real.models import ModelError, load_model, resolve_device

    monkeypatch.setenv("SPECCTL_DEVICE", "cpu")
    assert resolve_device("auto") == "cpu"
    model, _ = load_model(tiny_dir / "draft")  # auto device and dtype: float32 on the CPU
    assert model.device.type == "cpu" and model.dtype == torch.float32
    monkeypatch.delenv("SPECCTL_DEVICE")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("SPECCTL_DEVICE", "cuda")
        with pytest.raises(ModelError, match="CUDA is not available here"):
            resolve_device("auto")
