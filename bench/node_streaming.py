"""Streamed answers against whole ones, over HTTP, under the same stream of requests.

A node (``serve``, its engine process on one torch thread, the built-in model) is sent a seeded
Poisson stream of completions at each rate, each asking for 4 to 256 new tokens (as
``node_continuous.py``), twice per round, the two ways taking turns (so the machine's noise falls on
both alike):

* ``whole``: ``stream: false``; the client reads nothing until the answer is done;
* ``streamed``: ``stream: true``; the node sends the text as it is generated.

Per way: the time from sending to the first text the client can read (``first_text``: the first
streamed piece, or the whole answer) and to the last (``last_text``), their p50 and p95, and the tokens
per second answered. Ratios: how much sooner a streamed client reads its first words (whole last p50 /
streamed first p50), and what reporting every step costs (streamed / whole, last p50 and tokens per
second, which tells most at the rate that overloads the node), and where the CPU went (server, engine,
and this load generator, on the same cores). Prints one JSON object, by rate.

Usage: python bench/node_streaming.py [--model builtin:small] [--rates 8,20] [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_targets import ROOT, Node  # noqa: E402

sys.path.insert(0, str(ROOT))
from inference_node.loadgen import read_stream  # noqa: E402

LENGTHS = [4, 8, 16, 32, 64, 128, 192, 256]


async def one(client: httpx.AsyncClient, at: float, max_tokens: int, stream: bool, t0: float) -> tuple:
    """Send at ``at`` seconds after ``t0``; (seconds to the first text read, to the last, tokens)."""
    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    sent = time.perf_counter()
    body = {"prompt": "Tell me about GPUs.", "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
    if not stream:
        r = await client.post("/v1/completions", json=body)
        r.raise_for_status()
        done = time.perf_counter() - sent
        return done, done, r.json()["usage"]["completion_tokens"]
    got = await read_stream(client, dict(body, stream_options={"include_usage": True}), sent)
    if got.status != 200 or got.error:
        raise RuntimeError(f"streamed completion failed: HTTP {got.status} {got.error or ''}")
    last = time.perf_counter() - sent
    return got.first_text_s if got.first_text_s is not None else last, last, got.usage["completion_tokens"]


def cpu_seconds(node: Node) -> dict:
    """CPU seconds so far of the node's server process, of its engine process, and of this one (the
    load generator, which reads every event too): the three share this machine's cores."""
    import os

    def of(pid: int) -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return {"server": of(node.proc.pid), "engine": sum(of(pid) for pid in node.children()),
            "client": time.process_time()}


async def run(node: Node, arrivals: list[tuple[float, int]], stream: bool) -> dict:
    before = cpu_seconds(node)
    async with httpx.AsyncClient(base_url=node.url, timeout=120, limits=httpx.Limits(max_connections=500)) as client:
        t0 = time.perf_counter() + 0.1
        results = await asyncio.gather(*(one(client, at, n, stream, t0) for at, n in arrivals))
        span = time.perf_counter() - t0
    after = cpu_seconds(node)
    first, last, tokens = (np.array(x) for x in zip(*results))
    return {"requests": len(results), "cpu_s": {k: round(after[k] - before[k], 2) for k in after},
            "first_text_s": {"p50": round(float(np.percentile(first, 50)), 3),
                             "p95": round(float(np.percentile(first, 95)), 3)},
            "last_text_s": {"p50": round(float(np.percentile(last, 50)), 3),
                            "p95": round(float(np.percentile(last, 95)), 3)},
            "tokens_per_s": round(float(tokens.sum()) / span, 1)}


def pooled(runs: list[dict]) -> dict:
    """The rounds' figures, each the median over rounds."""
    def med(path):
        values = [r[path[0]][path[1]] if len(path) == 2 else r[path[0]] for r in runs]
        return round(float(np.median(values)), 3)

    return {"requests": sum(r["requests"] for r in runs),
            "cpu_s": {k: round(float(np.median([r["cpu_s"][k] for r in runs])), 2) for k in runs[0]["cpu_s"]},
            "first_text_s": {q: med(("first_text_s", q)) for q in ("p50", "p95")},
            "last_text_s": {q: med(("last_text_s", q)) for q in ("p50", "p95")},
            "tokens_per_s": med(("tokens_per_s",))}


def poisson_arrivals(rate: float, seconds: float, seed: int) -> list[tuple[float, int]]:
    """``(second, max tokens)`` of a seeded Poisson stream of requests asking for ``LENGTHS``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 2)))
    return [(float(t), int(rng.choice(LENGTHS))) for t in times[times < seconds]]


def compare(node: Node, arrivals: list[tuple[float, int]], rounds: int, label: str = "") -> dict:
    """Both ways on one node, taking turns for ``rounds`` rounds; each way's figures and the ratios."""
    runs = {"whole": [], "streamed": []}
    for r in range(rounds):
        for way in (("whole", "streamed") if r % 2 == 0 else ("streamed", "whole")):
            print(f"{label}round {r + 1}/{rounds}: {way}, {len(arrivals)} requests", file=sys.stderr)
            runs[way].append(asyncio.run(run(node, arrivals, way == "streamed")))
    whole, streamed = pooled(runs["whole"]), pooled(runs["streamed"])
    return {"whole": whole, "streamed": streamed,
            "first_text_sooner": round(whole["first_text_s"]["p50"] / streamed["first_text_s"]["p50"], 2),
            "streamed_over_whole": {
                "last_text_p50": round(streamed["last_text_s"]["p50"] / whole["last_text_s"]["p50"], 2),
                "tokens_per_s": round(streamed["tokens_per_s"] / whole["tokens_per_s"], 2)},
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rates", default="8,20", help="requests per second, comma-separated (default 8,20)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long requests arrive, per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each way, taking turns (default 2)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = {"model": args.model, "max_batch": args.max_batch, "seconds": args.seconds, "rounds": args.rounds,
           "new_tokens": LENGTHS, "rates": {}}
    node = Node("--model", args.model, "--max-batch", str(args.max_batch))
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            arrivals = poisson_arrivals(rate, args.seconds, args.seed)
            out["rates"][f"{rate:g}"] = compare(node, arrivals, args.rounds, f"rate {rate:g}/s, ")
    finally:
        node.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
