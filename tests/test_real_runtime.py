"""The real runtime: drafter sites as processes over gRPC, any controller in the slot, failover."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch

from controllers import make_controller
from runtime.contract import Redundancy, drive
from runtime.load import LoadProcess
from runtime.real.models import tiny_prompts
from runtime.real.deploy import load_deployment
from runtime.real.runtime import RealRuntime, SiteProcesses
from tests.real_fixtures import N_TOKENS, RemoteFirst, greedy_reference, run, tiny_dir, tiny_models  # noqa: F401

@pytest.fixture(scope="module")
def site_addresses(tiny_dir):
    """The tiny-local scenario's two drafter sites, started once as OS processes."""
    procs = SiteProcesses()
    dep = load_deployment(models_dir=tiny_dir)
    try:
        yield procs.launch({n: dep.drafter_for(n) for n in ("near", "far")})
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def references(tiny_models):
    target, _, tok = tiny_models
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:6]]
    return prompts, [greedy_reference(target, p, N_TOKENS, tok.eos_token_id) for p in prompts]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["no-spec", "static:k=4", "centralized", "sled", "wanspec", "wanspec:ahead=false", "wisp",
                                  "remote"])
def test_greedy_output_identical_to_target_alone_for_every_controller(spec, site_addresses, tiny_dir, references):
    prompts, refs = references
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    controller = RemoteFirst("near", backups=("far",)) if spec == "remote" else make_controller(spec)
    rt = RealRuntime(dep)
    reqs = run(rt, controller, prompts)
    assert [r.output for r in reqs] == refs
    s = rt.summary()
    assert s["requests_completed"] == len(prompts) and s["requests_dropped"] == 0
    if spec == "remote":  # both sites raced every round: the loser's tokens are waste
        assert s["remote_draft_forward_passes"] > 0 and s["wasted_redundant_tokens"] > 0
        assert s["target_draft_forward_passes"] == 0 and s["wan_bytes"] > 0
    if spec == "no-spec":
        assert s["draft_tokens"] == 0


def _outputs_over_time(controller, prompts, site_addresses, tiny_dir) -> list[list[int]]:
    """Greedy outputs of ``prompts`` arriving 0.3 s apart (past the knob controllers' 1-s tick)."""
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    rt = RealRuntime(dep)
    with rt:
        reqs = [rt.submit(p, N_TOKENS, 0.0, at=0.3 * i) for i, p in enumerate(prompts)]
        rt.end_of_workload()
        drive(rt, controller)
    return [r.output for r in reqs]


@pytest.mark.slow
def test_the_learned_selector_probes_switches_and_stays_lossless_on_the_real_runtime(site_addresses, tiny_dir, references):
    """The selector reads only what the knob controller observes, so it deploys on the real
    runtime: it probes under the first setting, then holds the one its model picks."""
    from controllers.knobs import DEFAULT_MODES
    from controllers.lookahead import PORTFOLIO
    from controllers.selector import Selector, SelectorModel

    prompts, refs = references
    leaf = {"left": [-1], "right": [-1], "feature": [0], "threshold": [0.0], "value": [[0.5, 0.5, 0.5, 0.9, 0.5, 0.5]]}
    model = SelectorModel(modes=list(DEFAULT_MODES), settings=[dict(k) for k in PORTFOLIO], trees=[leaf], probe_s=0.5,
                          warmup_s=0.1)
    controller = Selector(model)
    assert _outputs_over_time(controller, prompts, site_addresses, tiny_dir) == refs
    assert controller.chosen == 3 and controller.samples  # loose wanspec, after probing under the default
    assert "knobs:mode=wanspec,cap=2,k_cap=8,hedge=true" in controller.usage


