"""The speculative-decoding engine: per-sequence KV caches, ragged batched forwards, lossless verify.

Works with any Hugging Face causal LM whose cache is a ``DynamicCache`` (Llama, Qwen, Mistral...).
Each sequence keeps its own KV cache (:class:`SeqCache`) so it can be rolled back to the
accepted prefix and moved between batches. A batched forward stacks the caches left-padded to
the longest, right-pads the new tokens, passes explicit position ids and a 2-D attention mask,
and runs ONE model forward for the whole ragged batch; each sequence then keeps its own slice.

Verification is lossless: greedy rounds commit the longest prefix of the draft that matches the
target's argmax plus the target's own next token (identical to ``generate(do_sample=False)``);
sampled rounds use speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023),
which keeps the target's distribution for any draft distribution ``q``. Drafters sample from a
top-``m`` truncation of their distribution and ship exactly that ``q``, so exactness holds with
``k * m`` (id, prob) pairs on the wire instead of ``k`` full vocabularies.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import DynamicCache

#: Draft distributions are truncated to their top-m entries (and the draft sampled from that).
DRAFT_TOP_M = 64

# The forward passes the KV cache as ``past_key_values`` on purpose: transformers 5.24's new
# ``cache=`` made the tiny target's verifications 35% slower (median 6.7 against 4.9 ms,
# README "Benchmarks"). Its FutureWarning, once per forward of every run, is silenced until
# the name goes (5.40), when this call must move to ``cache=``.
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)


@dataclass
class SeqCache:
    """One sequence's KV cache on one model: per-layer ``(keys, values)`` of shape [heads, T, dim]."""

    tokens: list[int] = field(default_factory=list)  # the tokens whose keys/values are cached
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def crop(self, n: int) -> None:
        """Roll back to the first ``n`` tokens (speculation rejected the rest)."""
        if n >= len(self.tokens):
            return
        self.tokens = self.tokens[:n]
        if self.kv is not None:
            self.kv = [(k[:, :n], v[:, :n]) for k, v in self.kv] if n > 0 else None

    def __len__(self) -> int:
        return len(self.tokens)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@torch.inference_mode()
def batched_forward(model: Any, items: Sequence[tuple[SeqCache, Sequence[int]]],
                    keep: Sequence[int] | None = None) -> list[torch.Tensor]:
    """One forward over ragged sequences; appends the new tokens to each cache.

    Pasts are left-padded to end together at column L, new tokens right-padded after it.
    ``keep[i]`` is how many of sequence i's last logit rows the caller needs (default: all):
    only the union of those columns goes through the LM head, so a long prefill with a 128k
    vocabulary does not materialise a logit row per prompt token.
    Returns sequence i's logits for its last ``keep[i]`` new tokens, [keep_i, vocab], float32.
    """
    device = model.device
    past = [len(c) for c, _ in items]
    news = [len(t) for _, t in items]
    if min(news) < 1:
        raise ValueError("every sequence in a batched forward needs at least one new token")
    keep = list(news if keep is None else keep)
    B, L, N = len(items), max(past), max(news)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids = torch.full((B, N), pad, dtype=torch.long)
    mask = torch.zeros((B, L + N), dtype=torch.long)
    pos = torch.zeros((B, N), dtype=torch.long)
    for i, (_, toks) in enumerate(items):
        ids[i, : news[i]] = torch.tensor(toks, dtype=torch.long)
        mask[i, L - past[i] : L + news[i]] = 1
        pos[i] = torch.arange(past[i], past[i] + N)
    cache = DynamicCache(config=model.config)
    if L > 0:
        ref = next(c.kv for c, _ in items if c.kv is not None)
        for layer, (k0, _) in enumerate(ref):
            keys = torch.zeros((B, k0.shape[0], L, k0.shape[2]), dtype=k0.dtype, device=device)
            values = torch.zeros_like(keys)
            for i, (c, _) in enumerate(items):
                if c.kv is not None:  # left-padded: every sequence's past ends at column L
                    keys[i, :, L - len(c) :] = c.kv[layer][0]
                    values[i, :, L - len(c) :] = c.kv[layer][1]
            cache.update(keys, values, layer)
    cols = sorted({j for n, k in zip(news, keep) for j in range(n - k, n)})
    col_of = {j: c for c, j in enumerate(cols)}
    out = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
        past_key_values=cache, use_cache=True, logits_to_keep=torch.tensor(cols, device=device),
    )
    layers_out = out.past_key_values.layers
    logits = out.logits.float().cpu()  # [B, len(cols), vocab]: one device-to-host copy
    result = []
    for i, (c, toks) in enumerate(items):
        lo, hi = L - past[i], L + news[i]
        c.kv = [(layer.keys[i, :, lo:hi].clone(), layer.values[i, :, lo:hi].clone()) for layer in layers_out]
        c.tokens = c.tokens + list(toks)
        result.append(logits[i, [col_of[j] for j in range(news[i] - keep[i], news[i])]])
    return result


