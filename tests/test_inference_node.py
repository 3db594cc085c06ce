"""The inference node as clients and the controller see it: a real server process on a loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from forecaster.prometheus_source import PrometheusSource
from inference_node.loadgen import run_open_loop, schedule_from_counts
from tests.conftest import free_port, trace_path


def this_device() -> str:
    """What /ready should name here: the CPU in CI, the first GPU where torch sees one."""
    import torch

    return f"cuda:0 ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def node(node_factory):
    n = node_factory("--max-batch", "8", "--max-queue", "16")
    n.wait_ready()
    return n


def test_openai_client_gets_a_completion(node):
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    result = client.completions.create(model="peakpilot-builtin-tiny", prompt="Hello", max_tokens=6, temperature=0)
    assert result.choices[0].finish_reason in ("length", "stop")
    assert result.usage.prompt_tokens == 5 and result.usage.completion_tokens <= 6
    stream = client.completions.create(model="x", prompt="Hi", max_tokens=4, stream=True, temperature=0)
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    # An empty prompt (OpenAI's API takes one) starts from the end-of-text token; it was a 500.
    empty = client.completions.create(model="x", prompt="", max_tokens=3, temperature=0)
    assert empty.usage.prompt_tokens == 0 and empty.usage.completion_tokens <= 3


def test_n_answers_per_prompt_and_stop_strings(node):
    """``n`` answers per prompt (choice i*n+j is prompt i's j-th, as OpenAI orders them) and ``stop``: the
    answer ends before the first stop string, finish_reason "stop", its tokens counted up to there."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    many = client.completions.create(model="x", prompt=["Hello", "Bye"], n=3, max_tokens=5, temperature=0)
    assert [c.index for c in many.choices] == list(range(6))
    assert len({c.text for c in many.choices[:3]}) == 1 and len({c.text for c in many.choices[3:]}) == 1
    alone = client.completions.create(model="x", prompt="Bye", max_tokens=5, temperature=0)
    assert many.choices[3].text == alone.choices[0].text
    chats = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], n=2,
                                           max_tokens=4, temperature=1.0)
    assert [c.index for c in chats.choices] == [0, 1]

    whole = client.completions.create(model="x", prompt="Tell me", max_tokens=16, temperature=0).choices[0].text
    stop = whole[4:6]
    cut = client.completions.create(model="x", prompt="Tell me", max_tokens=16, temperature=0, stop=[stop, "never"])
    assert cut.choices[0].text == whole[:whole.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 16

    for body, param, message in (({"prompt": "a", "n": 0}, "n", "'n' must be a positive integer"),
                                 ({"prompt": ["a"] * 4, "n": 5}, "n", "holds 4 prompts x n=5"),
                                 ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
                                 ({"prompt": "a", "stop": [""]}, "stop", "non-empty strings")):
        r = httpx.post(f"{node.url}/v1/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert message in r.json()["error"]["message"]


def test_log_probabilities_of_answers_and_of_echoed_prompts(node):
    """``logprobs`` (completions: the 0-5 likeliest tokens too; chat: ``logprobs`` and ``top_logprobs``) and
    ``echo``, as OpenAI's client reads them: the model's log-probabilities (its own distribution, worked out
    here again from the same weights) of the tokens it answered, each the likeliest in its place when greedy;
    of a prompt's tokens with ``echo`` and ``max_tokens`` 0 (how evaluation harnesses score a text); and only
    of the tokens an answer kept (not its stop string's). Refused by name, these were never computed."""
    import torch
    from openai import OpenAI

    from inference_node.model import load_model

    model = load_model("builtin", seed=0, device=torch.device("cpu"))  # the node's: seed 0

    def expected(tokens: list[int], start: int) -> list[float]:
        with torch.inference_mode():
            ids = torch.tensor([tokens])
            logits = model.module(ids, torch.ones_like(ids))[0][0].float()
        return [torch.log_softmax(logits[i - 1], -1)[tokens[i]].item() for i in range(start, len(tokens))]

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    prompt = list(b"Hello")
    got = client.completions.create(model="x", prompt="Hello", max_tokens=6, temperature=0, logprobs=3)
    choice = got.choices[0]
    assert len(choice.logprobs.tokens) == got.usage.completion_tokens == 6
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(choice.text)
    answer = list(choice.text.encode()) if choice.text.isascii() else None
    chat = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hello"}], max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 5
    tokens = list(b"user: Hello\nassistant:") + [c.bytes[0] for c in content]
    assert [c.logprob for c in content] == pytest.approx(expected(tokens, len(tokens) - 5), abs=1e-4)
    for c in content:  # greedy: the token chosen is the likeliest, first among the top two
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].bytes == c.bytes
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob) and c.logprob >= c.top_logprobs[1].logprob
    if answer is not None:  # an ASCII answer: its bytes are its tokens
        assert choice.logprobs.token_logprobs == pytest.approx(expected(prompt + answer, 5), abs=1e-4)

    scored = client.completions.create(model="x", prompt="Hello world", max_tokens=0, echo=True, logprobs=0)
    choice = scored.choices[0]
    assert choice.text == "Hello world" and scored.usage.completion_tokens == 0
    assert choice.logprobs.tokens == list("Hello world") and choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected(list(b"Hello world"), 1), abs=1e-4)
    assert choice.logprobs.text_offset == list(range(11))
    echoed = client.completions.create(model="x", prompt="Hello", max_tokens=3, echo=True, temperature=0)
    assert echoed.choices[0].text.startswith("Hello") and echoed.choices[0].logprobs is None

    whole = client.completions.create(model="x", prompt="Tell me", max_tokens=12, temperature=0).choices[0].text
    stop = next((whole[i:i + 2] for i in range(3, 10) if whole[i:i + 2].isascii() and whole[i:i + 2].strip()), None)
    if stop is not None:
        cut = client.completions.create(model="x", prompt="Tell me", max_tokens=12, temperature=0, stop=[stop],
                                        logprobs=1)
        # log-probabilities for the text's tokens; usage counts the stop string's too, as vLLM does
        assert len(cut.choices[0].logprobs.tokens) + 1 <= cut.usage.completion_tokens <= 12


