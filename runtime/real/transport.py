"""The target site's side of site-to-site messaging: gRPC clients, WAN emulation, health checks.

Kernel netem is not available (and would need root), so each link's delay is emulated in the
transport: before a message leaves and after a reply lands, the caller sleeps the one-way delay
the scenario's link draws (RTT/2 + jitter + spikes + bytes/bandwidth, the simulator's own
:class:`runtime.network.Link`). ``emulate_wan=False`` turns it off for real WAN deployments.

All clients live on one asyncio loop in a background thread; the runtime's driver thread hands
coroutines to it with :meth:`Transport.submit` and gets results back as callbacks. Every
real-backend process runs uvloop where it is installed (:func:`new_event_loop`).

A draft-ahead stream (:class:`AheadStream`) is one bidirectional gRPC call per (request, site).
Its messages are delayed both ways like an RPC's, and stay in order (as on one TCP connection):
each leaves at its own draw of the link's delay, but never before the message sent ahead of it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import grpc
import torch

from runtime.network import Link
from runtime.real import site_pb2 as pb
from runtime.real import site_pb2_grpc as pb_grpc
from runtime.real.engine import Draft
from runtime.scenario import NetworkSpec, Site

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's: a remote round
    is mostly loop wake-ups and hand-offs between tasks and threads, which uvloop makes cheaper
    (control plane per round on loopback: 0.88x at concurrency 1, 0.5x at concurrency 4,
    ``benchmarks/real_control_overhead.py``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Awaitable[T]) -> T:
    """``asyncio.run`` on :func:`new_event_loop` (a site process's server loop)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


class SiteDown(RuntimeError):
    """A drafter site did not answer in time (dead, stalled or unreachable)."""


@dataclass
class DraftResult:
    draft: Draft
    known: int  # committed tokens the site now holds for the request
    job_s: float
    passes: int
    job_size: int
    bytes_up: int
    bytes_down: int
    wait_s: float = 0.0  # queued at the site behind other draft jobs
    background: float = 0.0  # other tenants' utilisation of the site when the job started (their share is in job_s)


class SiteClient:
    """One drafter site as seen from the target: a channel, an emulated link, a health flag."""

    def __init__(self, site: Site, address: str, net: NetworkSpec, emulate: bool, timeout_s: float, seed: int) -> None:
        self.name = site.name
        self.address = address
        self.net = net
        self.timeout_s = timeout_s
        self.link = Link(site, net, random.Random(seed)) if emulate else None
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.DrafterSiteStub | None = None
        self.up = True
        self.rtt_s = site.rtt_ms / 1000.0  # EWMA of measured round trips (emulated + real), less queueing and compute
        self.load = 0.0  # the site's reported busy fraction
        self.background = 0.0  # other tenants' utilisation of the site's GPU, as it reports it
        self.in_flight = 0
        self.bytes_sent = 0
        self._rounds: _RoundsCall | None = None

    def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = pb_grpc.DrafterSiteStub(self.channel)

    async def reconnect(self, address: str) -> None:
        """The site restarted at ``address``: a fresh channel (the old one's calls fail; health checks mark it up)."""
        old = self.channel
        self.address = address
        self.connect()
        if old is not None:
            await old.close()

    def reply_bytes(self, reply: Any) -> int:
        """The bytes of drafted tokens coming back (DraftReply or StreamTokens), with their top-m
        distributions when sampled."""
        per_tok = self.net.bytes_per_token + (8 if reply.top_m else 0) * max(reply.top_m, 1)
        return self.net.header_bytes + len(reply.tokens) * per_tok

    def delay(self, nbytes: int) -> float:
        """Count a message's bytes; its emulated one-way delay (0 without emulation)."""
        self.bytes_sent += nbytes
        return self.link.send(nbytes) if self.link is not None else 0.0

    async def _hop(self, nbytes: int) -> None:
        d = self.delay(nbytes)
        if d > 0:
            await asyncio.sleep(d)

    async def draft(self, rid: int, context: list[int], start: int, k: int, temperature: float, seed: int) -> DraftResult:
        """Ask for ``k`` drafts, shipping ``context[start:]``; resyncs once if the site lost state."""
        assert self.stub is not None
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            for attempt in range(2):
                req = pb.DraftRequest(rid=rid, start=start, tokens=context[start:], k=k, temperature=temperature, seed=seed)
                up = self.net.header_bytes + (len(context) - start) * self.net.bytes_per_token
                await self._hop(up)
                reply = await self._round_trip(req)
                down = self.reply_bytes(reply)
                await self._hop(down)
                if not reply.need_sync:
                    break
                start = 0  # the site restarted or evicted this request: send the whole context
            else:
                raise SiteDown(f"site {self.name} keeps asking for a context sync")
            # the round trip without the site's queueing and compute (as the simulator's links
            # measure it): the queue is the controller's to weigh, from in_flight
            self.rtt_s += 0.2 * (time.perf_counter() - t0 - reply.job_s - reply.wait_s - self.rtt_s)
            return DraftResult(draft_of(reply), reply.known, reply.job_s, reply.passes, reply.job_size, up, down, reply.wait_s,
                               reply.background)
        finally:
            self.in_flight -= 1

    async def _round_trip(self, req: Any) -> Any:
        """One round over the site's ``Rounds`` call (opened on first use, and again after it
        fails); a failed call, or no reply within ``timeout_s``, marks the site down."""
        assert self.stub is not None
        if self._rounds is None or self._rounds.error is not None:
            self._rounds = _RoundsCall(self.stub.Rounds())
        try:
            return await self._rounds.ask(req, self.timeout_s)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.TimeoutError) as e:
            self.up = False
            raise SiteDown(f"site {self.name} ({self.address}): {_rpc_reason(e)}") from None

    async def release(self, rids: list[int]) -> None:
        if self.stub is None or not self.up:
            return
        try:
            await self.stub.Release(pb.ReleaseRequest(rids=rids), timeout=self.timeout_s)
        except grpc.aio.AioRpcError:
            pass  # the site is gone; its state went with it

    async def health(self) -> bool:
        assert self.stub is not None
        try:
            h = await self.stub.Health(pb.Empty(), timeout=min(self.timeout_s, 1.0))
        except grpc.aio.AioRpcError:
            self.up = False
            return False
        self.up = True
        self.load, self.background = h.busy, h.background
        return True