# -- drafting ------------------------------------------------------------------------------------
@dataclass
class Draft:
    """``k`` draft tokens and, for sampled drafts, the top-m distribution each was drawn from."""

    tokens: list[int]
    probs_ids: torch.Tensor | None = None  # [k, m] token ids
    probs: torch.Tensor | None = None  # [k, m] probabilities (sum to 1 per row)

    def dense(self, vocab: int) -> torch.Tensor:
        """The draft distributions as a dense [k, vocab] tensor."""
        q = torch.zeros((len(self.tokens), vocab))
        if self.probs is not None and self.probs_ids is not None:
            q.scatter_(1, self.probs_ids.long(), self.probs.float())
        return q


@dataclass
class DraftJob:
    cache: SeqCache
    context: list[int]  # committed tokens (prompt + output so far)
    k: int
    temperature: float = 0.0
    generator: torch.Generator | None = None


def _pick(logits: torch.Tensor, temperature: float, gen: torch.Generator | None, m: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
    if temperature <= 0:
        return int(logits.argmax()), None, None
    probs = torch.softmax(logits / temperature, dim=-1)
    top_p, top_i = probs.topk(min(m, probs.numel()))
    top_p = top_p / top_p.sum()
    j = int(torch.multinomial(top_p, 1, generator=gen))
    return int(top_i[j]), top_i, top_p


def draft_batch(model: Any, jobs: Sequence[DraftJob], top_m: int = DRAFT_TOP_M) -> list[Draft]:
    """Draft ``k_i`` tokens for every job with ``max k`` batched forwards.

    Each cache is first rolled back to its longest prefix shared with the job's context (the
    rejected tail of the last round goes; a brand-new site starts empty: a context sync), then
    the unseen context is fed in the first step.
    """
    feeds: list[list[int]] = []
    for j in jobs:
        if not j.context:
            raise ValueError("draft context is empty")
        keep = min(common_prefix(j.cache.tokens, j.context), len(j.context) - 1)
        j.cache.crop(keep)
        feeds.append(j.context[keep:])
    tokens: list[list[int]] = [[] for _ in jobs]
    top_ids: list[list[torch.Tensor]] = [[] for _ in jobs]
    top_p: list[list[torch.Tensor]] = [[] for _ in jobs]
    active = [i for i, j in enumerate(jobs) if j.k > 0]
    while active:
        logits = batched_forward(model, [(jobs[i].cache, feeds[i]) for i in active], keep=[1] * len(active))
        for i, lg in zip(active, logits):
            tok, ids, p = _pick(lg[-1], jobs[i].temperature, jobs[i].generator, top_m)
            tokens[i].append(tok)
            if ids is not None:
                top_ids[i].append(ids)
                top_p[i].append(p)  # type: ignore[arg-type]
            feeds[i] = [tok]
        active = [i for i in active if len(tokens[i]) < jobs[i].k]
    drafts = [
        Draft(t, torch.stack(ids) if ids else None, torch.stack(ps) if ps else None)
        for t, ids, ps in zip(tokens, top_ids, top_p)
    ]
    return drafts


# -- verification --------------------------------------------------------------------------------
@dataclass
class VerifyJob:
    cache: SeqCache  # the target's cache for this sequence
    context: list[int]  # committed tokens (prompt + output so far)
    draft: Draft | None = None  # None or empty: plain decode (or prefill)
    temperature: float = 0.0
    generator: torch.Generator | None = None
    logprobs: int | None = None  # also report each committed token's log-probability and this many top ones


@dataclass
class Verdict:
    accepted: int  # draft tokens accepted
    tokens: list[int]  # tokens to commit: accepted drafts + one correction/bonus token
    #: Per committed token: its log-probability under the target (before temperature) and the top alternatives.
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


def verify_batch(model: Any, jobs: Sequence[VerifyJob]) -> list[Verdict]:
    """Verify every job's draft in ONE target forward; roll each cache back to what is kept."""
    items, rows = [], []
    for j in jobs:
        keep = min(common_prefix(j.cache.tokens, j.context), len(j.context) - 1)
        j.cache.crop(keep)
        draft = j.draft.tokens if j.draft is not None else []
        items.append((j.cache, j.context[keep:] + draft))
        rows.append(len(draft) + 1)
    logits = batched_forward(model, items, keep=rows)
    verdicts = []
    vocab = logits[0].shape[-1]
    for j, lg in zip(jobs, logits):
        rows = lg  # k + 1 rows: predictions for draft positions 1..k and the bonus
        if j.temperature <= 0:
            v = _greedy(rows, j.draft.tokens if j.draft else [])
        else:
            v = _rejection_sample(rows, j.draft, j.temperature, j.generator, vocab)
        j.cache.crop(len(j.context) + v.accepted)  # keep committed tokens except the newest
        if j.logprobs is not None:  # the rows are already here: a log-softmax is all it costs
            v.logprobs = _logprobs(lg[: len(v.tokens)], v.tokens, j.logprobs)
        verdicts.append(v)
    return verdicts


def _logprobs(rows: torch.Tensor, tokens: list[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    lp = torch.log_softmax(rows, dim=-1)
    vals, ids = lp.topk(min(top, lp.shape[-1]), dim=-1) if top > 0 else (lp[:, :0], lp[:, :0].long())
    return [(float(lp[i, t]), list(zip(ids[i].tolist(), vals[i].tolist()))) for i, t in enumerate(tokens)]


def _greedy(rows: torch.Tensor, draft: list[int]) -> Verdict:
    best = rows.argmax(-1).tolist()
    a = 0
    while a < len(draft) and draft[a] == best[a]:
        a += 1
    return Verdict(a, draft[:a] + [best[a]])


def _rejection_sample(rows: torch.Tensor, draft: Draft | None, temperature: float, gen: torch.Generator | None, vocab: int) -> Verdict:
    p = torch.softmax(rows / temperature, dim=-1)
    if draft is None or not draft.tokens:
        return Verdict(0, [int(torch.multinomial(p[0], 1, generator=gen))])
    q = draft.dense(vocab)
    return Verdict(*speculative_accept(p, q, draft.tokens, gen))


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft: list[int], gen: torch.Generator | None) -> tuple[int, list[int]]:
    """Rejection sampling over ``k`` drafts: ``p`` is [k+1, V] target, ``q`` [k, V] draft distributions.

    Accept draft ``x_i`` with probability ``min(1, p_i(x)/q_i(x))``; at the first rejection draw
    from ``norm(max(p_i - q_i, 0))``; if all pass draw a bonus from ``p_k``. The committed tokens
    are distributed exactly as the target's own samples.
    """
    out: list[int] = []
    for i, x in enumerate(draft):
        u = float(torch.rand((), generator=gen))
        px, qx = float(p[i, x]), float(q[i, x])
        if qx > 0 and u * qx <= px:
            out.append(x)
            continue
        resid = torch.clamp(p[i] - q[i], min=0)
        total = float(resid.sum())
        nxt = int(torch.multinomial(resid / total if total > 0 else p[i], 1, generator=gen))
        return i, out + [nxt]
    return len(draft), out + [int(torch.multinomial(p[len(draft)], 1, generator=gen))]