def test_a_prompt_of_token_ids_is_answered_as_its_text_is(node):
    """OpenAI's API takes a completion's prompt as token ids too, one list or a list of them, as evaluation
    harnesses send a tokenized context (lm-evaluation-harness's local-completions does by default) with echo
    and logprobs to score it: the answer, the echoed prompt and the log-probabilities are those of the same
    prompt as text. An id the tokenizer does not have is a 400 naming it, and so is a prompt of mixed kinds."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    ids = list(b"Hello world")  # the built-in tokenizer's: a byte a token
    text = client.completions.create(model="x", prompt="Hello world", max_tokens=6, temperature=0, logprobs=2)
    tokens = client.completions.create(model="x", prompt=ids, max_tokens=6, temperature=0, logprobs=2)
    assert tokens.choices[0].text == text.choices[0].text and tokens.usage == text.usage
    assert tokens.choices[0].logprobs.token_logprobs == text.choices[0].logprobs.token_logprobs
    scored = client.completions.create(model="x", prompt=[ids, list(b"Hi")], max_tokens=0, echo=True, logprobs=1)
    by_text = client.completions.create(model="x", prompt=["Hello world", "Hi"], max_tokens=0, echo=True, logprobs=1)
    assert [c.text for c in scored.choices] == ["Hello world", "Hi"]
    assert [c.logprobs.token_logprobs for c in scored.choices] == [c.logprobs.token_logprobs for c in by_text.choices]
    assert scored.usage.prompt_tokens == 13
    for prompt, message in [([72, 257], "'prompt' holds 257, which is not a token id of this model's tokenizer, "
                                        "0 to 256"),
                            ([[72], [-1]], "'prompt[1]' holds -1, which is not a token id"),
                            (["Hi", [72]], "'prompt' must be a string, a non-empty list of strings, a list of "
                                           "token ids, or a non-empty list of lists of token ids"),
                            ([True, 72], "'prompt' must be a string"),
                            ([], "'prompt' must be a string")]:
        r = httpx.post(f"{node.url}/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=30)
        assert r.status_code == 400 and message in r.json()["error"]["message"], (prompt, r.text)


def test_tokenize_and_detokenize_count_as_the_node_reads_a_request(node):
    """vLLM's /tokenize: a completion's prompt or a chat request's messages as the node reads them (its chat
    template included), the count a client checks against max_model_len before it sends; /detokenize the way
    back. Malformed requests are 400s naming the field."""
    def post(path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{node.url}{path}", json=body, timeout=30)

    ready = httpx.get(f"{node.url}/ready").json()
    counted = post("/tokenize", {"prompt": "Hello"}).json()
    assert counted == {"count": 5, "max_model_len": ready["max_model_len"], "tokens": list(b"Hello"),
                       "token_strs": None}
    messages = [{"role": "user", "content": "Hi"}]
    chat = post("/tokenize", {"messages": messages}).json()
    answered = post("/v1/chat/completions", {"messages": messages, "max_tokens": 1}).json()
    assert chat["count"] == answered["usage"]["prompt_tokens"] == len("user: Hi\nassistant:")
    unopened = post("/tokenize", {"messages": messages, "add_generation_prompt": False}).json()
    assert unopened["count"] == len("user: Hi\n")
    assert post("/detokenize", {"tokens": chat["tokens"]}).json() == {"prompt": "user: Hi\nassistant:"}
    named = post("/tokenize", {"prompt": "Hi\n\u00e9", "return_token_strs": True, "add_special_tokens": False}).json()
    assert named["tokens"] == list("Hi\n\u00e9".encode()) and named["token_strs"] == ["H", "i", "<0x0A>", "<0xC3>",
                                                                                      "<0xA9>"]
    for path, body, message in [
        ("/tokenize", {"prompt": "a", "return_token_strs": "yes"}, "'return_token_strs' must be true or false"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": 1}, "'add_special_tokens' must be true or false"),
        ("/v1/completions", {"prompt": "a", "add_special_tokens": "no"}, "'add_special_tokens' must be true or false"),
        ("/tokenize", {}, "give 'prompt' (a string) or 'messages' (a list of messages)"),
        ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0] must be an object whose 'role'"),
        ("/detokenize", {"tokens": [72, 300]}, "'tokens' holds 300, which is not a token id of this model's "
                                               "tokenizer, 0 to 256"),
        ("/detokenize", {"tokens": "Hi"}, "'tokens' must be a list of token ids"),
    ]:
        r = post(path, body)
        assert r.status_code == 400 and message in r.json()["error"]["message"], (path, body, r.text)
    assert httpx.post(f"{node.url}/tokenize", content=b"{not json", timeout=30).status_code == 400


def test_top_p_and_seed_shape_the_draws_and_defaults_are_taken_as_defaults(node):
    """``top_p`` (nucleus sampling): at a top_p too small for a second token, sampling at temperature 1 is
    the greedy answer, while without it the draws differ from it; a row at top_p 1 draws as it would
    beside no other top_p. ``seed``: the same seed gives the same sampled answer, alone or sharing the
    batch with others, and ``n`` answers of one seed still differ. The neutral values clients send by
    default are taken. Before, top_p and seed were ignored whatever their values."""
    from inference_node.model import DecodeBatch, load_model
    from inference_node.sampling import Sampling

    ask = {"prompt": "Tell me", "max_tokens": 24}
    greedy = httpx.post(f"{node.url}/v1/completions", json=dict(ask, temperature=0), timeout=30).json()
    nucleus = httpx.post(f"{node.url}/v1/completions", json=dict(ask, temperature=1, top_p=1e-6, n=4),
                         timeout=30).json()
    free = httpx.post(f"{node.url}/v1/completions", json=dict(ask, temperature=1, n=4), timeout=30).json()
    assert {c["text"] for c in nucleus["choices"]} == {greedy["choices"][0]["text"]}
    assert greedy["choices"][0]["text"] not in {c["text"] for c in free["choices"]}
    seeded = dict(ask, temperature=1, seed=1234)
    alone = httpx.post(f"{node.url}/v1/completions", json=seeded, timeout=30).json()["choices"][0]["text"]

    async def beside_others():
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            others = [client.post("/v1/completions", json=dict(ask, prompt=f"other {i}", temperature=1))
                      for i in range(3)]
            answers = await asyncio.gather(client.post("/v1/completions", json=seeded), *others)
            return answers[0].json()["choices"][0]["text"]

    assert asyncio.run(beside_others()) == alone
    two = httpx.post(f"{node.url}/v1/completions", json=dict(seeded, n=2), timeout=30).json()["choices"]
    assert two[0]["text"] == alone and two[1]["text"] != alone
    assert httpx.post(f"{node.url}/v1/completions", json=dict(seeded, seed=1235),
                      timeout=30).json()["choices"][0]["text"] != alone
    defaults = dict(ask, temperature=None, top_p=1, frequency_penalty=0, presence_penalty=0, logprobs=None,
                    echo=False, best_of=1, logit_bias={}, response_format={"type": "text"})
    assert httpx.post(f"{node.url}/v1/completions", json=defaults, timeout=30).status_code == 200

    import torch

    model = load_model("builtin:tiny", device=torch.device("cpu"))

    def first_row(top_p_of_second: float) -> list[int]:
        batch, got = DecodeBatch(model, seed=3), {}
        batch.add("a", [65] * 8, 16, Sampling(temperature=1.0))
        batch.add("b", [66] * 8, 16, Sampling(temperature=1.0, top_p=top_p_of_second))
        while len(batch):
            got.update(batch.step())
        return got["a"]

    assert first_row(0.5) == first_row(1.0)


def test_openai_client_gets_a_chat_completion(node):
    """The chat endpoint most clients call: the conversation as one prompt, the answer as the assistant's
    message, streamed as chat.completion.chunk events too; it is batched, counted and shed as completions."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    result = client.chat.completions.create(model="x", messages=messages, max_tokens=6, temperature=0)
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    # "system: Be brief.\nuser: Hello\nassistant:" in the byte tokenizer
    assert result.usage.prompt_tokens == 40 and result.usage.completion_tokens <= 6
    same = client.completions.create(model="x", prompt="system: Be brief.\nuser: Hello\nassistant:", max_tokens=6,
                                     temperature=0)
    assert choice.message.content == same.choices[0].text  # one prompt, the same greedy answer
    chunks = list(client.chat.completions.create(model="x", messages=messages, max_completion_tokens=4,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    whole = client.chat.completions.create(model="x", messages=messages, max_completion_tokens=4, temperature=0)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert whole.usage.completion_tokens <= 4  # max_completion_tokens, the newer name, is honoured
    counted = list(client.chat.completions.create(model="x", messages=messages, max_completion_tokens=4,
                                                  temperature=0, stream=True, stream_options={"include_usage": True}))
    assert counted[-1].choices == [] and counted[-1].usage == whole.usage and chunks[-1].usage is None
    metrics = httpx.get(f"{node.url}/metrics").text
    assert 'peakpilot_requests_total{outcome="ok"} 5.0' in metrics


@pytest.mark.parametrize("body,field,message", [
    ('{"model": "x"}', "messages", "'messages' must be a non-empty list"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role", "'role' is one of"),
    ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content", "a string or a list of text parts"),
    ('{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
     "messages[0].content", "text parts only"),
    ('{"messages": [{"role": "user", "content": "' + "x" * 600 + '"}]}', "messages", "longer than 512 tokens"),
    ('{"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}', "max_completion_tokens",
     "positive integer"),
    ('{"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": {"name": "f"}}]}',
     "tools", "'tools' is not supported by this node"),
    ('{"messages": [{"role": "user", "content": "a"}], "logprobs": 2}', "logprobs", "'logprobs' must be true or false"),
    ('{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}', "top_logprobs",
     "'top_logprobs' needs 'logprobs': true"),
    ('{"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 21}', "top_logprobs",
     "from 0 to 20"),
])
def test_bad_chat_requests_get_400_naming_the_field(shared_node, body, field, message):
    r = httpx.post(f"{shared_node.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and message in err["message"]


def test_a_request_fits_the_nodes_limits_and_the_models_context():
    """--max-prompt-tokens, --max-new-tokens and --max-model-len, each refused by name with what would fit;
    a default max_tokens is cut to the room the prompt leaves, and a chat answer not limited by its request
    runs on to the node's limit (it was cut at 16 tokens, the completions default)."""
    from fastapi.testclient import TestClient

    from inference_node.server import NodeConfig, create_app

    config = NodeConfig(engine="thread", max_model_len=64, max_prompt_tokens=64, max_tokens_limit=40, max_batch=4)
    with TestClient(create_app(config)) as client:
        deadline = time.time() + 60
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").json()["max_model_len"] == 64
        assert client.get("/v1/models").json()["data"][0]["max_model_len"] == 64

        def ask(**body) -> tuple[int, dict]:
            r = client.post("/v1/completions", json={"temperature": 0, **body})
            return r.status_code, r.json()

        for body, field, message in [
            ({"prompt": "x" * 65}, "prompt", "'prompt' is longer than 64 tokens (this node's --max-prompt-tokens)"),
            ({"prompt": "x" * 64}, "prompt", "maximum context length is 64 tokens, and 'prompt' is 64 of them: it "
                                             "leaves no room for an answer"),
            ({"prompt": "x" * 40, "max_tokens": 41}, "max_tokens",
             "over the limit of 40 (this node's --max-new-tokens)"),
            ({"prompt": "x" * 40, "max_tokens": 30}, "max_tokens", "However, you requested 70 tokens (40 in the "
                                                                   "prompt, 30 in the completion): shorten the prompt "
                                                                   "or ask for at most 24"),
        ]:
            status, answer = ask(**body)
            assert status == 400 and answer["error"]["param"] == field and message in answer["error"]["message"]
        for prompt, tokens in (("x" * 40, 16), ("x" * 60, 4)):  # the default, 16, within the room left
            status, answer = ask(prompt=prompt)
            assert status == 200 and answer["usage"]["completion_tokens"] == tokens, answer
            assert answer["choices"][0]["finish_reason"] == "length"
        status, answer = ask(prompt="x" * 60, max_tokens=4)
        assert status == 200 and answer["usage"]["total_tokens"] == 64
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "temperature": 0}).json()
        # "user: Hi\nassistant:" is 19 tokens; the answer runs to --max-new-tokens (40), inside the 64 of context
        assert chat["usage"] == {"prompt_tokens": 19, "completion_tokens": 40, "total_tokens": 59}, chat
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "y" * 38}],
                                                         "temperature": 0}).json()
        assert chat["usage"]["total_tokens"] == 64 and chat["choices"][0]["finish_reason"] == "length"