@pytest.mark.slow
def test_the_digital_twin_builds_its_simulator_from_the_real_runtime_and_stays_lossless(site_addresses, tiny_dir, references):
    """The twin reads only RuntimeInfo and the runtime's estimates, so it deploys on the real
    runtime: it probes, simulates the tiny deployment from what it measured there, and holds a
    setting."""
    from controllers.lookahead import PORTFOLIO
    from controllers.twin import Twin

    prompts, refs = references
    # it probes with the shipped wanspec setting, whose draft length is fixed: centralized (the
    # default probe) picks its k from the measured forward times, and on a busy host that k can
    # be 0 for the whole run, leaving no acceptance to measure
    portfolio = [PORTFOLIO[2], *PORTFOLIO[:2], *PORTFOLIO[3:]]
    controller = Twin(probe_s=0.5, warmup_s=0.1, horizon_s=3.0, seeds=1, portfolio=portfolio, background=False)
    assert _outputs_over_time(controller, prompts, site_addresses, tiny_dir) == refs
    assert controller.values is not None and controller.chosen is not None and controller.values.max() > 0
    assert controller.seen.arrivals and controller.seen.rounds  # it measured the workload and the acceptance there
    # by default it plans in a separate process there, while the probe's setting keeps serving
    controller = Twin(probe_s=0.5, warmup_s=0.1, horizon_s=3.0, seeds=1)
    assert _outputs_over_time(controller, prompts, site_addresses, tiny_dir) == refs
    assert controller._background
    if controller.values is None:  # the run ended before the plan did: it finishes all the same
        controller.wait()
        values, _ = controller._future.result()
        assert values.max() > 0


@pytest.mark.slow
def test_sampling_through_remote_sites_completes(site_addresses, tiny_dir, references):
    prompts, _ = references
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    rt = RealRuntime(dep)
    reqs = run(rt, RemoteFirst("far"), prompts, temperature=0.8)
    assert all(r.finish_reason in ("length", "stop") for r in reqs)
    s = rt.summary()
    assert 0 < s["acceptance_rate"] <= s["acceptance_per_token"] < 1  # per token: no k in it


def _serve_and_strike_near(rt: RealRuntime, controller, prompts, failure: str):
    """Serve ``prompts`` with ``controller``; once 10 tokens reached the clients, SIGKILL the
    ``near`` site (or SIGSTOP it until the workload ends). Returns the requests, the tokens each
    client received and each client's finish reason."""
    streamed: dict[int, list[int]] = {}
    finished: dict[int, str] = {}
    lock = threading.Lock()

    def listener_for(i: int):
        def listen(tokens: list[int], reason: str | None) -> None:
            with lock:
                streamed.setdefault(i, []).extend(tokens)
                if reason is not None:
                    finished[i] = reason
        return listen

    victim = rt.processes.procs["near"]
    reqs = [rt.submit(p, N_TOKENS, listener=listener_for(i), at=0.15 * i) for i, p in enumerate(prompts)]
    rt.end_of_workload()

    def strike() -> None:
        while sum(len(v) for v in streamed.values()) < 10:
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL if failure == "kill" else signal.SIGSTOP)

    t = threading.Thread(target=strike, daemon=True)
    t.start()
    try:
        drive(rt, controller)
    finally:
        if failure == "stall":
            os.kill(victim.pid, signal.SIGCONT)
    t.join(1)
    return reqs, streamed, finished


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["kill", "stall"])
def test_drafter_site_dies_mid_stream_and_requests_continue(failure, tiny_dir, references):
    """A drafter process is SIGKILLed (or SIGSTOPped) while its requests stream: none is lost or duplicated."""
    prompts, refs = references
    rt = RealRuntime(load_deployment(models_dir=tiny_dir, draft_timeout_s=0.3, health_interval_s=0.1))
    # the far site is the backup: after the primary dies, rounds fail over (kill) or time out (stall)
    controller = RemoteFirst("near", backups=("far",), hedge_after_s=0.05, timeout_s=1.0, k=3)
    with rt:
        reqs, streamed, finished = _serve_and_strike_near(rt, controller, prompts, failure)
        # marked down; a killed site may already be back (supervised), a stalled one is still stopped
        assert not rt.clients["near"].up or rt.processes.restarts["near"] == 1
    assert [r.output for r in reqs] == refs
    assert [streamed[i] for i in range(len(prompts))] == refs, "streamed tokens must be neither lost nor duplicated"
    assert set(finished.values()) <= {"length", "stop"}
    assert rt.summary()["requests_completed"] == len(prompts)


