"""``python -m runtime.real.serve``: an OpenAI-compatible server over the real runtime.

    python -m runtime.real.serve --scenario tiny-local --controller static:k=4 --port 8000
    python -m runtime.real.serve --deploy my-deploy.yaml --controller policy:runs:/<id>/policy
    python -m runtime.real.serve --deploy my-deploy.yaml --site near --host 0.0.0.0 --port 50061

The first two start the target site (HTTP API, controller, target model) and launch every
drafter site of the scenario without an address as a supervised local process; ``--site NAME``
runs only that drafter site, for deployments across hosts. Endpoints: ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming), ``GET /health``,
``GET /ready``, ``GET /metrics`` (Prometheus).

Threads: HTTP handlers run on the asyncio loop, tokenisation and chat templates on one worker
thread (a big prompt must not stall other streams), the model and controller on the runtime's
driver thread (tokens come back through a listener).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.contract import Controller, drive
from runtime.real.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    overloaded,
    parse,
    unavailable,
)
from runtime.real.runtime import RealRequest, RealRuntime, TokenLogprob
from runtime.real.serve_metrics import HTTPOutcomes, ServeMetrics

log = logging.getLogger("specctl.serve")

#: For tokenizers without a chat template: one ``role: content`` line per message, then ``assistant:``.
FALLBACK_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


def max_output_tokens(runtime: RealRuntime) -> int:
    """The most output a request can ask for: a one-token prompt, then max_k drafts and the bonus token must fit."""
    return runtime.max_context - runtime.limits.max_k - 2


class Server:
    """Glue between HTTP handlers (asyncio) and the runtime's driver thread."""

    def __init__(self, runtime: RealRuntime, controller: Controller, max_tokens_limit: int | None = None,
                 model_name: str = "specctl", grace_s: float = 10.0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.runtime = runtime
        self.controller = controller
        fits = max_output_tokens(runtime)
        if max_tokens_limit is not None and max_tokens_limit > fits:
            raise ValueError(f"--max-tokens-limit {max_tokens_limit} does not fit the model's context of "
                             f"{runtime.max_context} tokens; use at most {fits}")
        self.max_tokens_limit = max_tokens_limit or fits
        self.model_name = model_name
        self.grace_s = grace_s
        self.max_body_bytes = max_body_bytes
        self.metrics = ServeMetrics(runtime, model_name)
        self.failure: str | None = None
        self.driver: threading.Thread | None = None
        self.shutting_down = False
        self.created = int(time.time())
        # one thread: HF tokenizers must not be used from several threads at once, and none of it on the loop
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="specctl-tokenize")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.driver = threading.Thread(target=self._drive, name="specctl-driver", daemon=True)
        self.driver.start()

    def _drive(self) -> None:
        try:
            drive(self.runtime, self.controller)
        except Exception as e:  # a controller bug must fail requests cleanly, not hang them
            self.failure = f"{type(e).__name__}: {e}"
            log.error("runtime stopped: %s", self.failure)
            for req in list(self.runtime.requests.values()):
                if req.listener is not None:
                    req.listener([], f"error: runtime stopped ({self.failure})")
            self.runtime.requests.clear()

    def begin_shutdown(self) -> None:
        """Refuse new requests; the runtime ends late ones with an error when the grace period runs out."""
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutting down: in-flight requests get %.1f s", self.grace_s)
            self.runtime.shutdown(self.grace_s)

    def stop(self) -> None:
        self.begin_shutdown()
        if self.driver is not None:
            self.driver.join(self.grace_s + 5)
        self._tokenizer.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ state
    def health(self) -> tuple[dict[str, Any], int]:
        rt = self.runtime
        down = sorted(name for name, c in rt.clients.items() if not c.up)
        if self.failure:
            status = "error"
        elif self.shutting_down or rt.closed:
            status = "shutting_down"
        else:
            status = "degraded" if down else "ok"  # degraded still serves: the target decodes on its own
        sites = {name: {"up": c.up, "address": c.address, "restarts": rt.processes.restarts.get(name, 0),
                        **({"pid": p.pid} if (p := rt.processes.procs.get(name)) is not None else {})}
                 for name, c in rt.clients.items()}
        body = {"status": status, "model": self.model_name, "scenario": rt.scenario.name,
                "controller": self.controller.name, "in_flight": rt.in_flight, "down": down, "sites": sites}
        if self.failure:
            body["error"] = self.failure
        return body, 200 if status in ("ok", "degraded") else 503

    def ready(self) -> bool:
        """Whether a load balancer should send requests here."""
        return (self.driver is not None and self.driver.is_alive() and not self.failure and not self.shutting_down
                and not self.runtime.closed)

    def check_available(self, n: int = 1) -> None:
        if self.failure is not None:
            raise unavailable(f"runtime stopped: {self.failure}")
        if self.shutting_down or self.runtime.closed:
            raise unavailable("server is shutting down")
        if self.runtime.backlog + n > self.runtime.limits.max_inflight:
            raise overloaded()

    # ------------------------------------------------------------------ tokens
    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, fn, *args)

    def encode(self, text: str) -> list[int]:
        return self.runtime.encode(text)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.runtime.tokenizer
        template = None if getattr(tok, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
        text = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]  # the template wrote the special tokens