def test_a_request_past_a_users_models_context_is_refused_not_run(node_factory):
    """A model of the user's own (module:factory) whose context is 48 tokens, and which fails past it as
    most models do: the node reads its context at load and refuses a request that would run past it with
    a 400, where it used to fail the batch's step, and with it every request generating beside it. A
    --max-model-len over the model's own is refused at start."""
    import torch

    from inference_node.model import generate, load_model

    model = load_model("tests.node_models:short_context", device=torch.device("cpu"))
    assert model.context == 48
    assert len(generate(model, [[65] * 40], [8])[0]) <= 8
    with pytest.raises(IndexError, match="index out of range"):  # what the node no longer lets happen
        generate(model, [[65] * 40, [66] * 10], [12, 12])

    n = node_factory("--model", "tests.node_models:short_context", "--max-batch", "4")
    assert n.wait_ready()["max_model_len"] == 48

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=n.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for body in (
                {"prompt": "B" * 10, "max_tokens": 12, "temperature": 0},
                {"prompt": "A" * 40, "max_tokens": 12, "temperature": 0})))

    fits, past = asyncio.run(together())
    assert fits.status_code == 200 and fits.json()["usage"]["completion_tokens"] <= 12
    assert past.status_code == 400 and past.json()["error"]["param"] == "max_tokens"
    assert "maximum context length is 48 tokens" in past.json()["error"]["message"]
    assert "ask for at most 8" in past.json()["error"]["message"]
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(free_port()), "--model",
                          "tests.node_models:short_context", "--max-model-len", "100"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--max-model-len 100 is over the context of tests.node_models:short_context, 48 tokens" in out.stderr


def test_a_models_context_is_read_where_it_says_it():
    """The attributes models carry their context in: the built-in model's, a Hugging Face config's, a
    tokenizer's (not its "unknown", 1e30), or ``context_length`` set by a user's factory, which wins."""
    from types import SimpleNamespace

    from inference_node.model import TinyGPT, model_context
    from inference_node.tokenizer import ByteTokenizer

    assert model_context(TinyGPT(max_seq=300), ByteTokenizer()) == 300
    hf = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    assert model_context(hf, SimpleNamespace(model_max_length=int(1e30))) == 4096
    assert model_context(SimpleNamespace(config=SimpleNamespace(n_positions=1024)), None) == 1024
    assert model_context(SimpleNamespace(), SimpleNamespace(model_max_length=2048)) == 2048
    assert model_context(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30))) is None
    assert model_context(SimpleNamespace(context_length=512, max_seq=1024), None) == 512


def test_ready_only_after_warm_up(node_factory):
    n = node_factory("--model", "builtin:medium", "--max-batch", "16", "--max-model-len", "128", "--access-log")
    body = n.wait_ready()
    assert n.seen_not_ready  # /ready said 503 (while /health said alive) before it said 200
    assert body["state"] == "ready" and body["start_seconds"]["warmup"] > 0
    assert body["device"] == this_device()  # what the model runs on, said by the engine process
    assert body["batching"] == "continuous"  # the default
    assert body["start_seconds"]["total"] >= body["start_seconds"]["model_load"] + body["start_seconds"]["warmup"]
    metrics = httpx.get(f"{n.url}/metrics").text
    assert "peakpilot_warm 1.0" in metrics and 'peakpilot_start_seconds{phase="warmup"}' in metrics
    assert '"GET /metrics HTTP/1.1" 200' in n.output()  # --access-log: a line per request


def test_overload_answers_429_busy_at_once(node):
    async def flood():
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            async def one():
                started = time.perf_counter()
                r = await client.post("/v1/completions", json={"prompt": "x" * 64, "max_tokens": 200})
                return r, time.perf_counter() - started
            return await asyncio.gather(*(one() for _ in range(80)))

    results = asyncio.run(flood())
    codes = [r.status_code for r, _ in results]
    assert set(codes) <= {200, 429} and codes.count(429) > 20 and codes.count(200) >= 16
    busy = [(r, t) for r, t in results if r.status_code == 429]
    r, _ = busy[0]
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "server_busy" and "server busy" in r.json()["error"]["message"]
    assert np.median([t for _, t in busy]) < 1.0  # refused at once, not after waiting in line
    metrics = httpx.get(f"{node.url}/metrics").text
    assert f'peakpilot_requests_total{{outcome="busy"}} {codes.count(429)}.0' in metrics


def test_sigterm_finishes_requests_in_flight_and_exits_0(node):
    async def scenario():
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            # two of them streamed: a stream is in flight until its last event, and the drain waits for it
            inflight = [asyncio.create_task(client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 256,
                                                                                 "stream": i < 2}))
                        for i in range(8)]
            for _ in range(200):  # until all eight are inside the node
                metrics = (await client.get("/metrics")).text
                if "peakpilot_requests_in_flight 8.0" in metrics:
                    break
                await asyncio.sleep(0.01)
            os.kill(node.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.1)
            ready = await client.get("/ready")
            late = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            done = await asyncio.gather(*inflight)
            return ready, late, done

    ready, late, done = asyncio.run(scenario())
    assert ready.status_code == 503 and ready.json()["state"] == "draining"
    assert late.status_code == 503 and "draining" in late.json()["error"]["message"]
    assert [r.status_code for r in done] == [200] * 8
    for r in done[:2]:
        assert r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text, r.text[-600:]
    assert node.proc.wait(30) == 0


def test_a_body_over_the_limit_is_refused_413_before_it_is_held_whole(node):
    """A client that sends megabytes (a bug, or worse) gets 413 at once, whether it declares its length or
    streams the body chunked; before, the server read any body whole into memory first."""
    big = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    declared = httpx.post(f"{node.url}/v1/completions", content=big, headers={"content-type": "application/json"})

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    streamed = httpx.post(f"{node.url}/v1/chat/completions", content=chunks(),
                          headers={"content-type": "application/json"})
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == "the request body is over 1048576 bytes"
    assert httpx.post(f"{node.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("body,field,message", [
    ("{not json", None, "malformed JSON"),
    ("[1, 2]", None, "must be a JSON object"),
    ('{"max_tokens": 3}', "prompt", "missing field 'prompt'"),
    ('{"prompt": 12}', "prompt", "'prompt' must be a string"),
    ('{"prompt": "' + "x" * 600 + '"}', "prompt", "longer than 512 tokens"),
    ('{"prompt": "a", "max_tokens": "5"}', "max_tokens", "positive integer"),
    ('{"prompt": "a", "max_tokens": 0}', "max_tokens", "positive integer"),
    ('{"prompt": "a", "max_tokens": 5000}', "max_tokens", "over the limit of 256"),
    ('{"prompt": "a", "temperature": 9}', "temperature", "between 0 and 2"),
    ('{"prompt": "a", "stream": "yes"}', "stream", "true or false"),
    ('{"prompt": "a", "top_p": 0}', "top_p", "above 0 and at most 1"),
    ('{"prompt": "a", "top_p": 1.5}', "top_p", "above 0 and at most 1"),
    ('{"prompt": "a", "seed": "7"}', "seed", "64-bit integer"),
    # asked of OpenAI's API and not done here: refused by name, not ignored
    ('{"prompt": "a", "best_of": 3}', "best_of", "'best_of' is not supported by this node"),
    ('{"prompt": "a", "logprobs": 6}', "logprobs", "'logprobs' must be an integer from 0 to 5"),
    ('{"prompt": "a", "echo": "yes"}', "echo", "'echo' must be true or false"),
    ('{"prompt": "a", "max_tokens": 0}', "max_tokens", "positive integer (or 0 with 'echo')"),
    ('{"prompt": "a", "echo": true, "stream": true}', "echo", "not supported with 'stream'"),
    ('{"prompt": "a", "suffix": "!"}', "suffix", "'suffix' is not supported by this node"),
    ('{"prompt": "a", "response_format": {"type": "json_object"}}', "response_format", '{"type": "text"}'),
    ('{"prompt": "a", "stream_options": {"include_usage": true}}', "stream_options", "only allowed when 'stream'"),
    ('{"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}}', "stream_options", "true or false"),
    (json.dumps({"prompt": ["a"] * 17}), "prompt", "holds 17 prompts; this node takes at most 16"),
])
def test_bad_requests_get_400_naming_the_field(shared_node, body, field, message):
    r = httpx.post(f"{shared_node.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and message in err["message"]


def test_a_request_of_many_prompts_is_admitted_or_refused_whole():
    """A request with a list of prompts that does not fit in the queue is refused busy with none of its
    prompts queued: before, the prompts that fitted were generated for an answer already refused (the
    model's time spent on nobody, under the very load that made it refuse)."""
    import threading

    from inference_node.batcher import Batcher, QueueFull

    class HeldEngine:
        """Answers each row with its prompt's first token once released."""

        def __init__(self):
            self.release, self.seen, self.listener = threading.Event(), [], None

        def listen(self, listener):
            self.listener = listener

        def submit(self, key, prompt, max_tokens, sampling, watch=False):
            self.seen.append(prompt[0])
            threading.Thread(target=lambda: (self.release.wait(10), self.listener("row", key, [prompt[0]]))).start()

        def drop(self, key):
            pass

    engine = HeldEngine()
    release, seen = engine.release, engine.seen

    async def scenario():
        batcher = Batcher(engine, max_batch=1, max_wait_ms=0, max_queue=4)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([0], 1))
        while not batcher.running:  # the first one is taken off the queue and generates
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit([i], 1)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="no room for 2 prompts"):
            await batcher.submit_all([[10], [11]], 1)
        whole = asyncio.ensure_future(batcher.submit_all([[20]], 1))  # the one place left
        release.set()
        answers = await asyncio.gather(running, *queued, whole)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[0], [1], [2], [3], [[20]]]
    assert seen == [0, 1, 2, 3, 20]  # nothing of the refused request ran