def test_bad_decisions_are_refused_with_the_rule(tiny_dir, tmp_path):
    from runtime.contract import InvalidDecision

    dep = load_deployment(scenario=str(_target_only(tmp_path)), models_dir=tiny_dir)
    rt = RealRuntime(dep)
    with rt:
        rt.submit([2, 5, 6], 20)
        rt.end_of_workload()
        with pytest.raises(InvalidDecision, match="max_k"):
            drive(rt, RemoteFirst("dc", k=99))


def test_draft_ahead_at_the_target_site_drafts_round_by_round(tiny_dir, tmp_path, tiny_models):
    """As in the simulator: only a site with a link streams; ahead at the target is a plain round."""
    from runtime.contract import Controller, Redundancy

    class Ahead(Controller):
        def draft_length(self, req, sys, site):
            return min(3, req.tokens_left - 1)

        def redundancy(self, req, sys, site, k):
            return Redundancy(ahead=True)

    target, _, tok = tiny_models
    rt = RealRuntime(load_deployment(scenario=str(_target_only(tmp_path)), models_dir=tiny_dir))
    with rt:
        assert rt.info.draft_ahead is True
        req = rt.submit([2, 5, 6], 20)
        rt.end_of_workload()
        drive(rt, Ahead())
    assert req.output == greedy_reference(target, [2, 5, 6], 20, tok.eos_token_id)
    assert req.stream is None and req.site_rounds["dc"] > 0 and rt.summary()["wan_bytes"] == 0


class AheadOrNot(RemoteFirst):
    """Even requests draft ahead at ``near``; odd ones draft round by round at the target. Batches
    wait until every live request is ready, so each verification batch mixes the two."""

    name = "ahead-or-not"

    def __init__(self) -> None:
        super().__init__("near", k=3, ahead=True)
        self.batches: list = []

    def drafter_site(self, req, sys):
        return "near" if req.rid % 2 == 0 else "dc"

    def redundancy(self, req, sys, site, k):
        return Redundancy(ahead=site == "near")

    def select_batch(self, ready, sys):
        return [r.rid for r in ready] if len(ready) == sys.in_flight else []

    def on_batch_done(self, result):
        self.batches.append(result)


@pytest.mark.slow
def test_mixed_batches_of_ahead_streams_and_round_by_round_rounds_are_lossless(site_addresses, tiny_dir, references):
    prompts, refs = references
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    rt = RealRuntime(dep)
    controller = AheadOrNot()
    reqs = run(rt, controller, prompts)
    assert [r.output for r in reqs] == refs
    s = rt.summary()
    assert s["requests_completed"] == len(prompts) and s["requests_dropped"] == 0
    assert all(set(r.site_rounds) <= {"near" if r.rid % 2 == 0 else "dc"} for r in reqs)
    assert any({"near", "dc"} <= set(b.draft_sites) for b in controller.batches), "no batch mixed the two"
    assert s["remote_draft_forward_passes"] > 0 and s["target_draft_forward_passes"] > 0
    # the streamed rounds are the even requests' (all drafted at near), the rest were the target's
    assert s["stream_rounds"] == sum(r.site_rounds["near"] for r in reqs) > 0
    assert all(r.stream is None for r in reqs)  # closed when the request finished
    # each stream epoch's first tokens measured a round trip (the emulated 10 ms included)
    assert len(rt.transport_overhead_s["near"]) >= len(prompts) // 2 and min(rt.transport_overhead_s["near"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["kill", "stall"])
