"""The request bodies of OpenAI's API, and of vLLM's extensions of it, as this node reads them (what vLLM's
``entrypoints/openai/protocol.py`` is to vLLM): each parsed into a ``Generation``, or answered in OpenAI's error
shape, a 400 (a 404 for a model this node does not serve) naming the field and what is wrong with it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace

from fastapi.responses import JSONResponse

from inference_node.config import NodeConfig
from inference_node.sampling import BIAS_RANGE, PENALTY_RANGE, Sampling

log = logging.getLogger("peakpilot.node")


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape; ``code`` is ``kind`` unless the error has a code of its own (``invalid_api_key``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}


def error(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def json_object(body: bytes) -> dict | JSONResponse:
    try:
        data = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"malformed JSON body: {exc}", "invalid_request_error")
    if not isinstance(data, dict):
        return error(400, "the body must be a JSON object", "invalid_request_error")
    return data


@dataclass
class Generation:
    """What a request asks to generate, as both endpoints parse it."""

    prompts: list[list[int]]  # as the tokenizer encodes them
    max_tokens: int
    sampling: Sampling  # how its tokens are drawn (inference_node/sampling.py)
    stream: bool
    n: int = 1  # answers per prompt
    stop: list[str] = field(default_factory=list)  # the answer ends before the first of these
    include_usage: bool = False  # streamed: a last chunk with the usage (``stream_options.include_usage``)
    echo: list[str] | None = None  # completions: each prompt, before its answer (and in the logprobs)
    model: str | None = None  # the served model name the request asked for (``--served-model-name``)

    @property
    def logprobs(self) -> int | None:
        """The answer tokens' log-probabilities asked for, and this many likeliest tokens' in each place."""
        return self.sampling.logprobs


# What OpenAI's API, and vLLM's extensions of it, take that this node does not do, with the values that ask
# for nothing: anything else is refused by name, where ignoring it would answer something other than what the
# client asked for (tools never called, a suffix never written, a JSON schema never followed).
UNSUPPORTED: dict[str, tuple] = {
    "best_of": (None, 1), "suffix": (None, ""), "tools": (None, []), "functions": (None, []),
    "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]), "audio": (None,),
    "reasoning_effort": (None,),
    "use_beam_search": (None, False), "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True), "bad_words": (None, []), "allowed_token_ids": (None,),
    "prompt_logprobs": (None,), "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,),
    "guided_grammar": (None,), "structured_outputs": (None,), "truncate_prompt_tokens": (None,),
    "continue_final_message": (None, False), "chat_template": (None,),
}
# What this node reads (or refuses by name, above), and what changes nothing in its answer here; any other
# field is ignored and named once in the log (as vLLM does), not refused: clients and SDKs send fields of
# their own.
KNOWN_FIELDS = frozenset(UNSUPPORTED) | {
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "n", "stop", "stream", "stream_options",
    "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "min_tokens",
    "ignore_eos", "top_k", "min_p", "repetition_penalty", "stop_token_ids", "logprobs", "top_logprobs", "echo",
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "tool_choice", "function_call",
    "prediction", "spaces_between_special_tokens", "add_generation_prompt", "chat_template_kwargs",
    "add_special_tokens",
}
_ignored_logged: set[str] = set()


def _log_ignored(data: dict) -> None:
    """Name, once each, the fields of a request that this node does not know and so ignores."""
    new = sorted(k for k in data if k not in KNOWN_FIELDS and k not in _ignored_logged)
    if new:
        _ignored_logged.update(new)
        log.warning("request field%s %s ignored: not among the fields of OpenAI's API or vLLM's extensions this "
                    "node knows (said once per field)", "s" if len(new) > 1 else "", ", ".join(map(repr, new)))


def special_tokens_asked(data: dict) -> bool | None | JSONResponse:
    """vLLM's ``add_special_tokens``: the tokenizer's special tokens added to a text prompt (true) or not
    (false); left out, this node's own reading (added, but never a second beginning-of-text token before a
    templated prompt that starts with one). A 400 where it is no boolean."""
    special = data.get("add_special_tokens")
    if special is not None and not isinstance(special, bool):
        return error(400, "'add_special_tokens' must be true or false", "invalid_request_error", "add_special_tokens")
    return special


def is_integer(value) -> bool:
    """A JSON integer: ``true`` and ``false`` are not, though Python's bools are ints."""
    return isinstance(value, int) and not isinstance(value, bool)


