"""A drafter site: a gRPC (asyncio) server hosting a draft model for the target site.

Why gRPC: typed, versioned messages (``site.proto``), HTTP/2 connection reuse with ~0.2 ms
loopback round trips, deadlines and status codes for failover, and a health RPC, all from a
well-kept library that also runs across real hosts.

The target sends its draft rounds over one long-lived ``Rounds`` call per site (a message on
an open HTTP/2 stream costs a fraction of a new call's set-up); ``Draft`` answers single calls.

The site keeps, per request, the committed context it has seen and its own KV cache, rolled
back to the accepted prefix on the next round. Concurrent rounds are batched: while one
batched draft job runs (in a worker thread, so the event loop keeps answering), new calls
queue up and ride in the next job together.

Draft-ahead streams (the ``Stream`` RPC) ride in the same jobs: every stream that is fewer than
``max_ahead`` tokens ahead of what the target acknowledged drafts in each job (as many tokens as
the job's longest round, at least one, never past ``max_ahead``) and its tokens go back as soon
as the job ends, tagged with the stream's epoch. A correction starts a new epoch; tokens of a
job that ran across it still go back, with the old epoch, and the target counts them as waste.

``--load`` emulates other tenants on the site's GPU (a scenario site's ``load:``): each job is
stretched by their share, and the site reports their utilisation in its health replies, as a
shared GPU's site would report what its monitoring sees.

    python -m runtime.real.site --name near --model DIR/draft --port 50061
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
import torch

from runtime.real import site_pb2 as pb
from runtime.real import site_pb2_grpc as pb_grpc
from runtime.load import EmulatedLoad, parse_load
from runtime.real.engine import DRAFT_TOP_M, DraftJob, SeqCache, draft_batch
from runtime.real.transport import run

#: The GIL hand-over interval in site and target processes (CPython's default is 5 ms): an RPC
#: reply waiting on a thread that holds the GIL must not wait a whole default interval.
SWITCH_INTERVAL_S = 0.0002


@dataclass
class _SeqState:
    context: list[int] = field(default_factory=list)
    cache: SeqCache = field(default_factory=SeqCache)
    generator: torch.Generator = field(default_factory=torch.Generator)


@dataclass
class _AheadStream:
    """One request's draft-ahead stream at this site: committed context plus this epoch's drafts."""

    rid: int
    context: list[int]
    temperature: float
    max_ahead: int
    generator: torch.Generator
    epoch: int = 0
    drafted: list[int] = field(default_factory=list)  # this epoch's tokens after ``context``
    known: int = 0  # of them, how many the target acknowledged consuming
    cache: SeqCache = field(default_factory=SeqCache)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # replies to write; None ends the stream
    closed: bool = False
    since: float | None = field(default_factory=time.perf_counter)  # this epoch began, no tokens shipped yet

    @property
    def room(self) -> int:
        return self.max_ahead - (len(self.drafted) - self.known)


class DrafterService(pb_grpc.DrafterSiteServicer):
    """Drafts for the target site; one batched job at a time on this site's device."""

    def __init__(self, name: str, model: Any, max_batch: int = 64, max_seqs: int = 4096,
                 load: EmulatedLoad | None = None) -> None:
        self.name = name
        self.model = model
        self.load = load  # other tenants, emulated (None: this process is the GPU's only tenant we know of)
        self.max_batch = max_batch
        self.max_seqs = max_seqs  # least recently used contexts beyond this are evicted (resynced on demand)
        self.seqs: dict[int, _SeqState] = {}
        self.queue: list[tuple[int, DraftJob, Callable[[Any], None]]] = []  # (rid, job, finish)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"site-{name}")  # jobs, off the loop
        self._job_due = False  # a _next_job call is scheduled
        self._busy_since: float | None = None  # the running job's start (None: no job running)
        self._busy_log: list[tuple[float, float]] = []  # (end, duration) of recent jobs
        self.streams: dict[int, _AheadStream] = {}
        self._around_job_s = 0.0  # the last job cycle's time outside its draft compute

    def start(self) -> None:
        """Serve jobs on the running loop (call it there once the server has started)."""
        self._loop = asyncio.get_running_loop()

    async def Draft(self, request: pb.DraftRequest, context: grpc.aio.ServicerContext) -> pb.DraftReply:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._start_round(request, lambda reply: fut.done() or fut.set_result(reply))
        reply = await fut
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def Rounds(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """Serve draft rounds over one call: each request as ``Draft`` would, concurrently, its
        reply written as soon as its job ends (out of order; the target matches them by ``call``).
        A failed job ends the call with its error, as ``Draft`` would fail that one call."""
        out: asyncio.Queue = asyncio.Queue()  # replies, a job's exception, or None at the end
        reader = asyncio.get_running_loop().create_task(self._read_rounds(context, out))
        try:
            while True:
                reply = await out.get()
                if reply is None:
                    break
                if isinstance(reply, BaseException):
                    raise reply
                await context.write(reply)
        finally:
            reader.cancel()

    async def _read_rounds(self, context: grpc.aio.ServicerContext, out: asyncio.Queue) -> None:
        """Start each round as it is read; its reply goes to ``out`` straight from the job loop.
        Once the target is done sending, what it asked is answered, then ``None`` ends the call."""
        open_rounds = 0
        reading = True

        def replier(call: int) -> Callable[[Any], None]:
            def deliver(reply: Any) -> None:
                nonlocal open_rounds
                open_rounds -= 1
                if not isinstance(reply, BaseException):
                    reply.call = call
                out.put_nowait(reply)
                if not reading and open_rounds == 0:
                    out.put_nowait(None)
            return deliver

        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                open_rounds += 1
                self._start_round(request, replier(request.call))
        except Exception:
            out.put_nowait(None)  # the call is over (the target went away)
            return
        reading = False
        if open_rounds == 0:
            out.put_nowait(None)

    def _start_round(self, request: pb.DraftRequest, deliver: Callable[[Any], None]) -> None:
        """Start one round; ``deliver`` gets its reply (or its job's error) at once or when its job
        ends, called by the job loop itself: a task per round would cost a loop hop each way."""
        try:
            st = self.seqs.pop(request.rid, None)
            if st is None:
                st = _SeqState()
                while len(self.seqs) >= self.max_seqs:
                    self.seqs.pop(next(iter(self.seqs)))
            self.seqs[request.rid] = st  # most recently used last
            if request.start > len(st.context):
                deliver(pb.DraftReply(need_sync=True, known=len(st.context)))
                return
            st.context[request.start:] = list(request.tokens)
            if request.k == 0 or not st.context:
                deliver(pb.DraftReply(known=len(st.context)))
                return
            st.generator.manual_seed(request.seed)
            job = DraftJob(st.cache, list(st.context), request.k, request.temperature, st.generator)
        except Exception as e:
            deliver(e)
            return
        queued = time.perf_counter()

        def finish(done: tuple | BaseException | None) -> None:
            """The job's drafts and figures, its error, or None (superseded by a newer round)."""
            if isinstance(done, BaseException):
                deliver(done)
                return
            if done is None:
                deliver(pb.DraftReply(known=len(st.context)))
                return
            draft, job_s, passes, size, started, background = done
            reply = pb.DraftReply(tokens=draft.tokens, known=len(st.context), job_s=job_s, passes=passes,
                                  job_size=size, wait_s=max(started - queued, 0.0), background=background)
            _put_probs(reply, draft)
            deliver(reply)

        for stale in [e for e in self.queue if e[0] == request.rid]:  # a lost race's leftover
            self.queue.remove(stale)
            stale[2](None)
        self.queue.append((request.rid, job, finish))
        self._wake()

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """Serve one draft-ahead stream until the target cancels it or goes away."""
        first = await context.read()
        if first is grpc.aio.EOF or first.cancel:
            return
        gen = torch.Generator()
        gen.manual_seed(first.seed)
        st = _AheadStream(first.rid, list(first.tokens), first.temperature, max(first.max_ahead, 1), gen,
                          epoch=first.epoch)
        old = self.streams.pop(st.rid, None)
        if old is not None:  # a reopened stream replaces the old one
            self._end(old)
        self.streams[st.rid] = st
        self._wake()
        reader = asyncio.get_running_loop().create_task(self._read_stream(context, st))
        try:
            while True:
                reply = await st.out.get()
                if reply is None:
                    break
                await context.write(reply)
        finally:
            reader.cancel()
            self._end(st)

    async def _read_stream(self, context: grpc.aio.ServicerContext, st: _AheadStream) -> None:
        while True:
            try:
                msg = await context.read()
            except Exception:  # the call is over (the target went away)
                msg = grpc.aio.EOF
            if msg is grpc.aio.EOF or msg.cancel:
                self._end(st)
                return
            if msg.epoch != st.epoch:  # a correction: the committed context moved on, redraft from it
                st.epoch = msg.epoch
                st.context[msg.start:] = list(msg.tokens)
                st.drafted = []
                st.known = msg.consumed
                st.since = time.perf_counter()
            elif msg.consumed > st.known:
                st.known = msg.consumed
            if st.room > 0:
                self._wake()

    def _end(self, st: _AheadStream) -> None:
        if not st.closed:
            st.closed = True
            st.out.put_nowait(None)
        if self.streams.get(st.rid) is st:
            del self.streams[st.rid]

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.Empty:
        for rid in request.rids:
            self.seqs.pop(rid, None)
        return pb.Empty()

    async def Health(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        now = time.perf_counter()
        busy = sum(min(d, max(0.0, 1.0 - (now - end))) for end, d in self._busy_log if now - end < 1.0)
        if self._busy_since is not None:
            busy += min(now - self._busy_since, 1.0)
        return pb.HealthReply(site=self.name, model=str(self.model.config._name_or_path), sequences=len(self.seqs),
                              queue=len(self.queue), busy=min(busy, 1.0),
                              background=self.load.level() if self.load is not None else 0.0)

    def close(self) -> None:
        """Stop the worker thread (after the server stopped): a running job ends unanswered."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _wake(self) -> None:
        """Start a job at the end of this loop turn (if none is running), so that rounds and
        stream messages read in this turn ride in it together."""
        if not self._job_due and self._loop is not None:
            self._job_due = True
            self._loop.call_soon(self._next_job)

    def _next_job(self) -> None:
        """Start the next batched job in the worker thread, if there is work and none is running.
        The job loop is callbacks, not a task: a job's end reaches the loop in one hop."""
        self._job_due = False
        if self._busy_since is not None:
            return  # the running job's end starts the next one
        began = time.perf_counter()
        batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
        jobs = [j for _, j, _ in batch]
        ahead = self._stream_jobs(max((j.k for j in jobs), default=1), self.max_batch - len(batch))
        if not jobs and not ahead:
            return
        jobs += [j for _, _, j in ahead]
        self._busy_since = time.perf_counter()
        # off the loop, so health checks are answered and new RPCs queue for the next job
        self._worker.submit(self._job, batch, ahead, jobs, began)

    def _job(self, batch: list, ahead: list, jobs: list[DraftJob], began: float) -> None:
        """The worker thread's part: draft, then hand the outcome to the loop."""
        try:
            outcome: Any = _timed_draft(self.model, jobs, self.load)
        except Exception as e:  # a bad job must not kill the site: fail its callers
            outcome = e
        try:
            self._loop.call_soon_threadsafe(self._job_done, batch, ahead, jobs, began, outcome)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the loop is closed: the site is shutting down

    def _job_done(self, batch: list, ahead: list, jobs: list[DraftJob], began: float, outcome: Any) -> None:
        """Answer the job's rounds and ship its streams' tokens, then start the next job."""
        t0, self._busy_since = self._busy_since, None
        assert t0 is not None
        try:
            if isinstance(outcome, Exception):
                for _, _, finish in batch:
                    finish(outcome)
                for st, _, _ in ahead:
                    self._end(st)
                return
            drafts, dur, background = outcome
            self._busy_log = [x for x in self._busy_log if x[0] > t0 - 1.0] + [(t0 + dur, dur)]
            passes = max(j.k for j in jobs)
            for (_, _, finish), d in zip(batch, drafts):
                finish((d, dur, passes, len(jobs), t0, background))
            for (st, epoch, _), d in zip(ahead, drafts[len(batch):]):
                self._ship(st, epoch, d, dur, passes, len(jobs), t0, background)
            self._around_job_s = time.perf_counter() - began - dur
        finally:  # whatever happened answering this job, the queue goes on
            self._next_job()

    def _stream_jobs(self, steps: int, room: int) -> list[tuple[_AheadStream, int, DraftJob]]:
        """This job's share for the streams not ``max_ahead`` ahead (the furthest behind first)."""
        run = [st for st in self.streams.values() if st.room > 0 and st.context]
        if len(run) > room:
            run = sorted(run, key=lambda st: -st.room)[: max(room, 0)]
        return [(st, st.epoch, DraftJob(st.cache, st.context + st.drafted, min(st.room, steps), st.temperature,
                                        st.generator)) for st in run]

    def _ship(self, st: _AheadStream, epoch: int, d: Any, job_s: float, passes: int, size: int,
              started: float, background: float) -> None:
        """Send a stream's drafted tokens; keep them only if no correction came in meanwhile."""
        if st.closed:
            return
        reply = pb.StreamTokens(epoch=epoch, pos=len(st.drafted) if epoch == st.epoch else 0, tokens=d.tokens,
                                job_s=job_s, passes=passes, job_size=size, cycle_s=job_s + self._around_job_s,
                                background=background)
        _put_probs(reply, d)
        if epoch == st.epoch:
            if st.since is not None and started >= st.since:  # the epoch's first tokens
                reply.wait_s = started - st.since
                st.since = None
            st.drafted += d.tokens
        st.out.put_nowait(reply)


def _put_probs(reply: Any, draft: Any) -> None:
    """A sampled draft's top-m distributions into a reply (DraftReply or StreamTokens), row-major."""
    if draft.probs is not None:
        reply.top_m = draft.probs.shape[1]
        reply.prob_ids.extend(draft.probs_ids.flatten().tolist())
        reply.probs.extend(draft.probs.flatten().tolist())


def _timed_draft(model: Any, jobs: list[DraftJob], load: EmulatedLoad | None) -> tuple[list[Any], float, float]:
    """Draft in the worker thread: the drafts, the job's time on the GPU (compute, no thread
    hops, plus the emulated other tenants' share: reported as job_s) and their load at its start."""
    level = load.level() if load is not None else 0.0
    t0 = time.perf_counter()
    drafts = draft_batch(model, jobs, DRAFT_TOP_M)
    compute = time.perf_counter() - t0
    return drafts, load.stretch(level, compute) if load is not None else compute, level


async def serve_site(name: str, model: Any, host: str = "127.0.0.1", port: int = 0,
                     ready: Any = None, exit_with_parent: bool = False, load: EmulatedLoad | None = None) -> None:
    """Run a drafter site until cancelled; prints ``READY <port>`` once listening.

    ``exit_with_parent``: stop when the launching process dies (no orphaned local sites).
    ``load``: other tenants to emulate on this site's GPU (a scenario's site ``load:``).
    """
    server = grpc.aio.server()
    service = DrafterService(name, model, load=load)
    pb_grpc.add_DrafterSiteServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"site {name}: cannot listen on {host}:{port}")
    await server.start()
    service.start()
    print(f"READY {bound}", flush=True)
    if ready is not None:
        ready(bound)
    if exit_with_parent:
        asyncio.get_running_loop().create_task(_watch_parent(server, os.getppid()))
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=0.5)
        service.close()


