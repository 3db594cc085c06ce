"""Presence and frequency penalties, logit_bias, and vLLM's repetition_penalty, top_k, min_p, min_tokens and
ignore_eos (inference_node/sampling.py): each row of a shared batch draws as its own request asked, as a
decode of that request alone by OpenAI's formula (and vLLM's meaning of its extensions) does."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import httpx
import pytest
import torch

from inference_node.model import DecodeBatch, generate, load_model
from inference_node.sampling import GREEDY, Sampling


def reference(model, prompt: list[int], max_tokens: int, rule: Sampling) -> list[int]:
    """A greedy answer as OpenAI documents the penalties, worked out apart from the batch: the whole
    sequence through the model at every step (no cache, no padding, no other rows), each token's logit
    plus its bias, less ``frequency_penalty`` per time the answer holds it and ``presence_penalty`` once,
    divided by ``repetition_penalty`` (multiplied, where negative) if the prompt or the answer holds it; no
    end token while the answer is shorter than its min_tokens (or, with ignore_eos, at all)."""
    seq, counts, answer = list(prompt), Counter(), []
    least = max_tokens if rule.ignore_eos else rule.min_tokens
    for _ in range(max_tokens):
        ids = torch.tensor([seq])
        logits = model.module(ids, torch.ones_like(ids))[0][0, -1].float()
        for token, value in rule.logit_bias.items():
            logits[token] += value
        for token, count in counts.items():
            logits[token] -= count * rule.frequency_penalty + rule.presence_penalty
        for token in set(seq):
            value = logits[token]
            logits[token] = value / rule.repetition_penalty if value > 0 else value * rule.repetition_penalty
        if len(answer) < least:
            logits[list(model.end_tokens)] = float("-inf")
        token = int(logits.argmax())
        if token in model.end_tokens:
            break
        answer.append(token)
        seq.append(token)
        counts[token] += 1
    return answer


def test_rows_of_one_batch_each_get_their_own_penalties_and_biases():
    """A plain row, penalized rows (one penalizing repeats, one rewarding them, one with a repetition
    penalty over prompt and answer), a biased one, a sampled one forced by its bias, and two whose bias makes
    the end-of-text all but certain, held off it until min_tokens or for good (ignore_eos), share a batch,
    joining at different steps: each gets the answer the reference decode gives it alone, the rules change
    the answer they apply to and no other, and the batch holds its counts, biases and tokens seen only
    while some row asks for them."""
    model = load_model("builtin:small", device=torch.device("cpu"))
    plain_prompt = [65] * 30
    plain_alone = generate(model, [plain_prompt], [60])[0]
    rules = {
        "repeats_penalized": ([66, 67, 68], 40, Sampling(temperature=0, frequency_penalty=1.5, presence_penalty=0.5)),
        "repeats_rewarded": ([69, 70], 30, Sampling(temperature=0, presence_penalty=-2.0)),
        "repeats_divided": ([75] * 6 + [19, 92], 30, Sampling(temperature=0, repetition_penalty=1.8)),
        "biased": ([71] * 12, 20, Sampling(temperature=0, logit_bias={plain_alone[0]: -100.0, 70: 4.0})),
        "forced": ([72], 10, Sampling(temperature=1.0, seed=5, logit_bias={66: 100.0})),
        "held_to_12": ([73] * 5, 30, Sampling(temperature=0, logit_bias={256: 100.0}, min_tokens=12)),
        "never_ended": ([74] * 4, 20, Sampling(temperature=0, logit_bias={256: 100.0}, ignore_eos=True)),
    }
    batch, got, held = DecodeBatch(model), {}, []
    batch.add("plain", plain_prompt, 60)
    for step in range(80):
        if step == 3:
            for key in ("repeats_penalized", "repeats_rewarded", "repeats_divided"):
                batch.add(key, *rules[key])
        if step == 6:
            for key in ("biased", "forced", "held_to_12", "never_ended"):
                batch.add(key, *rules[key])
        got.update(batch.step())
        rows = [rules[k][2] if k in rules else Sampling() for k in batch.keys]
        held.append((any(r.penalized for r in rows), batch.counts, any(r.logit_bias for r in rows), batch.bias,
                     len(rows), any(r.repeats_penalized for r in rows), batch.seen))
        if not len(batch):
            break
    assert got["plain"] == plain_alone  # the others' penalties and biases leave it alone
    for key, (prompt, max_tokens, rule) in rules.items():
        if rule.temperature == 0:
            assert got[key] == reference(model, prompt, max_tokens, rule), key
            # (the held rows against their bias alone, which ends them at once)
            ended_by_bias = key in ("held_to_12", "never_ended")
            unchanged = replace(rule, min_tokens=0, ignore_eos=False) if ended_by_bias else GREEDY
            assert got[key] != generate(model, [prompt], [max_tokens], unchanged)[0], f"{key}: its rule changed nothing"
    assert got["forced"] == [66] * 10
    assert len(got["held_to_12"]) == 12 and len(got["never_ended"]) == 20
    assert plain_alone[0] != got["biased"][0]
    counted, rewarded = Counter(got["repeats_penalized"]), Counter(got["repeats_rewarded"])
    assert max(counted.values()) < max(rewarded.values())
    for penalized, counts, biased, bias, rows, repeating, seen in held:
        assert (counts is not None) == penalized and (bias is not None) == biased and (seen is not None) == repeating
        assert all(t is None or t.shape == (rows, 257) for t in (counts, bias, seen))
    # all three dropped before "plain" ended
    assert any(h[0] for h in held) and any(h[5] for h in held) and not any(held[-2][i] for i in (0, 2, 5))


def test_a_drawing_row_keeps_to_its_top_k_and_min_p():
    """vLLM's top_k and min_p, read against each step's own log-probabilities (temperature 1, so the
    distribution drawn from is the model's): every token a top_k 2 row draws is one of its step's two
    likeliest, and not always the first; every token a min_p 0.2 row draws is at least 0.2 times as likely
    as the likeliest, where a row free of both draws tokens far below that."""
    model = load_model("builtin:small", device=torch.device("cpu"))
    rules = {"top_k": Sampling(temperature=1.0, top_k=2, logprobs=2, seed=1),
             "min_p": Sampling(temperature=1.0, min_p=0.2, logprobs=1, seed=2),
             "free": Sampling(temperature=1.0, logprobs=1, seed=3)}
    batch, got, entries = DecodeBatch(model), {}, {}
    for key, rule in rules.items():
        batch.add(key, [65, 66, 67], 60, rule)
    while len(batch):
        got.update(batch.step())
        for key, told in batch.take_logprobs().items():
            entries.setdefault(key, []).extend(told)
    steps = {key: list(zip(got[key], entries[key])) for key in rules}
    assert all(token in [t for t, _ in top] for token, (_, top) in steps["top_k"])
    assert any(token != top[0][0] for token, (_, top) in steps["top_k"])
    floor = math.log(0.2)
    assert all(lp >= top[0][1] + floor - 1e-5 for _, (lp, top) in steps["min_p"])
    assert sum(lp < top[0][1] + floor for _, (lp, top) in steps["free"]) > 10


def test_a_bias_on_a_token_id_past_the_models_output_is_left_out_not_failing_the_batch():
    """The server refuses ids past its tokenizer's vocabulary; a tokenizer wider than the model's output
    (added tokens) must still not fail the step of every row in the batch."""
    model = load_model("builtin:tiny", device=torch.device("cpu"))
    alone = generate(model, [[65] * 4], [6])[0]
    assert generate(model, [[65] * 4], [6], Sampling(temperature=0, logit_bias={10_000: 100.0}))[0] == alone


@pytest.fixture(scope="module")
def node(shared_node):
    return shared_node


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


def test_ignore_eos_and_min_tokens_hold_an_answer_to_its_length(node):
    """vLLM's extensions, as a benchmark sends them through the OpenAI client's extra_body: the built-in
    model ends its greedy answer to "AAAAAAAA" after 16 tokens (17 generated, as vLLM counts them: the
    end-of-text too); with ignore_eos the answer is max_tokens
    long ("length"), with min_tokens 20 at least 20, and it begins as the answer without them does."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")

    def ask(**extra):
        return client.completions.create(model="x", prompt="AAAAAAAA", max_tokens=30, temperature=0,
                                         extra_body=extra or None)

    plain, fixed, held = ask(), ask(ignore_eos=True), ask(min_tokens=20)
    assert plain.usage.completion_tokens == 17 and plain.choices[0].finish_reason == "stop"
    assert fixed.usage.completion_tokens == 30 and fixed.choices[0].finish_reason == "length"
    assert held.usage.completion_tokens >= 20
    assert fixed.choices[0].text.startswith(plain.choices[0].text)
    assert held.choices[0].text.startswith(plain.choices[0].text)


