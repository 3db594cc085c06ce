"""Presence and frequency penalties and logit_bias (inference_node/sampling.py): each row of a shared batch
draws as its own request asked, as a decode of that request alone by OpenAI's formula does."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import torch

from inference_node.model import DecodeBatch, generate, load_model
from inference_node.sampling import Sampling


def reference(model, prompt: list[int], max_tokens: int, rule: Sampling) -> list[int]:
    """A greedy answer as OpenAI documents the penalties, worked out apart from the batch: the whole
    sequence through the model at every step (no cache, no padding, no other rows), each token's logit
    plus its bias, less ``frequency_penalty`` per time the answer holds it and ``presence_penalty`` once."""
    seq, counts, answer = list(prompt), Counter(), []
    for _ in range(max_tokens):
        ids = torch.tensor([seq])
        logits = model.module(ids, torch.ones_like(ids))[0][0, -1].float()
        for token, value in rule.logit_bias.items():
            logits[token] += value
        for token, count in counts.items():
            logits[token] -= count * rule.frequency_penalty + rule.presence_penalty
        token = int(logits.argmax())
        if token in model.end_tokens:
            break
        answer.append(token)
        seq.append(token)
        counts[token] += 1
    return answer


def test_rows_of_one_batch_each_get_their_own_penalties_and_biases():
    """A plain row, penalized rows (one penalizing repeats, one rewarding them), a biased one and a sampled
    one forced by its bias share a batch, joining at different steps: each gets the answer the reference
    decode gives it alone, the penalties change the answer they apply to and no other, and the batch holds
    its counts and biases only while some row asks for them."""
    model = load_model("builtin:small", device=torch.device("cpu"))
    plain_prompt = [65] * 30
    plain_alone = generate(model, [plain_prompt], [60])[0]
    rules = {
        "repeats_penalized": ([66, 67, 68], 40, Sampling(temperature=0, frequency_penalty=1.5, presence_penalty=0.5)),
        "repeats_rewarded": ([69, 70], 30, Sampling(temperature=0, presence_penalty=-2.0)),
        "biased": ([71] * 12, 20, Sampling(temperature=0, logit_bias={plain_alone[0]: -100.0, 70: 4.0})),
        "forced": ([72], 10, Sampling(temperature=1.0, seed=5, logit_bias={66: 100.0})),
    }
    batch, got, held = DecodeBatch(model), {}, []
    batch.add("plain", plain_prompt, 60)
    for step in range(80):
        if step == 3:
            for key in ("repeats_penalized", "repeats_rewarded"):
                batch.add(key, *rules[key])
        if step == 6:
            for key in ("biased", "forced"):
                batch.add(key, *rules[key])
        got.update(batch.step())
        rows = [rules[k][2] if k in rules else Sampling() for k in batch.keys]
        held.append((any(r.penalized for r in rows), batch.counts, any(r.logit_bias for r in rows), batch.bias,
                     len(rows)))
        if not len(batch):
            break
    assert got["plain"] == plain_alone  # the others' penalties and biases leave it alone
    for key, (prompt, max_tokens, rule) in rules.items():
        if rule.temperature == 0:
            assert got[key] == reference(model, prompt, max_tokens, rule), key
            assert got[key] != generate(model, [prompt], [max_tokens])[0], f"{key}: its rule changed nothing"
    assert got["forced"] == [66] * 10
    assert plain_alone[0] != got["biased"][0]
    counted, rewarded = Counter(got["repeats_penalized"]), Counter(got["repeats_rewarded"])
    assert max(counted.values()) < max(rewarded.values())
    for penalized, counts, biased, bias, rows in held:
        assert (counts is not None) == penalized and (bias is not None) == biased
        assert counts is None or counts.shape == (rows, 257)
        assert bias is None or bias.shape == (rows, 257)
    assert any(h[0] for h in held) and not held[-2][0] and not held[-2][2]  # both dropped before "plain" ended


def test_a_bias_on_a_token_id_past_the_models_output_is_left_out_not_failing_the_batch():
    """The server refuses ids past its tokenizer's vocabulary; a tokenizer wider than the model's output
    (added tokens) must still not fail the step of every row in the batch."""
    model = load_model("builtin:tiny", device=torch.device("cpu"))
    alone = generate(model, [[65] * 4], [6])[0]
    assert generate(model, [[65] * 4], [6], Sampling(temperature=0, logit_bias={10_000: 100.0}))[0] == alone


@pytest.fixture(scope="module")
def node():
    from tests.conftest import NodeProcess

    n = NodeProcess("--max-batch", "8", "--max-queue", "16")
    n.wait_ready()
    yield n
    n.stop()


def test_openai_clients_penalties_and_logit_bias_shape_the_nodes_answers(node):
    """Through the OpenAI client, on both endpoints: logit_bias +100 on "A" makes every sampled token "A";
    -100 on greedy's first token moves it; the penalties give the answer the model in this process gives
    with them (the node's built-in model, seeded alike), not the one without. Before, all three were
    refused with a 400."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    forced = client.completions.create(model="x", prompt="Tell me", max_tokens=8, temperature=1.0,
                                       logit_bias={"65": 100})
    assert forced.choices[0].text == "A" * 8
    chat = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                          temperature=1.0, logit_bias={"66": 100})
    assert chat.choices[0].message.content == "B" * 5
    model = load_model("builtin", device=torch.device("cpu"))
    prompt = model.tokenizer.encode("Tell me")
    greedy = client.completions.create(model="x", prompt="Tell me", max_tokens=24, temperature=0).choices[0].text
    first = model.tokenizer.encode(greedy)[0]
    moved = client.completions.create(model="x", prompt="Tell me", max_tokens=24, temperature=0,
                                      logit_bias={str(first): -100}).choices[0].text
    assert moved and model.tokenizer.encode(moved)[0] != first
    long_greedy = client.completions.create(model="x", prompt="Tell me", max_tokens=64, temperature=0).choices[0].text
    rule = Sampling(temperature=0, presence_penalty=1.0, frequency_penalty=2.0)
    penalized = client.completions.create(model="x", prompt="Tell me", max_tokens=64, temperature=0,
                                          presence_penalty=1.0, frequency_penalty=2.0).choices[0].text
    expected = model.tokenizer.decode(generate(model, [prompt], [64], rule)[0])
    assert penalized == expected and penalized != long_greedy
    # a negative frequency penalty rewards each repeat more: the answer sticks to its first token
    stuck = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=32,
                                           temperature=0, frequency_penalty=-2.0).choices[0].message.content
    assert len(stuck) == 32 and len(set(stuck)) == 1, stuck