# ---------------------------------------------------------------------- one response, n choices
class _Choice:
    """One of a response's ``n`` outputs: its runtime request and the text released so far.

    Text is held back while it could still be the start of a stop string (or an incomplete
    UTF-8 character), so a stream never shows what a stop string later removes.
    """

    def __init__(self, index: int, req: RealRequest, stops: list[str], tokenizer: Any) -> None:
        self.index, self.req, self.stops, self.tok = index, req, stops, tokenizer
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0  # characters of text released
        self.finish: str | None = None
        self.logprobs: list[tuple[int, int, TokenLogprob]] = []  # (token, text offset, log-probabilities)

    def feed(self, new: list[int], reason: str | None) -> tuple[str, list[tuple[int, int, TokenLogprob]]]:
        """Take tokens from the runtime; returns the text and log-probabilities now releasable."""
        start = len(self.tokens)
        self.tokens += new
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        new_lps = []
        if self.req.logprobs is not None:
            lps = self.req.token_logprobs
            for j in range(start, min(len(self.tokens), len(lps))):
                offset = len(self.tok.decode(self.tokens[:j], skip_special_tokens=True))
                new_lps.append((self.tokens[j], offset, lps[j]))
            self.logprobs += new_lps
        hits = [i for s in self.stops if (i := text.find(s, self.sent)) >= 0]
        if hits:
            text, reason = text[: min(hits)], "stop"
            self.logprobs = [x for x in self.logprobs if x[1] < len(text)]  # not the stop string's tokens
            new_lps = [x for x in new_lps if x[1] < len(text)]
        end = len(text) if reason is not None else len(text) - self.holdback
        while end > self.sent and text[end - 1] == "\ufffd" and reason is None:
            end -= 1
        delta = text[self.sent: end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        self.text, self.finish = text, reason
        return delta, new_lps


class _Generation:
    """Submits the ``n`` runtime requests of one HTTP request and merges their token streams."""

    def __init__(self, server: Server, prompt: list[int], body: Any, max_tokens: int, logprobs: int | None) -> None:
        rt = self.runtime = server.runtime
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, list[int], str | None]] = asyncio.Queue()
        self.prompt = prompt
        self.choices: list[_Choice] = []
        spec = body.speculation.cap if body.speculation is not None else None
        try:
            for i in range(body.n or 1):
                def listener(tokens: list[int], reason: str | None, i: int = i) -> None:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (i, tokens, reason))

                req = rt.submit(prompt, max_tokens, body.temperature or 0.0, origin=body.origin,
                                slo_class=body.slo_class, listener=listener, spec_max_k=spec,
                                seed=None if body.seed is None else body.seed + i, ignore_eos=body.ignore_eos,
                                logprobs=logprobs)
                self.choices.append(_Choice(i, req, body.stops, rt.tokenizer))
        except (ValueError, RuntimeError):
            self.cancel()
            raise
        server.metrics.prompt_tokens.labels(server.model_name).inc(len(prompt) * len(self.choices))

    async def events(self) -> AsyncIterator[tuple[_Choice, str, list[tuple[int, int, TokenLogprob]]]]:
        """``(choice, new text, new log-probabilities)`` until every choice finished; APIError on a runtime error."""
        pending = len(self.choices)
        while pending:
            i, tokens, reason = await self.queue.get()
            c = self.choices[i]
            if c.finish is not None:
                continue  # already ended by a stop string
            if reason is not None and reason.startswith("error"):
                self.cancel()
                why = reason.removeprefix("error: ")
                raise overloaded(why) if "overloaded" in why or "admission" in why else unavailable(why)
            delta, lps = c.feed(tokens, reason)
            if c.finish is not None:
                pending -= 1
                if reason is None:  # a stop string: the runtime need not decode further
                    self.runtime.cancel(c.req, "stop")
            if delta or lps or c.finish is not None:
                yield c, delta, lps

    def cancel(self) -> None:
        for c in self.choices:
            if c.finish is None and c.req.finish_reason is None:
                self.runtime.cancel(c.req)

    def usage(self) -> dict[str, int]:
        done = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": len(self.prompt), "completion_tokens": done, "total_tokens": len(self.prompt) + done}


