"""Log-probabilities as the steps that draw the tokens tell them (model.DecodeBatch.take_logprobs): the same
figures as a pass of the model over the whole sequence, for a row beside others that do not ask, and
streamed with the text they belong to."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from inference_node.model import DecodeBatch, load_model, score
from inference_node.sampling import GREEDY, Sampling


def test_a_rows_logprobs_from_its_steps_are_the_models_own_beside_rows_that_do_not_ask():
    """Greedy or drawn, joining a batch mid-way, a row's per-step log-probabilities (and its likeliest
    tokens) are those one pass of the model over its prompt and answer gives (model.score): the raw
    distribution, before temperature; rows that do not ask get nothing and cost no read."""
    model = load_model("builtin:small", device=torch.device("cpu"))
    asked = {"greedy": ([65] * 9, 14, Sampling(temperature=0, logprobs=3)),
             "drawn": ([66, 67], 10, Sampling(temperature=1.3, seed=11, logprobs=0)),
             "quiet": ([68] * 20, 16, GREEDY)}
    batch, got, entries = DecodeBatch(model), {}, {}
    batch.add("quiet", *asked["quiet"])
    for step in range(40):
        if step == 2:
            batch.add("greedy", *asked["greedy"])
            batch.add("drawn", *asked["drawn"])
        got.update(batch.step())
        for key, told in batch.take_logprobs().items():
            entries.setdefault(key, []).extend(told)
        if not len(batch):
            break
    assert set(entries) == {"greedy", "drawn"}
    for key in ("greedy", "drawn"):
        prompt, _, rule = asked[key]
        mine = entries[key][:len(got[key])]
        whole = score(model, prompt + got[key], len(prompt), rule.logprobs)
        assert [lp for lp, _ in mine] == pytest.approx([lp for lp, _ in whole], abs=1e-4)
        assert [[t for t, _ in top] for _, top in mine] == [[t for t, _ in top] for _, top in whole]
        assert all(len(top) == rule.logprobs for _, top in mine)
    # greedy: each token drawn is the likeliest
    assert all(top[0][0] == token for (_, top), token in zip(entries["greedy"], got["greedy"]))


def streamed(url: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}{path}", json=dict(body, stream=True), timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def node(shared_node):
    return shared_node


@pytest.mark.parametrize("stop", [None, "stop"])
def test_streamed_logprobs_add_up_to_the_whole_answers(node, stop):
    """``logprobs`` with ``stream`` (it was refused): each event carries those of the tokens whose text it
    completes, so the events' pieces add up to the whole answer's logprobs, tokens, text offsets and all,
    on both endpoints; with a stop string, only the kept tokens'. The answers are the built-in model's
    random bytes: characters split over tokens, held back until whole, with their tokens' figures."""
    whole = httpx.post(f"{node.url}/v1/completions", json={"prompt": "Tell me", "max_tokens": 40, "temperature": 0},
                       timeout=60).json()["choices"][0]["text"]
    # a stop string of two printable ASCII characters well into the answer
    stops = [next(whole[i:i + 2] for i in range(15, len(whole) - 1) if whole[i:i + 2].isascii()
                  and whole[i:i + 2].isprintable() and whole[i:i + 2].strip())] if stop else None
    body = {"prompt": "Tell me", "max_tokens": 40, "temperature": 0, "logprobs": 2, "stop": stops}
    expected = httpx.post(f"{node.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert (expected["finish_reason"] == "stop" and len(expected["text"]) < len(whole)) if stop else \
        expected["text"] == whole
    events = streamed(node.url, "/v1/completions", body)
    pieces = [e["choices"][0] for e in events]
    assert "".join(p["text"] for p in pieces) == expected["text"]
    joined = {k: [x for p in pieces if p["logprobs"] for x in p["logprobs"][k]] for k in expected["logprobs"]}
    assert joined == expected["logprobs"]
    assert len(joined["tokens"]) == len(expected["logprobs"]["tokens"]) > 0
    assert sum(1 for p in pieces if p["logprobs"]) > 1  # in pieces as they came, not all at the end

    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30, "temperature": 0, "logprobs": True,
            "top_logprobs": 2, "stop": stops}
    expected = httpx.post(f"{node.url}/v1/chat/completions", json=chat, timeout=60).json()["choices"][0]
    chunks = [c for e in streamed(node.url, "/v1/chat/completions", chat) for c in e["choices"]]
    assert [x for c in chunks if c["logprobs"] for x in c["logprobs"]["content"]] == expected["logprobs"]["content"]
    assert "".join(c["delta"].get("content", "") for c in chunks) == expected["message"]["content"]
