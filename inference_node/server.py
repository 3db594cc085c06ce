"""The inference node: an OpenAI-compatible completions server that is ready only when warm, batches
continuously (a request joins the batch being generated within a few steps), answers "busy" at once when
full, and drains on SIGTERM.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (text messages, as one prompt through
the tokenizer's chat template or ``role: text`` lines), ``GET /health`` (alive), ``GET /ready`` (200
only once loaded and warmed, 503 while starting or draining; its body says how long each start phase
took, so lead times are measured rather than guessed), ``GET /metrics`` (Prometheus), ``GET /v1/models``,
and vLLM's ``POST /tokenize``, ``POST /detokenize`` and ``GET /version``.

Start-up: the HTTP server listens at once (``/health`` answers), the engine loads the model (in a
process of its own by default, see engine.py) and runs warm-up passes over the batch sizes and
lengths the batcher will use, then the node turns ready. SIGTERM (how a
preempted spot node is told): ``/ready`` turns 503, new work is refused with 503, requests in flight
finish within ``drain_seconds``, and the process exits 0. A second SIGTERM exits at once. A model
that fails to load, or an engine process that dies (found by the next request or probe, whichever comes
first), turns ``/ready`` and ``/health`` 503 with the reason, and ``serve`` stops and exits 1 (on
Kubernetes the container restarts, visibly, rather than holding a GPU node that never serves).

With API keys (``serve --api-key``, as vLLM's), the ``/v1`` endpoints answer only a request that sends one of
them as ``Authorization: Bearer KEY`` (what OpenAI's SDKs send), and any other a 401 that is not counted as
demand; the probes and ``/metrics`` stay open to the kubelet and Prometheus, and ``/version`` to anyone, as
vLLM's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from dataclasses import dataclass, field, replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_node.answers import DONE, AnswerText, ChatShape, CompletionShape, event, usage
from inference_node.batcher import Batcher, OutOfMemory, QueueFull
from inference_node.metrics import NodeMetrics
from inference_node.sampling import BIAS_RANGE, PENALTY_RANGE, Sampling
from inference_node.engine import EngineGone, EngineSpec, make_engine

log = logging.getLogger("peakpilot.node")


def _process_start() -> float:
    """When this process started (Linux: from /proc), so "total" covers interpreter and import time."""
    try:
        import os

        ticks = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


PROCESS_START = _process_start()


@dataclass
class NodeConfig:
    model: str = "builtin"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    # The longest prompt and answer a request may ask for (they bound one request's share of the batch), and
    # together no longer than the model's context: its own (where it says, model.model_context) or this.
    max_prompt_tokens: int = 512
    max_tokens_limit: int = 256
    max_model_len: int | None = None
    # The most a request's body may hold: a full queue's worth of the longest prompts fits many times over,
    # and a client sending more (a bug, or worse) is refused before the server holds it all in memory.
    max_body_bytes: int = 1 << 20
    drain_seconds: float = 30.0
    warmup: bool = True
    quantize: str | None = None
    dtype: str = "auto"  # what the weights are held in (model.pick_dtype)
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (default: torch's choice, all cores)
    slo_ms: float | None = None  # shed requests whose expected wait is over this
    slo_on: str = "answer"  # what slo_ms bounds: the whole answer, or (a chat service's) its first token
    engine: str = "process"  # where the model runs: its own process, or a thread (inference_node/engine.py)
    # continuous: a request joins the running batch within 4 steps; run-to-end: the next batch starts when
    # the last one ends (what the node did before; bench/node_continuous.py compares them)
    batching: str = "continuous"
    # the names the API gives the model (vLLM's --served-model-name): the first in answers and /v1/models where a
    # request names none, and a request naming another is a 404; none: the model's own name, any name taken
    served_model_names: tuple[str, ...] = ()
    # keys a /v1 request must send as "Authorization: Bearer KEY" (none: every request is served)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # after a batch ran out of the device's memory and the node halved its width: how long before it tries
    # twice as many rows again (doubled each time it runs out again; 0: never; inference_node/batch_limit.py)
    oom_backoff_s: float = 600.0


BATCHING = ("continuous", "run-to-end")
SLO_ON = ("answer", "first-token")


def _server_version() -> str:
    """The installed distribution's version (the node imports nothing of the control plane's package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peakpilot")
    except PackageNotFoundError:
        return "unknown"