def test_streaming_drafter_dies_mid_stream_and_requests_fail_over(failure, tiny_dir, references):
    """The site drafting ahead is SIGKILLed (or SIGSTOPped): rounds move to the backup's stream."""
    prompts, refs = references
    rt = RealRuntime(load_deployment(models_dir=tiny_dir, draft_timeout_s=0.3, health_interval_s=0.1))
    # far is only a backup for plans that name a down near; the hedge never fires while near lives
    controller = RemoteFirst("near", backups=("far",), hedge_after_s=30.0, k=3, ahead=True)
    with rt:
        reqs, streamed, _ = _serve_and_strike_near(rt, controller, prompts, failure)
    assert [r.output for r in reqs] == refs
    assert [streamed[i] for i in range(len(prompts))] == refs, "streamed tokens must be neither lost nor duplicated"
    assert all(r.finish_reason in ("length", "stop") for r in reqs)
    assert rt.summary()["requests_completed"] == len(prompts)
    assert sum(r.site_rounds["near"] for r in reqs) > 0


def _target_only(tmp_path, max_inflight: int = 64):
    import yaml

    from runtime.real.deploy import REAL_SCENARIO_DIR

    raw = yaml.safe_load((REAL_SCENARIO_DIR / "tiny-local.yaml").read_text())
    raw["sites"] = raw["sites"][:1]
    raw["limits"]["max_inflight"] = max_inflight
    path = tmp_path / "target-only.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shutdown_fails_what_cannot_finish_within_the_grace_period(tiny_dir, tmp_path):
    dep = load_deployment(scenario=str(_target_only(tmp_path)), models_dir=tiny_dir)
    rt = RealRuntime(dep, ignore_eos=True)
    reasons: list[str] = []
    with rt:
        short = rt.submit([2, 5, 6], 3)
        long = rt.submit([2, 5, 6], 900, listener=lambda toks, reason: reasons.append(reason) if reason else None)
        driver = threading.Thread(target=drive, args=(rt, make_controller("no-spec")))
        driver.start()
        while len(long.output) < 5:
            time.sleep(0.005)
        rt.shutdown(grace_s=0.05)
        driver.join(30)
        assert not driver.is_alive()
        with pytest.raises(RuntimeError, match="shutting down"):
            rt.submit([2, 5, 6], 3)
    assert short.finish_reason == "length" and len(short.output) == 3
    assert reasons == ["error: server shut down before the request finished"] and len(long.output) < 900