def test_a_watched_request_hears_its_tokens_and_a_reader_behind_gets_them_in_one_piece():
    """A watched request hears each step's tokens (``Admission.events``); a reader that fell behind gets
    the steps it missed merged, one event per answer rather than one per token; ``end`` answers a row with
    what it has and drops it from the engine; ``close`` withdraws what is left."""
    from inference_node.batcher import Batcher

    class SteppingEngine:
        """Tells a watched row's tokens, one a step, when ``run`` is called (on the event loop's thread)."""

        def __init__(self):
            self.rows, self.dropped, self.listener, self.at = {}, [], None, 0

        def listen(self, listener):
            self.listener = listener

        def submit(self, key, prompt, max_tokens, sampling, watch=False):
            assert watch
            self.rows[key] = list(range(prompt[0], prompt[0] + max_tokens))

        def drop(self, key):
            self.dropped.append(key)
            self.rows.pop(key, None)

        def run(self, steps):
            for step in range(self.at, self.at + steps):
                self.listener("tokens", None, {k: [t[step]] for k, t in self.rows.items() if step < len(t)})
            self.at += steps
            for k in [k for k, t in self.rows.items() if len(t) <= self.at]:
                self.listener("row", k, self.rows.pop(k))

    async def scenario():
        engine = SteppingEngine()
        batcher = Batcher(engine, max_batch=4, max_wait_ms=0)
        batcher.start()
        admission = batcher.admit([[100], [200], [300]], 5, watch=True)
        while len(batcher.generating) < 3:
            await asyncio.sleep(0.001)
        events = admission.events()
        engine.run(2)
        await asyncio.sleep(0.01)  # the two steps' reports are in before the reader looks
        first = [await events.__anext__() for _ in range(3)]
        admission.end(1)  # answer 1's stop string came: answered with what it has, its row dropped
        engine.run(5)  # the rest of 0 and 2, their rows finishing
        await asyncio.sleep(0.01)
        rest = [e async for e in events]
        admission.close()
        await batcher.stop()
        return first, rest, engine.dropped, batcher.in_flight

    first, rest, dropped, in_flight = asyncio.run(scenario())
    assert first == [(0, [100, 101], False), (1, [200, 201], False), (2, [300, 301], False)]
    assert rest == [(1, [], True), (0, [102, 103, 104], True), (2, [302, 303, 304], True)]
    assert dropped == [1] and in_flight == 0


def test_a_short_request_batched_with_a_long_one_is_answered_at_its_own_length(node_factory):
    """Rows leave the batch as they finish and are answered then: a 4-token request that shares a batch
    with a 192-token one no longer waits for the longer one's last token."""
    from prometheus_client.parser import text_string_to_metric_families

    n = node_factory("--model", "builtin:medium", "--max-batch", "8", "--max-wait-ms", "300", "--max-model-len", "256")
    n.wait_ready()

    async def scenario():
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            async def timed(max_tokens):
                started = time.perf_counter()
                r = await client.post("/v1/completions", json={"prompt": "x" * 32, "max_tokens": max_tokens,
                                                               "temperature": 0})
                return r, time.perf_counter() - started
            return await asyncio.gather(timed(192), timed(4))

    (long, long_s), (short, short_s) = asyncio.run(scenario())
    assert long.status_code == short.status_code == 200
    assert long.json()["usage"]["completion_tokens"] == 192 and short.json()["usage"]["completion_tokens"] == 4
    time.sleep(0.2)  # the batch is counted once the engine hands back the whole of it, after the last answer
    got = {(s.name, s.labels.get("le")): s.value
           for f in text_string_to_metric_families(httpx.get(f"{n.url}/metrics").text) for s in f.samples}
    assert got[("peakpilot_batch_size_count", None)] == 1  # one batch held both
    assert short_s < 0.3 * long_s, (short_s, long_s)


def test_requests_whose_clients_went_away_are_not_generated(node_factory):
    """Clients that give up while their requests wait (a timeout, a retry on another node) withdraw them:
    the node does not spend the model on answers nobody reads, ahead of the ones still wanted (before,
    every abandoned request in the queue was generated)."""
    from prometheus_client.parser import text_string_to_metric_families

    n = node_factory("--model", "builtin:medium", "--max-batch", "1", "--max-queue", "16")
    n.wait_ready()

    async def scenario():
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            long = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x" * 64, "max_tokens": 128}))
            await asyncio.sleep(0.2)  # the long one runs; the ones below wait behind it and give up

            async def impatient():
                async with httpx.AsyncClient(base_url=n.url, timeout=0.3) as quick:
                    try:
                        r = await quick.post("/v1/completions", json={"prompt": "y", "max_tokens": 128})
                        return r.status_code
                    except httpx.TimeoutException:
                        return "gave up"

            gave_up = await asyncio.gather(*(impatient() for _ in range(6)))
            return gave_up, await long

    gave_up, long = asyncio.run(scenario())
    assert long.status_code == 200 and gave_up.count("gave up") >= 5
    after = httpx.post(f"{n.url}/v1/completions", json={"prompt": "z", "max_tokens": 4}, timeout=30)
    assert after.status_code == 200
    time.sleep(0.2)
    got = {(s.name, s.labels.get("outcome")): s.value
           for f in text_string_to_metric_families(httpx.get(f"{n.url}/metrics").text) for s in f.samples}
    cancelled, ok = got[("peakpilot_requests_total", "cancelled")], got[("peakpilot_requests_total", "ok")]
    assert cancelled == gave_up.count("gave up") and ok == 2 + gave_up.count(200)
    # Only what was answered ran, and at most one withdrawn request that was already in the engine.
    assert ok <= got[("peakpilot_batch_size_count", None)] <= ok + 1
    assert got[("peakpilot_queue_depth", None)] == 0