def _given(data: dict, name: str, default):
    """A request's field, or ``default`` where it is left out or null (as OpenAI's API reads null)."""
    value = data.get(name)
    return default if value is None else value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unserved_model(data: dict, config: NodeConfig) -> JSONResponse | None:
    """A 400 where ``model`` is not a string; with --served-model-name, a 404 where it names another model, as
    vLLM answers it (a client sent to the wrong pool learns so, rather than being answered by this model)."""
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        return error(400, "'model' must be a string", "invalid_request_error", "model")
    if config.served_model_names and model is not None and model not in config.served_model_names:
        return error(404, f"The model `{model}` does not exist: this node serves "
                          f"{', '.join(config.served_model_names)}", "invalid_request_error", "model",
                     code="model_not_found")
    return None


def _generation(data: dict, prompts: list[str | list[int]], config: NodeConfig, tokenizer, context: int | None,
                prompt_field: str = "prompt", max_keys: tuple[str, ...] = ("max_tokens",),
                default_max_tokens: int | None = 16, least_tokens: int = 1) -> Generation | JSONResponse:
    """What both endpoints ask of a generation: prompts that fit (from ``prompt_field``), max tokens (the
    first of ``max_keys`` given; by default ``default_max_tokens``, None for as many as the limit and the
    context allow; either within the ``context`` the prompt leaves), temperature, stream, answers per
    prompt (``n``) and stop strings. With ``--served-model-name``, a request naming another model is a 404,
    as vLLM answers it (a client sent to the wrong pool learns so, rather than being answered by this model)."""
    model = data.get("model")
    if (unserved := unserved_model(data, config)) is not None:
        return unserved
    n = data.get("n", 1)
    if n is None:
        n = 1
    if not is_integer(n) or n < 1:
        return error(400, "'n' must be a positive integer", "invalid_request_error", "n")
    if len(prompts) * n > config.max_queue:  # could never be admitted: not busy, too big
        asked = f"{len(prompts)} prompts" + (f" x n={n}" if n > 1 else "")
        return error(400, f"'{prompt_field}' holds {asked}; this node takes at most {config.max_queue} in one "
                          f"request (its --max-queue)", "invalid_request_error", prompt_field if n == 1 else "n")
    stop = data.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) and x for x in stop):
        return error(400, "'stop' must be a string or a list of at most 4 non-empty strings", "invalid_request_error",
                     "stop")
    special = special_tokens_asked(data)
    if isinstance(special, JSONResponse):
        return special
    ids = [list(p) if isinstance(p, list) else tokenizer.encode(p, special) for p in prompts]  # text, or token ids
    longest = max(len(p) for p in ids)
    if longest > config.max_prompt_tokens:
        return error(400, f"'{prompt_field}' is longer than {config.max_prompt_tokens} tokens (this node's "
                          f"--max-prompt-tokens)", "invalid_request_error", prompt_field)
    room = config.max_tokens_limit if context is None else min(config.max_tokens_limit, context - longest)
    if room < 1:
        return error(400, f"This model's maximum context length is {context} tokens, and '{prompt_field}' is "
                          f"{longest} of them: it leaves no room for an answer", "invalid_request_error", prompt_field)
    key = next((k for k in max_keys if data.get(k) is not None), max_keys[0])
    max_tokens = data.get(key)
    if max_tokens is None:  # not asked: the default, within the room the prompt leaves
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
    if not is_integer(max_tokens) or max_tokens < least_tokens:
        return error(400, f"'{key}' must be a positive integer" + (" (or 0 with 'echo')" if prompt_field == "prompt"
                                                                  else ""), "invalid_request_error", key)
    if max_tokens > config.max_tokens_limit:
        return error(400, f"'{key}' is over the limit of {config.max_tokens_limit} (this node's --max-new-tokens)",
                     "invalid_request_error", key)
    if max_tokens > room:  # as vLLM and OpenAI word it
        return error(400, f"This model's maximum context length is {context} tokens. However, you requested "
                          f"{longest + max_tokens} tokens ({longest} in the {prompt_field}, {max_tokens} in the "
                          f"completion): shorten the {prompt_field} or ask for at most {room}",
                     "invalid_request_error", key)
    sampling = _sampling(data, tokenizer, max_tokens, key)
    if isinstance(sampling, JSONResponse):
        return sampling
    for name, neutral in UNSUPPORTED.items():
        if name in data and data[name] not in neutral:
            return error(400, f"'{name}' is not supported by this node: leave it out (or at its default, "
                              f"{json.dumps(neutral[-1])})", "invalid_request_error", name)
    _log_ignored(data)
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        return error(400, "'stream' must be true or false", "invalid_request_error", "stream")
    options = data.get("stream_options")
    if options is not None and not stream:
        return error(400, "'stream_options' is only allowed when 'stream' is true", "invalid_request_error",
                     "stream_options")
    options = options if options is not None else {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        return error(400, "'stream_options' must be an object whose 'include_usage' is true or false",
                     "invalid_request_error", "stream_options")
    return Generation(ids, max_tokens, sampling, stream, n, stop, options.get("include_usage", False),
                      model=model if config.served_model_names else None)


def _sampling(data: dict, tokenizer, max_tokens: int, max_key: str) -> Sampling | JSONResponse:
    """How the answer draws its tokens (inference_node/sampling.py), with OpenAI's ranges, and vLLM's
    ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens`` (at most the ``max_tokens`` asked, by
    ``max_key``), ``ignore_eos`` and ``stop_token_ids``; null is the default. ``logit_bias`` keys are token
    ids, as JSON writes them (strings), of this node's tokenizer."""
    temperature = _given(data, "temperature", 1.0)
    if not _number(temperature) or not 0 <= temperature <= 2:
        return error(400, "'temperature' must be a number between 0 and 2", "invalid_request_error", "temperature")
    top_p = _given(data, "top_p", 1.0)
    if not _number(top_p) or not 0 < top_p <= 1:
        return error(400, "'top_p' must be a number above 0 and at most 1", "invalid_request_error", "top_p")
    seed = data.get("seed")
    if seed is not None and (not is_integer(seed) or not -2**63 <= seed < 2**63):
        return error(400, "'seed' must be a 64-bit integer", "invalid_request_error", "seed")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = _given(data, name, 0.0)
        low, high = PENALTY_RANGE
        if not _number(value) or not low <= value <= high:
            return error(400, f"'{name}' must be a number from {low:g} to {high:g}", "invalid_request_error", name)
        penalties[name] = float(value)
    bias = _given(data, "logit_bias", {})
    if not isinstance(bias, dict):
        return error(400, "'logit_bias' must be an object of token ids and the values to add to their logits",
                     "invalid_request_error", "logit_bias")
    vocab = getattr(tokenizer, "vocab_size", None)
    biases, (low, high) = {}, BIAS_RANGE
    for key, value in bias.items():
        token = int(key) if key.isdigit() and key.isascii() else None
        if token is None or (vocab is not None and token >= vocab):
            ids = "a token id" if vocab is None else f"a token id of this model's tokenizer, 0 to {vocab - 1}"
            return error(400, f"logit_bias: {key!r} is not {ids}", "invalid_request_error", "logit_bias")
        if not _number(value) or not low <= value <= high:
            return error(400, f"logit_bias[{key!r}] must be a number from {low:g} to {high:g}",
                         "invalid_request_error", "logit_bias")
        biases[token] = float(value)
    top_k = _given(data, "top_k", 0)
    if not is_integer(top_k) or top_k < -1:
        return error(400, "'top_k' must be an integer: -1 or 0 for every token, else how many of the likeliest",
                     "invalid_request_error", "top_k")
    min_p = _given(data, "min_p", 0.0)
    if not _number(min_p) or not 0 <= min_p <= 1:
        return error(400, "'min_p' must be a number from 0 to 1", "invalid_request_error", "min_p")
    repetition = _given(data, "repetition_penalty", 1.0)
    if not _number(repetition) or not 0 < repetition <= 100:
        return error(400, "'repetition_penalty' must be a number above 0 and at most 100 (1: none)",
                     "invalid_request_error", "repetition_penalty")
    least = _given(data, "min_tokens", 0)
    if not is_integer(least) or least < 0:
        return error(400, "'min_tokens' must be a non-negative integer", "invalid_request_error", "min_tokens")
    if least > max_tokens:
        return error(400, f"'min_tokens' ({least}) is over '{max_key}' ({max_tokens})", "invalid_request_error",
                     "min_tokens")
    ignore_eos = _given(data, "ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        return error(400, "'ignore_eos' must be true or false", "invalid_request_error", "ignore_eos")
    stop_ids = _given(data, "stop_token_ids", [])
    if not isinstance(stop_ids, list) or not all(is_integer(t) and 0 <= t and (vocab is None or t < vocab)
                                                 for t in stop_ids):
        ids = "token ids" if vocab is None else f"token ids of this model's tokenizer, 0 to {vocab - 1}"
        return error(400, f"'stop_token_ids' must be a list of {ids}", "invalid_request_error", "stop_token_ids")
    return Sampling(float(temperature), float(top_p), None if seed is None else seed % 2**62,
                    logit_bias=biases, min_tokens=least, ignore_eos=ignore_eos, top_k=max(0, top_k),
                    min_p=float(min_p), repetition_penalty=float(repetition),
                    stop_token_ids=tuple(sorted(set(stop_ids))), **penalties)


def parse_completion(body: bytes, config: NodeConfig, tokenizer,
                     context: int | None = None) -> Generation | JSONResponse:
    """A completion request; ``max_tokens`` is 16 when not given, as in OpenAI's API. ``logprobs`` (0-5)
    and ``echo`` (the prompt before its answer; with ``max_tokens`` 0, the prompt alone, scored: how
    evaluation harnesses read a model's likelihoods) are answered whole, not streamed."""
    data = json_object(body)
    if isinstance(data, JSONResponse):
        return data
    prompts = completion_prompts(data.get("prompt"), tokenizer)
    if isinstance(prompts, JSONResponse):
        return prompts
    logprobs = data.get("logprobs")
    logprobs = None if logprobs is False else logprobs
    if logprobs is not None and (not is_integer(logprobs) or not 0 <= logprobs <= 5):
        return error(400, "'logprobs' must be an integer from 0 to 5", "invalid_request_error", "logprobs")
    echo = data.get("echo")
    echo = False if echo is None else echo
    if not isinstance(echo, bool):
        return error(400, "'echo' must be true or false", "invalid_request_error", "echo")
    asked = _generation(data, prompts, config, tokenizer, context, least_tokens=0 if echo else 1)
    if isinstance(asked, JSONResponse):
        return asked
    echoed = [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts] if echo else None
    return _scored(asked, logprobs, echoed)


def completion_prompts(prompt, tokenizer) -> list[str | list[int]] | JSONResponse:
    """A completion's prompts as OpenAI's API takes them: a string, a list of strings, a list of token ids (one
    prompt), or a list of lists of them (as evaluation harnesses send a tokenized context, and vLLM takes it).
    Token ids are checked against the tokenizer, since a model given an id past its vocabulary fails the
    batch's step for every request in it."""
    if prompt is None:
        return error(400, "missing field 'prompt'", "invalid_request_error", "prompt")
    if isinstance(prompt, str):
        return [prompt]
    shape = ("'prompt' must be a string, a non-empty list of strings, a list of token ids, or a non-empty list "
             "of lists of token ids")
    if not isinstance(prompt, list) or not prompt:
        return error(400, shape, "invalid_request_error", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return prompt
    prompts = [prompt] if all(is_integer(t) for t in prompt) else prompt
    if not all(isinstance(p, list) and all(is_integer(t) for t in p) for p in prompts):
        return error(400, shape, "invalid_request_error", "prompt")
    for i, p in enumerate(prompts):
        if (refused := unknown_token(p, tokenizer, "'prompt'" if prompts is not prompt else f"'prompt[{i}]'",
                                      "prompt")) is not None:
            return refused
    return prompts


def unknown_token(ids: list[int], tokenizer, where: str, param: str) -> JSONResponse | None:
    """A 400 where ``ids`` (named ``where``) hold an id this model's tokenizer does not have."""
    vocab = getattr(tokenizer, "vocab_size", None)
    bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
    if bad is None:
        return None
    which = "a token id" if vocab is None else f"a token id of this model's tokenizer, 0 to {vocab - 1}"
    return error(400, f"{where} holds {bad}, which is not {which}", "invalid_request_error", param)


def _scored(asked: Generation, logprobs: int | None, echo: list[str] | None) -> Generation | JSONResponse:
    """The generation, with the log-probabilities and the echo asked for. An answer's log-probabilities
    come from the steps that draw its tokens, streamed or not; an echoed prompt's are worked out in one pass
    over it, so ``echo`` is refused with ``stream``."""
    if asked.stream and echo is not None:
        return error(400, "'echo' is not supported with 'stream' on this node: ask for the whole answer",
                     "invalid_request_error", "echo")
    asked.echo = echo
    if logprobs is not None:
        asked.sampling = replace(asked.sampling, logprobs=logprobs)
    return asked


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
TEMPLATE_OWN = frozenset({"messages", "add_generation_prompt", "tokenize"})  # set by the node, not by kwargs


def chat_prompt(messages: list[dict], tokenizer, add_generation_prompt: bool = True,
                template_kwargs: dict | None = None) -> str:
    """The conversation as one prompt: the tokenizer's own chat template where it has one (a Hugging Face
    tokenizer's ``apply_chat_template``, given ``template_kwargs`` as transformers and vLLM give them, such
    as a Qwen3 template's ``enable_thinking``), else each message on a line of its own, ``role: text``; and
    the assistant's turn opened for the model to go on from (``assistant:``), unless not
    ``add_generation_prompt``."""
    template = getattr(tokenizer, "apply_chat_template", None)
    if callable(template) and getattr(tokenizer, "chat_template", True) is not None:  # a tokenizer may have none
        return template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                        **(template_kwargs or {}))
    lines = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return lines + "assistant:" if add_generation_prompt else lines


def chat_text(data: dict, tokenizer) -> str | JSONResponse:
    """A chat request's ``messages`` (text content only) as the one prompt the model reads: through the
    tokenizer's chat template, with the request's ``add_generation_prompt`` and ``chat_template_kwargs``."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "'messages' must be a non-empty list of messages", "invalid_request_error", "messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            return error(400, f"messages[{i}] must be an object whose 'role' is one of {', '.join(CHAT_ROLES)}",
                         "invalid_request_error", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                return error(400, f"messages[{i}].content: this node takes text parts only", "invalid_request_error",
                             f"messages[{i}].content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            return error(400, f"messages[{i}].content must be a string or a list of text parts",
                         "invalid_request_error", f"messages[{i}].content")
        turns.append({"role": m["role"], "content": content})
    opened = _given(data, "add_generation_prompt", True)
    if not isinstance(opened, bool):
        return error(400, "'add_generation_prompt' must be true or false", "invalid_request_error",
                     "add_generation_prompt")
    template_kwargs = _given(data, "chat_template_kwargs", {})
    if not isinstance(template_kwargs, dict) or TEMPLATE_OWN & set(template_kwargs):
        return error(400, "'chat_template_kwargs' must be an object of the chat template's own variables (not "
                          f"{', '.join(sorted(TEMPLATE_OWN))})", "invalid_request_error", "chat_template_kwargs")
    try:
        return chat_prompt(turns, tokenizer, opened, template_kwargs)
    except ValueError as exc:  # the template's own raise_exception (roles that must alternate), or its error
        return error(400, f"'messages': the model's chat template refused them: {exc}", "invalid_request_error",
                     "messages")


def parse_chat(body: bytes, config: NodeConfig, tokenizer,
               context: int | None = None) -> Generation | JSONResponse:
    """A chat completion request (``messages``, text content only), as one prompt. Its answer, unless
    ``max_completion_tokens`` or ``max_tokens`` say otherwise, goes on until the model ends it (as OpenAI's
    does), within this node's --max-new-tokens and the model's context."""
    data = json_object(body)
    if isinstance(data, JSONResponse):
        return data
    prompt = chat_text(data, tokenizer)
    if isinstance(prompt, JSONResponse):
        return prompt
    logprobs, top = data.get("logprobs"), data.get("top_logprobs")
    logprobs = False if logprobs is None else logprobs
    if not isinstance(logprobs, bool):
        return error(400, "'logprobs' must be true or false", "invalid_request_error", "logprobs")
    if top is not None and (not is_integer(top) or not 0 <= top <= 20):
        return error(400, "'top_logprobs' must be an integer from 0 to 20", "invalid_request_error", "top_logprobs")
    if top and not logprobs:
        return error(400, "'top_logprobs' needs 'logprobs': true", "invalid_request_error", "top_logprobs")
    asked = _generation(data, [prompt], config, tokenizer, context, "messages",
                        ("max_completion_tokens", "max_tokens"), default_max_tokens=None)
    if isinstance(asked, JSONResponse):
        return asked
    return _scored(asked, (top or 0) if logprobs else None, None)