def test_stop_token_ids_end_the_rows_that_ask_and_no_other():
    """vLLM's stop_token_ids: a row's answer ends before the first of its own stop tokens (left out, as an
    end-of-text is); a row of the same batch whose answer holds that token goes on; min_tokens holds the stop
    tokens off as it holds the end-of-text, and ignore_eos does not (it is about the end-of-text only)."""
    model = load_model("builtin:small", device=torch.device("cpu"))
    prompt = [65] * 8
    plain = generate(model, [prompt], [30])[0]
    stop = plain[6]
    k = plain.index(stop)  # where the first of them is
    asked = {"stopped": Sampling(temperature=0, stop_token_ids=(stop,)),
             "ignoring_eos": Sampling(temperature=0, stop_token_ids=(stop,), ignore_eos=True),
             "held": Sampling(temperature=0, stop_token_ids=(stop, 255), min_tokens=k + 4)}
    batch, got = DecodeBatch(model), {}
    batch.add("plain", prompt, 30)
    for key, rule in asked.items():
        batch.add(key, prompt, 30, rule)
    while len(batch):
        got.update(batch.step())
    assert got["plain"] == plain and len(plain) > k + 1  # its answer holds the others' stop token, and goes on
    assert got["stopped"] == got["ignoring_eos"] == plain[:k]
    held = got["held"]
    assert held[:k] == plain[:k] and len(held) >= k + 4 and not {stop, 255} & set(held[:k + 4])
    assert not {stop, 255} & set(held)  # and where it ends on one of them later, that one is left out