class _RoundsCall:
    """A site's ``Rounds`` call: requests written one at a time (gRPC allows one write in flight),
    replies matched to their rounds by ``call``; once the call fails, every unanswered round does."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.waiting: dict[int, asyncio.Future] = {}
        self.error: BaseException | None = None
        self._ids = itertools.count(1)
        self._out: collections.deque = collections.deque()  # requests waiting for the write in flight
        self._writing = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def ask(self, req: Any, timeout_s: float) -> Any:
        req.call = n = next(self._ids)
        loop = asyncio.get_running_loop()
        fut = self.waiting[n] = loop.create_future()
        expire = loop.call_later(timeout_s, _fail, fut, asyncio.TimeoutError())
        try:
            if self._writing:
                self._out.append(req)
            else:  # the caller writes, and then whatever queued meanwhile (no writer task to wake)
                self._writing = True
                try:
                    await self.call.write(req)
                    while self._out:
                        await self.call.write(self._out.popleft())
                except Exception as e:
                    self._end(e)
                finally:
                    self._writing = False
            return await fut
        finally:
            expire.cancel()
            self.waiting.pop(n, None)

    async def _read(self) -> None:
        error = await _read_all(self.call, self._deliver)
        self._end(error or grpc.aio.UsageError("the site ended the rounds call"))

    def _deliver(self, reply: Any) -> None:
        fut = self.waiting.get(reply.call)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def _end(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            for fut in self.waiting.values():
                _fail(fut, error)
            self._reader.cancel()  # (when the reader itself ends the call, it returns right after)
            self.call.cancel()


class _Delayed:
    """Hands items to ``sink`` in order, each no earlier than its due time (one emulated direction)."""

    def __init__(self, sink: Callable[[Any], Any]) -> None:
        self.sink = sink
        self.queue: asyncio.Queue = asyncio.Queue()
        self.last = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, delay: float, item: Any) -> None:
        loop = asyncio.get_running_loop()
        self.last = max(loop.time() + delay, self.last)
        self.queue.put_nowait((self.last, item))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, item = await self.queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            r = self.sink(item)
            if asyncio.iscoroutine(r):
                await r


class AheadStream:
    """The target's end of one draft-ahead stream (lives on the transport loop).

    ``on_tokens(reply)`` gets each ``StreamTokens`` after its emulated delay; ``on_error(reason)``
    is called once if the call fails (the site died, restarted or ended it) before the target
    sent its cancellation.
    """

    def __init__(self, client: "SiteClient", on_tokens: Callable[[Any], None], on_error: Callable[[str], None]) -> None:
        assert client.stub is not None
        self.client = client
        self.on_tokens = on_tokens
        self.on_error = on_error
        self.closed = False
        self._stopped = False
        self.call = client.stub.Stream()
        self._out = _Delayed(self._write)
        self._in = _Delayed(on_tokens)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def send(self, msg: Any) -> None:
        """Queue a target -> site message (call on the loop: ``Transport.post``)."""
        if self.closed:
            return
        net = self.client.net
        self._out.put(self.client.delay(net.header_bytes + len(msg.tokens) * net.bytes_per_token), msg)
        if msg.cancel:
            self.closed = True

    async def _write(self, msg: Any) -> None:
        try:
            await self.call.write(msg)
            if msg.cancel:
                await self.call.done_writing()
                self._stop()
        except Exception as e:  # the call is over: the site died, restarted or cancelled it
            self._fail(f"site {self.client.name}: {_rpc_reason(e)}")

    async def _read(self) -> None:
        client = self.client
        error = await _read_all(self.call, lambda reply: self._in.put(client.delay(client.reply_bytes(reply)), reply))
        if error is not None:
            self._fail(f"site {client.name}: {_rpc_reason(error)}")
        elif not self.closed:  # the site ended the stream on its own
            self._fail(f"site {client.name} ended the stream")

    def _fail(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.on_error(reason)
        self._stop()

    def _stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            for task in (self._out.task, self._in.task, self._reader):
                task.cancel()  # the current task too: it ends at its next await
            self.call.cancel()


async def _read_all(call: Any, handle: Callable[[Any], None]) -> BaseException | None:
    """Hand each message of a gRPC call to ``handle`` until the call ends: None when it ended
    cleanly, else the error it ended with."""
    try:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return None
            handle(msg)
    except Exception as e:
        return e


def _fail(fut: asyncio.Future, error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


def draft_of(reply: Any) -> Draft:
    """The draft a reply carries (DraftReply or StreamTokens), with its top-m distributions."""
    d = Draft(list(reply.tokens))
    if reply.top_m:
        m = reply.top_m
        d.probs_ids = torch.tensor(list(reply.prob_ids), dtype=torch.long).view(-1, m)
        d.probs = torch.tensor(list(reply.probs), dtype=torch.float32).view(-1, m)
    return d


def _rpc_reason(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name.lower()} ({e.details()})"
    if not isinstance(e, asyncio.TimeoutError):
        return f"{type(e).__name__}: {e}"
    return "timed out"


class Transport:
    """The asyncio loop (in a daemon thread) that owns every site client."""

    def __init__(self, clients: dict[str, SiteClient], health_interval_s: float = 0.5) -> None:
        self.clients = clients
        self.health_interval_s = health_interval_s
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="specctl-transport", daemon=True)
        self._health_task: Any = None
        self._tasks: set[asyncio.Task] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

        async def setup() -> None:
            for c in self.clients.values():
                c.connect()
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

        self.call(setup()).result()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon (for stream messages: cheaper than a coroutine)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``coro`` on the loop; ``done(result, error)`` is called there when it finishes, by
        the task itself (a future's done-callback would cost a loop hop more per round)."""
        async def run() -> None:
            try:
                result = await coro
            except asyncio.CancelledError:  # channels closed at shutdown: an error for the caller too
                done(None, asyncio.CancelledError("transport call cancelled"))
                raise
            except Exception as e:
                done(None, e)
            else:
                done(result, None)

        self.loop.call_soon_threadsafe(self._start, run())

    def _start(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(c.health() for c in self.clients.values()), return_exceptions=True)
            await asyncio.sleep(self.health_interval_s)

    async def check_all(self) -> dict[str, bool]:
        res = await asyncio.gather(*(c.health() for c in self.clients.values()))
        return dict(zip(self.clients, res))

    def close(self) -> None:
        async def shutdown() -> None:
            if self._health_task is not None:
                self._health_task.cancel()
            for c in self.clients.values():
                if c.channel is not None:
                    await c.channel.close()

        if self._thread.is_alive():
            try:
                self.call(shutdown()).result(timeout=5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
