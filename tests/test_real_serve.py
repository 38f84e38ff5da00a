"""The OpenAI-compatible server: completions (plain and SSE), errors, overload, health, metrics, shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from controllers import make_controller
from runtime.real.deploy import load_deployment
from runtime.real.runtime import RealRuntime
from runtime.serve import Server, create_app
from tests.real_fixtures import greedy_reference, tiny_dir, tiny_models  # noqa: F401
from tests.test_real_runtime import _target_only

PROMPT = "<s> alice gave bob a"


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    path = _target_only(tmp_path_factory.mktemp("serve"), max_inflight=2)
    rt = RealRuntime(load_deployment(scenario=str(path), models_dir=tiny_dir))
    server = Server(rt, make_controller("static:k=4"), max_tokens_limit=900, model_name="tiny")
    with TestClient(create_app(server)) as client:
        yield client, server
    rt.close()


def test_completion_is_the_target_greedy_text(served, tiny_models):
    client, server = served
    target, _, tok = tiny_models
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = greedy_reference(target, tok(PROMPT)["input_ids"], 20, tok.eos_token_id)
    assert body["choices"][0]["text"] == tok.decode(ref, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == len(ref)
    assert body["choices"][0]["finish_reason"] in ("length", "stop")


def test_streaming_sse_deltas_add_up_to_the_completion(served):
    client, _ = served
    plain = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16}).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({"max_tokens": 3}, "missing required field 'prompt'"),
    ({"prompt": "x", "max_tokens": 901}, "over the limit of 900"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "frequency_penalty": 1}, "unknown or unsupported field 'frequency_penalty'"),
    ({"prompt": "x", "n": 2}, "n:"),
    ({"prompt": ["a", "b"]}, "one prompt per request"),
    ({"prompt": [99999]}, "token ids must be in"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "the " * 1100, "max_tokens": 8}, "context limit"),
    ({"prompt": "x", "slo_class": "gold"}, "unknown slo_class"),
])
def test_bad_input_gets_a_400_with_a_message(served, body, needle):
    client, _ = served
    r = client.post("/v1/completions", content=body) if isinstance(body, bytes) else client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_health_and_prometheus_metrics(served):
    client, _ = served
    client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4})
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["controller"] == "static"
    text = client.get("/metrics").text
    completed = [line for line in text.splitlines() if line.startswith("specctl_requests_completed ")]
    assert completed and float(completed[0].split()[1]) >= 1
    for key in ("specctl_tpot_p50_s", "specctl_acceptance_rate", "specctl_target_verify_forward_passes"):
        assert key in text


def test_overload_gets_429_not_a_crash(served):
    client, server = served
    rt = server.runtime
    ids = rt.encode(PROMPT)
    long = [rt.submit(ids, 900) for _ in range(2)]  # max_inflight is 2
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4})
    assert r.status_code == 429 and "retry" in r.json()["error"]["message"]
    deadline = time.monotonic() + 60
    while any(req.finish_reason is None for req in long) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}).status_code == 200


@pytest.mark.parametrize("controller, needle", [("nope", "unknown controller 'nope'"),
                                                 ("policy:/no/such/checkpoint", "error:")])
def test_bad_controller_fails_at_start_up_with_one_line(controller, needle, tiny_dir):
    p = subprocess.run([sys.executable, "-m", "runtime.serve", "--controller", controller, "--models", str(tiny_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_process_server_streams_and_shuts_down_gracefully(tiny_dir):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.serve", "--scenario", "tiny-local", "--controller", "wanspec",
         "--models", str(tiny_dir), "--port", str(port), "--grace", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        banner = proc.stdout.readline()  # printed once the sites are up
        assert "serving tiny-local with wanspec" in banner, proc.stderr.read() if proc.poll() is not None else banner
        site_ports = [int(part.rsplit(":", 1)[1].rstrip(")\n")) for part in banner.split("sites: ")[1].split(", ")]
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health").json()["sites"] == {"near": True, "far": True}:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        # a long stream is in flight when the server is told to stop: it still finishes
        events: list[str] = []

        def consume() -> None:
            with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                              json={"prompt": PROMPT, "max_tokens": 400, "stream": True}) as s:
                events.extend(line for line in s.iter_lines() if line.startswith("data: "))

        t = threading.Thread(target=consume)
        t.start()
        while not events:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=30) == 0
        for p in site_ports:  # the launched drafter sites went with it
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", p)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


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
    p = subprocess.run([sys.executable, "-m", "runtime.serve", "--scenario", "tiny-local", "--controller", f"policy:{ref}",
                        "--models", str(tiny_dir)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_policy_checkpoint_in_the_slot_stays_lossless(tiny_dir, tmp_path, tiny_models):
    from runtime.contract import drive
    from runtime.models import tiny_prompts

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