def test_a_site_started_on_its_own_serves_a_runtime_that_names_its_address(tiny_dir, references, tmp_path):
    """What two hosts do: `python -m runtime.real.serve --site near` here, the target elsewhere."""
    import subprocess
    import sys

    prompts, refs = references
    cmd = [sys.executable, "-m", "runtime.real.serve", "--scenario", "tiny-local", "--models", str(tiny_dir), "--site", "near",
           "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        deploy = tmp_path / "deploy.yaml"
        deploy.write_text(f"scenario: tiny-local\nsites:\n  near: {{address: 127.0.0.1:{line.split()[1]}}}\n"
                          f"emulate_wan: false\n")
        dep = load_deployment(deploy, models_dir=tiny_dir)
        dep = dep.with_addresses({"far": "127.0.0.1:1"})  # far is never used below: no process needed
        rt = RealRuntime(dep, launch_sites=False)
        reqs = run(rt, RemoteFirst("near"), prompts[:3])
        assert [r.output for r in reqs] == refs[:3]
        assert rt.summary()["remote_draft_forward_passes"] > 0 and rt.clients["near"].up
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.mark.parametrize("args, needle", [
    (["--site", "dc"], "hosts no drafter of its own"),
    (["--site", "mars"], "site 'mars' is not in scenario"),
    (["--scenario", "nowhere"], "unknown scenario 'nowhere'"),
])
def test_serve_refuses_bad_deployments_in_one_line(args, needle, tiny_dir):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "runtime.real.serve", "--models", str(tiny_dir), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["wanspec", "ahead-near"])
def test_sampled_output_keeps_the_target_distribution_with_draft_ahead(spec, site_addresses, tiny_dir, tiny_models):
    """Every sampled token's randomised PIT under the target's exact conditional distribution is
    i.i.d. uniform iff the output is distributed as the target's own samples (Rosenblatt). With
    fixed seeds the draws differ only by which drafts raced in; a KS test at p > 1e-4."""
    from scipy import stats

    target, _, tok = tiny_models
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:4]]
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    controller = RemoteFirst("near", k=3, ahead=True) if spec == "ahead-near" else make_controller(spec)
    rt = RealRuntime(dep, ignore_eos=True)
    temp, n = 1.0, 40
    with rt:
        reqs = [rt.submit(prompts[i % len(prompts)], 12, temp, seed=i, at=0.005 * i) for i in range(n)]
        rt.end_of_workload()
        drive(rt, controller)
    assert all(r.finish_reason == "length" for r in reqs)
    if spec == "ahead-near":
        assert all(set(r.site_rounds) <= {"near"} for r in reqs) and sum(r.site_rounds["near"] for r in reqs) > 0
    rng = np.random.default_rng(0)
    pits = []
    with torch.no_grad():
        for r in reqs:
            prompt = prompts[r.rid % len(prompts)]
            ids = torch.tensor([prompt + r.output])
            p = torch.softmax(target(input_ids=ids).logits[0, len(prompt) - 1:-1].double() / temp, -1)
            cdf = torch.cumsum(p, -1)
            for j, x in enumerate(r.output):
                pits.append(float(cdf[j, x] - p[j, x]) + rng.random() * float(p[j, x]))
    assert len(pits) == n * 12
    assert stats.kstest(pits, "uniform").pvalue > 1e-4


