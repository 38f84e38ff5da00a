"""The server's Prometheus metrics: vLLM's names and semantics under a ``specctl:`` prefix.

A vLLM dashboard ports by renaming ``vllm:`` to ``specctl:``. Counters only go up; latencies are
histograms (TTFT, TPOT, end-to-end, verification batch time). Speculative-decoding counters
carry a ``site`` label (who drafted), HTTP responses a ``code`` label (429s included). Each
server has its own :class:`CollectorRegistry`, so several servers in one process don't collide.
Events come from the runtime's driver thread (``on_batch``, ``on_finish``); prometheus_client's
metrics are thread-safe.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime.contract import BatchResult
from runtime.real.runtime import RealRequest, RealRuntime

#: Latency buckets (seconds) from a tiny CPU model to a loaded GPU target.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
#: Paths with their own label value; anything else is counted as "other" (no label explosion).
PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics"})


class ServeMetrics:
    """Every metric of one server, in its own registry; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, runtime: RealRuntime, model_name: str) -> None:
        reg = self.registry = CollectorRegistry()
        self.model_name = model_name
        m = ["model_name"]
        self.num_drafts = Counter("specctl:spec_decode_num_drafts", "speculation rounds verified (drafts)",
                                  m + ["site"], registry=reg)
        self.num_draft_tokens = Counter("specctl:spec_decode_num_draft_tokens", "draft tokens verified",
                                        m + ["site"], registry=reg)
        self.num_accepted = Counter("specctl:spec_decode_num_accepted_tokens", "draft tokens accepted",
                                    m + ["site"], registry=reg)
        self.accepted_per_pos = Counter("specctl:spec_decode_num_accepted_tokens_per_pos",
                                        "drafts whose token at this position (0-based) was accepted",
                                        m + ["site", "position"], registry=reg)
        self.prompt_tokens = Counter("specctl:prompt_tokens", "prompt tokens of admitted requests", m, registry=reg)
        self.request_success = Counter("specctl:request_success", "requests that completed, by finish reason",
                                       m + ["finished_reason"], registry=reg)
        self.ttft = Histogram("specctl:time_to_first_token_seconds", "time to first token", m,
                              buckets=LATENCY_BUCKETS, registry=reg)
        self.tpot = Histogram("specctl:request_time_per_output_token_seconds",
                              "per request: time per output token after the first", m, buckets=LATENCY_BUCKETS,
                              registry=reg)
        self.e2e = Histogram("specctl:e2e_request_latency_seconds", "end-to-end request latency", m,
                             buckets=LATENCY_BUCKETS, registry=reg)
        self.verify = Histogram("specctl:verify_batch_seconds", "target verification forward time per batch", m,
                                buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("specctl:verify_batch_size", "requests per verification forward", m,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=reg)
        self.http = Counter("specctl:http_responses", "HTTP responses by path and status code", ["path", "code"],
                            registry=reg)
        self.running = Gauge("specctl:num_requests_running", "admitted, unfinished requests", m, registry=reg)
        self.running.labels(model_name).set_function(lambda: runtime.in_flight)
        reg.register(_RuntimeTotals(runtime, model_name))
        runtime.on_batch = self.observe_batch
        runtime.on_finish = self.observe_finish

    def observe_batch(self, b: BatchResult) -> None:
        name = self.model_name
        self.verify.labels(name).observe(b.duration)
        self.batch_size.labels(name).observe(len(b.rids))
        for k, accepted, site in zip(b.ks, b.accepted, b.draft_sites):
            if k <= 0:
                continue
            site = site or "unknown"
            self.num_drafts.labels(name, site).inc()
            self.num_draft_tokens.labels(name, site).inc(k)
            self.num_accepted.labels(name, site).inc(accepted)
            for pos in range(accepted):
                self.accepted_per_pos.labels(name, site, str(pos)).inc()

    def observe_finish(self, req: RealRequest) -> None:
        name = self.model_name
        self.request_success.labels(name, req.finish_reason or "unknown").inc()
        if req.first_token_time >= 0:
            self.ttft.labels(name).observe(req.first_token_time - req.arrival)
            if req.generated > 1:
                self.tpot.labels(name).observe((req.finish_time - req.first_token_time) / (req.generated - 1))
        self.e2e.labels(name).observe(req.finish_time - req.arrival)

    def render(self) -> bytes:
        return generate_latest(self.registry)



class HTTPOutcomes:
    """ASGI middleware counting every HTTP response by path and status code (errors, 413s, 429s too)."""

    def __init__(self, app: Any, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # an exception before the response started ends as a 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.counter.labels(scope["path"] if scope["path"] in PATHS else "other", str(status)).inc()


class _RuntimeTotals(Collector):
    """The runtime's own cumulative totals as counters, and site health, read at scrape time."""

    def __init__(self, runtime: RealRuntime, model_name: str) -> None:
        self.runtime = runtime
        self.model_name = model_name

    def collect(self) -> Iterator[Any]:
        rt = self.runtime
        for key, (doc, value) in rt.totals().items():
            c = CounterMetricFamily(f"specctl:{key}", doc, labels=["model_name"])
            c.add_metric([self.model_name], value)
            yield c
        up = GaugeMetricFamily("specctl:site_up", "1 if the drafter site answers health checks", labels=["site"])
        restarts = CounterMetricFamily("specctl:site_restarts", "times a launched drafter site was restarted",
                                       labels=["site"])
        for name, client in rt.clients.items():
            up.add_metric([name], 1.0 if client.up else 0.0)
            restarts.add_metric([name], rt.processes.restarts.get(name, 0))
        yield up
        yield restarts