def test_rows_joining_a_batch_mid_generation_get_the_answers_they_would_alone():
    """Continuous batching changes when a request is generated, not what: rows that join a running batch
    (a shorter prompt, a longer one) or share it with a row withdrawn mid-way get, greedily, exactly their
    tokens alone; the batch's width is cut back as its oldest rows leave; an empty prompt is answered."""
    from inference_node.model import DecodeBatch, generate, load_model

    model = load_model("builtin:small", device=__import__("torch").device("cpu"))
    asked = {"a": ([65] * 30, 40), "b": ([66, 67, 68], 12), "c": ([69] * 50, 20), "empty": ([], 6)}
    alone = {k: generate(model, [p], [n])[0] for k, (p, n) in asked.items()}
    batch, got, widths, told = DecodeBatch(model), {}, [], {}
    batch.add("a", *asked["a"])
    for step in range(80):
        if step == 5:
            batch.add("b", *asked["b"])
        if step == 9:
            for k in ("c", "withdrawn", "empty"):
                batch.add(k, *asked.get(k, ([1, 2], 30)))
        if step == 12:
            assert batch.drop("withdrawn") and not batch.drop("withdrawn")
        got.update(batch.step())
        for key, tokens in batch.new_tokens({"a", "c", "empty"}).items():  # read as they come (streamed)
            told.setdefault(key, []).extend(tokens)
        widths.append(None if batch.seq is None else batch.seq.shape[1])
        if not len(batch):
            break
    assert got == alone and len(alone["empty"]) == 6
    # each read as it came is its answer, less the tokens of the step it finished at
    assert all(told[k] == got[k][:len(told[k])] and len(got[k]) - len(told[k]) <= 1 for k in ("a", "c", "empty"))
    # The cache written in place, grown past its room (3 + 150 positions), reads as recomputing the whole
    # sequence at every step does.
    import dataclasses

    import torch

    class Uncached(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            return self.inner(ids, mask)[0]

    uncached = dataclasses.replace(model, module=Uncached(model.module))
    assert generate(model, [[65] * 3], [150]) == generate(uncached, [[65] * 3], [150])
    assert "withdrawn" not in got and batch.seq is None
    # "c" (a 50-token prompt, from step 9) widened the batch to its own width; once it left at step 28 the
    # batch is "a"'s width again (its 30-token prompt and 29 tokens), not the padding "c" left behind.
    assert widths[27] == 50 + 19 and widths[28] == 30 + 29 and widths[-1] is None


def test_a_request_arriving_while_a_batch_generates_joins_it(node_factory):
    """A request that arrives while the node generates a long answer starts at the engine's next step
    (continuous batching): before, it waited for the whole batch to end, a 4-token answer as slow as a
    192-token one."""
    from prometheus_client.parser import text_string_to_metric_families

    n = node_factory("--model", "builtin:medium", "--max-batch", "8", "--max-wait-ms", "0", "--max-model-len", "256")
    n.wait_ready()

    async def scenario():
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            async def timed(max_tokens, after):
                await asyncio.sleep(after)
                started = time.perf_counter()
                r = await client.post("/v1/completions", json={"prompt": "x" * 32, "max_tokens": max_tokens,
                                                               "temperature": 0})
                return r, time.perf_counter() - started
            return await asyncio.gather(timed(192, 0), timed(4, 0.3))

    (long, long_s), (short, short_s) = asyncio.run(scenario())
    assert long.status_code == short.status_code == 200
    assert long.json()["usage"]["completion_tokens"] == 192 and short.json()["usage"]["completion_tokens"] == 4
    got = {(s.name, s.labels.get("le")): s.value
           for f in text_string_to_metric_families(httpx.get(f"{n.url}/metrics").text) for s in f.samples}
    assert got[("peakpilot_batch_size_count", None)] == 2 and got[("peakpilot_batch_size_bucket", "2.0")] == 2
    assert long_s > 0.6 and short_s < 0.25 * (long_s - 0.3), (short_s, long_s)


def test_a_request_withdrawn_while_generating_frees_its_row(node_factory):
    """A client that gives up on a request already generating takes it out of the batch at the next step:
    its row goes to the next request at once (before, the abandoned answer was generated to its end, and
    the request behind it waited for that)."""
    n = node_factory("--model", "builtin:medium", "--max-batch", "1")
    n.wait_ready()
    ask = {"prompt": "x" * 32, "max_tokens": 256, "temperature": 0}
    started = time.perf_counter()
    assert httpx.post(f"{n.url}/v1/completions", json=ask, timeout=60).status_code == 200
    whole = time.perf_counter() - started

    async def scenario():
        async def abandoned():
            async with httpx.AsyncClient(base_url=n.url, timeout=0.3) as quick:
                with pytest.raises(httpx.TimeoutException):
                    await quick.post("/v1/completions", json=ask)

        async def next_one():
            await asyncio.sleep(0.1)  # behind the abandoned one, which holds the one row
            async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
                begun = time.perf_counter()
                r = await client.post("/v1/completions", json={"prompt": "y", "max_tokens": 4})
                return r, time.perf_counter() - begun

        return (await asyncio.gather(abandoned(), next_one()))[1]

    r, waited = asyncio.run(scenario())
    assert r.status_code == 200
    assert whole > 1.0 and waited < 0.2 + 0.3 * whole, (waited, whole)


def test_a_streamed_answer_arrives_as_it_is_generated_and_a_stop_string_ends_it(node_factory):
    """``stream``: the text goes out as the tokens are generated, the first of it long before the last
    (before, the whole answer was generated and then sent as one event), reading as the answer does whole;
    a client that goes away mid-stream frees its row at once. ``stop``: the row leaves the batch where the
    stop string appears, rather than generating on to ``max_tokens`` for text nobody gets."""
    from openai import OpenAI
    from prometheus_client.parser import text_string_to_metric_families

    n = node_factory("--model", "builtin:medium", "--max-batch", "1")
    n.wait_ready()
    ask = {"prompt": "x" * 32, "max_tokens": 192, "temperature": 0}
    whole = httpx.post(f"{n.url}/v1/completions", json=ask, timeout=60).json()
    text = whole["choices"][0]["text"]

    started, pieces, events = time.perf_counter(), [], []
    with httpx.stream("POST", f"{n.url}/v1/completions", timeout=60,
                      json=dict(ask, stream=True, stream_options={"include_usage": True})) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
                if events[-1]["choices"] and events[-1]["choices"][0]["text"]:
                    pieces.append(time.perf_counter() - started)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == text
    assert events[-1]["usage"] == whole["usage"] and events[-2]["choices"][0]["finish_reason"] == "length"
    assert len(pieces) > 20 and pieces[-1] > 0.5 and pieces[0] < 0.2 * pieces[-1], pieces

    client = OpenAI(base_url=f"{n.url}/v1", api_key="unused")
    chat = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True)]
    assert "".join(chat) == client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0).choices[0].message.content

    def generated() -> float:
        return next(s.value for f in text_string_to_metric_families(httpx.get(f"{n.url}/metrics").text)
                    for s in f.samples if s.name == "peakpilot_generated_tokens_total")

    stop = text[6:8]
    before = generated()
    cut = httpx.post(f"{n.url}/v1/completions", json=dict(ask, stop=stop), timeout=60).json()
    assert cut["choices"][0]["text"] == text[:text.find(stop)] and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 16
    assert generated() - before < 32  # of 192: the row left where its stop string came

    with httpx.stream("POST", f"{n.url}/v1/completions", json=dict(ask, max_tokens=256, stream=True),
                      timeout=60) as r:
        next(r.iter_lines())  # the first piece; then the client goes away
    begun = time.perf_counter()
    after = httpx.post(f"{n.url}/v1/completions", json={"prompt": "y", "max_tokens": 4}, timeout=60)
    assert after.status_code == 200 and time.perf_counter() - begun < 0.3 * pieces[-1]
    got = {(s.name, s.labels.get("outcome")): s.value
           for f in text_string_to_metric_families(httpx.get(f"{n.url}/metrics").text) for s in f.samples}
    assert got[("peakpilot_requests_total", "cancelled")] == 1 and got[("peakpilot_requests_total", "ok")] == 6
    assert got[("peakpilot_time_to_first_token_seconds_count", None)] == 3  # the streamed ones
    # the two streamed to their end: each one's pace per token once started (the 192-token one's: about
    # 1/191 of its time)
    per_token = (got[("peakpilot_time_per_output_token_seconds_sum", None)],
                 got[("peakpilot_time_per_output_token_seconds_count", None)])
    assert per_token[1] == 2 and 0 < per_token[0] < pieces[-1] / 30, (per_token, pieces[-1])
    assert got[("peakpilot_requests_in_flight", None)] == 0 and got[("peakpilot_queue_depth", None)] == 0


def test_prometheus_scrapes_the_node_and_the_forecaster_reads_back_the_rate(node, prometheus_factory):
    """loadgen replays a slice of a real trace; Prometheus scrapes the node; the forecaster's Prometheus
    source reads back the request rate that was sent: the first tries, not the requests that their clients
    say are retries (OpenAI's SDK and Envoy say so in a header), which the default query subtracts."""
    server = prometheus_factory(scrape_targets=[f"127.0.0.1:{node.port}"]).start()
    # Wait for the first scrape, so the counter's start is seen.
    deadline = time.time() + 30
    while time.time() < deadline:
        r = httpx.get(f"{server.url}/api/v1/query", params={"query": "peakpilot_requests_total"}).json()
        if r["data"]["result"]:
            break
        time.sleep(0.5)
    counts = pd.read_csv(trace_path("azure_llm_conv_2023_1s.csv")).requests.to_numpy()[600:630]
    times = schedule_from_counts(counts, 1.0, speedup=2.0)  # 30 s of real per-second arrivals at 2x: 15 s, ~11 req/s
    started = pd.Timestamp.now(tz="UTC").floor("5s")
    result = asyncio.run(run_open_loop(node.url, times))
    assert result.outcomes["ok"] == result.sent == int(counts.sum())
    retries = [{"x-stainless-retry-count": "1"}, {"x-stainless-retry-count": "2"}, {"x-envoy-attempt-count": "2"}]
    firsts = [{"x-stainless-retry-count": "0"}, {"x-envoy-attempt-count": "1"}]
    for headers in retries * 20 + firsts * 5:  # 60 retries, which are not demand, and 10 first tries, which are
        assert httpx.post(f"{node.url}/v1/completions", json={"prompt": "hi", "max_tokens": 1},
                          headers=headers).status_code == 200
    assert "peakpilot_retried_requests_total 60.0" in httpx.get(f"{node.url}/metrics").text
    time.sleep(8)  # two more scrapes and a full rate window
    end = pd.Timestamp.now(tz="UTC").floor("5s")
    history = PrometheusSource(server.url, step="5s").load(started - pd.Timedelta(seconds=10), end)
    read_back = float(np.nansum(history.counts.to_numpy()))
    demand = result.sent + 10
    # Within rate()'s extrapolation: each 5 s window scales the increase between its first and last scrape to
    # the whole window, so arrivals that bunch between two windows' scrapes are read a little high or low (a run
    # here read 163 for 147, 11% over); the 60 retries not subtracted would be 40% over.
    assert abs(read_back - demand) <= 0.15 * demand, (read_back, demand)


