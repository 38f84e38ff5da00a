"""The OpenAI-compatible server over real HTTP on 127.0.0.1: the official client, errors, speculation
control, Prometheus metrics, overload, and (slow, multi-process) body limits, drafter restarts, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from controllers import make_controller
from runtime.real.deploy import load_deployment
from runtime.real.runtime import RealRuntime
from runtime.real.serve import Server, create_app, max_output_tokens
from tests.real_fixtures import greedy_reference, tiny_dir, tiny_models  # noqa: F401
from tests.test_real_runtime import _target_only

PROMPT = "<s> alice gave bob a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _http_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free 127.0.0.1 port in a thread; yields its URL."""
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{srv.config.port}"
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """A target-only server (static:k=4, max_inflight=2) and an httpx client for it."""
    path = _target_only(tmp_path_factory.mktemp("serve"), max_inflight=2)
    rt = RealRuntime(load_deployment(scenario=str(path), models_dir=tiny_dir))
    server = Server(rt, make_controller("static:k=4"), max_tokens_limit=900, model_name="tiny")
    with _http_server(create_app(server)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, server
    rt.close()


def _events(r: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]


def test_completion_is_the_target_greedy_text(served, tiny_models):
    client, _ = served
    target, _, tok = tiny_models
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = greedy_reference(target, tok(PROMPT)["input_ids"], 20, tok.eos_token_id)
    assert body["choices"][0]["text"] == tok.decode(ref, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == len(ref)
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["model"] == "tiny"
    spec = body["speculation"]
    assert spec["rounds"] > 0 and spec["draft_tokens"] >= spec["accepted_tokens"] and spec["sites"] == {"dc": spec["rounds"]}


def test_streaming_sse_deltas_add_up_to_the_completion(served):
    client, _ = served
    plain = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16}).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["speculation"]["rounds"] >= 1


def test_the_official_openai_client_works(served):
    client, _ = served
    oa = openai.OpenAI(base_url=str(client.base_url).rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in oa.models.list()] == ["tiny"]
    c = oa.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, stop=["river"], presence_penalty=0,
                              frequency_penalty=0, best_of=1, echo=False, logprobs=None, top_p=1, n=1, temperature=0)
    assert c.choices[0].text and "river" not in c.choices[0].text and c.usage.completion_tokens >= 1
    chat = oa.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "be brief"},
                                                              {"role": "user", "content": "alice gave bob a"}],
                                      max_tokens=8, presence_penalty=0.0, frequency_penalty=0.0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.completion_tokens == 8 or chat.choices[0].finish_reason == "stop"
    stream = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "alice gave bob a"}],
                                        max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == chat.choices[0].message.content  # greedy: the same text streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        oa.completions.create(model="tiny", prompt=PROMPT, presence_penalty=0.5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oa.completions.create(model="gpt-4", prompt=PROMPT)


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({"max_tokens": 3}, "missing required field 'prompt'"),
    ({"prompt": "x", "max_tokens": 901}, "over the limit of 900"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "16"}, "max_tokens: Input should be a valid integer (got '16')"),
    ({"prompt": "x", "stream": "true"}, "stream: Input should be a valid boolean"),
    ({"prompt": "x", "frequency_penalty": 1}, "unsupported value(s): frequency_penalty=1"),
    ({"prompt": "x", "top_p": 0.5, "echo": True}, "top_p=0.5, echo=True"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "only allowed with stream: true"),
    ({"prompt": "x", "best_of": 3}, "best_of=3"),
    ({"prompt": "x", "bogus": 1}, "unknown or unsupported field 'bogus'"),
    ({"prompt": "x", "n": 0}, "n:"),
    ({"prompt": ["a", "b"]}, "one prompt per request"),
    ({"prompt": [99999]}, "token ids must be in"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "the " * 1100, "max_tokens": 8}, "context limit"),
    ({"prompt": "x", "slo_class": "gold"}, "unknown slo_class"),
    ({"prompt": "x", "speculation": {"max_k": -1}}, "speculation.max_k"),
])
def test_bad_input_gets_a_400_in_openai_error_shape(served, body, needle):
    client, _ = served
    r = client.post("/v1/completions", content=body) if isinstance(body, bytes) else client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert needle in err["message"]


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("DELETE", "/health", 405),
                                                  ("GET", "/v1/completions", 405)])