def test_site_stream_drafts_max_ahead_then_follows_acks_corrections_and_cancel(tiny_models):
    """The site's side of a draft-ahead stream, in-process: exact token counts, no wall clock."""
    import asyncio

    import grpc

    from runtime.real import site_pb2 as pb
    from runtime.real import site_pb2_grpc as pb_grpc
    from runtime.real.engine import DraftJob, SeqCache, draft_batch
    from runtime.real.site import DrafterService

    _, draft, tok = tiny_models
    ctx = tok(tiny_prompts()[0])["input_ids"]

    def greedy(context: list[int], n: int) -> list[int]:
        return draft_batch(draft, [DraftJob(SeqCache(), list(context), n)])[0].tokens

    async def scenario() -> None:
        server = grpc.aio.server()
        service = DrafterService("near", draft)
        pb_grpc.add_DrafterSiteServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.DrafterSiteStub(channel).Stream()

                async def take(n: int, epoch: int, pos: int = 0) -> list[int]:
                    """The next ``n`` tokens of ``epoch`` (older epochs' tokens are skipped, as at the target)."""
                    got: list[int] = []
                    while len(got) < n:
                        reply = await asyncio.wait_for(call.read(), 30)
                        if reply.epoch == epoch:
                            assert reply.pos == pos + len(got)
                            # an epoch's first tokens say how long its opening waited (round trips)
                            assert (reply.wait_s > 0) == (reply.pos == 0)
                            got += reply.tokens
                    return got

                await call.write(pb.StreamMsg(rid=7, tokens=ctx, max_ahead=3))
                first = await take(3, 0)  # three ahead of nothing acknowledged, then it waits
                assert first == greedy(ctx, 3) and service.streams[7].room == 0
                await call.write(pb.StreamMsg(rid=7, consumed=2))  # two consumed: two more
                assert first + await take(2, 0, pos=3) == greedy(ctx, 5)
                fixed = ctx + [first[0], (first[1] + 1) % 50]  # the target committed another second token
                await call.write(pb.StreamMsg(rid=7, epoch=1, start=len(ctx), tokens=fixed[len(ctx):]))
                assert await take(3, 1) == greedy(fixed, 3)
                await call.write(pb.StreamMsg(rid=7, epoch=1, cancel=True))
                while await asyncio.wait_for(call.read(), 30) is not grpc.aio.EOF:
                    pass
            assert service.streams == {}
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_rounds_ride_one_call_concurrently_each_with_its_own_draft_and_fail_over_when_the_site_goes(tiny_models):
    """SiteClient sends its rounds over the site's one ``Rounds`` call: concurrent rounds each get
    their own request's draft (as a unary ``Draft`` call would); a site that goes away fails the waiting round (SiteDown, marked
    down), and a restarted site at a new address serves the next round over a new call."""
    import asyncio

    import grpc

    from runtime.real import site_pb2 as pb
    from runtime.real import site_pb2_grpc as pb_grpc
    from runtime.real.engine import DraftJob, SeqCache, draft_batch
    from runtime.real.site import DrafterService
    from runtime.real.transport import SiteClient, SiteDown
    from runtime.scenario import load_scenario

    _, draft, tok = tiny_models
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:4]]
    scenario = load_scenario("wan-4region")
    near = next(s for s in scenario.sites if s.role == "remote")

    def greedy(context: list[int], n: int) -> list[int]:
        return draft_batch(draft, [DraftJob(SeqCache(), list(context), n)])[0].tokens

    async def start_site() -> tuple[grpc.aio.Server, DrafterService, str]:
        server = grpc.aio.server()
        service = DrafterService(near.name, draft)
        pb_grpc.add_DrafterSiteServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        service.start()
        return server, service, f"127.0.0.1:{port}"

    async def scenario_run() -> None:
        server, service, address = await start_site()
        client = SiteClient(near, address, scenario.spec.network, emulate=False, timeout_s=30.0, seed=0)
        client.connect()
        try:
            results = await asyncio.gather(*(client.draft(rid, ctx, 0, k, 0.0, 0)
                                              for rid, (ctx, k) in enumerate(zip(prompts, [1, 2, 3, 4]))))
            for res, ctx, k in zip(results, prompts, [1, 2, 3, 4]):
                assert res.draft.tokens == greedy(ctx, k) and res.known == len(ctx)
            # a single unary Draft call (for tools and simple clients) answers the same
            single = await client.stub.Draft(pb.DraftRequest(rid=5, tokens=prompts[2], k=2), timeout=30)
            assert list(single.tokens) == greedy(prompts[2], 2) and single.known == len(prompts[2])
            # a job that fails fails its round (the call ends with the error), not the site
            service.model, model = None, service.model
            with pytest.raises(SiteDown):
                await client.draft(6, prompts[0], 0, 2, 0.0, 0)
            service.model = model
            res = await client.draft(6, prompts[0], 0, 2, 0.0, 0)  # over a new call
            assert res.draft.tokens == greedy(prompts[0], 2)
            # the site stalls inside a job and then goes away: the waiting round fails, nothing hangs
            service._start_round = lambda request, deliver: None  # type: ignore[method-assign]
            waiting = asyncio.ensure_future(client.draft(9, prompts[0], 0, 2, 0.0, 0))
            await asyncio.sleep(0.2)
            await server.stop(0)
            with pytest.raises(SiteDown):
                await asyncio.wait_for(waiting, 10)
            assert not client.up
            server, service, address = await start_site()  # restarted elsewhere, without its old state
            await client.reconnect(address)
            res = await client.draft(1, prompts[1], len(prompts[1]), 3, 0.0, 0)  # resyncs the whole context
            assert res.draft.tokens == greedy(prompts[1], 3)
        finally:
            await client.channel.close()
            await server.stop(0)

    asyncio.run(scenario_run())