def speculation_stats(reqs: Sequence[RealRequest]) -> dict[str, Any]:
    """What speculation did for these requests: verified rounds, draft and accepted tokens, sites used."""
    drafted, accepted = sum(r.drafted for r in reqs), sum(r.accepted for r in reqs)
    sites: Counter[str] = Counter()
    for r in reqs:
        sites.update(dict(r.site_rounds))  # an atomic copy: a request ended by a stop string may still be decoding
    return {"rounds": sum(r.rounds for r in reqs), "draft_tokens": drafted, "accepted_tokens": accepted,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None, "sites": dict(sites)}


def _logprobs(tok: Any, lps: list[tuple[int, int, TokenLogprob]], chat: bool) -> dict[str, Any] | None:
    """OpenAI's logprobs object: chat's ``content`` list, or the completions' parallel lists."""
    def s(t: int) -> str:
        return tok.decode([t], skip_special_tokens=False)

    if chat:
        def entry(t: int, lp: float) -> dict[str, Any]:
            return {"token": s(t), "logprob": lp, "bytes": list(s(t).encode())}
        return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]}
                            for t, _, (lp, top) in lps]}
    return {"tokens": [s(t) for t, _, _ in lps], "token_logprobs": [lp for _, _, (lp, _) in lps],
            "top_logprobs": [{s(a): b for a, b in top} for _, _, (_, top) in lps],
            "text_offset": [off for _, off, _ in lps]}