def test_every_error_path_uses_the_openai_error_shape(served, method, path, status):
    client, _ = served
    r = client.request(method, path)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_stop_strings_n_and_logprobs(served):
    client, server = served
    full = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16}).json()["choices"][0]["text"]
    stop = full.split()[3]  # a word in the middle
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "stop": stop, "n": 2, "logprobs": 2})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for c in body["choices"]:
        assert c["text"] == full[: full.index(stop)] and c["finish_reason"] == "stop"
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) > 0
        assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp["top_logprobs"], lp["token_logprobs"]))  # greedy
    _wait_idle(server.runtime)  # a stop string cancels the rest of the decoding asynchronously (max_inflight is 2)
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "stop": [stop], "stream": True}) as s:
        assert s.status_code == 200
        chunks = [json.loads(e) for e in _events(s)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.index(stop)]
    _wait_idle(server.runtime)


def _wait_idle(rt: RealRuntime, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rt.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rt.backlog == 0


def test_speculation_disabled_commits_only_plain_decode_steps_and_stays_lossless(served, tiny_models):
    client, server = served
    target, _, tok = tiny_models
    rt = server.runtime
    ref = greedy_reference(target, tok(PROMPT)["input_ids"], 24, tok.eos_token_id)
    drafted = rt.metrics.draft_tokens
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "speculation": {"enabled": False}})
    body = r.json()
    assert body["speculation"] == {"rounds": 0, "draft_tokens": 0, "accepted_tokens": 0, "acceptance_rate": None,
                                   "sites": {}}
    assert rt.metrics.draft_tokens == drafted  # static:k=4 planned drafts; none was made
    assert body["choices"][0]["text"] == tok.decode(ref, skip_special_tokens=True)
    capped = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "speculation": {"max_k": 2}}).json()
    spec = capped["speculation"]
    assert spec["rounds"] > 0 and spec["draft_tokens"] <= 2 * spec["rounds"]
    assert capped["choices"][0]["text"] == body["choices"][0]["text"]


def _scrape(client: httpx.Client) -> dict[str, Any]:
    """``{(sample name, labels): value}`` and the family types, via prometheus_client's parser."""
    samples, types = {}, {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return {"samples": samples, "types": types}


def test_prometheus_metrics_parse_counters_only_go_up_and_histograms_exist(served):
    client, server = served
    client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8})
    before = _scrape(client)
    client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8})
    rt = server.runtime
    long = [rt.submit(rt.encode(PROMPT), 300) for _ in range(2)]  # max_inflight is 2: the next one gets a 429
    assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}).status_code == 429
    for req in long:
        rt.cancel(req)
    after = _scrape(client)
    types = after["types"]
    for name in ("specctl:time_to_first_token_seconds", "specctl:request_time_per_output_token_seconds",
                 "specctl:e2e_request_latency_seconds", "specctl:verify_batch_seconds"):
        assert types[name] == "histogram", name
    for name in ("specctl:spec_decode_num_drafts", "specctl:spec_decode_num_draft_tokens",
                 "specctl:spec_decode_num_accepted_tokens", "specctl:spec_decode_num_accepted_tokens_per_pos",
                 "specctl:requests_completed", "specctl:generation_tokens", "specctl:http_responses"):
        assert types[name] == "counter", name
    counters = {k: v for k, v in before["samples"].items() if k[0].endswith("_total") or k[0].endswith("_count")}
    assert counters and all(after["samples"][k] >= v for k, v in counters.items())  # only go up
    site = (("model_name", "tiny"), ("site", "dc"))
    assert after["samples"][("specctl:spec_decode_num_drafts_total", site)] > before["samples"][("specctl:spec_decode_num_drafts_total", site)]
    assert after["samples"][("specctl:http_responses_total", (("code", "429"), ("path", "/v1/completions")))] >= 1
    ttft = ("specctl:time_to_first_token_seconds_count", (("model_name", "tiny"),))
    assert after["samples"][ttft] > before["samples"][ttft]


def test_overload_gets_429_not_a_crash(served):
    client, server = served
    rt = server.runtime
    ids = rt.encode(PROMPT)
    long = [rt.submit(ids, 900) for _ in range(2)]  # max_inflight is 2
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4})
    assert r.status_code == 429 and "retry" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
    deadline = time.monotonic() + 60
    while any(req.finish_reason is None for req in long) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}).status_code == 200