@pytest.mark.parametrize("extra,field,message", [
    ({"presence_penalty": 2.5}, "presence_penalty", "'presence_penalty' must be a number from -2 to 2"),
    ({"frequency_penalty": "1"}, "frequency_penalty", "'frequency_penalty' must be a number from -2 to 2"),
    ({"logit_bias": [1, 2]}, "logit_bias", "'logit_bias' must be an object of token ids"),
    ({"logit_bias": {"A": 5}}, "logit_bias", "logit_bias: 'A' is not a token id of this model's tokenizer, 0 to 256"),
    ({"logit_bias": {"257": 5}}, "logit_bias", "'257' is not a token id of this model's tokenizer, 0 to 256"),
    ({"logit_bias": {"-1": 5}}, "logit_bias", "'-1' is not a token id"),
    ({"logit_bias": {"65": 101}}, "logit_bias", "logit_bias['65'] must be a number from -100 to 100"),
    ({"logit_bias": {"65": True}}, "logit_bias", "logit_bias['65'] must be a number from -100 to 100"),
])
def test_bad_penalties_and_biases_get_400_naming_the_field(node, extra, field, message):
    for path, body in (("/v1/completions", {"prompt": "a"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]})):
        r = httpx.post(f"{node.url}{path}", json={**body, **extra}, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == field and message in err["message"], err
    neutral = {"presence_penalty": None, "frequency_penalty": 0, "logit_bias": None}
    assert httpx.post(f"{node.url}/v1/completions", json={"prompt": "a", "max_tokens": 2, **neutral},
                      timeout=30).status_code == 200