async def _watch_parent(server: grpc.aio.Server, parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    await server.stop(grace=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    from runtime.flags import OneLineParser
    from runtime.real.models import ModelError, load_model

    p = OneLineParser(prog="python -m runtime.real.site", description="run one drafter site (gRPC server)")
    p.add_argument("--name", required=True, help="site name (as in the scenario)")
    p.add_argument("--model", required=True, help="draft model checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for other hosts)")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port; printed as READY <port>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--exit-with-parent", action="store_true", help="stop when the launching process exits")
    p.add_argument("--load", metavar="SPEC", help="emulate other tenants on this GPU: a scenario site's load:, "
                   "e.g. '{kind: markov, levels: [0.05, 0.8], mean_dwell_s: [10, 10]}' (default: none)")
    p.add_argument("--load-seed", type=int, default=0, help="seed of the emulated load's process")
    args = p.parse_args(argv)
    load = None
    if args.load is not None:
        try:
            load = EmulatedLoad(parse_load(args.load), args.load_seed)
        except ValueError as e:
            p.error(f"--load: {e}")
    torch.set_num_threads(args.threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        model, _ = load_model(args.model, args.device, args.dtype)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run(serve_site(args.name, model, args.host, args.port, exit_with_parent=args.exit_with_parent, load=load))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
