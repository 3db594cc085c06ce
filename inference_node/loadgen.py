"""Open-loop load: replay a trace's arrivals over HTTP, and profile a node's capacity within an SLO.

Open loop means requests are sent at their scheduled times whatever the server does, as real users
do; a closed loop (wait for an answer before the next request) would hide overload. Arrivals within
an interval of the trace are spread evenly; ``speedup`` compresses time and ``rate_scale`` thins or
thickens the counts, so a trace of millions of requests per 10 minutes can drive one node.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

# Every answer max_tokens long (vLLM's ignore_eos, as its serving benchmark sends it): what a request costs
# is then what max_tokens says, not wherever the model happens to end its answer to this one prompt.
BODY = {"prompt": "Tell me about GPUs.", "max_tokens": 16, "temperature": 0.0, "ignore_eos": True}


def request_body(max_tokens: int = 16, stream: bool = False, model: str | None = None) -> dict:
    """What each request sends: BODY with ``max_tokens``, ``stream``, and the ``model`` field where a server
    serves several, or names its model (vLLM's served model name)."""
    return dict(BODY, max_tokens=max_tokens, stream=stream, **({"model": model} if model else {}))


@dataclass
class LoadResult:
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "busy": 0, "error": 0})
    latencies_ok: list[float] = field(default_factory=list)
    first_text_ok: list[float] = field(default_factory=list)  # streamed: to the first text read
    latencies_busy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    late_sends: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # each error outcome by kind: "HTTP 500", "ReadTimeout"

    def error(self, kind: str) -> None:
        self.outcomes["error"] += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict:
        def pcts(values, qs=(("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))) -> dict:
            return {name: round(float(np.percentile(values, q)) * 1000, 2) if values else None for name, q in qs}

        return {"sent": self.sent, "seconds": round(self.seconds, 2),
                "rate_rps": round(self.sent / self.seconds, 2) if self.seconds else 0.0,
                "outcomes": dict(self.outcomes),
                "latency_ms": pcts(self.latencies_ok),
                # streamed (``stream: true``): when the first text of each served answer was read; else null
                "first_text_ms": pcts(self.first_text_ok),
                "busy_latency_ms": pcts(self.latencies_busy, (("p99", 99), ("max", 100))),
                "late_sends": self.late_sends, "errors": dict(self.errors)}


@dataclass
class Streamed:
    """A streamed completion as its client read it."""

    status: int
    first_text_s: float | None = None  # from ``started`` to the first text read (None: no text came)
    error: str | None = None  # the error event the stream ended with
    usage: dict | None = None  # its usage chunk, where ``stream_options.include_usage`` asked for one


async def read_stream(client: httpx.AsyncClient, body: dict, started: float) -> Streamed:
    """POST a streamed completion and read its server-sent events to the end."""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return Streamed(r.status_code)
        got = Streamed(200)
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                got.error = f"stream error: {event['error'].get('type')}"
            elif got.first_text_s is None and any(c.get("text") for c in event.get("choices", [])):
                got.first_text_s = time.perf_counter() - started
            if event.get("usage"):
                got.usage = event["usage"]
        return got


def describe_errors(errors: dict[str, int]) -> str:
    """Error outcomes by kind, most frequent first: "ReadTimeout 168, HTTP 500 2"."""
    return ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items(), key=lambda kv: -kv[1]))


def auth_headers(api_key: str | None) -> dict[str, str]:
    """What a request sends for a node that asks for an API key (``serve --api-key``)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_reachable(url: str, timeout_s: float = 5.0, api_key: str | None = None) -> None:
    """Fail at once, naming the URL, where nothing answers there, or where the node refuses the API key:
    else a run sends its whole schedule into refused connections or 401s and reports them as errors. Any
    other HTTP answer counts (a load balancer need not route ``/v1/models``)."""
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout_s, headers=auth_headers(api_key))
    except httpx.TransportError as exc:
        raise ConnectionError(f"{url}: cannot connect ({type(exc).__name__}: {exc}); is the node running, "
                              f"and is the URL right?") from None
    if answer.status_code == 401:
        raise ConnectionError(f"{url}: the node refuses the API key given (HTTP 401)" if api_key else
                              f"{url}: the node asks for an API key (HTTP 401): give --api-key or PEAKPILOT_API_KEY")


MAX_REQUESTS = 10_000_000  # one process's open loop: far more than it can send at once, 80 MB of send times


def schedule_from_counts(counts: np.ndarray, step_s: float, speedup: float = 1.0, rate_scale: float = 1.0,
                         duration_s: float | None = None) -> np.ndarray:
    """Send times (seconds from start) for per-interval counts, spread evenly in each interval. A schedule of
    more than ``MAX_REQUESTS`` is a ValueError that says how many (a busy service's trace at its own scale is
    billions, whose send times alone filled this machine's memory)."""
    counts = np.nan_to_num(np.asarray(counts, dtype=float))
    if duration_s is not None:  # the intervals that start within the duration
        counts = counts[: max(0, math.ceil(duration_s * speedup / step_s))]
    planned = float(counts.sum()) * rate_scale
    if planned > MAX_REQUESTS:
        raise ValueError(f"the trace's {planned:,.0f} requests (at --rate-scale {rate_scale:g}) are more than one "
                         f"loadgen sends ({MAX_REQUESTS:,}): give --rate-scale {rate_scale * MAX_REQUESTS / planned:.2g}"
                         f" or less, or --duration to send part of it")
    times = []
    carry = 0.0
    for i, c in enumerate(counts):
        carry += c * rate_scale
        n = int(carry)
        carry -= n
        if n:
            times.append((i + (np.arange(n) + 0.5) / n) * step_s / speedup)
    out = np.concatenate(times) if times else np.zeros(0)
    return out[out < duration_s] if duration_s is not None else out


async def run_open_loop(url: str, send_times: np.ndarray, body: dict | None = None, timeout_s: float = 30.0,
                        max_in_flight: int = 4096, api_key: str | None = None) -> LoadResult:
    result = LoadResult()
    body = body or BODY
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=256)
    sem = asyncio.Semaphore(max_in_flight)

    async def one(client: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        try:
            if body.get("stream"):
                got = await read_stream(client, body, started)
                if got.error:
                    result.error(got.error)
                    return
                status = got.status
                if status == 200:
                    result.first_text_ok.append(got.first_text_s if got.first_text_s is not None
                                                else time.perf_counter() - started)
            else:
                status = (await client.post("/v1/completions", json=body)).status_code
            elapsed = time.perf_counter() - started
            if status == 200:
                result.outcomes["ok"] += 1
                result.latencies_ok.append(elapsed)
            elif status in (429, 503):
                result.outcomes["busy"] += 1
                result.latencies_busy.append(elapsed)
            else:
                result.error(f"HTTP {status}")
        except httpx.HTTPError as exc:
            result.error(type(exc).__name__)
        finally:
            sem.release()

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s, limits=limits,
                                 headers=auth_headers(api_key)) as client:
        tasks = []
        start = time.perf_counter()
        for t in send_times:
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                result.late_sends += 1
            await sem.acquire()
            tasks.append(asyncio.create_task(one(client)))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - start
    return result


def constant_rate(rate: float, seconds: float) -> np.ndarray:
    n = int(rate * seconds)
    return (np.arange(n) + 0.5) / rate


async def profile(url: str, slo_ms: float, seconds_per_step: float = 5.0, start_rps: float = 2.0,
                  max_rps: float = 2000.0, body: dict | None = None, progress=None, api_key: str | None = None) -> dict:
    """Highest request rate whose p99 stays within the SLO with no busy answers: the p99 of the whole
    answer, or with a streamed ``body`` (``stream: true``) of its first text, a chat service's SLO (the
    time a user waits before reading).

    Doubles the rate from ``start_rps`` until the SLO breaks, then bisects between the last good and the
    first bad rate (4 steps). A node still within the SLO at the last rate not above ``max_rps`` is
    reported at that rate, with ``capped``: it sustains at least that much."""
    steps = []
    body = body or BODY
    measured = "first_text_ms" if body.get("stream") else "latency_ms"

    async def ok_at(rate: float) -> bool:
        res = (await run_open_loop(url, constant_rate(rate, seconds_per_step), body, api_key=api_key)).summary()
        p99 = res[measured]["p99"]
        good = res["outcomes"]["busy"] == 0 and res["outcomes"]["error"] == 0 and p99 is not None and p99 <= slo_ms
        steps.append({"rps": round(rate, 2), "p99_ms": p99, "answer_p99_ms": res["latency_ms"]["p99"],
                      "busy": res["outcomes"]["busy"], "errors": res["errors"], "within_slo": good})
        if progress:
            progress(steps[-1])
        return good

    if not 0 < start_rps <= max_rps:
        raise ValueError(f"the first rate ({start_rps:g} req/s) must be above 0 and at most the highest "
                         f"({max_rps:g} req/s)")
    if start_rps * seconds_per_step < 1:
        raise ValueError(f"{seconds_per_step:g} s at {start_rps:g} req/s sends no request")
    good, bad = 0.0, None
    rate = start_rps
    while rate <= max_rps:
        if await ok_at(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is not None and good:
        for _ in range(4):
            mid = (good + bad) / 2
            if await ok_at(mid):
                good = mid
            else:
                bad = mid
    ready = await node_facts(url, api_key)
    return {"rps_per_node": round(good, 2), "capped": bad is None and good > 0, "slo_ms": slo_ms,
            "slo_on": "first_text" if body.get("stream") else "answer", "steps": steps,
            "start_seconds": ready.get("start_seconds", {}), "model": ready.get("model") or body.get("model"),
            "max_batch": ready.get("max_batch")}  # the rows the node batched as it was measured


async def node_facts(url: str, api_key: str | None = None) -> dict:
    """What a peakpilot node's ``/ready`` says of it (its model, start phases, batch); empty for another
    OpenAI-compatible server (vLLM's has no ``/ready``), whose capacity is measured all the same."""
    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10, headers=auth_headers(api_key)) as client:
            ready = (await client.get("/ready")).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return ready if isinstance(ready, dict) else {}
