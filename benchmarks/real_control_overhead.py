"""Control-plane overhead per speculation round on loopback (model compute excluded).

Drafts every round at a drafter site process over gRPC on 127.0.0.1 with WAN emulation off,
and measures, per round, (a) the transport: from the driver launching the draft RPC to the
driver handling the reply, minus the site's own batched draft job, and (b) the controller: the
time ``controller.decide`` takes per decision point (each round has a plan and a batch point).
Goal: p50 of (a) + (b) below 1 ms.

The same run measures a baseline: a bare gRPC round over the same ``Rounds`` call to a site
process that drafts nothing and answers after idling in a worker thread for the run's median
draft job (as the real site's job does), less that idle time. The ratio of the two is what the
runtime adds above gRPC and one thread hop on this host. The baseline matters on virtual
machines: a thread that slept through a few ms of draft job takes ~0.1 ms to wake, so a bare
round with an idle gap costs several times a back-to-back ping-pong.

    python benchmarks/real_control_overhead.py --requests 40 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from controllers import make_controller
from runtime.contract import Controller, Decision, DecisionPoint, drive
import grpc

from runtime.real import site_pb2 as pb
from runtime.real import site_pb2_grpc as pb_grpc
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


class IdleSite(pb_grpc.DrafterSiteServicer):
    """The baseline's site: each round idles ``request.temperature`` seconds in a worker thread
    (where the real site drafts) and replies ``k`` tokens with that time as ``job_s``."""

    async def Rounds(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        while (req := await context.read()) is not grpc.aio.EOF:
            t0 = time.perf_counter()
            await loop.run_in_executor(None, time.sleep, req.temperature)
            await context.write(pb.DraftReply(call=req.call, tokens=[0] * req.k, job_s=time.perf_counter() - t0))


async def serve_idle_site() -> None:
    server = grpc.aio.server()
    pb_grpc.add_DrafterSiteServicer_to_server(IdleSite(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port}", flush=True)
    await server.wait_for_termination()


async def bare_rounds(port: int, rounds: int, k: int, gap_s: float) -> np.ndarray:
    """Per-round milliseconds of a bare gRPC round with a ``gap_s`` idle site, less the idling."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.DrafterSiteStub(channel).Rounds()
        out = []
        for i in range(rounds):
            t0 = time.perf_counter()
            await call.write(pb.DraftRequest(rid=1, call=i, tokens=[1] * (k + 1), k=k, temperature=gap_s))
            reply = await call.read()
            out.append((time.perf_counter() - t0 - reply.job_s) * 1e3)
        await call.done_writing()
    return np.array(out)


def baseline(rounds: int, k: int, gap_s: float) -> np.ndarray:
    """:func:`bare_rounds` against an :class:`IdleSite` in its own process (as sites run)."""
    proc = subprocess.Popen([sys.executable, __file__, "--idle-site"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            raise RuntimeError(f"the baseline's idle site did not start (it printed {line!r})")
        return asyncio.run(bare_rounds(int(line.split()[1]), rounds, k, gap_s))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="tiny-model directory (default: the cache)")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--idle-site", action="store_true", help=argparse.SUPPRESS)  # the baseline's site process
    args = p.parse_args()
    if args.idle_site:
        asyncio.run(serve_idle_site())
        return
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
            # the median draft job: k steps at the site's median pace
            job_s = args.k * statistics.median(x[-1] for x in rt.forward_log if x[0] == "near")
            bare = baseline(len(transport), args.k, job_s)
            print(f"concurrency {conc}: {s['requests_completed']} requests, {len(transport)} remote rounds | "
                  f"transport p50 {np.percentile(transport, 50):.3f} ms p90 {np.percentile(transport, 90):.3f} ms | "
                  f"controller p50 {np.median(decide):.4f} ms per point | "
                  f"control plane per round p50 {np.percentile(per_round, 50):.3f} ms (goal < 1 ms)")
            print(f"  baseline, bare gRPC round to an idle site ({job_s * 1e3:.2f} ms idle per round, the median "
                  f"draft job): p50 {np.median(bare):.3f} ms p90 {np.percentile(bare, 90):.3f} ms | control plane / "
                  f"baseline {np.percentile(per_round, 50) / np.median(bare):.2f}x")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
