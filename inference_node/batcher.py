"""Dynamic batching with a bounded queue: requests wait at most ``max_wait_ms`` to be batched, at most
``max_batch`` run together, and past ``max_queue`` waiting a request is refused at once (busy) rather
than left to time out. Each request is answered as soon as the engine says its row is done (rows leave
the batch as they finish: ``model.generate``), not when the batch's longest is. A request withdrawn
while it waits (its client went away) leaves the queue at once: under overload, clients that time out
and retry elsewhere would otherwise have the node generate their abandoned answers ahead of the ones
still wanted. One worker thread hands the batches to the engine (inference_node/engine.py), so the
event loop keeps answering ``/health``, ``/metrics`` and busy refusals while the model works.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

# (prompts, max_tokens, temperatures, seed, on_finished=(row, tokens) -> None) -> tokens per row; blocking
RunBatch = Callable[..., list[list[int]]]


class QueueFull(Exception):
    def __init__(self, waiting: int, why: str = "the queue is full"):
        super().__init__(f"server busy: {why} ({waiting} waiting)")
        self.waiting = waiting
        self.why = why


@dataclass(eq=False)
class Job:
    prompt: list[int]
    max_tokens: int
    temperature: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, run: RunBatch, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 64,
                 metrics=None, slo_ms: float | None = None):
        self.run = run  # blocking: (prompts, max_tokens, temperatures, seed, on_finished) -> token lists
        self.slo = None if slo_ms is None else slo_ms / 1000.0
        self.batch_seconds = 0.0  # moving average of a batch's run time
        self.latency_seconds = 0.0  # moving average of requests' time in the node (enqueue to answer)
        self.running = False
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.queue: deque[Job] = deque()  # waiting to be batched, oldest first
        self._arrived = asyncio.Event()
        self.in_flight = 0
        self.batches = 0
        self._task: asyncio.Task | None = None
        self._seed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def idle(self) -> bool:
        return not self.queue and self.in_flight == 0

    def expected_wait(self, count: int = 1) -> float:
        """Seconds the last of ``count`` requests arriving now would take: the batches ahead of it, the
        running one and its own, or what requests have lately really taken, whichever is more (the model
        of the queue does not see a CPU shared with other work)."""
        batches_ahead = (len(self.queue) + count - 1) // self.max_batch + 1
        modelled = (batches_ahead + (1 if self.running else 0)) * self.batch_seconds
        if self.in_flight == 0:
            # Nothing in the node: the past latency says nothing about now (and shedding on it alone
            # would refuse every request for ever, since none would finish to correct it).
            return modelled
        return max(modelled, self.latency_seconds)

    async def submit(self, prompt: list[int], max_tokens: int, temperature: float) -> list[int]:
        return (await self.submit_all([prompt], max_tokens, temperature))[0]

    async def submit_all(self, prompts: list[list[int]], max_tokens: int, temperature: float) -> list[list[int]]:
        """Generate for every prompt of one request, admitted or refused as one: a request refused busy
        leaves no part of itself in the queue, to spend the model's time on an answer nobody gets."""
        count = len(prompts)
        if len(self.queue) + count > self.max_queue:
            raise QueueFull(len(self.queue), "the queue is full" if count == 1 else
                            f"the queue has no room for {count} prompts")
        if self.slo is not None and self.batch_seconds and self.expected_wait(count) > self.slo:
            raise QueueFull(len(self.queue), f"the expected wait {self.expected_wait(count):.2f} s is over the "
                                                f"{self.slo:g} s latency target")
        loop = asyncio.get_running_loop()
        jobs = [Job(p, max_tokens, temperature, loop.create_future()) for p in prompts]
        self.in_flight += count
        self.queue.extend(jobs)
        self._arrived.set()
        self._gauge()
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:  # withdrawn: what has not been batched yet will not be
            for job in jobs:
                if job in self.queue:
                    self.queue.remove(job)
            self._gauge()
            raise
        finally:
            self.in_flight -= count

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
            batch = [await self._next()]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                job = await self._next(remaining)
                if job is None:
                    break
                batch.append(job)
            self._gauge()
            await self._execute(batch)

    async def _execute(self, batch: list[Job]) -> None:
        batch = [job for job in batch if not job.future.cancelled()]  # withdrawn while the batch filled
        if not batch:
            return
        self._seed += 1
        started = time.perf_counter()
        self.running = True
        loop = asyncio.get_running_loop()

        def finished(i: int, tokens: list[int]) -> None:  # on the worker thread, as each row is done
            loop.call_soon_threadsafe(self._answer, batch[i], tokens)

        try:
            outputs = await asyncio.to_thread(self.run, [j.prompt for j in batch],
                                              [j.max_tokens for j in batch], [j.temperature for j in batch],
                                              self._seed, on_finished=finished)
        except Exception as exc:  # a failing batch answers its requests with an error, the server lives on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self.running = False
        elapsed = time.perf_counter() - started
        # Full batches say most about the cost of the next one under load.
        weight = 0.3 if len(batch) >= self.max_batch // 2 else 0.05
        self.batch_seconds = elapsed if not self.batch_seconds else (1 - weight) * self.batch_seconds + weight * elapsed
        self.batches += 1
        tokens = sum(len(o) for o in outputs)
        if self.metrics:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.tokens.inc(tokens)
            self.metrics.tokens_per_second.set(tokens / elapsed if elapsed > 0 else 0.0)
        for job, out in zip(batch, outputs):  # those the engine did not report one by one
            self._answer(job, out)

    def _answer(self, job: Job, tokens: list[int]) -> None:
        if job.future.done():  # answered already as its row finished, or withdrawn
            return
        waited = time.perf_counter() - job.enqueued
        self.latency_seconds = waited if not self.latency_seconds else 0.8 * self.latency_seconds + 0.2 * waited
        job.future.set_result(tokens)