def test_stop_token_ids_through_the_openai_client_whole_and_streamed(node):
    """The built-in model's greedy answer to "AAAAAAAA" is 16 tokens, its fourth token 60: with
    stop_token_ids [60] the answer is its first 3 ("stop"), streamed or not, and vLLM's stop_reason says 60 (a
    stop string's, the string). Usage counts as vLLM's does: the token that ended the answer too."""
    from openai import OpenAI

    def generated() -> float:
        text = httpx.get(f"{node.url}/metrics").text
        return float(next(x for x in text.splitlines() if x.startswith("peakpilot_generated_tokens_total ")).split()[1])

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    ask = dict(model="x", prompt="AAAAAAAA", max_tokens=30, temperature=0)
    before = generated()
    plain = client.completions.create(**ask)
    stopped = client.completions.create(**ask, extra_body={"stop_token_ids": [60]})
    assert plain.usage.completion_tokens == 17 and len(plain.choices[0].text) == 16  # ASCII: a byte a token
    assert stopped.usage.completion_tokens == 4 and len(stopped.choices[0].text) == 3
    assert stopped.choices[0].finish_reason == "stop"
    assert generated() - before == 17 + 4  # the node's metric counts the ending tokens too
    chunks = list(client.completions.create(**ask, stream=True, stream_options={"include_usage": True},
                                            extra_body={"stop_token_ids": [60]}))
    assert chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == stopped.choices[0].text
    # vLLM's stop_reason: the stop token id or stop string that ended the answer, None for its end or length
    assert stopped.choices[0].model_extra["stop_reason"] == 60
    assert plain.choices[0].model_extra["stop_reason"] is None
    last = [c.choices[0] for c in chunks if c.choices][-1]
    assert last.model_extra["stop_reason"] == 60
    word = plain.choices[0].text[4:6]
    by_string = client.completions.create(**ask, stop=["never there", word])
    assert by_string.choices[0].model_extra["stop_reason"] == word and by_string.choices[0].finish_reason == "stop"
    streamed = [c.choices[0] for c in client.completions.create(**ask, stop=[word], stream=True) if c.choices]
    assert streamed[-1].model_extra["stop_reason"] == word
    talk = dict(model="x", messages=[{"role": "user", "content": "AAAAAAAA"}], max_tokens=30, temperature=0)
    said = client.chat.completions.create(**talk).choices[0].message.content
    chat = client.chat.completions.create(**talk, stop=[said[3:5]])
    assert chat.choices[0].model_extra["stop_reason"] == said[3:5] and chat.choices[0].message.content == said[:3]


