"""``python -m runtime.serve``: an OpenAI-compatible completions server over the real runtime.

    python -m runtime.serve --scenario tiny-local --controller static:k=4 --port 8000
    python -m runtime.serve --deploy my-deploy.yaml --controller policy:runs:/<id>/policy
    python -m runtime.serve --deploy my-deploy.yaml --site near --host 0.0.0.0 --port 50061

The first two start the target site (HTTP API, controller, target model) and launch every
drafter site of the scenario without an address as a local process; ``--site NAME`` runs only
that drafter site, for deployments across hosts. Endpoints: ``POST /v1/completions`` (prompt,
max_tokens, temperature, stream via SSE), ``GET /health``, ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.contract import Controller, drive
from runtime.metrics import KEYS
from runtime.real.runtime import RealRequest, RealRuntime

log = logging.getLogger("specctl.serve")


class CompletionRequest(BaseModel):
    """The supported subset of OpenAI's completions request; other fields are refused by name."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | list[int] = Field(description="text, or a list of token ids")
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False
    model: str | None = None
    n: Literal[1] = 1
    top_p: Literal[1, 1.0] = 1.0
    seed: int | None = Field(None, ge=0, lt=2**63)
    user: str | None = None
    origin: str | None = None  # specctl: the site the request comes from (an edge device)
    slo_class: str | None = None  # specctl: which of the scenario's SLO classes applies


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