@pytest.mark.parametrize("batching", ["run-to-end", "continuous"])
def test_slo_aware_shedding_refuses_what_would_be_late(node_factory, batching):
    n = node_factory("--max-batch", "4", "--max-queue", "256", "--slo-ms", "300", "--threads", "1",
                     "--batching", batching)
    n.wait_ready()

    async def flood(k):
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 100})
                                          for _ in range(k)))

    # A full batch teaches the node its batch time and tells the test this machine's speed; the flood then
    # holds three latency targets' worth of batches, however fast the machine (40 requests was an overload
    # on a slow one and fit within 300 ms on a fast one).
    started = time.perf_counter()
    asyncio.run(flood(4))
    batch_s = time.perf_counter() - started
    k = min(240, max(40, 4 * int(3 * 0.3 / batch_s)))
    answers = asyncio.run(flood(k))
    busy = [r for r in answers if r.status_code == 429]
    assert busy and len(busy) < k, (k, batch_s)
    assert "expected wait" in busy[0].json()["error"]["message"] and "latency target" in busy[0].json()["error"]["message"]
    assert all(r.status_code in (200, 429) for r in answers)


def test_a_first_token_target_sheds_on_the_wait_for_a_row_not_on_the_whole_answer():
    """--slo-on first-token (a chat service's target): long streamed answers that each take longer than
    the target, sent one after another to an idle node, are none of them late, since each reader gets its
    first token at once (with the target on the whole answer every one is late: admitted all the same, as
    they wait for nothing); a flood that would wait for rows past the target is still shed, saying so."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from inference_node.server import NodeConfig, create_app

    def over_slo(client) -> float:
        return next(s.value for f in text_string_to_metric_families(client.get("/metrics").text)
                    for s in f.samples if s.name == "peakpilot_requests_over_slo_total")

    long = {"prompt": "x", "max_tokens": 256, "temperature": 0, "stream": True}
    for slo_on in ("answer", "first-token"):
        config = NodeConfig(model="builtin:small", engine="thread", slo_ms=150, slo_on=slo_on, max_batch=2,
                            threads=1)
        with TestClient(create_app(config)) as client:
            deadline = time.time() + 60
            while client.get("/ready").status_code != 200 and time.time() < deadline:
                time.sleep(0.05)
            started = time.perf_counter()
            codes = [client.post("/v1/completions", json=long).status_code for _ in range(3)]
            assert (time.perf_counter() - started) / codes.count(200) > 0.2  # each answer longer than the target
            assert codes == [200, 200, 200] and over_slo(client) == (3 if slo_on == "answer" else 0)
            if slo_on == "answer":
                continue

            async def flood() -> list[httpx.Response]:
                transport = httpx.ASGITransport(app=client.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=120) as c:
                    return await asyncio.gather(*(c.post("/v1/completions", json=dict(long, stream=False))
                                                  for _ in range(12)))

            answers = client.portal.call(flood)
            busy = [r for r in answers if r.status_code == 429]
            assert busy and all(r.status_code in (200, 429) for r in answers)
            assert "over the 0.15 s first-token latency target" in busy[0].json()["error"]["message"]


def test_shedding_recovers_once_the_node_is_idle(node_factory):
    """After an overload the node serves again: shedding must not lock itself in."""
    n = node_factory("--max-batch", "4", "--max-queue", "256", "--slo-ms", "300", "--threads", "1")
    n.wait_ready()

    async def flood(k):
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 100})
                                          for _ in range(k)))

    asyncio.run(flood(40))
    time.sleep(0.5)
    after = [httpx.post(f"{n.url}/v1/completions", json={"prompt": "y", "max_tokens": 4}, timeout=60) for _ in range(3)]
    assert [r.status_code for r in after] == [200, 200, 200]


def test_a_request_that_finds_a_free_row_is_not_refused_for_the_time_answers_took():
    """One long answer teaches the node a row time over its target; a short request that then finds the node
    idle waits for nothing and is served, not told "busy" (it was, for good: none refused could correct the
    average), while a request that would wait behind full rows is still shed on that time."""
    from fastapi.testclient import TestClient

    from inference_node.server import NodeConfig, create_app

    config = NodeConfig(model="builtin:small", engine="thread", slo_ms=100, max_batch=1, threads=1)
    long = {"prompt": "x", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    with TestClient(create_app(config)) as client:
        deadline = time.time() + 60
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        started = time.perf_counter()
        assert client.post("/v1/completions", json=long).status_code == 200
        assert time.perf_counter() - started > 0.15  # over the target: the row time the node now expects
        short = [client.post("/v1/completions", json={"prompt": "y", "max_tokens": 2}) for _ in range(3)]
        assert [r.status_code for r in short] == [200, 200, 200], short[0].text

        async def behind_a_long_one() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=120) as c:
                first = asyncio.ensure_future(c.post("/v1/completions", json=long))
                await asyncio.sleep(0.05)  # it holds the one row
                return [await c.post("/v1/completions", json={"prompt": "y", "max_tokens": 2}), await first]

        waiting, first = client.portal.call(behind_a_long_one)
        assert first.status_code == 200 and waiting.status_code == 429
        assert "expected wait" in waiting.json()["error"]["message"]


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    return found


def test_the_model_runs_in_an_engine_process_that_goes_with_the_server(node_factory):
    """The default engine: generation in a child process (no GIL shared with the HTTP side); the
    same completions as the in-process engine; and no orphan when the server is killed outright."""
    body = {"prompt": "Tell me about GPUs.", "max_tokens": 12, "temperature": 0}
    in_process = node_factory("--engine", "thread")
    in_process.wait_ready()
    assert children(in_process.proc.pid) == []
    expected = httpx.post(f"{in_process.url}/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]

    node = node_factory()
    node.wait_ready()
    helpers = children(node.proc.pid)  # the engine, and multiprocessing's resource tracker
    engines = [pid for pid in helpers if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert len(engines) == 1
    got = httpx.post(f"{node.url}/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
    assert got == expected and len(got) > 0

    def maps_torch(pid: int) -> bool:
        return "libtorch" in open(f"/proc/{pid}/maps").read()

    assert maps_torch(engines[0]) and not maps_torch(node.proc.pid), "torch belongs in the engine process only"
    node.proc.kill()  # SIGKILL: no handler runs; the engine sees its pipe close and exits
    node.proc.wait()

    def running(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 15
    while time.time() < deadline and any(running(pid) for pid in helpers):
        time.sleep(0.1)
    assert not any(running(pid) for pid in helpers), "a helper process outlived its server"


def test_an_unknown_engine_is_refused():
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--engine", "gpu-magic"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown engine 'gpu-magic'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--batching", "paged"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown batching 'paged'; choose continuous or run-to-end" in out.stderr


def test_a_batch_out_of_the_devices_memory_is_answered_busy_and_the_node_batches_fewer(node_factory):
    """A --max-batch too wide for the GPU's memory at these lengths: the step that runs out of memory answers
    its requests 503 busy, to be retried (they were 500s), the node keeps serving and batches at most half
    as many rows from then on (saying so), and the same load then succeeds. The engine used to die there
    (a failed step restarted its batch from a request's seed, None), taking the node with it."""
    n = node_factory("--model", "tests.node_models:small_memory", "--max-batch", "8", "--no-warmup")
    n.wait_ready()

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={
                "prompt": "x" * 10, "max_tokens": 20, "temperature": 0}) for _ in range(8)))

    first = asyncio.run(flood())
    failed = [r for r in first if r.status_code != 200]
    assert failed and all(r.status_code == 503 and r.headers["Retry-After"] == "1" for r in failed)
    message = failed[0].json()["error"]["message"]
    assert "ran out of the device's memory (OutOfMemoryError: CUDA out of memory" in message
    assert "this node now batches at most" in message and failed[0].json()["error"]["type"] == "server_busy"
    second = asyncio.run(flood())
    assert [r.status_code for r in second] == [200] * 8
    metrics = httpx.get(f"{n.url}/metrics").text
    limit = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("peakpilot_batch_limit ")))
    assert limit <= 4 and f'peakpilot_requests_total{{outcome="busy"}} {float(len(failed))}' in metrics
    assert "ran out of the device's memory" in n.output() and f"set --max-batch {int(limit)}" in n.output()
    # a prompt scored (echo) past the memory is busy too, not a 500; the batch limit stays where it was
    scored = httpx.post(f"{n.url}/v1/completions", json={"prompt": "x" * 200, "max_tokens": 0, "echo": True,
                                                         "logprobs": 0}, timeout=60)
    assert scored.status_code == 503 and scored.json()["error"]["type"] == "server_busy"
    assert "scoring ran out of the device's memory (OutOfMemoryError" in scored.json()["error"]["message"]
    assert f"peakpilot_batch_limit {limit}" in httpx.get(f"{n.url}/metrics").text