SERVER_VERSION = _server_version()


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape; ``code`` is ``kind`` unless the error has a code of its own (``invalid_api_key``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}


def error(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


class Node:
    """State of one node: starting -> ready -> draining, or failed (it cannot serve)."""

    def __init__(self, config: NodeConfig):
        if config.batching not in BATCHING:
            raise ValueError(f"unknown batching {config.batching!r}; choose {' or '.join(BATCHING)}")
        if config.slo_on not in SLO_ON:
            raise ValueError(f"unknown --slo-on {config.slo_on!r}; choose {' or '.join(SLO_ON)}")
        self.config = config
        self.metrics = NodeMetrics()
        if config.slo_ms is not None:
            self.metrics.slo.set(config.slo_ms / 1000.0)
        self.state = "starting"
        longest = config.max_prompt_tokens + config.max_tokens_limit
        if config.max_model_len is not None:
            longest = min(longest, config.max_model_len)
        self.engine = make_engine(config.engine, EngineSpec(config.model, config.seed, config.quantize, config.threads,
                                                            config.warmup, config.max_batch, config.dtype, longest))
        self.batcher: Batcher | None = None
        self.timings: dict[str, float] = {}
        self.context: int | None = None  # the most tokens, prompt and answer, a request may take (None: unknown)
        self.error: str | None = None
        self.active = 0  # completion requests inside the handler, from arrival to response
        self.on_failed = None  # called once the node fails (model not loaded, engine gone): the server exits 1

    # -- start-up --------------------------------------------------------------------------------
    def load_and_warm(self) -> None:
        try:
            self.engine.start()
            own, asked = self.engine.context, self.config.max_model_len
            if asked is not None and own is not None and asked > own:
                self.fail(f"--max-model-len {asked} is over the context of {self.engine.name}, {own} tokens")
                return
            self.context = asked if asked is not None else own
            self.timings = dict(self.engine.timings)
            self.timings["total"] = time.time() - PROCESS_START
            for phase, seconds in self.timings.items():
                self.metrics.start_seconds.labels(phase).set(seconds)
            self.metrics.warm.set(1)
        except Exception as exc:
            self.fail(f"model failed to load: {type(exc).__name__}: {exc}")

    def fail(self, why: str) -> None:
        """The node can serve no more (its model did not load, or its engine died): not ready, /health
        503, and the server told to stop (``serve`` then exits 1, and Kubernetes restarts the container)."""
        if self.state == "failed":
            return
        self.error, self.state = why, "failed"
        self.metrics.ready.set(0)
        log.error("%s", why)
        if self.on_failed is not None:
            self.on_failed()

    def check_engine(self) -> None:
        """Fail the node if its engine died while no request was there to find out (at night, say): the
        probes ask, so Kubernetes restarts it before the morning's traffic meets a dead engine."""
        if self.state in ("ready", "draining"):
            why = self.engine.gone()
            if why is not None:
                self.fail(f"engine failed: {why}")

    @property
    def model_name(self) -> str | None:
        return self.engine.name

    @property
    def served_name(self) -> str | None:
        """The name answers give the model where the request names none: the first --served-model-name, or
        its own."""
        return self.config.served_model_names[0] if self.config.served_model_names else self.model_name

    async def become_ready(self) -> None:
        await asyncio.to_thread(self.load_and_warm)
        if self.state == "failed":
            return
        fits = min(self.config.max_batch, self.engine.max_batch)
        if fits < self.config.max_batch:
            log.warning("--max-batch %d rows of the longest request this node admits do not fit in the device's "
                        "memory: batching at most %d (set --max-batch %d, or a shorter --max-model-len, to start "
                        "there without the probe's tries)", self.config.max_batch, fits, fits)
        self.batcher = Batcher(self.engine, fits, self.config.max_wait_ms, self.config.max_queue,
                               self.metrics, self.config.slo_ms, continuous=self.config.batching == "continuous",
                               slo_on_first_token=self.config.slo_on == "first-token",
                               oom_backoff_s=self.config.oom_backoff_s)
        self.batcher.start()
        if self.state == "starting":
            self.state = "ready"
            self.metrics.ready.set(1)
            log.info("ready after %.2f s (load %.2f s, memory probe %.2f s, warm-up %.2f s; %s engine on %s in %s, %s "
                     "batching of at most %d rows)", self.timings["total"], self.timings["model_load"],
                     self.timings.get("memory_probe", 0.0), self.timings["warmup"], self.config.engine,
                     self.engine.device, self.engine.dtype, self.config.batching, fits)
            if self.engine.device_warning:
                log.warning("%s", self.engine.device_warning)

    # -- drain -----------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        self.state = "draining"
        self.metrics.ready.set(0)

    async def drained(self) -> None:
        deadline = time.perf_counter() + self.config.drain_seconds
        # Drained when no request is inside a handler (one accepted but not yet batched counts) and
        # the batcher is idle.
        while (self.active or (self.batcher and not self.batcher.idle)) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)


