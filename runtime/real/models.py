"""Models for the real runtime: local Hugging Face checkpoints, and tiny ones built here.

Nothing is downloaded from a model hub. For tests and the default demo the project builds its
own pair of standard HF checkpoint directories (``python -m runtime.real.models build-tiny --out
DIR``): a word-level tokenizer, a small Llama target and a smaller Llama drafter, both trained
on a corpus generated from a seeded grammar. The grammar mixes easy local structure (which the
drafter learns) with copying and counting (which mostly only the target learns), so the pair
has real, non-trivial acceptance. Choices are Zipf-weighted so greedy argmaxes are not ties.

    python -m runtime.real.models build-tiny --out ~/.cache/specctl/tiny
    python -m runtime.real.models check --target DIR/target --draft DIR/draft
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

TINY_VERSION = "v2"
DEFAULT_TINY_DIR = Path(os.environ.get("SPECCTL_TINY_DIR", Path.home() / ".cache" / "specctl" / f"tiny-{TINY_VERSION}"))
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


class ModelError(ValueError):
    """A checkpoint cannot be used (missing, incompatible with its partner, bad device/dtype)."""


# -- the corpus ----------------------------------------------------------------------------------
_NAMES = "alice bob carol dave erin frank grace heidi ivan judy".split()
_NOUNS = "cat dog bird fish horse mouse lion bear fox wolf owl frog goat duck".split()
_ADJS = "big small red green quiet happy old young brave tired".split()
_VERBS = "saw chased liked found followed heard helped watched".split()
_PLACES = "river house garden forest market school bridge hill".split()
_NUMS = [str(i) for i in range(40)]


def _zipf(rng: random.Random, items: Sequence[str]) -> str:
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(items))]
    return rng.choices(items, weights)[0]


def _sentence(rng: random.Random) -> str:
    kind = rng.choices(range(5), [4, 3, 2, 2, 1])[0]
    z = lambda xs: _zipf(rng, xs)  # noqa: E731
    if kind == 0:
        return f"the {z(_ADJS)} {z(_NOUNS)} {z(_VERBS)} the {z(_NOUNS)} near the {z(_PLACES)} ."
    if kind == 1:
        return f"{z(_NAMES)} said that the {z(_NOUNS)} was {z(_ADJS)} ."
    if kind == 2:  # copying: the second mention repeats the first names
        a, b = z(_NAMES), z(_NAMES)
        return f"{a} gave {b} a {z(_NOUNS)} and {b} thanked {a} ."
    if kind == 3:  # counting
        n = rng.randrange(len(_NUMS) - 4)
        return f"count {' '.join(_NUMS[n:n + rng.randint(2, 4)])} done ."
    return f"in the {z(_PLACES)} the {z(_NOUNS)} {z(_VERBS)} {z(_NAMES)} ."


def corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of 3-10 grammar sentences, each ``<s> ... </s>``."""
    rng = random.Random(seed)
    return ["<s> " + " ".join(_sentence(rng) for _ in range(rng.randint(3, 10))) + " </s>" for _ in range(n_docs)]


def vocabulary() -> list[str]:
    words = set(" ".join(_sentence(random.Random(s)) for s in range(2000)).split())
    words |= set(_NAMES + _NOUNS + _ADJS + _VERBS + _PLACES + _NUMS + ["count", "done", "."])
    return SPECIAL + sorted(words)