def test_the_batch_that_fits_the_devices_memory_is_found_before_the_node_is_ready(node_factory):
    """At start the node runs its widest batch of its longest request (--max-prompt-tokens plus
    --max-new-tokens, or --max-model-len), halving --max-batch until it fits, so it is ready at a batch the
    device holds (saying so in the log, /ready and peakpilot_batch_limit), and the load that would have run
    out of memory at the peak is served whole. One request too long for the memory at all stops the start,
    naming the lengths and the options to change; before, both were found by requests failing under load.
    (SmallMemory's device holds 160 positions of a batch: 4 rows of 40 tokens, and no row of 768.)"""
    n = node_factory("--model", "tests.node_models:small_memory", "--max-batch", "8", "--max-prompt-tokens", "20",
                     "--max-new-tokens", "20")
    ready = n.wait_ready()
    assert ready["max_batch"] == 4 and ready["start_seconds"]["memory_probe"] > 0 and ready["slo_on"] == "answer"

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=n.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={
                "prompt": "x" * 20, "max_tokens": 20, "temperature": 0}) for _ in range(12)))

    assert [r.status_code for r in asyncio.run(flood())] == [200] * 12
    metrics = httpx.get(f"{n.url}/metrics").text
    assert "peakpilot_batch_limit 4.0" in metrics and 'peakpilot_requests_total{outcome="busy"} 0.0' in metrics
    assert "--max-batch 8 rows of the longest request this node admits do not fit" in n.output()
    assert "batching at most 4 (set --max-batch 4" in n.output()
    too_long = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(free_port()), "--model",
                               "tests.node_models:small_memory"], capture_output=True, text=True, timeout=120)
    assert too_long.returncode == 1
    assert "one request of 768 tokens does not fit in the memory of cpu" in too_long.stderr
    assert "serve --max-model-len, or --max-prompt-tokens and --max-new-tokens" in too_long.stderr


