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
import logging
import signal
import socket
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_node.answers import DONE, AnswerText, ChatShape, CompletionShape, event, usage
from inference_node.batcher import Batcher, OutOfMemory, QueueFull
from inference_node.config import BATCHING, SLO_ON, NodeConfig
from inference_node.engine import EngineGone, EngineSpec, make_engine
from inference_node.metrics import NodeMetrics
from inference_node.protocol import (Generation, chat_text, error, error_body, is_integer, json_object, parse_chat,
                                     parse_completion, special_tokens_asked, unknown_token, unserved_model)

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


def _server_version() -> str:
    """The installed distribution's version (the node imports nothing of the control plane's package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peakpilot")
    except PackageNotFoundError:
        return "unknown"


SERVER_VERSION = _server_version()


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
        data = json_object(body)
        if isinstance(data, dict) and (unserved := unserved_model(data, config)) is not None:
            return unserved
        return data

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's /tokenize: a completion's ``prompt`` or a chat request's ``messages`` as this node reads them
        (special tokens and chat template included, or as ``add_special_tokens`` says), so a client can count
        them against ``max_model_len``; with ``return_token_strs``, each token as the vocabulary writes it."""
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
        special = special_tokens_asked(data)
        if isinstance(special, JSONResponse):
            return special
        strs = data.get("return_token_strs")
        if strs is not None and not isinstance(strs, bool):
            return error(400, "'return_token_strs' must be true or false", "invalid_request_error",
                         "return_token_strs")
        tokens = tokenizer.encode(text, special)
        return {"count": len(tokens), "max_model_len": node.context, "tokens": tokens,
                "token_strs": [tokenizer.token_str(t) for t in tokens] if strs else None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        """vLLM's /detokenize: token ids of this model's tokenizer as text (special tokens left out)."""
        data = await tokenizer_request(request)
        if isinstance(data, JSONResponse):
            return data
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(is_integer(t) for t in tokens):
            return error(400, "'tokens' must be a list of token ids", "invalid_request_error", "tokens")
        if (unknown := unknown_token(tokens, node.engine.tokenizer, "'tokens'", "tokens")) is not None:
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
          access_log: bool = False, sock: socket.socket | None = None) -> None:
    """Run the node until SIGTERM has drained it; raise ``NodeFailed`` if it stopped because it could not serve.
    ``sock``: a socket already bound to ``host:port`` (by default uvicorn binds one once the app has started).

    No line per request by default: at hundreds of requests a second that is most of the node's log and
    some of its CPU, and ``/metrics`` counts every outcome."""
    app = create_app(config)
    node = app.state.node
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                           timeout_graceful_shutdown=int(config.drain_seconds)), node)
    if sock is not None:  # (uvicorn says where it listens only on a socket it binds itself)
        shown = f"[{host}]" if ":" in host else host
        log.info("listening on http://%s:%d; /ready answers 200 once warm", shown, port)
    server.run(sockets=[sock] if sock is not None else None)
    if node.state == "failed":
        raise NodeFailed(f"{node.error} (--model {config.model})")