def _json_object(body: bytes) -> dict | JSONResponse:
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
}
_ignored_logged: set[str] = set()


def _log_ignored(data: dict) -> None:
    """Name, once each, the fields of a request that this node does not know and so ignores."""
    new = sorted(k for k in data if k not in KNOWN_FIELDS and k not in _ignored_logged)
    if new:
        _ignored_logged.update(new)
        log.warning("request field%s %s ignored: not among the fields of OpenAI's API or vLLM's extensions this "
                    "node knows (said once per field)", "s" if len(new) > 1 else "", ", ".join(map(repr, new)))


def _integer(value) -> bool:
    """A JSON integer: ``true`` and ``false`` are not, though Python's bools are ints."""
    return isinstance(value, int) and not isinstance(value, bool)


def _given(data: dict, name: str, default):
    """A request's field, or ``default`` where it is left out or null (as OpenAI's API reads null)."""
    value = data.get(name)
    return default if value is None else value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unserved_model(data: dict, config: NodeConfig) -> JSONResponse | None:
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
    if (unserved := _unserved_model(data, config)) is not None:
        return unserved
    n = data.get("n", 1)
    if n is None:
        n = 1
    if not _integer(n) or n < 1:
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
    ids = [list(p) if isinstance(p, list) else tokenizer.encode(p) for p in prompts]  # text, or token ids
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
    if not _integer(max_tokens) or max_tokens < least_tokens:
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
    if seed is not None and (not _integer(seed) or not -2**63 <= seed < 2**63):
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
    if not _integer(top_k) or top_k < -1:
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
    if not _integer(least) or least < 0:
        return error(400, "'min_tokens' must be a non-negative integer", "invalid_request_error", "min_tokens")
    if least > max_tokens:
        return error(400, f"'min_tokens' ({least}) is over '{max_key}' ({max_tokens})", "invalid_request_error",
                     "min_tokens")
    ignore_eos = _given(data, "ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        return error(400, "'ignore_eos' must be true or false", "invalid_request_error", "ignore_eos")
    stop_ids = _given(data, "stop_token_ids", [])
    if not isinstance(stop_ids, list) or not all(_integer(t) and 0 <= t and (vocab is None or t < vocab)
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
    data = _json_object(body)
    if isinstance(data, JSONResponse):
        return data
    prompts = completion_prompts(data.get("prompt"), tokenizer)
    if isinstance(prompts, JSONResponse):
        return prompts
    logprobs = data.get("logprobs")
    logprobs = None if logprobs is False else logprobs
    if logprobs is not None and (not _integer(logprobs) or not 0 <= logprobs <= 5):
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
    prompts = [prompt] if all(_integer(t) for t in prompt) else prompt
    if not all(isinstance(p, list) and all(_integer(t) for t in p) for p in prompts):
        return error(400, shape, "invalid_request_error", "prompt")
    for i, p in enumerate(prompts):
        if (refused := _unknown_token(p, tokenizer, "'prompt'" if prompts is not prompt else f"'prompt[{i}]'",
                                      "prompt")) is not None:
            return refused
    return prompts


def _unknown_token(ids: list[int], tokenizer, where: str, param: str) -> JSONResponse | None:
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
    data = _json_object(body)
    if isinstance(data, JSONResponse):
        return data
    prompt = chat_text(data, tokenizer)
    if isinstance(prompt, JSONResponse):
        return prompt
    logprobs, top = data.get("logprobs"), data.get("top_logprobs")
    logprobs = False if logprobs is None else logprobs
    if not isinstance(logprobs, bool):
        return error(400, "'logprobs' must be true or false", "invalid_request_error", "logprobs")
    if top is not None and (not _integer(top) or not 0 <= top <= 20):
        return error(400, "'top_logprobs' must be an integer from 0 to 20", "invalid_request_error", "top_logprobs")
    if top and not logprobs:
        return error(400, "'top_logprobs' needs 'logprobs': true", "invalid_request_error", "top_logprobs")
    asked = _generation(data, [prompt], config, tokenizer, context, "messages",
                        ("max_completion_tokens", "max_tokens"), default_max_tokens=None)
    if isinstance(asked, JSONResponse):
        return asked
    return _scored(asked, (top or 0) if logprobs else None, None)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is over ``limit`` bytes (by its Content-Length, or as it
    streams in chunked): reading stops there, so a huge body is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# Headers in which clients and proxies say a request repeats one sent before, and the count from which it does:
# OpenAI's SDKs count retries (0 on the first try; they retry a 429 twice by default), Envoy counts attempts.
RETRY_HEADERS = (("x-stainless-retry-count", 1), ("x-envoy-attempt-count", 2))


def is_retry(headers) -> bool:
    """Whether the request says it repeats one its client sent before (counted apart: demand is the first
    tries, and under overload a client that retries each busy answer would count as two or three)."""
    for name, repeated in RETRY_HEADERS:
        value = headers.get(name, "").strip()
        if value.isdigit() and int(value) >= repeated:
            return True
    return False


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def until_gone(request: Request, work):
    """Await ``work``, unless the client goes away first: then withdraw it (what is still queued is never
    generated, and a row generating leaves the batch at the engine's next step) and raise ``ClientGone``.
    The body has been read, so the next ASGI message can only be the disconnect (as vLLM's
    ``with_cancellation`` listens for it)."""
    async def disconnected() -> None:
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the connection is in no state to answer on
            return

    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


async def heard(admission, answers: list[AnswerText]):
    """Feed each answer its tokens as the batcher tells them, yielding the index of the answer that grew
    (or finished). A stop string ends its row at once: the model does not go on to ``max_tokens`` for
    text nobody gets."""
    if not admission.watched:
        for i, tokens in enumerate(await admission.answers()):
            answers[i].stop_token = admission.jobs[i].stopped_by
            answers[i].feed(tokens, finished=True)
            yield i
        return
    async for i, tokens, finished in admission.events():
        if finished:
            answers[i].stop_token = admission.jobs[i].stopped_by
        answers[i].feed(tokens, finished)
        if answers[i].stopped and not finished:
            admission.end(i)
        yield i


async def heard_whole(admission, answers: list[AnswerText]) -> None:
    async for _ in heard(admission, answers):
        pass


class AnswerStream(StreamingResponse):
    """Server-sent events, and ``closed()`` called once they end however they end (the last one sent,
    the client gone, the server shutting down), even if they never began."""

    def __init__(self, events, closed):
        super().__init__(events, media_type="text/event-stream")
        self._closed = closed

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._closed()


def create_app(config: NodeConfig) -> FastAPI:
    node = Node(config)
    app = FastAPI(title="peakpilot inference node", docs_url=None, redoc_url=None)
    app.state.node = node

    @app.on_event("startup")
    async def _start() -> None:
        app.state.startup_task = asyncio.create_task(node.become_ready())

    @app.on_event("shutdown")
    async def _stop() -> None:
        await asyncio.to_thread(node.engine.close)

    @app.get("/health")
    async def health():
        # A failed node (model not loaded, engine gone) is not healthy: 503, so a liveness or startup probe
        # restarts it instead of holding a GPU node that will never serve.
        node.check_engine()
        failed = node.state == "failed"
        return JSONResponse({"status": "failed" if failed else "alive", "state": node.state, "error": node.error},
                            status_code=503 if failed else 200)

    @app.get("/ready")
    async def ready():
        node.check_engine()
        body = {"state": node.state, "model": node.model_name, "served_model_names": list(config.served_model_names),
                "device": node.engine.device, "dtype": node.engine.dtype,
                "batching": config.batching, "max_model_len": node.context, "slo_on": config.slo_on,
                "max_batch": node.batcher.max_batch if node.batcher else None,
                "start_seconds": {k: round(v, 4) for k, v in node.timings.items()}}
        if node.error:  # why it failed
            body["error"] = node.error
        if node.engine.device_warning:  # given a GPU, serving on the CPU
            body["device_warning"] = node.engine.device_warning
        return JSONResponse(body, status_code=200 if node.state == "ready" else 503)

    @app.get("/version")
    async def version():
        """vLLM's /version, open as vLLM's is: the version of the server (peakpilot's), which clients log."""
        return {"version": SERVER_VERSION}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def refused(request: Request) -> JSONResponse | None:
        """A 401 where the node has API keys and the request sends none of them (compared in constant time);
        counted apart from the requests, which are the service's demand."""
        if not config.api_keys:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and any(hmac.compare_digest(given.strip().encode(), key.encode())
                                              for key in config.api_keys):
            return None
        node.metrics.unauthorized.inc()
        why = "Incorrect API key provided" if given else "No API key provided: send it as 'Authorization: Bearer KEY'"
        return error(401, why, "invalid_request_error", headers={"WWW-Authenticate": "Bearer"}, code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        own = node.model_name or config.model
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "peakpilot", "root": own,
                                            "max_model_len": node.context}
                                           for name in config.served_model_names or (own,)]}

    async def tokenizer_request(request: Request) -> dict | JSONResponse:
        """The body of a /tokenize or /detokenize request, once the key, the model named and the tokenizer
        (loaded with the model) allow it."""
        if (answer := refused(request)) is not None:
            return answer
        if node.state not in ("ready", "draining"):
            return error(503, f"server unavailable: not ready ({node.state}); retry on another node", "unavailable",
                         headers={"Retry-After": "1"})
        body = await read_body(request, config.max_body_bytes)
        if body is None:
            return error(413, f"the request body is over {config.max_body_bytes} bytes", "invalid_request_error")
        data = _json_object(body)
        if isinstance(data, dict) and (unserved := _unserved_model(data, config)) is not None:
            return unserved
        return data

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's /tokenize: a completion's ``prompt`` or a chat request's ``messages`` as this node reads them
        (special tokens and chat template included), so a client can count them against ``max_model_len``."""
        data = await tokenizer_request(request)
        if isinstance(data, JSONResponse):
            return data
        tokenizer = node.engine.tokenizer
        if isinstance(data.get("messages"), list):
            text = chat_text(data, tokenizer)
        elif isinstance(data.get("prompt"), str):
            text = data["prompt"]
        else:
            return error(400, "give 'prompt' (a string) or 'messages' (a list of messages)", "invalid_request_error",
                         "prompt")
        if isinstance(text, JSONResponse):
            return text
        tokens = tokenizer.encode(text)
        return {"count": len(tokens), "max_model_len": node.context, "tokens": tokens, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        """vLLM's /detokenize: token ids of this model's tokenizer as text (special tokens left out)."""
        data = await tokenizer_request(request)
        if isinstance(data, JSONResponse):
            return data
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(_integer(t) for t in tokens):
            return error(400, "'tokens' must be a list of token ids", "invalid_request_error", "tokens")
        if (unknown := _unknown_token(tokens, node.engine.tokenizer, "'tokens'", "tokens")) is not None:
            return unknown
        return {"prompt": node.engine.tokenizer.decode(tokens)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handled(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handled(request, chat=True)

    def leave() -> None:
        node.active -= 1
        node.metrics.in_flight.set(node.active)

    async def handled(request: Request, chat: bool):
        if (answer := refused(request)) is not None:
            return answer
        node.active += 1
        node.metrics.in_flight.set(node.active)
        response = None
        try:
            response = await complete(request, chat)
            return response
        finally:
            if not isinstance(response, AnswerStream):  # a stream is in flight until its last event
                leave()

    def served(started: float, first_token: float | None = None) -> None:
        """Count a request answered; late where the time --slo-ms bounds was over it: the whole answer's, or
        with --slo-on first-token a streamed answer's first token (a whole answer's first text is all of it)."""
        m = node.metrics
        m.requests.labels("ok").inc()
        elapsed = time.perf_counter() - started
        m.latency.observe(elapsed)
        bounded = first_token if config.slo_on == "first-token" and first_token is not None else elapsed
        if config.slo_ms is not None and bounded * 1000.0 > config.slo_ms:
            m.over_slo.inc()

    def failed(exc: Exception) -> tuple[int, str, str, str]:
        """A generation that failed: the status, message and type to answer with, and the outcome to count
        (a batch out of the device's memory is busy: retried, it is served, by this node batching fewer)."""
        if isinstance(exc, EngineGone):
            node.fail(f"engine failed: {exc}")
            return 503, f"server unavailable: {exc}; retry on another node", "unavailable", "error"
        if isinstance(exc, OutOfMemory):
            return 503, f"server busy: {exc}; retry after 1 s", "server_busy", "busy"
        log.error("generation failed", exc_info=exc)
        return 500, f"generation failed: {type(exc).__name__}", "server_error", "error"

    async def complete(request: Request, chat: bool):
        m = node.metrics
        if is_retry(request.headers):
            m.retried.inc()
        if node.state != "ready":
            m.requests.labels("draining" if node.state == "draining" else "busy").inc()
            why = "draining: this node is shutting down" if node.state == "draining" else f"not ready ({node.state})"
            return error(503, f"server unavailable: {why}; retry on another node", "unavailable",
                         headers={"Retry-After": "1"})
        body = await read_body(request, config.max_body_bytes)
        if body is None:
            m.requests.labels("bad_request").inc()
            return error(413, f"the request body is over {config.max_body_bytes} bytes", "invalid_request_error")
        parsed = (parse_chat if chat else parse_completion)(body, config, node.engine.tokenizer, node.context)
        if isinstance(parsed, JSONResponse):
            m.requests.labels("bad_request").inc()
            return parsed
        asked: Generation = parsed
        prompts = [p for p in asked.prompts for _ in range(asked.n)]  # choice i*n+j: prompt i's j-th answer
        started = time.perf_counter()
        answers = [AnswerText(node.engine.tokenizer, asked.stop, asked.max_tokens) for _ in prompts]
        shape = (ChatShape if chat else CompletionShape)(asked.model or node.served_name)
        admission = None
        if asked.max_tokens:
            try:
                # Watched (its tokens heard as they come) when it streams, or when a stop string may end it early.
                admission = node.batcher.admit(prompts, asked.max_tokens, asked.sampling,
                                               watch=asked.stream or bool(asked.stop))
            except QueueFull as exc:
                m.requests.labels("busy").inc()
                m.busy_latency.observe(time.perf_counter() - started)
                return error(429, f"server busy: {exc.why} ({exc.waiting} waiting); retry after 1 s",
                             "server_busy", headers={"Retry-After": "1"})
            if asked.stream:
                return streamed(admission, answers, shape, asked, started)
        else:  # 'echo' with max_tokens 0: the prompts alone
            for answer in answers:
                answer.feed([], finished=True)
        scored = None
        try:
            if admission is not None:
                await until_gone(request, heard_whole(admission, answers))
            if asked.logprobs is not None:
                jobs = admission.jobs if admission is not None else [None] * len(prompts)
                scored = await until_gone(request, logprobs_of(prompts, answers, jobs, asked, shape))
        except ClientGone:
            m.requests.labels("cancelled").inc()
            return Response(status_code=499)  # nobody is there to read it (nginx's "client closed request")
        except Exception as exc:
            status, message, kind, counted = failed(exc)
            m.requests.labels(counted).inc()
            return error(status, message, kind, headers={"Retry-After": "1"} if status == 503 else None)
        finally:
            if admission is not None:
                admission.close()
        served(started)
        echoed = None if asked.echo is None else [p for p in asked.echo for _ in range(asked.n)]
        return shape.whole(answers, usage(asked.prompts, answers), scored, echoed)

    async def logprobs_of(prompts: list[list[int]], answers: list[AnswerText], jobs: list, asked: Generation,
                          shape) -> list:
        """Each answer's log-probabilities: those of the tokens it kept, as the steps that drew them told
        (``Job.entries``); with 'echo', its prompt's before them, scored by the engine in one pass over it."""
        tokenizer, out = node.engine.tokenizer, []
        for prompt, answer, job in zip(prompts, answers, jobs):
            kept = answer.tokens[:answer.kept_tokens]
            entries = job.entries[:len(kept)] if job is not None else []
            if asked.echo and len(prompt) > 1:  # (nothing precedes a prompt's first token)
                entries = await node.batcher.score(list(prompt), 1, asked.logprobs) + entries
            out.append(shape.logprobs(tokenizer, (list(prompt) if asked.echo else []) + kept, entries))
        return out

    def logprobs_taken(job, answer: AnswerText, before: tuple[int, int], shape) -> dict | None:
        """A streamed piece's log-probabilities: those of the tokens whose text it completed (from the
        answer's ``taken`` before it to its ``taken`` now), or None where it completed none."""
        (start, offset), end = before, answer.taken[0]
        if end <= start:
            return None
        tokens, entries = answer.tokens[start:end], job.entries[start:end]
        return shape.logprobs(node.engine.tokenizer, tokens, entries, offset)

    def streamed(admission, answers: list[AnswerText], shape, asked: Generation, started: float) -> AnswerStream:
        """The answers as server-sent events, each piece of text as soon as it can be sent. The request is
        in flight (for the drain, and withdrawn if its client goes) until its last event is sent."""
        m, outcome = node.metrics, ["cancelled"]

        async def events():
            try:
                for opening in shape.opening(len(answers)):
                    yield opening
                first_heard: dict[int, float] = {}  # by answer: when its first tokens came
                async for i in heard(admission, answers):
                    now = time.perf_counter()
                    if not first_heard:
                        m.first_token.observe(now - started)
                    first_heard.setdefault(i, now)
                    answer = answers[i]
                    before = answer.taken
                    piece = answer.take()
                    scored = logprobs_taken(admission.jobs[i], answer, before, shape) if asked.logprobs is not None \
                        else None
                    if answer.finished:
                        if len(answer.tokens) > 1:  # its pace once started: what a reader waits per token
                            m.per_token.observe((now - first_heard[i]) / (len(answer.tokens) - 1))
                        yield shape.piece(i, piece, answer.finish_reason, scored, answer.stop_reason)
                    elif piece or scored:
                        yield shape.piece(i, piece, logprobs=scored)
                if asked.include_usage:
                    yield shape.usage(usage(asked.prompts, answers))
                outcome[0] = "ok"
                served(started, min(first_heard.values()) - started if first_heard else None)
                yield DONE
            except Exception as exc:  # the status is sent: the error goes in the stream, as OpenAI's does
                _, message, kind, outcome[0] = failed(exc)
                yield event(error_body(message, kind))

        def closed() -> None:
            admission.close()
            if outcome[0] != "ok":
                m.requests.labels(outcome[0]).inc()
            leave()

        return AnswerStream(events(), closed)

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM turned into a drain: not ready, finish what is in flight, then exit 0; and
    with a model that fails to load, a stop (``serve`` then exits 1, as a container that cannot start)."""

    def __init__(self, config: uvicorn.Config, node: Node):
        super().__init__(config)
        self.node = node
        node.on_failed = self._stop_failed

    def _stop_failed(self) -> None:
        # Called from the loading thread or the event loop: a flag uvicorn's main loop polls.
        self.should_exit = True

    def handle_exit(self, sig: int, frame) -> None:
        if self.node.state == "draining" or sig == signal.SIGINT and self.should_exit:
            return super().handle_exit(sig, frame)
        log.info("signal %s: draining (deadline %.0f s)", sig, self.node.config.drain_seconds)
        self.node.begin_drain()
        loop = self._loop

        async def finish() -> None:
            await self.node.drained()
            self.should_exit = True

        loop.call_soon_threadsafe(lambda: loop.create_task(finish()))

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)


class NodeFailed(RuntimeError):
    """The node stopped because it could not serve: its model did not load, or its engine died."""


def serve(config: NodeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          access_log: bool = False) -> None:
    """Run the node until SIGTERM has drained it; raise ``NodeFailed`` if it stopped because it could not serve.

    No line per request by default: at hundreds of requests a second that is most of the node's log and
    some of its CPU, and ``/metrics`` counts every outcome."""
    app = create_app(config)
    node = app.state.node
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                           timeout_graceful_shutdown=int(config.drain_seconds)), node)
    server.run()
    if node.state == "failed":
        raise NodeFailed(f"{node.error} (--model {config.model})")
