"""A Hugging Face model served by the node (``--model hf:PATH``): a real ``transformers`` Llama and a real
fast tokenizer, saved as a user's would be (random weights and a tokenizer trained here: nothing can be
downloaded), batched by the node as it batches its own model."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from tests.node_models import write_hf_model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    write_hf_model(path)
    return path


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_rows_batched_by_the_node_get_the_answers_transformers_gives_each_alone(architecture, hf_dir, tmp_path):
    """Left-padded rows of different lengths, one joining mid-way: each row's greedy answer is the one
    transformers' own generate gives its prompt alone (positions from the mask, the cache handed back and
    forth), cut at the first of the model's end tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference_node.model import DecodeBatch, load_model

    path = hf_dir if architecture == "llama" else tmp_path / f"tiny-{architecture}"
    if architecture != "llama":
        write_hf_model(path, architecture)
    model = load_model(f"hf:{path}", device=torch.device("cpu"))
    assert model.name == f"tiny-{architecture}" and model.context == 128 and model.end_tokens == (1, 2)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = ["A GPU node boots", "Hello", "the service answers, busy or not. café"]
    ids = [model.tokenizer.encode(p) for p in prompts]
    assert ids == [tok.encode(p) for p in prompts] and all(i[0] == 0 for i in ids)  # its beginning-of-text

    def alone(prompt_ids: list[int], n: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 eos_token_id=[1, 2], pad_token_id=1)
        answer = out[0, len(prompt_ids):].tolist()
        return answer[:next((i for i, t in enumerate(answer) if t in (1, 2)), len(answer))]

    batch = DecodeBatch(model)
    batch.add(0, ids[0], 12)
    got = {}
    for step in range(40):
        if step == 3:  # two join a batch already generating
            batch.add(1, ids[1], 12)
            batch.add(2, ids[2], 6)
        got.update(dict(batch.step()))
        if len(got) == 3:
            break
    assert [got[i] for i in range(3)] == [alone(ids[0], 12), alone(ids[1], 12), alone(ids[2], 6)]
    assert any(len(got[i]) > 2 for i in range(3))  # the answers are not all cut short by an end token


