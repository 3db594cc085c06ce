"""Continuous batching with a bounded queue: a request joins the batch the engine is generating within a
few steps (``model.DecodeBatch``), as soon as one of the batch's ``max_batch`` rows is free (rows free as their requests
finish), not once the whole batch is done. When the engine is idle the first request waits at most
``max_wait_ms`` for others to start with it (one prefill for all). Past ``max_queue`` waiting a request
is refused at once (busy) rather than left to time out, and with a latency target (``slo_ms``) so is one
whose expected wait is over it. ``continuous=False`` runs each batch to its end before the next starts
(``serve --batching run-to-end``: what the node did before; bench/node_continuous.py compares them).

A request withdrawn (its client went away) leaves the queue at once, or the batch at the engine's next
step: under overload, clients that time out and retry elsewhere would otherwise have the node generate
their abandoned answers ahead of the ones still wanted. A request admitted ``watch``-ed hears its
tokens as they are generated (``Admission.events``: a streamed answer, or one with stop strings), and
one of its rows can be ended early (``Admission.end``: its stop string came), freeing the row at once.
The engine (inference_node/engine.py) generates on a thread or process of its own and reports each row as
it finishes, so the event loop keeps answering ``/health``, ``/metrics`` and busy refusals while the
model works.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from inference_node.batch_limit import BatchLimit
from inference_node.engine import EngineError, EngineGone
from inference_node.sampling import GREEDY, Sampling

log = logging.getLogger("peakpilot.node")

RATE_WINDOW = 5.0  # seconds of answers the tokens-per-second gauge covers


def moving(average: float, value: float, weight: float = 0.2) -> float:
    """A moving average taking ``value`` at ``weight``; the first value as it is (0: none yet)."""
    return value if not average else (1 - weight) * average + weight * value


def _span(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class OutOfMemory(EngineError):
    """The batch ran out of the device's memory: its requests are answered busy, to be retried, and the
    node batches fewer rows until its wait to try a wider batch is over (batch_limit.py)."""


class QueueFull(Exception):
    def __init__(self, waiting: int, why: str = "the queue is full"):
        super().__init__(f"server busy: {why} ({waiting} waiting)")
        self.waiting = waiting
        self.why = why


@dataclass(eq=False)
class Job:
    key: int
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    joined: float = 0.0  # when it joined the engine's batch
    alongside: int = 0  # rows generating in the batch as it joined, itself included
    admission: Admission | None = None  # set for a watched job: where its tokens are told
    index: int = 0  # its place among its admission's jobs
    heard: list[int] = field(default_factory=list)  # watched: the tokens told so far
    # asking for log-probabilities: those of its tokens, told so far (each step's before its tokens)
    entries: list = field(default_factory=list)
    stopped_by: int | None = None  # the one of its stop_token_ids that ended its answer (vLLM's stop_reason)


class Admission:
    """The jobs of one admitted request (one per prompt and answer asked for). Unwatched, ``answers``
    awaits them whole; watched, ``events`` yields ``(index, new tokens, finished)`` as they are generated,
    the last of a job's with ``finished`` true and the rest of its answer. ``close`` (always, once done
    with it) withdraws whatever is unfinished, so a client gone leaves nothing generating for nobody."""

    def __init__(self, batcher: Batcher, jobs: list[Job], watch: bool):
        self.batcher, self.jobs = batcher, jobs
        self._events: asyncio.Queue | None = asyncio.Queue() if watch else None
        self._closed = False
        for i, job in enumerate(jobs):
            job.index = i
            if watch:
                job.admission = self

    @property
    def watched(self) -> bool:
        return self._events is not None

    async def answers(self) -> list[list[int]]:
        return list(await asyncio.gather(*(job.future for job in self.jobs)))

    async def events(self):
        """What was told since the last look, a job's tokens together: a reader that keeps up gets each
        step's token as it comes; one that falls behind (a client reading slowly, a busy CPU) gets the
        steps it missed in one piece, not one event (and one write to its client) per token."""
        left = len(self.jobs)
        while left:
            told = [await self._events.get()]
            while not self._events.empty():
                told.append(self._events.get_nowait())
            merged: dict[int, list] = {}
            for index, tokens, finished in told:
                if isinstance(tokens, BaseException):
                    raise tokens
                job = merged.setdefault(index, [[], False])
                job[0] += tokens
                job[1] = job[1] or finished
            for index, (tokens, finished) in merged.items():
                left -= finished
                yield index, tokens, finished

    def tell(self, job: Job, tokens, finished: bool) -> None:
        self._events.put_nowait((job.index, tokens, finished))

    def end(self, index: int) -> None:
        """Job ``index`` is answered with what it has: its row leaves the batch at the engine's next step."""
        self.batcher._end(self.jobs[index])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.batcher._release(self.jobs)


