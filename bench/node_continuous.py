"""Continuous batching against batches that run to their end, under the same stream of requests.

Requests arrive as a seeded Poisson stream, each asking for 4 to 256 new tokens (as
``node_mixed_lengths.py``: 4, 8, 16, 32, 64, 128, 192 or 256, equally often), and the built-in model
generates them on one torch thread, in this process, at most ``--max-batch`` at a time, side by side in
one run (the two policies take turns at each rate, so the machine's noise falls on both alike):

* ``continuous`` (``serve --batching continuous``, the default): a request joins the batch at the next
  step when a row is free;
* ``run_to_end`` (``--batching run-to-end``, all the node did before): a batch takes the requests
  waiting when it starts, and the next batch starts once the last of its rows has finished (rows still
  leave as they finish).

Latency is arrival to last token, real time. Prints one JSON object: per rate and policy, the requests'
mean, p50 and p95 latency, the tokens per second generated, and the ratios run_to_end / continuous.

Usage: python bench/node_continuous.py [--model builtin:small] [--rates 10,20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LENGTHS = [4, 8, 16, 32, 64, 128, 192, 256]


def replay(model, arrivals: list[tuple[float, int]], max_batch: int, continuous: bool) -> dict:
    """Serve the ``(arrival second, max tokens)`` stream; the latencies and the tokens per second."""
    import numpy as np

    from inference_node.model import DecodeBatch

    batch = DecodeBatch(model)
    waiting, latencies, tokens, i = [], [], 0, 0
    t0 = time.perf_counter()
    while i < len(arrivals) or waiting or len(batch):
        now = time.perf_counter() - t0
        while i < len(arrivals) and arrivals[i][0] <= now:
            waiting.append((i, arrivals[i][1]))
            i += 1
        if not waiting and not len(batch):
            time.sleep(max(0.0, arrivals[i][0] - now))
            continue
        if continuous or not len(batch):
            while waiting and len(batch) < max_batch:
                key, n = waiting.pop(0)
                batch.add(key, [65 + key % 26] * 20, n)
        for key, out in batch.step():
            latencies.append(time.perf_counter() - t0 - arrivals[key][0])
            tokens += len(out)
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"requests": len(lat), "mean_s": round(float(lat.mean()), 3),
            "p50_s": round(float(np.percentile(lat, 50)), 3), "p95_s": round(float(np.percentile(lat, 95)), 3),
            "tokens_per_s": round(tokens / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rates", default="10,20", help="requests per second, comma-separated (default 10,20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long requests arrive at each rate")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    from inference_node.model import generate, load_model

    torch.set_num_threads(1)
    model = load_model(args.model, device=torch.device("cpu"))
    generate(model, [[65] * 20] * args.max_batch, [8] * args.max_batch)  # warm
    out = {"model": args.model, "max_batch": args.max_batch, "seconds": args.seconds, "new_tokens": LENGTHS,
           "rates": {}}
    for rate in (float(r) for r in args.rates.split(",")):
        rng = np.random.default_rng(args.seed)
        times = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * args.seconds * 2)))
        times = times[times < args.seconds]
        arrivals = [(float(t), int(rng.choice(LENGTHS))) for t in times]
        print(f"rate {rate:g}/s: {len(arrivals)} requests", file=sys.stderr)
        runs = {"continuous": replay(model, arrivals, args.max_batch, True),
                "run_to_end": replay(model, arrivals, args.max_batch, False)}
        c, r = runs["continuous"], runs["run_to_end"]
        runs["run_to_end_over_continuous"] = {k: round(r[k] / c[k], 2) for k in ("mean_s", "p50_s", "p95_s")}
        out["rates"][f"{rate:g}"] = runs
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
