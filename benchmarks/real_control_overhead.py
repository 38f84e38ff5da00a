"""Control-plane overhead per speculation round on loopback (model compute excluded).

Drafts every round at a drafter site process over gRPC on 127.0.0.1 with WAN emulation off,
and measures, per round, (a) the transport: from the driver launching the draft RPC to the
driver handling the reply, minus the site's own batched draft job, and (b) the controller: the
time ``controller.decide`` takes per decision point (each round has a plan and a batch point).
Goal: p50 of (a) + (b) below 1 ms.

    python benchmarks/real_control_overhead.py --requests 40 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from controllers import make_controller
from runtime.contract import Controller, Decision, DecisionPoint, drive
from runtime.real.models import tiny_prompts
from runtime.real.deploy import load_deployment
from runtime.real.runtime import RealRuntime, SiteProcesses


class AtSite(Controller):
    """Every round drafts k tokens at one site; everything else from ``base``."""

    name = "at-site"

    def __init__(self, site: str, k: int, base: Controller) -> None:
        super().__init__()
        self.site, self.k, self.base = site, k, base
        self.decide_s: list[float] = []

    def drafter_site(self, req, sys):
        return self.site

    def draft_length(self, req, sys, site):
        return min(self.k, max(req.tokens_left - 1, 0))

    def select_batch(self, ready, sys):
        return self.base.select_batch(ready, sys)

    def decide(self, point: DecisionPoint) -> Decision:
        t0 = time.perf_counter()
        d = super().decide(point)
        self.decide_s.append(time.perf_counter() - t0)
        return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="tiny-model directory (default: the cache)")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    dep0 = load_deployment(models_dir=args.models)
    procs = SiteProcesses()
    addrs = procs.launch({"near": dep0.drafter_for("near")})
    try:
        dep = load_deployment(models_dir=args.models, emulate_wan=False, sites={"near": {"address": addrs["near"]}})
        texts = tiny_prompts(args.models)
        for conc in args.concurrency:
            rt = RealRuntime(dep, ignore_eos=True)
            ctl = AtSite("near", args.k, make_controller("static"))
            with rt:
                ids = [rt.encode(texts[i % len(texts)]) for i in range(args.requests)]
                # `conc` closed-loop clients: request i starts when request i - conc finishes
                state = {"next": 0}

                def submit_next(*_: object) -> None:
                    i = state["next"]
                    if i < len(ids):
                        state["next"] += 1
                        rt.submit(ids[i], args.max_tokens, listener=lambda toks, reason: reason and submit_next())
                    elif i == len(ids):
                        state["next"] += 1
                        rt.end_of_workload()

                for _ in range(conc):
                    submit_next()
                drive(rt, ctl)
            s = rt.summary()
            transport = np.array(rt.transport_overhead_s["near"]) * 1e3
            decide = np.array(ctl.decide_s) * 1e3
            per_round = transport + 2 * statistics.median(decide)
            print(f"concurrency {conc}: {s['requests_completed']} requests, {len(transport)} remote rounds | "
                  f"transport p50 {np.percentile(transport, 50):.3f} ms p90 {np.percentile(transport, 90):.3f} ms | "
                  f"controller p50 {np.median(decide):.4f} ms per point | "
                  f"control plane per round p50 {np.percentile(per_round, 50):.3f} ms (goal < 1 ms)")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
