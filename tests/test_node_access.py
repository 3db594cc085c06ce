"""Who may ask an inference node what: with API keys (``serve --api-key``, as vLLM's) the /v1 endpoints serve
only a request that sends one of them as OpenAI's SDKs do, a 401 otherwise, not counted as demand; probes and
metrics stay open; loadgen and profile send the key, and say so at once where the node refuses them. With
served model names (``--served-model-name``), answers carry the name asked for, and a request for another model
is a 404."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

import peakpilot

from tests.conftest import SAMPLE


@pytest.fixture
def keyed_node(node_factory, monkeypatch):
    monkeypatch.setenv("PEAKPILOT_API_KEY", "key-old key-new")  # two keys, mid-rotation, from a Secret's variable
    n = node_factory("--model", "builtin:tiny", "--max-new-tokens", "16", "--served-model-name", "llama-3",
                     "--served-model-name", "chat")
    monkeypatch.delenv("PEAKPILOT_API_KEY")
    n.wait_ready()
    return n


def metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return float(next(line.split()[-1] for line in lines if line.startswith(name + " ")))


def test_only_requests_with_one_of_the_keys_are_served_and_the_others_are_not_demand(keyed_node):
    from openai import AuthenticationError, OpenAI

    url = keyed_node.url
    for key in ("key-old", "key-new"):
        answer = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0).completions.create(
            model="llama-3", prompt="Hello", max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(AuthenticationError) as refused:
        OpenAI(base_url=f"{url}/v1", api_key="key-stolen", max_retries=0).completions.create(
            model="llama-3", prompt="Hello", max_tokens=4)
    assert refused.value.code == "invalid_api_key" and "Incorrect API key" in refused.value.message
    bare = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert bare.status_code == 401 and bare.headers["WWW-Authenticate"] == "Bearer"
    assert "No API key provided" in bare.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer key-new"}).status_code == 200
    # the kubelet's probes and Prometheus's scrape send no key
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
    assert httpx.get(f"{url}/version").json() == {"version": peakpilot.__version__}  # vLLM's, open as vLLM's is
    assert metric(url, "peakpilot_unauthorized_requests_total") == 3  # two completions, one model list
    assert metric(url, 'peakpilot_requests_total{outcome="ok"}') == 2
    assert sum(metric(url, f'peakpilot_requests_total{{outcome="{o}"}}') for o in ("busy", "error")) == 0
    assert "key-old" not in keyed_node.output() and "key-new" not in keyed_node.output()


def test_loadgen_sends_the_key_and_stops_at_once_without_it(keyed_node, monkeypatch):
    command = [sys.executable, "-m", "peakpilot.cli", "loadgen", "--trace", str(SAMPLE), "--url", keyed_node.url,
               "--speedup", "600", "--rate-scale", "0.00002", "--duration", "3", "--json"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "the node asks for an API key (HTTP 401): give --api-key" in refused.stderr
    wrong = subprocess.run(command + ["--api-key", "nope"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "refuses the API key given" in wrong.stderr
    monkeypatch.setenv("PEAKPILOT_API_KEY", "key-new")
    sent = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    result = json.loads(sent.stdout)
    assert result["sent"] > 0 and result["outcomes"] == {"ok": result["sent"], "busy": 0, "error": 0}
    # --model is the model field each request sends: another model's name is this node's 404
    other = json.loads(subprocess.run(command + ["--model", "gpt-4o"], capture_output=True, text=True,
                                      timeout=120).stdout)
    assert other["outcomes"]["ok"] == 0 and other["errors"] == {"HTTP 404": other["sent"]}
    measured = subprocess.run([sys.executable, "-m", "peakpilot.cli", "profile", "--url", keyed_node.url, "--slo-ms",
                               "5000", "--seconds", "1", "--start-rps", "4", "--max-rps", "8", "--model", "chat",
                               "--json"], capture_output=True, text=True, timeout=120)
    assert measured.returncode == 0, measured.stderr
    profiled = json.loads(measured.stdout)
    assert profiled["rps_per_node"] == 8 and profiled["capped"] and profiled["model"] == "peakpilot-builtin-tiny"


def test_profile_reads_what_a_server_without_ready_does_not_say_as_nothing(tmp_path):
    """Another OpenAI-compatible server (vLLM's has no /ready): its capacity is measured all the same, and what
    only a peakpilot node says of itself is left out rather than failing the run at its end."""
    import asyncio
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from inference_node.loadgen import node_facts

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert asyncio.run(node_facts(f"http://127.0.0.1:{server.server_address[1]}")) == {}  # a 404 page
    finally:
        server.shutdown()
        server.server_close()


def test_answers_carry_the_served_name_asked_for_and_another_model_is_not_found(keyed_node):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{keyed_node.url}/v1", api_key="key-new", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["llama-3", "chat"]
    assert client.models.list().data[0].model_extra["root"] == "peakpilot-builtin-tiny"  # the model itself
    assert client.completions.create(model="llama-3", prompt="Hi", max_tokens=2).model == "llama-3"
    chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert chat.model == "chat"
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=2, stream=True))
    assert chunks and all(c.model == "chat" for c in chunks)
    with pytest.raises(NotFoundError) as missing:
        client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2)
    assert missing.value.code == "model_not_found" and "`gpt-4o` does not exist: this node serves llama-3, chat" in \
        missing.value.message
    # a request that names no model (loadgen's, curl's) is the first name's
    bare = httpx.post(f"{keyed_node.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                      headers={"Authorization": "Bearer key-new"})
    assert bare.status_code == 200 and bare.json()["model"] == "llama-3"
    assert httpx.get(f"{keyed_node.url}/ready").json()["served_model_names"] == ["llama-3", "chat"]
    # vLLM's /tokenize and /detokenize take the same key and the same names
    key = {"Authorization": "Bearer key-new"}
    assert httpx.post(f"{keyed_node.url}/tokenize", json={"prompt": "Hi"}).status_code == 401
    assert httpx.post(f"{keyed_node.url}/detokenize", json={"tokens": [72]}).status_code == 401
    other = httpx.post(f"{keyed_node.url}/tokenize", json={"model": "gpt-4o", "prompt": "Hi"}, headers=key)
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    counted = httpx.post(f"{keyed_node.url}/tokenize", json={"model": "chat", "prompt": "Hi"}, headers=key)
    assert counted.status_code == 200 and counted.json()["count"] == 2
