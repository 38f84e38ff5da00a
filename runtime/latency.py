"""Forward-pass latency models behind one interface.

A forward pass over a batch costs ``forward_time(n_seqs, new_tokens, context_tokens)`` seconds:
``new_tokens`` is the sum of tokens processed this pass (prompt tokens for a prefill, ``k + 1``
per request for a verification, 1 per request for a draft step), ``context_tokens`` the sum
of KV-cache lengths read. Two implementations:

* :class:`Roofline` - analytic, from model and GPU specs: the larger of weight+KV bytes over
  memory bandwidth and FLOPs over peak compute, combined smoothly (an L2 soft maximum), which
  reproduces the measured "flat up to ~64-128 batched tokens, then linear" shape.
* :class:`ProfileTable` - measured: a CSV of ``new_tokens, context_tokens, ms`` rows
  (``python -m runtime profile`` writes one), interpolated piecewise-linearly.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol


@dataclass(frozen=True, slots=True)
class GPUSpec:
    name: str
    peak_tflops: float  # dense bf16/fp16 tensor throughput
    hbm_gbps: float  # memory bandwidth, GB/s


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    params_b: float  # billions of parameters
    layers: int
    kv_heads: int
    head_dim: int
    bytes_per_param: float = 2.0

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


#: Public datasheet figures (dense bf16 tensor TFLOPs, memory GB/s).
GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        GPUSpec("H200", 989.0, 4800.0),
        GPUSpec("H100", 989.0, 3350.0),
        GPUSpec("A100", 312.0, 2039.0),
        GPUSpec("L40S", 362.0, 864.0),
        GPUSpec("A10G", 125.0, 600.0),
        GPUSpec("L4", 121.0, 300.0),
        GPUSpec("RTX4090", 165.0, 1008.0),
        GPUSpec("T4", 65.0, 320.0),
        GPUSpec("JetsonOrin", 42.0, 204.8),
        GPUSpec("AppleM2", 7.0, 100.0),
        GPUSpec("CPU", 1.0, 50.0),
    ]
}

#: Architecture figures from the models' public configs.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec("llama-3.1-70b", 70.6, 80, 8, 128),
        ModelSpec("llama-3.1-8b", 8.03, 32, 8, 128),
        ModelSpec("llama-3.2-3b", 3.21, 28, 8, 128),
        ModelSpec("llama-3.2-1b", 1.24, 16, 8, 64),
        ModelSpec("qwen2.5-7b", 7.62, 28, 4, 128),
        ModelSpec("qwen2.5-0.5b", 0.49, 24, 2, 64),
        ModelSpec("llama-68m", 0.068, 2, 12, 64),
    ]
}


class LatencyModel(Protocol):
    def forward_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        """Seconds for one forward pass over a batch."""
        ...


@dataclass
class Roofline:
    """Analytic forward time from specs: max(memory time, compute time), smoothly.

    ``mem_eff``/``flop_eff`` are achievable fractions of the datasheet figures and
    ``overhead_s`` a fixed per-forward cost (kernel launches, sampling). The defaults put
    Llama-3-8B on an A100 within ~15% of Vidur's operator profiles (``calibration/README``).
    """

    model: ModelSpec
    gpu: GPUSpec
    tp: int = 1
    mem_eff: float = 0.85
    flop_eff: float = 0.75
    overhead_s: float = 0.0004

    def __post_init__(self) -> None:
        self._bw = self.gpu.hbm_gbps * 1e9 * self.mem_eff * self.tp
        self._flops = self.gpu.peak_tflops * 1e12 * self.flop_eff * self.tp
        self._w = self.model.weight_bytes
        self._kv = self.model.kv_bytes_per_token
        self._fpt = 2.0 * self.model.params_b * 1e9  # FLOPs per token

    def forward_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        t_mem = (self._w + self._kv * (context_tokens + new_tokens)) / self._bw
        t_flop = self._fpt * new_tokens / self._flops
        return math.sqrt(t_mem * t_mem + t_flop * t_flop) + self.overhead_s


_TABLES: dict[tuple[str, int, int], "ProfileTable"] = {}  # ProfileTable.from_csv's, by (path, mtime, size)


class ProfileTable:
    """Measured forward times, interpolated (and linearly extrapolated) in new tokens and context.

    CSV columns: ``new_tokens,context_tokens,ms`` (extra columns such as ``batch_size`` are
    ignored). Rows are grouped by ``context_tokens``; within a group time is piecewise-linear
    in ``new_tokens``; between groups it is linear in context.
    """

    def __init__(self, rows: list[tuple[float, float, float]], source: str = "<rows>") -> None:
        if not rows:
            raise ValueError(f"latency profile {source} has no rows")
        groups: dict[float, list[tuple[float, float]]] = {}
        for new, ctx, ms in rows:
            if new <= 0 or ctx < 0 or ms <= 0:
                raise ValueError(
                    f"latency profile {source}: bad row new_tokens={new} context_tokens={ctx} "
                    f"ms={ms} (need new_tokens > 0, context_tokens >= 0, ms > 0)"
                )
            groups.setdefault(ctx, []).append((new, ms / 1000.0))
        self.contexts = sorted(groups)
        self.curves = []
        for c in self.contexts:
            pts = sorted(groups[c])
            self.curves.append(([p[0] for p in pts], [p[1] for p in pts]))
        self.source = source

    @classmethod
    def from_csv(cls, path: str | Path) -> "ProfileTable":
        """The table in ``path``, read once per version of the file: the sites of a fleet that
        share a profile, and every simulator of a training run, share one table (no method
        changes a table after it is built)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"latency profile {path} does not exist (write one with `python -m runtime profile`)")
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = cls._read(path)
        return table

    @classmethod
    def _read(cls, path: Path) -> "ProfileTable":
        with path.open() as f:
            reader = csv.DictReader(line for line in f if not line.startswith("#"))
            need = {"new_tokens", "context_tokens", "ms"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ValueError(f"latency profile {path} needs columns {sorted(need)}, has {reader.fieldnames}")
            try:
                rows = [(float(r["new_tokens"]), float(r["context_tokens"]), float(r["ms"])) for r in reader]
            except (TypeError, ValueError) as e:
                raise ValueError(f"latency profile {path}: non-numeric value ({e})") from None
        return cls(rows, str(path))

    @staticmethod
    def _interp(xs: list[float], ys: list[float], x: float) -> float:
        if len(xs) == 1:
            return ys[0]
        i = bisect.bisect_left(xs, x)
        i = min(max(i, 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 1e-6)

    def forward_time(self, n_seqs: int, new_tokens: int, context_tokens: int) -> float:
        # :meth:`_interp` at the two context groups around ``context_tokens``, then linear in
        # context, inlined with the same float operations: simulators and planners call this
        # for every draft and verification estimate
        cs = self.contexts
        last = len(cs) - 1
        if last == 0:
            return self._interp(*self.curves[0], new_tokens)
        i = bisect.bisect_left(cs, context_tokens)
        i = 1 if i < 1 else last if i > last else i
        t = [0.0, 0.0]
        for side, (xs, ys) in enumerate((self.curves[i - 1], self.curves[i])):
            top = len(xs) - 1
            if top == 0:
                t[side] = ys[0]
                continue
            j = bisect.bisect_left(xs, new_tokens)
            j = 1 if j < 1 else top if j > top else j
            x0, y0 = xs[j - 1], ys[j - 1]
            v = y0 + (ys[j] - y0) * (new_tokens - x0) / (xs[j] - x0)
            t[side] = 1e-6 if v < 1e-6 else v
        t0, t1 = t
        v = t0 + (t1 - t0) * (context_tokens - cs[i - 1]) / (cs[i] - cs[i - 1])
        return 1e-6 if v < 1e-6 else v


def site_latency(profiles: Mapping[str, str], name: str, model: ModelSpec, gpu: GPUSpec, tp: int = 1) -> LatencyModel:
    """Model ``name``'s forward-time model at a site: the site's measured profile (``profiles``:
    CSV path by model name) if it has one, else the roofline of ``gpu``."""
    if name in profiles:
        return ProfileTable.from_csv(profiles[name])
    return Roofline(model, gpu, tp=tp)