RESTING_HEAP = """
from inference_node.engine import EngineSpec, _load_and_warm
from inference_node.model import trim_c_heap

def resident_mb():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

_load_and_warm(EngineSpec("builtin:small", longest_row=768, max_batch=8))
rested = resident_mb()
assert trim_c_heap()
print(rested - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc_trim")
def test_a_started_node_does_not_rest_at_the_memory_of_its_probe_and_warm_up(tmp_path):
    """The memory probe runs the widest batch of the longest request (8 rows of 768 tokens here) before the
    node is ready; on the CPU its tensors come from malloc, which kept the freed memory for the process, so
    the node rested at that batch's memory for good (the built-in medium node at 672 MB where it needs 342).
    Once started, a trim of the C heap has nothing left to give back (it gave back 70 MB here before)."""
    out = subprocess.run([sys.executable, "-c", RESTING_HEAP], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 10, f"{float(out.stdout):.0f} MB of the start's heap was still held"


def test_a_model_that_fails_to_load_is_unhealthy_and_the_server_exits_1(tmp_path):
    from fastapi.testclient import TestClient

    from inference_node.server import NodeConfig, create_app

    missing = tmp_path / "missing.pt"
    # In the app: /health answers 503 with the reason, so a liveness or startup probe restarts the pod.
    with TestClient(create_app(NodeConfig(model=str(missing), engine="thread"))) as client:
        deadline = time.time() + 30
        while client.get("/health").status_code == 200 and time.time() < deadline:
            time.sleep(0.05)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["state"] == "failed"
        assert f"model file {missing} does not exist" in health.json()["error"]
        assert client.get("/ready").status_code == 503
    # The server: stops at once and exits 1, naming the model and why.
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(free_port()),
                          "--model", str(missing)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"peakpilot: error: model failed to load: EngineError: FileNotFoundError: model file {missing} does not " \
           f"exist (--model {missing})" in out.stderr


def test_an_engine_that_dies_turns_the_node_unready_and_the_server_exits_1(node_factory):
    """Killed for memory, say: the request that finds it gone gets 503 "retry on another node" (not a 500
    for ever while /ready still says 200), and the server exits 1 so that Kubernetes restarts the container."""
    node = node_factory()
    node.wait_ready()
    engines = [pid for pid in children(node.proc.pid) if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert len(engines) == 1
    os.kill(engines[0], signal.SIGKILL)
    r = httpx.post(f"{node.url}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "the engine process is gone (exit code -9); retry on another node" in r.json()["error"]["message"]
    assert node.proc.wait(timeout=30) == 1
    out = node.output()
    assert "peakpilot: error: engine failed: the engine process is gone (exit code -9) (--model builtin)" in out


def test_an_engine_thread_that_fails_is_found_and_the_node_stops(monkeypatch):
    """--engine thread: a fault of the engine loop itself (a bug, not a request's failure, which the loop
    answers) stops its thread; the request waiting on it gets 503 "retry on another node" and the probes
    say why, where the request waited for ever and the node still said it was healthy."""
    from fastapi.testclient import TestClient

    import inference_node.engine as engine
    from inference_node.server import NodeConfig, create_app

    def broken_loop(model, seed, receive, send):
        receive(True)  # the first request's message
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "engine_loop", broken_loop)
    with TestClient(create_app(NodeConfig(engine="thread", max_batch=2))) as client:
        deadline = time.time() + 60
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "the engine thread failed: RuntimeError: boom; retry on another node" in r.json()["error"]["message"]
        health = client.get("/health")
        assert health.status_code == 503 and "the engine thread failed: RuntimeError: boom" in health.json()["error"]


def test_an_engine_that_dies_mid_stream_ends_the_stream_with_an_error(node_factory):
    """The status (200) went out with the first piece: the failure goes in the stream as an error event, as
    OpenAI's does, which its client raises; the node then fails and exits 1 as for any request."""
    import openai

    node = node_factory("--model", "builtin:medium", "--max-batch", "1")
    node.wait_ready()
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(model="x", prompt="x" * 32, max_tokens=256, temperature=0, stream=True)
    pieces = iter(stream)
    assert next(pieces).choices[0].finish_reason is None
    engines = [pid for pid in children(node.proc.pid) if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(engines[0], signal.SIGKILL)
    with pytest.raises(openai.APIError, match="the engine process is gone"):
        for _ in pieces:
            pass
    assert node.proc.wait(timeout=30) == 1


def test_an_engine_that_dies_while_idle_is_found_by_the_probes(node_factory):
    """No request comes (the night): the next probe finds the engine gone, says so, and the server exits 1,
    where before the node stayed ready until the morning's first request met a dead engine."""
    node = node_factory()
    node.wait_ready()
    engines = [pid for pid in children(node.proc.pid) if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(engines[0], signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline:  # the process is reaped once gone; until then it is a zombie, still "alive"
        r = httpx.get(f"{node.url}/ready", timeout=5)
        if r.status_code == 503:
            break
        time.sleep(0.05)
    assert r.status_code == 503 and r.json()["state"] == "failed"
    assert r.json()["error"] == "engine failed: the engine process is gone (exit code -9)"
    assert node.proc.wait(timeout=30) == 1
    assert "engine failed: the engine process is gone (exit code -9)" in node.output()


def test_a_schedule_too_large_to_send_is_refused_before_it_is_built():
    """A busy service's fortnight at its own scale is a billion requests, whose send times alone filled this
    machine's memory: refused, with the --rate-scale that would do; a --duration builds only what it sends."""
    counts = np.full(14 * 144, 500_000.0)
    with pytest.raises(ValueError, match=r"the trace's 1,008,000,000 requests \(at --rate-scale 1\) are more than "
                                         r"one loadgen sends \(10,000,000\): give --rate-scale 0.0099 or less"):
        schedule_from_counts(counts, 600.0)
    part = schedule_from_counts(counts, 600.0, rate_scale=0.001, duration_s=1200)  # two intervals' worth
    assert len(part) == 1000 and 0 < part.min() and part.max() < 1200


def test_loadgen_and_profile_commands_against_a_node_and_against_nothing(node, tmp_path):
    cli = [sys.executable, "-m", "peakpilot.cli"]
    # 20 one-minute intervals of 3 requests, at 120x: 60 requests over 20 minutes of trace time -> 10 s.
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,requests\n" + "".join(f"2024-01-01T00:{m:02d}:00,3\n" for m in range(20)))
    out = subprocess.run([*cli, "loadgen", "--trace", str(trace), "--url", node.url, "--speedup", "120",
                          "--max-tokens", "4", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sent"] == 60 and result["outcomes"] == {"ok": 60, "busy": 0, "error": 0}
    assert result["errors"] == {} and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert "POST /v1/completions" not in node.output()  # no line per request unless --access-log
    assert f"listening on {node.url}; /ready answers 200 once warm" in node.output()  # (bound before the load)
    assert result["first_text_ms"]["p50"] is None  # not streamed
    # --stream: answers streamed, and when each one's first text was read (it comes before the last)
    out = subprocess.run([*cli, "loadgen", "--trace", str(trace), "--url", node.url, "--speedup", "120",
                          "--duration", "2.5", "--max-tokens", "64", "--stream"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    sent, latency, first = out.stdout.splitlines()
    assert sent.startswith("sent 15 in") and ": ok 15, busy 0, error 0" in sent
    p50 = lambda line: float(line.split("p50 ")[1].split()[0])  # noqa: E731
    assert first.startswith("first text ms: p50 ") and 0 < p50(first) < p50(latency), out.stdout
    metrics = httpx.get(f"{node.url}/metrics").text
    assert "peakpilot_time_to_first_token_seconds_count 15.0" in metrics
    # every answer as long as --max-tokens (ignore_eos): 60 x 4 + 15 x 64, where the built-in model's own
    # greedy answer to the prompt ends after 5 tokens
    assert "peakpilot_generated_tokens_total 1200.0" in metrics

    # Within the SLO up to --max-rps: reported at it, as a floor (8 and 16 req/s measured, no more).
    out = subprocess.run([*cli, "profile", "--url", node.url, "--slo-ms", "2000", "--seconds", "0.5",
                          "--max-tokens", "4", "--start-rps", "8", "--max-rps", "16", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    profiled = json.loads(out.stdout)
    assert [s["rps"] for s in profiled["steps"]] == [8, 16] and all(s["within_slo"] for s in profiled["steps"])
    assert profiled["rps_per_node"] == 16 and profiled["capped"] is True
    assert profiled["model"] and profiled["slo_on"] == "answer"
    assert all(s["errors"] == {} for s in profiled["steps"])
    # --stream: the SLO is on the first text a chat user reads, which comes before the whole answer; doubled
    # from 64 req/s until it breaks, then bisected (the built-in model breaks 2000 ms near 300 req/s here)
    out = subprocess.run([*cli, "profile", "--url", node.url, "--slo-ms", "2000", "--seconds", "0.5",
                          "--max-tokens", "32", "--stream", "--start-rps", "64", "--json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    streamed = json.loads(out.stdout)
    good = [s["rps"] for s in streamed["steps"] if s["within_slo"]]
    assert streamed["slo_on"] == "first_text" and streamed["rps_per_node"] == max(good) > 0
    assert streamed["steps"][0]["rps"] == 64
    assert all(s["p99_ms"] < s["answer_p99_ms"] for s in streamed["steps"] if s["p99_ms"] is not None)
    assert streamed["capped"] is (not any(not s["within_slo"] for s in streamed["steps"]))
    out = subprocess.run([*cli, "profile", "--url", node.url, "--slo-ms", "500", "--start-rps", "32",
                          "--max-rps", "16"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--start-rps (32) must be above 0 and at most --max-rps (16)" in out.stderr
    out = subprocess.run([*cli, "profile", "--url", node.url, "--slo-ms", "500", "--seconds", "0.3"],
                         capture_output=True, text=True, timeout=60)  # 2 req/s for 0.3 s: not one request
    assert out.returncode == 2 and "--seconds 0.3 at --start-rps 2 sends no request: give --seconds 0.5" in out.stderr

    # Nothing listening: both refuse at once, naming the URL, instead of sending into refused connections.
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (["loadgen", "--trace", str(trace)], ["profile", "--slo-ms", "500"]):
        out = subprocess.run([*cli, *args, "--url", nowhere], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert f"peakpilot: error: {nowhere}: cannot connect (ConnectError" in out.stderr
        assert "is the node running" in out.stderr and "sending" not in out.stderr


def test_answers_slower_than_the_slo_are_counted_as_late():
    """The node measures what replay calls late: a served answer slower than --slo-ms. At a 1 ms target
    both requests, one after the other, are served late: each finds the node idle and waits for nothing, so
    it is not refused busy for answers taking longer than the target; at 60 s none is late."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from inference_node.server import NodeConfig, create_app

    def samples(client) -> dict[str, float]:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return {s.name + (f"{{{s.labels['outcome']}}}" if "outcome" in s.labels else ""): s.value
                for f in families for s in f.samples if not s.labels or "outcome" in s.labels}

    for slo_ms, late in ((1, 2), (60_000, 0)):
        with TestClient(create_app(NodeConfig(model="builtin:tiny", engine="thread", slo_ms=slo_ms))) as client:
            deadline = time.time() + 60
            while client.get("/ready").status_code != 200 and time.time() < deadline:
                time.sleep(0.05)
            assert client.get("/ready").json()["device"] == this_device()
            codes = [client.post("/v1/completions", json={"prompt": "x", "max_tokens": 8}).status_code
                     for _ in range(2)]
            got = samples(client)
            assert got["peakpilot_slo_seconds"] == slo_ms / 1000
            assert got["peakpilot_requests_over_slo_total"] == late
            assert codes == [200, 200] and got["peakpilot_requests_total{ok}"] == 2


def test_the_dtype_is_the_one_asked_for_or_the_one_that_fits_the_device(monkeypatch):
    """--dtype: a node serves in the dtype asked for and /ready says which; auto is float32 on a CPU, and on
    a GPU the model's own, but float16 for a bfloat16 model on a GPU without bfloat16 (a T4, a V100: CI has
    no GPU, so the CUDA device's answer comes from a stand-in here)."""
    import torch
    from fastapi.testclient import TestClient

    from inference_node.model import load_model, pick_dtype
    from inference_node.server import NodeConfig, create_app

    cuda = torch.device("cuda")
    assert pick_dtype("auto", torch.device("cpu"), torch.bfloat16) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", cuda, torch.bfloat16) == torch.float16
    assert pick_dtype("bfloat16", cuda, torch.float32) == torch.bfloat16  # asked for: as asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", cuda, torch.bfloat16) == torch.bfloat16
    assert pick_dtype("auto", cuda, torch.float32) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        pick_dtype("float8", cuda)
    with pytest.raises(ValueError, match="cannot be served in bfloat16"):
        load_model("builtin", device=torch.device("cpu"), quantize="int8", dtype="bfloat16")

    for dtype, held in (("auto", "float32"), ("bfloat16", "bfloat16")):
        with TestClient(create_app(NodeConfig(engine="thread", dtype=dtype, max_batch=2))) as client:
            deadline = time.time() + 60
            while client.get("/ready").status_code != 200 and time.time() < deadline:
                time.sleep(0.05)
            assert client.get("/ready").json()["dtype"] == held
            r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "serve", "--dtype", "float8"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown dtype 'float8'; choose auto, float32, float16 or bfloat16" in out.stderr


def test_device_named_as_ready_says_it(monkeypatch):
    """/ready names the GPU a node runs on (measured on an H100 by bench/node_gpu.py; CI has no GPU, so the
    CUDA name comes from a stand-in here)."""
    import torch

    from inference_node.engine import describe_device

    assert describe_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert describe_device(torch.device("cuda")) == "cuda:0 (GPU 0)"
    assert describe_device(torch.device("cuda", 1)) == "cuda:1 (GPU 1)"


def test_a_container_given_a_gpu_that_torch_cannot_use_says_so(monkeypatch, node_factory):
    """The device plugin names the GPUs it gives a container in NVIDIA_VISIBLE_DEVICES: a node that still
    serves on the CPU (a CPU build of torch in the image, a driver too old) says so in its log and /ready."""
    import torch

    from inference_node.engine import missing_gpu

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    assert missing_gpu() is None  # no GPU given: the CPU is what was asked for
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    assert missing_gpu() is None
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-5f3c")
    n = node_factory("--model", "builtin:tiny")
    body = n.wait_ready()
    assert body["device"] == "cpu" and "is a CPU build; serving on the CPU" in body["device_warning"]
    assert "NVIDIA_VISIBLE_DEVICES=GPU-5f3c says this container was given a GPU, but torch" in n.output()