def test_health_ready_and_a_max_tokens_limit_that_fits_the_context(served):
    client, server = served
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["down"] == []
    assert client.get("/ready").json() == {"ready": True}
    rt = server.runtime
    rt.validate([2], max_output_tokens(rt))  # the default limit: the largest request it allows fits
    with pytest.raises(ValueError, match="does not fit the model's context"):
        Server(rt, server.controller, max_tokens_limit=max_output_tokens(rt) + 1, model_name="x")


def test_client_disconnect_cancels_the_stream(served):
    client, server = served
    rt = server.runtime
    before = rt.metrics.dropped
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 800, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                time.sleep(0.1)  # let more tokens queue so the server is blocked mid-send
                break  # read one event, then hang up
    deadline = time.monotonic() + 30
    while rt.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rt.in_flight == 0 and rt.metrics.dropped == before + 1


@pytest.mark.parametrize("controller, needle", [("nope", "unknown controller 'nope'"),
                                                 ("policy:/no/such/checkpoint", "error:")])
def test_bad_controller_fails_at_start_up_with_one_line(controller, needle, tiny_dir):
    p = subprocess.run([sys.executable, "-m", "runtime.real.serve", "--controller", controller, "--models", str(tiny_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def _random_policy(directory, scenario) -> str:
    """An exported policy (untrained weights) with the codec of ``scenario``, as training writes it."""
    import numpy as np
    from safetensors.numpy import save_file

    from controllers.policy import POLICY_FORMAT, POLICY_FORMAT_VERSION
    from policy_env.codec import Codec
    from runtime.sim import Simulator

    codec = Codec.for_runtime(Simulator(scenario, 0, 1.0).info, n_slots=4)
    dims = [int(x) for x in codec.action_space().nvec]
    rng = np.random.default_rng(0)
    save_file({"layer0.weight": rng.normal(size=(16, codec.obs_size)).astype(np.float32),
               "layer0.bias": np.zeros(16, np.float32),
               "layer1.weight": rng.normal(size=(sum(dims), 16)).astype(np.float32),
               "layer1.bias": np.zeros(sum(dims), np.float32)}, str(directory / "policy.safetensors"))
    spec = {"format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION, "codec": codec.to_dict(), "base": "static",
            "net": {"layers": 2, "activation": "tanh", "action_dims": dims, "masked": True, "obs_size": codec.obs_size}}
    (directory / "policy.json").write_text(json.dumps(spec))
    return str(directory)


def test_policy_checkpoint_for_another_scenario_fails_at_start_up(tiny_dir, tmp_path):
    from runtime.scenario import load_scenario

    ref = _random_policy(tmp_path, load_scenario("wan-4region"))
    p = subprocess.run([sys.executable, "-m", "runtime.real.serve", "--scenario", "tiny-local", "--controller", f"policy:{ref}",
                        "--models", str(tiny_dir)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_policy_checkpoint_in_the_slot_stays_lossless(tiny_dir, tmp_path, tiny_models):
    from runtime.contract import drive
    from runtime.real.models import tiny_prompts

    dep = load_deployment(scenario=str(_target_only(tmp_path)), models_dir=tiny_dir)
    controller = make_controller(f"policy:{_random_policy(tmp_path, dep.scenario)}")
    target, _, tok = tiny_models
    prompts = [tok(p)["input_ids"] for p in tiny_prompts()[:4]]
    rt = RealRuntime(dep)
    with rt:
        reqs = [rt.submit(p, 20) for p in prompts]
        rt.end_of_workload()
        drive(rt, controller)
    assert [r.output for r in reqs] == [greedy_reference(target, p, 20, tok.eos_token_id) for p in prompts]




# ---------------------------------------------------------------------- the multi-process server
@contextlib.contextmanager
def _live_server(tiny_dir, grace: float = 2.0, controller: str = "wanspec",
                 new_session: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m runtime.real.serve --scenario tiny-local`` (two launched drafter sites), once
    every site is up; ``new_session``: in a process group of its own, as a terminal runs it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.real.serve", "--scenario", "tiny-local", "--controller", controller,
         "--models", str(tiny_dir), "--port", str(port), "--grace", str(grace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}"
    try:
        banner = proc.stdout.readline()  # printed once the sites are up
        assert "serving tiny-local with wanspec" in banner, proc.stderr.read() if proc.poll() is not None else banner
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").json()["status"] == "ok":
                    break
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="module")
def live(tiny_dir):
    with _live_server(tiny_dir) as (proc, url):
        yield proc, url


@pytest.mark.slow
def test_a_16mb_body_gets_a_413_while_health_keeps_answering(live):
    _, url = live
    result: list[Any] = []

    def send() -> None:
        body = b'{"prompt": "' + b"a" * (16 << 20) + b'"}'
        result.append(httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"},
                                 timeout=60))

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive() or not latencies:
        t = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - t)
        time.sleep(0.01)
    sender.join()
    assert result[0].status_code in (413, 400) and "over the limit" in result[0].json()["error"]["message"]
    assert max(latencies) < 0.5, latencies


@pytest.mark.slow
def test_a_killed_drafter_is_restarted_and_health_says_degraded_then_ok(live):
    _, url = live
    near = httpx.get(f"{url}/health").json()["sites"]["near"]
    os.kill(near["pid"], signal.SIGKILL)
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        h = httpx.get(f"{url}/health").json()
        if not seen or seen[-1] != h["status"]:
            seen.append(h["status"])
            if h["status"] == "degraded":
                assert h["down"] == ["near"]
        if seen[-1] == "ok" and "degraded" in seen:
            break
        time.sleep(0.05)
    assert seen[-2:] == ["degraded", "ok"], seen
    after = h["sites"]["near"]
    assert after["restarts"] == 1 and after["pid"] != near["pid"] and after["up"]
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(near["pid"], 0)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=60)
    assert r.status_code == 200
    metrics = {(s.name, s.labels.get("site")): s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for s in f.samples}
    assert metrics[("specctl:site_restarts_total", "near")] == 1


@pytest.mark.slow
def test_sigterm_ends_late_requests_with_503s_or_error_events_and_exits_within_the_grace_period(tiny_dir):
    grace = 2.0
    # round by round: every round pays the emulated WAN round trip, so the long requests below
    # cannot finish within the grace period (wanspec's draft-ahead mode drafts mostly locally here)
    with _live_server(tiny_dir, grace, controller="wanspec:ahead=false") as (proc, url):
        site_ports = [int(s["address"].rsplit(":", 1)[1]) for s in httpx.get(f"{url}/health").json()["sites"].values()]
        results: dict[str, Any] = {}
        started = threading.Barrier(7)

        def plain(name: str, max_tokens: int) -> None:
            started.wait()
            results[name] = httpx.post(f"{url}/v1/completions", timeout=60,
                                       json={"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True})

        def stream(name: str, max_tokens: int) -> None:
            started.wait()
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                              json={"messages": [{"role": "user", "content": "alice"}], "max_tokens": max_tokens,
                                    "ignore_eos": True, "stream": True}) as s:
                results[name] = (s.status_code, _events(s))

        # ~1000 tokens take ~10 s here round by round (more than 2 s on any machine); 8 take well under 2 s
        threads = [threading.Thread(target=plain, args=(f"plain{i}", 1000)) for i in range(3)]
        threads += [threading.Thread(target=stream, args=(f"stream{i}", 1000)) for i in range(3)]
        threads += [threading.Thread(target=stream, args=("short", 8))]
        for t in threads:
            t.start()
        # all six long requests in flight (the short one may already be done on a busy machine)
        deadline = time.monotonic() + 30
        while True:
            short_done = "short" in results  # read before the count: if it ends in between, we look again
            if httpx.get(f"{url}/health").json()["in_flight"] >= (6 if short_done else 7):
                break
            assert time.monotonic() < deadline, "the seven requests never were in flight together"
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = proc.wait(timeout=30)
        took = time.monotonic() - t0
        stderr = proc.stderr.read()
    assert code == 0 and took < grace + 3, took
    assert "Traceback" not in stderr, stderr
    for i in range(3):
        r = results[f"plain{i}"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text
        status, events = results[f"stream{i}"]
        assert status == 200 and events[-1] == "[DONE]" and "error" in json.loads(events[-2]), events[-2:]
    status, events = results["short"]  # done before, or in flight and done within the grace period
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    for p in site_ports:  # the launched drafter sites went with it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_its_sites_cleanly(tiny_dir):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: the server and the drafter
    sites it launched. It must drain and exit 0 without a traceback, and not restart the sites."""
    with _live_server(tiny_dir, grace=1.0, new_session=True) as (proc, url):
        site_ports = [int(s["address"].rsplit(":", 1)[1]) for s in httpx.get(f"{url}/health").json()["sites"].values()]
        assert httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=60).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        stderr = proc.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "restarting" not in stderr, stderr
    assert "shutting down" in stderr, stderr
    for p in site_ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