def test_a_node_serves_a_hugging_face_model_with_its_chat_template(hf_dir, node_factory):
    """Over HTTP, the engine in its own process: the model's context read from its config, chat through
    its template (a template that refuses the messages is a 400 saying why), the text decoded by its
    tokenizer, streamed as whole, log-probabilities as transformers computes them; the server's process
    does not import torch."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    node = node_factory("--model", f"hf:{hf_dir}", "--max-batch", "4")
    ready = node.wait_ready(timeout=120)
    assert ready["model"] == "tiny-llama" and ready["max_model_len"] == 128
    tok = AutoTokenizer.from_pretrained(hf_dir)
    client = OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]
    chat = client.chat.completions.create(model="x", messages=messages, max_tokens=8, temperature=0)
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<s><|system|>Be brief.<|end|>")
    assert chat.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))  # one <s>, not two
    counted = httpx.post(f"{node.url}/tokenize", json={"messages": messages}).json()  # as vLLM's /tokenize
    assert counted["count"] == chat.usage.prompt_tokens and counted["max_model_len"] == 128
    assert httpx.post(f"{node.url}/detokenize", json={"tokens": counted["tokens"]}).json()["prompt"] == \
        tok.decode(counted["tokens"], skip_special_tokens=True)
    # vLLM's add_special_tokens, as transformers' encode takes it, and each token as the vocabulary writes it
    for special in (True, False):
        asked = {"prompt": "Hello there", "add_special_tokens": special, "return_token_strs": True}
        got = httpx.post(f"{node.url}/tokenize", json=asked).json()
        assert got["tokens"] == tok.encode("Hello there", add_special_tokens=special)
        assert got["token_strs"] == tok.convert_ids_to_tokens(got["tokens"]) and "\u0120the" in got["token_strs"]
        answered = client.completions.create(model="x", prompt="Hello there", max_tokens=1,
                                             extra_body={"add_special_tokens": special})
        assert answered.usage.prompt_tokens == got["count"]
    assert got["tokens"][0] != tok.bos_token_id  # (left out only when asked)
    same = client.completions.create(model="x", prompt=rendered, max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == same.choices[0].text
    assert chat.usage.completion_tokens == same.usage.completion_tokens

    prompt = "café naïve 日本 €"
    whole = client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0)
    pieces = list(client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert len(pieces) > 2  # it came in pieces

    refused = httpx.post(f"{node.url}/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert "chat template refused them: Conversation roles must alternate" in refused.json()["error"]["message"]
    past = httpx.post(f"{node.url}/v1/completions", json={"prompt": "Hello " * 40, "max_tokens": 100})
    assert past.status_code == 400 and "maximum context length is 128 tokens" in past.json()["error"]["message"]
    # log-probabilities over every position of the prompt (echo, max_tokens 0), as transformers computes them
    from transformers import AutoModelForCausalLM

    scored = client.completions.create(model="x", prompt="A GPU node boots", max_tokens=0, echo=True, logprobs=2)
    ids = tok.encode("A GPU node boots")
    with torch.inference_mode():
        logits = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(torch.tensor([ids])).logits[0].float()
    expected = [torch.log_softmax(logits[i - 1], -1)[ids[i]].item() for i in range(1, len(ids))]
    assert scored.choices[0].logprobs.token_logprobs[0] is None
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    # the same context sent as its token ids, as an evaluation harness tokenizes it: the same scores, and its text
    # decoded as vLLM echoes it (without the special <s>)
    by_ids = client.completions.create(model="x", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    assert by_ids.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert by_ids.choices[0].text == tok.decode(ids, skip_special_tokens=True) == "A GPU node boots"
    assert by_ids.usage.prompt_tokens == len(ids)
    maps = open(f"/proc/{node.proc.pid}/maps").read()
    assert "libtorch" not in maps and "tokenizers" in maps


def test_a_model_saved_in_bfloat16_is_served_in_float32_on_a_cpu_or_as_asked(tmp_path):
    from transformers import AutoModelForCausalLM

    from inference_node.model import generate, load_model

    write_hf_model(tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(tmp_path / "m").to(torch.bfloat16).save_pretrained(tmp_path / "m")
    assert load_model(f"hf:{tmp_path / 'm'}", device=torch.device("cpu")).dtype == "float32"
    half = load_model(f"hf:{tmp_path / 'm'}", device=torch.device("cpu"), dtype="bfloat16")
    assert half.dtype == "bfloat16" and len(generate(half, [[0, 40, 41]], [4])[0]) <= 4


def test_a_model_that_is_not_there_or_not_a_decoder_of_attention_layers_is_refused(tmp_path):
    from inference_node.model import load_model

    with pytest.raises(OSError):
        load_model(f"hf:{tmp_path / 'nothing'}", device=torch.device("cpu"))
    from transformers import MambaConfig

    MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path / "mamba")
    with pytest.raises(ValueError, match="decoders of attention layers only"):
        load_model(f"hf:{tmp_path / 'mamba'}", device=torch.device("cpu"))


THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}")


def test_chat_template_kwargs_and_add_generation_prompt_render_as_transformers_does(hf_dir):
    """vLLM's ``chat_template_kwargs`` (a Qwen3 template's ``enable_thinking``, say) and
    ``add_generation_prompt`` reach the model's chat template as transformers passes them: the prompt is
    the one transformers renders, and each setting gives a prompt of its own (before, both were ignored and
    the template always rendered with its defaults). Variables the node sets itself, and vLLM's
    ``continue_final_message``, are refused by name."""
    from transformers import AutoTokenizer

    from inference_node.config import NodeConfig
    from inference_node.protocol import parse_chat
    from inference_node.tokenizer import HFTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.chat_template = THINKING_TEMPLATE
    ours = HFTokenizer.from_transformers(tok, (1,))
    messages = [{"role": "user", "content": "Hi"}]
    prompts = []
    for extra in ({}, {"chat_template_kwargs": {"enable_thinking": False}}, {"add_generation_prompt": False}):
        asked = parse_chat(json.dumps({"messages": messages, **extra}).encode(), NodeConfig(), ours)
        expected = tok.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=extra.get("add_generation_prompt", True),
                                           **extra.get("chat_template_kwargs", {}))
        assert asked.prompts[0] == ours.encode(expected), extra
        prompts.append(expected)
    assert len(set(prompts)) == 3 and prompts[1].endswith("<|assistant|><think></think>")
    for extra, field in (({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
                         ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
                         ({"add_generation_prompt": "no"}, "add_generation_prompt"),
                         ({"continue_final_message": True}, "continue_final_message")):
        refused = parse_chat(json.dumps({"messages": messages, **extra}).encode(), NodeConfig(), ours)
        assert refused.status_code == 400 and json.loads(refused.body)["error"]["param"] == field