class Server:
    """Glue between HTTP handlers (asyncio) and the runtime's driver thread."""

    def __init__(self, runtime: RealRuntime, controller: Controller, max_tokens_limit: int, model_name: str,
                 grace_s: float = 10.0) -> None:
        self.runtime = runtime
        self.controller = controller
        self.max_tokens_limit = max_tokens_limit
        self.model_name = model_name
        self.grace_s = grace_s
        self.failure: str | None = None
        self.driver: threading.Thread | None = None
        self.shutting_down = False

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

    def stop(self) -> None:
        self.shutting_down = True
        self.runtime.shutdown(self.grace_s)
        if self.driver is not None:
            self.driver.join(self.grace_s + 5)

    def overloaded(self) -> bool:
        return self.runtime.backlog >= self.runtime.limits.max_inflight

    def submit(self, body: CompletionRequest) -> tuple[RealRequest, asyncio.Queue, list[int]]:
        rt = self.runtime
        prompt = rt.encode(body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()

        def listener(tokens: list[int], reason: str | None) -> None:
            loop.call_soon_threadsafe(out.put_nowait, (tokens, reason))

        req = rt.submit(prompt, body.max_tokens, body.temperature, origin=body.origin, slo_class=body.slo_class,
                        listener=listener, seed=body.seed)
        return req, out, prompt


def _validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err["type"] == "extra_forbidden":
        return f"unknown or unsupported field {loc!r}"
    if err["type"] == "missing":
        return f"missing required field {loc!r}"
    if loc.startswith("prompt"):
        return "prompt must be a string or a list of token ids (one prompt per request)"
    return f"{loc}: {err['msg']}"


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, server.stop)

    app = FastAPI(title="specctl", lifespan=lifespan)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        try:
            raw = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(raw, dict):
            return _error(400, "request body must be a JSON object")
        try:
            body = CompletionRequest.model_validate(raw)
        except ValidationError as e:
            return _error(400, _validation_message(e))
        if server.failure is not None:
            return _error(503, f"runtime stopped: {server.failure}", "server_error")
        if server.shutting_down or server.runtime.closed:
            return _error(503, "server is shutting down", "server_error")
        if body.max_tokens > server.max_tokens_limit:
            return _error(400, f"max_tokens {body.max_tokens} is over the limit of {server.max_tokens_limit}")
        if server.overloaded():
            return JSONResponse({"error": {"message": "too many requests in flight; retry later", "type": "overloaded"}},
                                status_code=429, headers={"Retry-After": "1"})
        try:
            req, out, prompt = server.submit(body)
        except ValueError as e:
            return _error(400, str(e))
        except RuntimeError as e:
            return _error(503, str(e), "server_error")
        created = int(time.time())
        base = {"id": f"cmpl-{req.rid}", "object": "text_completion", "created": created,
                "model": body.model or server.model_name}
        tok = server.runtime.tokenizer
        if body.stream:
            return _ClosingStream(_stream(out, base, tok, lambda: server.runtime.cancel(req)),
                                  media_type="text/event-stream")
        tokens: list[int] = []
        while True:
            new, reason = await out.get()
            tokens += new
            if reason is not None:
                break
        if reason.startswith("error"):
            status = 429 if "overloaded" in reason else 503
            return _error(status, reason.removeprefix("error: "), "server_error")
        return {**base, "choices": [{"index": 0, "text": tok.decode(tokens, skip_special_tokens=True),
                                     "finish_reason": reason, "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                          "total_tokens": len(prompt) + len(tokens)}}

    @app.get("/health")
    async def health() -> JSONResponse:
        rt = server.runtime
        status = "error" if server.failure else ("shutting_down" if server.shutting_down or rt.closed else "ok")
        body = {"status": status, "scenario": rt.scenario.name, "controller": server.controller.name,
                "in_flight": rt.in_flight, "sites": {name: c.up for name, c in rt.clients.items()}}
        if server.failure:
            body["error"] = server.failure
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(_registry(server.runtime)), media_type=CONTENT_TYPE_LATEST)

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


async def _stream(out: asyncio.Queue, base: dict[str, Any], tok: Any, cancel: Any) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's format: text deltas, a final finish_reason, then [DONE].

    If the client disconnects first, the request is cancelled rather than decoded for nobody.
    """
    tokens: list[int] = []
    sent = ""
    reason: str | None = None
    try:
        while True:
            new, reason = await out.get()
            tokens += new
            if reason is not None and reason.startswith("error"):
                error = {"error": {"message": reason.removeprefix("error: "), "type": "server_error"}}
                yield f"data: {json.dumps(error)}\n\n"
                break
            text = tok.decode(tokens, skip_special_tokens=True)
            delta, sent = text[len(sent):], text
            if delta or reason is not None:
                chunk = {**base, "choices": [{"index": 0, "text": delta, "finish_reason": reason, "logprobs": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            if reason is not None:
                break
        yield "data: [DONE]\n\n"
    finally:
        if reason is None:
            cancel()


def _registry(runtime: RealRuntime) -> Any:
    """A Prometheus registry whose collector reads the runtime's live metrics (DESIGN section 5)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    class RuntimeCollector:
        def collect(self) -> Any:
            summary = runtime.summary()
            for key, doc in KEYS.items():
                value = summary.get(key)
                if isinstance(value, (int, float)):
                    yield GaugeMetricFamily(f"specctl_{key}", doc, value=float(value))
            up = GaugeMetricFamily("specctl_site_up", "1 if the drafter site answers health checks", labels=["site"])
            for name, c in runtime.clients.items():
                up.add_metric([name], 1.0 if c.up else 0.0)
            yield up
            yield GaugeMetricFamily("specctl_in_flight", "admitted, unfinished requests", value=runtime.in_flight)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(RuntimeCollector())  # type: ignore[arg-type]
    return reg


def build_parser() -> Any:
    from runtime.cli import OneLineParser, positive_float

    p = OneLineParser(prog="python -m runtime.serve", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", help="scenario name or YAML (default: the deployment's, else tiny-local)")
    p.add_argument("--deploy", help="deployment YAML: checkpoints, site addresses, WAN emulation (runtime/real/deploy.py)")
    p.add_argument("--controller", default="static", help="NAME[:key=value,...] or policy:<path|runs:/...|models:/name@alias>")
    p.add_argument("--models", help="tiny-model directory used where the deployment names no checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--site", help="run only this drafter site (a gRPC server) instead of the target site")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--no-wan-emulation", action="store_true", help="real WAN between hosts: add no emulated delay")
    p.add_argument("--grace", type=positive_float, default=10.0, help="seconds in-flight requests get at shutdown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    import uvicorn

    from controllers import ControllerError, make_controller
    from runtime.contract import InvalidDecision
    from runtime.models import ModelError
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
            return _serve_site(dep, args.site, args.host, args.port)
        controller = make_controller(args.controller)
        runtime = RealRuntime(dep, seed=args.seed)
        controller.bind(runtime.info)  # a checkpoint built for another scenario fails here, before serving
        runtime.start()
        server = Server(runtime, controller, args.max_tokens_limit, dep.target.path, args.grace)
        print(f"serving {dep.scenario.name} with {controller.name} on http://{args.host}:{args.port} "
              f"(sites: {', '.join(f'{n}={c.address}' for n, c in runtime.clients.items()) or 'target only'})", flush=True)
        # uvicorn drains in-flight requests on SIGTERM, then re-raises it; after that drain the
        # process should close its sites and exit 0, not die by the signal
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=int(args.grace) + 1)
        return 0
    except (ScenarioError, ControllerError, ModelError, InvalidDecision, ValidationError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if runtime is not None:
            runtime.close()


def _serve_site(dep: Any, site: str, host: str, port: int) -> int:
    from runtime.models import load_model
    from runtime.real.site import serve_site

    names = [s.name for s in dep.scenario.sites]
    if site not in names:
        raise ValueError(f"site {site!r} is not in scenario {dep.scenario.name!r}; sites are {names}")
    ref = dep.drafter_for(site)
    if ref is None or dep.scenario.site(site).role == "target":
        raise ValueError(f"site {site!r} hosts no drafter of its own; run the target site without --site")
    model, _ = load_model(ref.path, ref.device, ref.dtype)
    try:
        asyncio.run(serve_site(site, model, host, port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