class Batcher:
    def __init__(self, engine, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 64,
                 metrics=None, slo_ms: float | None = None, continuous: bool = True, slo_on_first_token: bool = False,
                 oom_backoff_s: float = 600.0):
        """``engine``: ``submit(key, prompt, max_tokens, sampling, watch)``, ``drop(key)`` and ``listen(fn)``,
        ``fn(kind, key, payload)`` called on the engine's thread as rows finish (engine.py). Not
        ``continuous``: a batch runs to its end before the next starts (rows still leave as they finish).
        ``oom_backoff_s``: how long after a batch ran out of the device's memory the node tries a wider one
        again (batch_limit.py; 0: never)."""
        self.engine = engine
        self.continuous = continuous
        self.slo = None if slo_ms is None else slo_ms / 1000.0
        self.slo_on_first_token = slo_on_first_token  # the target is on the first token, not the whole answer
        self.wait_seconds = 0.0  # moving average of requests' wait for a row (enqueue to joining the batch)
        self.row_seconds = 0.0  # moving average of a request's time generating (joined to answered)
        self.row_tokens = 0.0  # moving average of the tokens those rows generated
        # moving average of a streamed request's time from joining the batch to its first tokens: its prefill,
        # and the steps until the engine tells them (a long prompt's first token is later than a short one's)
        self.first_token_seconds = 0.0
        self.batch_seconds = 0.0  # run to end: moving average of a batch's time, first row in to last out
        self._batch = (0.0, 0)  # run to end: when the running batch started, and its rows
        self.latency_seconds = 0.0  # moving average of requests' time in the node (enqueue to answer)
        # the rows batched: halved where a batch runs out of the device's memory, doubled back after a while
        self.limit = BatchLimit(max_batch, oom_backoff_s)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.queue: deque[Job] = deque()  # waiting for a row, oldest first
        self.generating: dict[int, Job] = {}  # in the engine's batch, by key
        self.scoring: dict[int, asyncio.Future] = {}  # sequences the engine is asked to score, by key
        self.in_flight = 0
        self._keys = itertools.count()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._answered: deque[tuple[float, int]] = deque()  # (when, tokens) over the last RATE_WINDOW s
        self._answered_tokens = 0  # their sum
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        if metrics:
            metrics.batch_limit.set(max_batch)
        engine.listen(self._heard)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    @property
    def max_batch(self) -> int:
        return self.limit.value

    @property
    def running(self) -> bool:
        return bool(self.generating)

    @property
    def idle(self) -> bool:
        return not self.queue and self.in_flight == 0

    def expected_wait(self, count: int = 1, max_tokens: int | None = None) -> float:
        """Seconds the last of ``count`` requests arriving now would take, or what requests have lately
        really taken, whichever is more (the model of the queue does not see a CPU shared with other work).
        Continuous: its wait for a free row (rows free ``max_batch`` per row-time, as the requests generating
        finish) and its own time generating: a row's time, or the part of it that its ``max_tokens`` are of
        the tokens rows lately generated, where it asks for fewer (a short answer behind long ones is not
        refused for the time theirs took). Run to end: the batch running, the batches ahead and its own.
        With the target on the first token (a chat service's, ``serve --slo-on first-token``), the wait for
        a row and the time from joining the batch to a first token, against what requests have lately
        waited for one (and taken to a first token once in)."""
        # its own generating (unless the target is on its first token)
        own = 0.0 if self.slo_on_first_token else self._share_of_a_row(max_tokens)
        first = self.first_token_seconds if self.slo_on_first_token else 0.0
        if self.continuous:
            ahead = len(self.queue) + count - (self.max_batch - len(self.generating))
            modelled = (max(0, ahead) / self.max_batch + own) * self.row_seconds + first
        else:
            batches = (len(self.queue) + count - 1) // self.max_batch + own + (1 if self.generating else 0)
            modelled = batches * self.batch_seconds + first
        if self.in_flight == 0:
            # Nothing in the node: the past latency says nothing about now (and shedding on it alone
            # would refuse every request for ever, since none would finish to correct it).
            return modelled
        if self.slo_on_first_token:
            return max(modelled, self.wait_seconds + first)
        # what requests lately took, of which their generating its share
        return max(modelled, self.wait_seconds + own * max(0.0, self.latency_seconds - self.wait_seconds))

    def _share_of_a_row(self, max_tokens: int | None) -> float:
        """The part of a row's time a request asking for ``max_tokens`` is expected to take: all of it, or the
        part its tokens are of those rows lately generated, where it asks for fewer. (Rows that end early, on
        an end token, are what the average already holds; a prompt's prefill is taken to scale alike.)"""
        if not self.continuous or max_tokens is None or not self.row_tokens:
            return 1.0
        return min(1.0, max_tokens / self.row_tokens)

    def _starts_now(self, count: int) -> bool:
        """Whether ``count`` requests arriving now find rows free and nobody waiting for them: they wait for
        nothing, so shedding them cannot make any answer sooner, and the node is not busy. Refused on the
        average row's time instead, an idle node that had generated one long answer said "busy" to every
        short request after it, for good, since none it refused could bring the average down."""
        if self.continuous:
            return len(self.queue) + count <= self.max_batch - len(self.generating)
        return not self.generating and len(self.queue) + count <= self.max_batch

    async def submit(self, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY) -> list[int]:
        return (await self.submit_all([prompt], max_tokens, sampling))[0]

    async def submit_all(self, prompts: list[list[int]], max_tokens: int,
                         sampling: Sampling = GREEDY) -> list[list[int]]:
        admission = self.admit(prompts, max_tokens, sampling)
        try:
            return await admission.answers()
        finally:
            admission.close()

    def admit(self, prompts: list[list[int]], max_tokens: int, sampling: Sampling = GREEDY,
              watch: bool = False) -> Admission:
        """Queue every prompt of one request, admitted or refused (``QueueFull``) as one: a request refused
        busy leaves no part of itself in the queue, to spend the model's time on an answer nobody gets."""
        count = len(prompts)
        self._regrow()
        if len(self.queue) + count > self.max_queue:
            raise QueueFull(len(self.queue), "the queue is full" if count == 1 else
                            f"the queue has no room for {count} prompts")
        measured = self.row_seconds if self.continuous else self.batch_seconds
        if self.slo is not None and measured and not self._starts_now(count):
            wait = self.expected_wait(count, max_tokens)
            if wait > self.slo:
                target = "first-token latency target" if self.slo_on_first_token else "latency target"
                raise QueueFull(len(self.queue), f"the expected wait {wait:.2f} s is over the {self.slo:g} s {target}")
        loop = asyncio.get_running_loop()
        # n answers of one prompt with one seed must still differ: the i-th prompt's draws start from seed + i
        jobs = [Job(next(self._keys), p, max_tokens, sampling.nth(i), loop.create_future())
                for i, p in enumerate(prompts)]
        self.in_flight += count
        self.queue.extend(jobs)
        self._arrived.set()
        self._gauge()
        return Admission(self, jobs, watch)

    async def score(self, tokens: list[int], start: int, top: int) -> list:
        """The log-probabilities of ``tokens[start:]`` and the ``top`` most likely tokens in their places
        (model.score), worked out by the engine between two of its steps."""
        key = next(self._keys)
        self.scoring[key] = future = asyncio.get_running_loop().create_future()
        try:
            self.engine.score(key, tokens, start, top)
            return await future
        finally:
            self.scoring.pop(key, None)

    def _release(self, jobs: list[Job]) -> None:
        """A request is done with: what of it is unfinished is withdrawn (from the queue, or from the
        engine's batch at its next step)."""
        self.in_flight -= len(jobs)
        for job in jobs:  # (a job answered is in neither the queue nor the batch)
            job.future.cancel()  # (its future, if awaited, was cancelled with the request: not a sign it is done)
            if job in self.queue:
                self.queue.remove(job)
            elif self.generating.pop(job.key, None) is not None:
                self.engine.drop(job.key)
                self._room.set()
        self._gauge()

    def _end(self, job: Job) -> None:
        """Answer a generating job with the tokens it has (its stop string came), and free its row."""
        if job.future.done() or self.generating.pop(job.key, None) is None:
            return
        self.engine.drop(job.key)
        self._left()
        self._answer(job, list(job.heard))

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self.queue))

    async def _next(self, timeout: float | None = None) -> Job | None:
        """The oldest waiting job, waiting for one if none is there (at most ``timeout`` seconds: None)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(),
                                       None if deadline is None else max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                return None
        return self.queue.popleft()

    async def _run(self) -> None:
        while True:
            while self._full():
                self._room.clear()
                await self._room.wait()
            group = [await self._next()]
            # An idle engine: the first request waits a moment for others to start with it. A busy one:
            # whoever is waiting goes to the engine now, and joins within a few steps (DecodeBatch).
            deadline = time.perf_counter() + self.max_wait if not self.generating else None
            while len(group) < self.max_batch - len(self.generating):
                if deadline is None or deadline <= time.perf_counter():
                    if not self.queue:
                        break
                    group.append(self.queue.popleft())
                    continue
                job = await self._next(deadline - time.perf_counter())
                if job is None:
                    break
                group.append(job)
            self._gauge()
            self._join(group)

    def _full(self) -> bool:
        """No row is free for the next request (where its time has come, after a wider batch is allowed)."""
        self._regrow()
        return len(self.generating) >= (self.max_batch if self.continuous else 1)

    def _join(self, group: list[Job]) -> None:
        group = [job for job in group if not job.future.done()]  # withdrawn while the group formed
        if not group:
            return
        now = time.perf_counter()
        for i, job in enumerate(group):
            try:
                self.engine.submit(job.key, job.prompt, job.max_tokens, job.sampling, watch=job.admission is not None)
            except Exception as exc:  # the engine is gone: these cannot be generated
                for lost in group[i:]:
                    self._fail(lost, exc)
                return
            job.joined = now
            waited = now - job.enqueued
            self.wait_seconds = moving(self.wait_seconds, waited)
            self.generating[job.key] = job
        if len(self.generating) == len(group):
            self._batch = (now, len(group))
        for job in group:
            job.alongside = len(self.generating)
        if self.metrics:
            self.metrics.batch_size.observe(len(self.generating))

    def _heard(self, kind: str, key, payload) -> None:
        """From the engine's thread: a row finished (``row``; ``stopped_by`` before it, the stop token that
        ended it), failed (``error``, or ``oom``: out of the device's memory), watched rows' new tokens
        (``tokens``), the log-probabilities of rows' new tokens (``logprobs``), a sequence scored (``scored``),
        or the engine died (``gone``)."""
        try:
            self._loop.call_soon_threadsafe(self._settle, kind, key, payload)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def _settle(self, kind: str, key, payload) -> None:
        if kind == "logprobs":
            for k, entries in payload.items():
                job = self.generating.get(k)
                if job is not None:
                    job.entries += entries
            return
        if kind == "stopped_by":
            job = self.generating.get(key)
            if job is not None:
                job.stopped_by = payload
            return
        if kind == "tokens":
            for k, tokens in payload.items():
                job = self.generating.get(k)
                if job is not None and job.admission is not None and not job.future.done():
                    if tokens and not job.heard:
                        self.first_token_seconds = moving(self.first_token_seconds, time.perf_counter() - job.joined)
                    job.heard += tokens
                    job.admission.tell(job, tokens, False)
            return
        if key in self.scoring:
            future = self.scoring.pop(key)
            if not future.done():
                if kind == "scored":
                    future.set_result(payload)
                elif kind == "oom":  # busy, to be retried: the sequence is the model's to score, not too long
                    future.set_exception(OutOfMemory(f"scoring ran out of the device's memory "
                                                     f"({payload[0].splitlines()[0][:200]})"))
                else:
                    future.set_exception(EngineError(payload))
            return
        if kind == "gone":
            for job in self.generating.values():
                self._fail(job, EngineGone(payload))
            self.generating.clear()
            for future in self.scoring.values():
                if not future.done():
                    future.set_exception(EngineGone(payload))
            self.scoring.clear()
            self._room.set()
            return
        if kind == "oom":
            self._shrink(*payload)
        job = self.generating.pop(key, None)
        if job is None:  # withdrawn or ended; the engine had finished it before it heard
            return
        self._left()
        if kind == "error":
            self._fail(job, EngineError(payload))
        elif kind == "oom":
            self._fail(job, OutOfMemory(f"the batch of {payload[1]} rows ran out of the device's memory "
                                        f"({payload[0].splitlines()[0][:200]}); this node now batches at most "
                                        f"{self.max_batch}"))
        else:  # a row shorter than its max_tokens ended on an end or stop token: generated, not in the answer
            self._answer(job, payload, generated=len(payload) + (len(payload) < job.max_tokens))

    def _shrink(self, why: str, rows: int) -> None:
        """A batch of ``rows`` ran out of the device's memory: batch at most half as many (a --max-batch too
        wide for the GPU with these lengths, or memory another process holds), rather than fail every batch
        that wide, until the limit's wait is over (batch_limit.py)."""
        fewer = self.limit.shrink(rows)
        if fewer is None:
            return
        again = (f"trying {min(self.limit.ceiling, 2 * fewer)} again in {_span(self.limit.wait_s)}"
                 if self.limit.next_try is not None else "for good (--oom-backoff-s 0)")
        log.warning("a batch of %d rows ran out of the device's memory (%s): batching at most %d rows, %s; "
                    "if it recurs, set --max-batch %d (or a shorter --max-model-len) to start there", rows,
                    why.splitlines()[0][:200], fewer, again, fewer)
        if self.metrics:
            self.metrics.batch_limit.set(fewer)

    def _regrow(self) -> None:
        """Batch twice as many rows again, where the limit's wait since running out of memory is over."""
        wider = self.limit.regrow()
        if wider is None:
            return
        log.info("batching at most %d rows again, after %s without running out of the device's memory", wider,
                 _span(self.limit.wait_s))
        if self.metrics:
            self.metrics.batch_limit.set(wider)

    def _left(self) -> None:
        """A row left the batch, answered: room for the next; in run-to-end, perhaps the batch's end."""
        self._room.set()
        if not self.generating and not self.continuous:
            took, rows = time.perf_counter() - self._batch[0], self._batch[1]
            weight = 0.3 if rows >= self.max_batch // 2 else 0.05  # full batches say most about the next
            self.batch_seconds = moving(self.batch_seconds, took, weight)

    def _fail(self, job: Job, exc: Exception) -> None:
        if job.future.done():
            return
        job.future.set_exception(exc)
        if job.admission is not None:  # heard through its events, not its future
            job.future.exception()  # (marks it retrieved: asyncio would log it as never seen)
            job.admission.tell(job, exc, True)

    def _answer(self, job: Job, tokens: list[int], generated: int | None = None) -> None:
        """Answer ``job`` with ``tokens``; ``generated`` (its tokens, by default) is what the model made for it,
        as usage counts them."""
        if job.future.done():
            return
        now = time.perf_counter()
        waited = now - job.enqueued
        self.latency_seconds = moving(self.latency_seconds, waited)
        # Rows generated alongside many others say most about a row's time under load.
        took, weight = now - job.joined, 0.2 if job.alongside >= self.max_batch // 2 else 0.05
        self.row_seconds = moving(self.row_seconds, took, weight)
        made = len(tokens) if generated is None else generated
        self.row_tokens = moving(self.row_tokens, made, weight)
        if self.metrics:
            self.metrics.tokens.inc(made)
            self._answered.append((now, made))
            self._answered_tokens += made
            while self._answered[0][0] < now - RATE_WINDOW:
                self._answered_tokens -= self._answered.popleft()[1]
            span = max(now - self._answered[0][0], 1.0)
            self.metrics.tokens_per_second.set(self._answered_tokens / span)
        job.future.set_result(tokens)
        if job.admission is not None:
            job.admission.tell(job, tokens[len(job.heard):], True)