def test_site_state_and_draft_estimates_mean_what_the_simulator_means(site_addresses, tiny_dir):
    """Load is other tenants' use (a site's own drafting shows in its queue and busy flag), and
    a draft's time grows with the batch it rides in, fitted to the site's jobs: before, a site
    drafting for us looked loaded, and one step time for every batch size made its big batches
    look like its pace for one request; wanspec fled to a farther site the simulator never picks."""
    dep = load_deployment(models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    rt = RealRuntime(dep)
    with rt:  # starts the transport and the clients of both sites
        rt.clients["near"].load, rt.clients["near"].in_flight = 0.95, 3  # busy with our drafts
        state = rt.site_state("near")
        assert (state.load, state.queue, state.busy) == (0.0, 3, True)
        for _ in range(20):  # jobs of 1 and of 8 sequences, 100 tokens of context each
            rt._observe_draft("near", 1, 100, 0.002)
            rt._observe_draft("near", 8, 800, 0.009)
        one, eight = rt.estimate_draft_time("near", 1, 4, 100), rt.estimate_draft_time("near", 8, 4, 800)
        assert one == pytest.approx(4 * 0.002, rel=0.05) and eight == pytest.approx(4 * 0.009, rel=0.05)
        assert rt.estimate_draft_time("near", 1, 0, 100) == 0.0


def _loaded_tiny(tmp_path):
    """tiny-local with other tenants: the target's GPU a quarter busy, near's half (far idle)."""
    import yaml

    from runtime.real.deploy import REAL_SCENARIO_DIR

    raw = yaml.safe_load((REAL_SCENARIO_DIR / "tiny-local.yaml").read_text())
    raw["sites"][0]["load"] = {"kind": "constant", "level": 0.25}
    raw["sites"][1]["load"] = {"kind": "constant", "level": 0.5}
    path = tmp_path / "loaded.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_a_scenarios_background_load_is_emulated_on_the_real_sites_and_seen_as_the_simulator_sees_it(tiny_dir, references, tmp_path):
    prompts, refs = references
    rt = RealRuntime(load_deployment(scenario=str(_loaded_tiny(tmp_path)), models_dir=tiny_dir))
    with rt:
        reqs = [rt.submit(p, N_TOKENS, at=0.02 * i) for i, p in enumerate(prompts[:3])]
        rt.end_of_workload()
        drive(rt, RemoteFirst("near"))
        # a site's load arrives with its health replies (and a site marked down looks fully loaded)
        near, far, deadline = rt.clients["near"], rt.clients["far"], time.monotonic() + 10
        while (near.background == 0.0 or not near.up or not far.up) and time.monotonic() < deadline:
            time.sleep(0.05)
        # controllers see other tenants' load as SiteState.load, as in the simulator
        assert [rt.site_state(s).load for s in ("dc", "near", "far")] == [0.25, 0.5, 0.0]
    assert [r.output for r in reqs] == refs[:3]  # still lossless
    # every forward is stretched by their share: the target's GPU seconds are its compute / (1 - 0.25)
    target_model = rt.scenario.spec.target_model
    compute = sum(x[-1] for x in rt.forward_log if x[0] == "dc" and x[1] == target_model)
    assert rt.metrics.target_verify_gpu_s == pytest.approx(compute / 0.75)
    # the estimates apply the load now to a latency model fitted to the compute alone
    assert rt.estimate_draft_time("near", 1, 4, 100) == pytest.approx(2 * 4 * rt._draft_lat["near"].forward_time(1, 1, 100))
    assert rt.estimate_verify_time(1, 5, 100) == pytest.approx(rt.target_lat.forward_time(1, 5, 100) / 0.75)
    # where real tenants share the GPUs, nothing is emulated
    off = RealRuntime(load_deployment(scenario=str(_loaded_tiny(tmp_path)), models_dir=tiny_dir, emulate_load=False))
    assert off.target_load is None and off.deployment.emulated_load("near") is None and off.deployment.site_args("near", 0) == []
    off.close()


def test_a_site_refuses_a_bad_load_spec_naming_the_fix(capsys):
    from runtime.real.site import main as site_main

    with pytest.raises(SystemExit):
        site_main(["--name", "near", "--model", "/nonexistent", "--load", "{kind: markov, levels: [0.1]}"])
    err = capsys.readouterr().err
    assert "--load" in err and "levels" in err and "mean_dwell_s" in err


@pytest.mark.slow
def test_the_twin_replans_on_the_real_runtime_when_an_emulated_load_changes_regime(site_addresses, tiny_dir, references, tmp_path):
    import yaml

    from controllers.twin import Twin
    from runtime.real.deploy import REAL_SCENARIO_DIR

    prompts, refs = references
    raw = yaml.safe_load((REAL_SCENARIO_DIR / "tiny-local.yaml").read_text())
    # the target's other tenants: idle, then busy after the probe (from 2.54 s: the first dwell that
    # run seed 1 draws) on
    raw["sites"][0]["load"] = {"kind": "markov", "levels": [0.05, 0.6], "mean_dwell_s": [5.7, 1000]}
    path = tmp_path / "flip.yaml"
    path.write_text(yaml.safe_dump(raw))
    dep = load_deployment(scenario=str(path), models_dir=tiny_dir, sites={n: {"address": a} for n, a in site_addresses.items()})
    process = LoadProcess(dep.scenario.target.load, random.Random(dep.load_seed("dc", 1)))
    flip = next(t / 100 for t in range(1000) if process.level(t / 100) > 0.5)
    assert 2.0 < flip < 3.0  # after the probe, well before the last arrival (5.7 s)
    rt = RealRuntime(dep, seed=1)
    twin = Twin(probe_s=1.2, warmup_s=0.2, horizon_s=2.0, seeds=1, replan=1, replan_gap_s=0.0, background=False)
    with rt:
        reqs = [rt.submit(prompts[i % len(prompts)], N_TOKENS, 0.0, at=0.3 * i) for i in range(20)]
        rt.end_of_workload()
        drive(rt, twin)
    assert [r.output for r in reqs] == [refs[i % len(refs)] for i in range(20)]
    loads = twin.seen.loads["dc"]
    assert loads[0] == pytest.approx(0.05) and max(loads) == pytest.approx(0.6)
    assert len(twin.replanned_at) == 1 and twin.replanned_at[0] > flip  # it saw the flip and planned again


def test_event_loops_are_uvloop_where_installed_and_asyncio_without_it(monkeypatch):
    """The real backend's loops use uvloop when it imports (Linux, macOS) and fall back to
    asyncio's own loop where it does not (Windows): the runtime runs either way."""
    import asyncio
    import sys

    from runtime.real.transport import new_event_loop, run

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    import importlib.util

    loop = new_event_loop()
    try:  # a dependency wherever uvloop builds (pyproject.toml)
        assert type(loop).__module__.startswith("uvloop") == (importlib.util.find_spec("uvloop") is not None)
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    loop = new_event_loop()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop) and not type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    assert run(answer()) == 42


@pytest.mark.slow
def test_a_draining_supervisor_does_not_restart_a_site_that_exits(tiny_dir, caplog):
    """Once the runtime shuts down, a site that exits (Ctrl-C reaches the whole process group)
    is reported and left down (before the shutdown the same exit is restarted: the serve test
    ``test_a_killed_drafter_is_restarted_and_health_says_degraded_then_ok``)."""
    procs = SiteProcesses(backoff_s=0.05)
    dep = load_deployment(models_dir=tiny_dir)
    try:
        procs.launch({"near": dep.drafter_for("near")})
        pid = procs.procs["near"].pid
        procs.drain()
        with caplog.at_level("INFO", logger="specctl.sites"):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while "during shutdown" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # a restart would have begun by now (backoff 0.05 s)
        assert "exited with code -9 during shutdown; not restarted" in caplog.text, caplog.text
        assert "restarting" not in caplog.text and procs.procs["near"].pid == pid and procs.restarts["near"] == 0
    finally:
        procs.stop()