def build_tokenizer() -> Any:
    """A word-level fast tokenizer (standard ``tokenizer.json``) over the grammar's words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=1024,
    )


# -- building ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinySpec:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int


TARGET = TinySpec(hidden=96, layers=6, heads=4, intermediate=256, steps=300)
DRAFT = TinySpec(hidden=48, layers=1, heads=2, intermediate=96, steps=120)


def _train(spec: TinySpec, tokenizer: Any, data: torch.Tensor, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=spec.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    seq, batch = 64, 32
    model.train()
    for _ in range(spec.steps):
        starts = torch.randint(0, data.numel() - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def greedy_agreement(target: Any, draft: Any, data: torch.Tensor, n: int = 2048) -> float:
    """Fraction of held-out positions where the drafter's argmax equals the target's (~greedy alpha)."""
    x = data[: n].view(1, -1)
    with torch.no_grad():
        t = target(input_ids=x).logits.argmax(-1)
        d = draft(input_ids=x).logits.argmax(-1)
    return float((t == d).float().mean())


def build_tiny(out: str | Path, seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Train the tiny target and drafter and write ``out/target``, ``out/draft``, ``out/prompts.txt``.

    Writes into a temporary directory first and renames it, so concurrent builders (parallel
    test workers) never see a half-written checkpoint.
    """
    out = Path(out).expanduser()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        tok = build_tokenizer()
        docs = corpus(1500, seed)
        train_ids = torch.tensor(tok(" ".join(docs[:1400]), verbose=False)["input_ids"])
        held_ids = torch.tensor(tok(" ".join(docs[1400:]), verbose=False)["input_ids"])
        target = _train(TARGET, tok, train_ids, seed)
        draft = _train(DRAFT, tok, train_ids, seed + 1)
        alpha = greedy_agreement(target, draft, held_ids)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
        for name, model in (("target", target), ("draft", draft)):
            model.save_pretrained(tmp / name)
            tok.save_pretrained(tmp / name)
        prompts = [" ".join(d.split()[: random.Random(i).randint(4, 24)]) for i, d in enumerate(docs[1400:])]
        (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
        info = {
            "version": TINY_VERSION, "seed": seed, "greedy_agreement": round(alpha, 4),
            "target_params": sum(p.numel() for p in target.parameters()),
            "draft_params": sum(p.numel() for p in draft.parameters()),
            "vocab": len(tok), "build_s": round(time.perf_counter() - t0, 1),
        }
        (tmp / "tiny.json").write_text(json.dumps(info, indent=1) + "\n")
        try:
            tmp.rename(out)
        except OSError:  # another builder won the race (or out exists): keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not (out / "tiny.json").is_file():
                raise ModelError(f"cannot write {out}: it exists and is not a tiny-model directory") from None
    finally:
        torch.set_num_threads(threads)
    if not quiet:
        print(json.dumps(info))
    return info


def ensure_tiny(path: str | Path | None = None) -> Path:
    """The tiny-model directory, built on first use (cached; ``SPECCTL_TINY_DIR`` moves it)."""
    p = Path(path).expanduser() if path else DEFAULT_TINY_DIR
    if not (p / "tiny.json").is_file():
        build_tiny(p, quiet=True)
    return p


def tiny_prompts(path: str | Path | None = None) -> list[str]:
    return (ensure_tiny(path) / "prompts.txt").read_text().split("\n")[:-1]


# -- loading -------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_device(device: str) -> str:
    """``auto`` is ``$SPECCTL_DEVICE`` where set (``cpu`` keeps every model of a GPU host's run,
    site processes included, on the CPU), else cuda when present."""
    if device == "auto":
        device = os.environ.get("SPECCTL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available here (use --device cpu)")
    return device


def load_model(path: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local HF checkpoint directory, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ModelError(f"{p} is not a Hugging Face checkpoint directory (no config.json); "
                         f"build tiny ones with `python -m runtime.real.models build-tiny --out DIR`")
    dev = resolve_device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    elif dtype in DTYPES:
        dt = DTYPES[dtype]
    else:
        raise ModelError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dt, local_files_only=True).to(dev)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load checkpoint {p}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tok


def check_pair(target_tok: Any, draft_tok: Any, target_path: str = "target", draft_path: str = "draft") -> None:
    """A drafter must share the target's vocabulary, or its token ids mean something else."""
    if target_tok.get_vocab() != draft_tok.get_vocab():
        raise ModelError(f"draft checkpoint {draft_path} has a different vocabulary from target {target_path}; "
                         f"speculative decoding needs the same tokenizer")


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser

    p = OneLineParser(prog="python -m runtime.real.models", description="build or check models for the real runtime")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    b = sub.add_parser("build-tiny", help="train a tiny target + drafter pair and write HF checkpoint dirs")
    b.add_argument("--out", default=str(DEFAULT_TINY_DIR), help=f"output directory (default: {DEFAULT_TINY_DIR})")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="rebuild even if OUT already holds tiny models")
    c = sub.add_parser("check", help="load a target/draft pair and report greedy agreement")
    c.add_argument("--target", required=True)
    c.add_argument("--draft", required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "build-tiny":
            out = Path(args.out).expanduser()
            if (out / "tiny.json").is_file() and not args.force:
                print((out / "tiny.json").read_text().strip().replace("\n", ""))
                return 0
            if args.force and out.exists():
                shutil.rmtree(out)
            build_tiny(out, seed=args.seed)
            return 0
        target, ttok = load_model(args.target, "cpu", "float32")
        draft, dtok = load_model(args.draft, "cpu", "float32")
        check_pair(ttok, dtok, args.target, args.draft)
        text = " ".join(corpus(40, seed=12345))
        ids = torch.tensor(ttok(text)["input_ids"][:1024])
        print(json.dumps({"greedy_agreement": round(greedy_agreement(target, draft, ids), 4)}))
        return 0
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