# ---------------------------------------------------------------------- the app
async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit) if length.isdigit() else APIError(400, "invalid Content-Length header")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "request body is not valid JSON") from None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is over the limit of {limit} bytes (--max-body-bytes)",
                    code="request_too_large")


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, server.stop)

    app = FastAPI(title="specctl", lifespan=lifespan)
    app.add_middleware(HTTPOutcomes, counter=server.metrics.http)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(error_body(message, code={404: "not_found", 405: "method_not_allowed"}.get(e.status_code)),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {e.errors()[0].get('msg')}"), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)

    def check_model(name: str | None) -> None:
        if name is not None and name != server.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {server.model_name!r}",
                           param="model", code="model_not_found")

    async def generate(request: Request, chat: bool) -> Any:
        raw = await _read_json(request, server.max_body_bytes)
        body = parse(ChatCompletionRequest if chat else CompletionRequest, raw)
        check_model(body.model)
        n = body.n or 1
        server.check_available(n)
        asked = (body.max_completion_tokens or body.max_tokens) if chat else (body.max_tokens or 16)
        if asked is not None and asked > server.max_tokens_limit:
            raise APIError(400, f"max_tokens {asked} is over the limit of {server.max_tokens_limit}", param="max_tokens")
        if chat:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                prompt = await server.off_loop(server.chat_ids, messages)
            except Exception as e:  # the model's own template may refuse a conversation (roles must alternate...)
                raise APIError(400, f"chat template: {e}", param="messages") from None
        else:
            prompt = await server.off_loop(server.encode, body.prompt) if isinstance(body.prompt, str) else body.prompt
        rt = server.runtime
        room = rt.max_context - rt.limits.max_k - 1 - len(prompt)
        max_tokens = asked if asked is not None else min(server.max_tokens_limit, room)
        if max_tokens < 1:
            raise APIError(400, f"prompt ({len(prompt)} tokens) leaves no room for output within the context limit "
                                f"of {rt.max_context - rt.limits.max_k - 1} tokens", param="messages")
        logprobs = (body.top_logprobs or 0 if body.logprobs else None) if chat else body.logprobs
        try:
            gen = _Generation(server, prompt, body, max_tokens, logprobs)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        except RuntimeError as e:
            raise unavailable(str(e)) from None
        prefix = "chatcmpl" if chat else "cmpl"
        base = {"id": f"{prefix}-{gen.choices[0].req.rid}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": server.model_name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return _ClosingStream(_stream(gen, base, chat, usage), media_type="text/event-stream")
        async for _ in gen.events():
            pass
        tok = rt.tokenizer

        def choice(c: _Choice) -> dict[str, Any]:
            lp = _logprobs(tok, c.logprobs, chat) if logprobs is not None else None
            out = {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}
            return {"index": c.index, **out, "logprobs": lp, "finish_reason": c.finish}

        return {**base, "choices": [choice(c) for c in gen.choices], "usage": gen.usage(),
                "speculation": speculation_stats([c.req for c in gen.choices])}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "specctl", "max_model_len": server.runtime.max_context}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        body, status = server.health()
        return JSONResponse(body, status_code=status)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = server.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its generator as soon as the response ends.

    Starlette leaves an abandoned generator to the garbage collector, so on a client
    disconnect its ``finally`` (which cancels the request) could run only after the request
    had been decoded to the end for nobody.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(gen: _Generation, base: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's format: deltas, each choice's finish_reason (with its
    speculation statistics), the usage chunk if asked for, then ``[DONE]``. A runtime error
    (shutdown past the grace period, overload) becomes an error event, still followed by
    ``[DONE]``. If the client disconnects, its requests are cancelled, not decoded for nobody."""
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    extra = {"usage": None} if include_usage else {}
    tok = gen.runtime.tokenizer
    try:
        if chat:  # the first chunk of each choice names the role
            for c in gen.choices:
                yield _sse({**base, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}], **extra})
        try:
            async for c, delta, lps in gen.events():
                lp = _logprobs(tok, lps, chat) if c.req.logprobs is not None else None
                part = ({"delta": {"content": delta} if delta else {}} if chat else {"text": delta})
                chunk = {**base, "choices": [{"index": c.index, **part, "logprobs": lp, "finish_reason": c.finish}],
                         **extra}
                if c.finish is not None:
                    chunk["speculation"] = speculation_stats([c.req])
                yield _sse(chunk)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": gen.usage(),
                            "speculation": speculation_stats([c.req for c in gen.choices])})
        except APIError as e:
            yield _sse(error_body(e.message, e.type, e.param, e.code))
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()  # no-op for finished choices


# ---------------------------------------------------------------------- command line
def build_parser() -> Any:
    from runtime.flags import OneLineParser, positive_float

    p = OneLineParser(prog="python -m runtime.real.serve", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", help="scenario name or YAML (default: the deployment's, else tiny-local)")
    p.add_argument("--deploy", help="deployment YAML: checkpoints, site addresses, WAN emulation (runtime/real/deploy.py)")
    p.add_argument("--controller", default="static", help="NAME[:key=value,...] or policy:<path|runs:/...|models:/name@alias>")
    p.add_argument("--models", help="tiny-model directory used where the deployment names no checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--site", help="run only this drafter site (a gRPC server) instead of the target site")
    p.add_argument("--served-model-name", help="the model name clients use (default: the scenario's target model name)")
    p.add_argument("--max-tokens-limit", type=int,
                   help="largest max_tokens a request may ask for (default: what the model's context allows)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies get a 413 (default: {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--no-wan-emulation", action="store_true", help="real WAN between hosts: add no emulated delay")
    p.add_argument("--grace", type=positive_float, default=10.0,
                   help="seconds in-flight requests get at shutdown (SIGTERM); later ones end with a 503 or an error event")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from controllers import ControllerError, make_controller
    from runtime.contract import InvalidDecision
    from runtime.real.models import ModelError
    from runtime.real.deploy import load_deployment
    from runtime.scenario import ScenarioError

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runtime: RealRuntime | None = None
    try:
        dep = load_deployment(args.deploy, scenario=args.scenario, models_dir=args.models,
                              emulate_wan=False if args.no_wan_emulation else None)
        if args.site:
            return _serve_site(dep, args.site, args.host, args.port, args.seed)
        controller = make_controller(args.controller)
        runtime = RealRuntime(dep, seed=args.seed)
        controller.bind(runtime.info)  # a checkpoint built for another scenario fails here, before serving
        name = args.served_model_name or dep.scenario.spec.target_model
        server = Server(runtime, controller, args.max_tokens_limit, name, args.grace, args.max_body_bytes)
        runtime.start()
        print(f"serving {dep.scenario.name} with {controller.name} as model {name!r} on http://{args.host}:{args.port} "
              f"(sites: {', '.join(f'{n}={c.address}' for n, c in runtime.clients.items()) or 'target only'})", flush=True)
        # uvicorn re-raises SIGTERM or SIGINT (Ctrl-C) after its graceful drain; by then the sites
        # should close and the process exit 0, not die by the signal (or, for SIGINT, with
        # asyncio's KeyboardInterrupt traceback from the middle of the lifespan)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        config = uvicorn.Config(create_app(server), host=args.host, port=args.port, log_level="warning",
                                timeout_graceful_shutdown=int(args.grace) + 2)
        _Uvicorn(config, server.begin_shutdown).run()
        return 0
    except (ScenarioError, ControllerError, ModelError, InvalidDecision, ValidationError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if runtime is not None:
            runtime.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn, but the grace period starts when shutdown does: the runtime is told at once, so
    late requests end with a 503 or an error event within ``--grace``, before uvicorn's own
    drain would time out and cut them."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)


def _serve_site(dep: Any, site: str, host: str, port: int, seed: int) -> int:
    from runtime.load import EmulatedLoad
    from runtime.real.models import load_model
    from runtime.real.site import serve_site
    from runtime.real.transport import run

    names = [s.name for s in dep.scenario.sites]
    if site not in names:
        raise ValueError(f"site {site!r} is not in scenario {dep.scenario.name!r}; sites are {names}")
    ref = dep.drafter_for(site)
    if ref is None or dep.scenario.site(site).role == "target":
        raise ValueError(f"site {site!r} hosts no drafter of its own; run the target site without --site")
    model, _ = load_model(ref.path, ref.device, ref.dtype)
    spec = dep.emulated_load(site)
    load = EmulatedLoad(spec, dep.load_seed(site, seed)) if spec is not None else None
    try:
        run(serve_site(site, model, host, port, load=load))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