@pytest.mark.parametrize("extra,field,message", [
    ({"presence_penalty": 2.5}, "presence_penalty", "'presence_penalty' must be a number from -2 to 2"),
    ({"frequency_penalty": "1"}, "frequency_penalty", "'frequency_penalty' must be a number from -2 to 2"),
    ({"logit_bias": [1, 2]}, "logit_bias", "'logit_bias' must be an object of token ids"),
    ({"logit_bias": {"A": 5}}, "logit_bias", "logit_bias: 'A' is not a token id of this model's tokenizer, 0 to 256"),
    ({"logit_bias": {"257": 5}}, "logit_bias", "'257' is not a token id of this model's tokenizer, 0 to 256"),
    ({"logit_bias": {"-1": 5}}, "logit_bias", "'-1' is not a token id"),
    ({"logit_bias": {"65": 101}}, "logit_bias", "logit_bias['65'] must be a number from -100 to 100"),
    ({"logit_bias": {"65": True}}, "logit_bias", "logit_bias['65'] must be a number from -100 to 100"),
    ({"min_tokens": -1}, "min_tokens", "'min_tokens' must be a non-negative integer"),
    ({"min_tokens": 3, "max_tokens": 2}, "min_tokens", "'min_tokens' (3) is over 'max_tokens' (2)"),
    ({"ignore_eos": "yes"}, "ignore_eos", "'ignore_eos' must be true or false"),
    ({"top_k": -2}, "top_k", "'top_k' must be an integer: -1 or 0 for every token"),
    ({"top_k": 2.5}, "top_k", "'top_k' must be an integer"),
    ({"min_p": 1.5}, "min_p", "'min_p' must be a number from 0 to 1"),
    ({"repetition_penalty": 0}, "repetition_penalty", "'repetition_penalty' must be a number above 0"),
    # vLLM's, that would change the answer and are not done here: refused by name
    ({"use_beam_search": True}, "use_beam_search", "'use_beam_search' is not supported by this node"),
    ({"stop_token_ids": 5}, "stop_token_ids", "'stop_token_ids' must be a list of token ids of this model's"),
    ({"stop_token_ids": [257]}, "stop_token_ids", "must be a list of token ids of this model's tokenizer, 0 to 256"),
    ({"stop_token_ids": [True]}, "stop_token_ids", "'stop_token_ids' must be a list of token ids"),
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output",
     "'include_stop_str_in_output' is not supported by this node"),
    ({"guided_json": {"type": "object"}}, "guided_json", "'guided_json' is not supported by this node"),
    ({"skip_special_tokens": False}, "skip_special_tokens", "(or at its default, true)"),
])
def test_bad_penalties_and_biases_get_400_naming_the_field(node, extra, field, message):
    for path, body in (("/v1/completions", {"prompt": "a"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]})):
        r = httpx.post(f"{node.url}{path}", json={**body, **extra}, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == field and message in err["message"], err
    neutral = {"presence_penalty": None, "frequency_penalty": 0, "logit_bias": None, "min_tokens": None,
               "ignore_eos": False, "top_k": -1, "min_p": 0, "repetition_penalty": 1, "use_beam_search": False,
               "skip_special_tokens": True, "stop_token_ids": None, "include_stop_str_in_output": False}
    assert httpx.post(f"{node.url}/v1/completions", json={"prompt": "a", "max_tokens": 2, **neutral},
                      timeout=30).status_code == 200


def test_top_k_1_draws_greedily_and_fields_the_node_does_not_know_are_named_once_in_its_log(node):
    """top_k 1 (through the OpenAI client's extra_body) leaves a drawing row one token to draw: the greedy
    answer. A field neither OpenAI's API nor vLLM's extensions name is ignored, not refused (SDKs send
    fields of their own), and the node's log names it, once; fields it knows to change nothing are not."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    greedy = client.completions.create(model="x", prompt="Tell me", max_tokens=24, temperature=0).choices[0].text
    one = client.completions.create(model="x", prompt="Tell me", max_tokens=24, temperature=1.5,
                                    extra_body={"top_k": 1}).choices[0].text
    assert one == greedy
    for _ in range(2):
        r = httpx.post(f"{node.url}/v1/completions", json={"prompt": "a", "max_tokens": 2, "frobnicate": 1,
                                                           "user": "someone", "metadata": {"a": "b"}}, timeout=30)
        assert r.status_code == 200
    log = node.output()
    assert log.count("request field 'frobnicate' ignored") == 1 and "'user'" not in log and "'metadata'" not in log


PEAKED = [dict(top_p=0.9), dict(top_p=0.5, top_k=40), dict(min_p=0.05), dict(top_p=0.95, min_p=0.01), dict(top_k=7)]


@pytest.mark.parametrize("sharpness,settings,looked_among", [
    (8.0, PEAKED, 1024),  # a trained model's peaked distributions: every row's tokens among the top 1,024
    (8.0, PEAKED + [dict(top_k=2000)], 32_000),  # a top_k past them: the whole vocabulary, sorted
    (0.2, [dict(top_p=0.9), dict(min_p=0.5)], 32_000),  # nearly flat: the nucleus is most of the vocabulary
    (3.0, PEAKED, None), (1.0, PEAKED + [dict(top_p=0.3, min_p=0.2)], None),
])
def test_a_narrowed_draw_looks_among_the_likeliest_only_where_that_keeps_the_same_tokens(sharpness, settings,
                                                                                          looked_among):
    """Looking for a row's nucleus, top_k and min_p among its 1,024 likeliest tokens first keeps exactly the
    probabilities a sort of the whole vocabulary keeps, row by row in one batch; and it looks only there
    where that holds every row's tokens."""
    from inference_node.model import SAMPLING_COLUMNS, _narrowed, _ranked

    gen = torch.Generator().manual_seed(len(settings))
    probs = torch.softmax(torch.randn(len(settings), 32_000, generator=gen) * sharpness, dim=-1)
    neutral = dict(temperature=1.0, top_p=1.0, presence_penalty=0.0, frequency_penalty=0.0, top_k=0, min_p=0.0,
                   repetition_penalty=1.0)
    rows = torch.tensor([[{**neutral, **s}[c] for c in SAMPLING_COLUMNS] for s in settings], dtype=torch.float32)
    fast = _narrowed(probs, rows, top_k=True)
    assert torch.equal(fast, _narrowed(probs, rows, top_k=True, candidates=32_000))
    if looked_among is not None:
        assert _ranked(probs, rows[:, 1:2], rows[:, 4:5], rows[:, 5:6], 1024)[0].shape[-1] == looked_among
