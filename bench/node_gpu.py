"""The inference node on a CUDA GPU; prints one JSON object.

What the CPU bench (`node_targets.py`) cannot show, measured side by side in one run on a machine
with a GPU:
* whether warm-up earns its place on CUDA: the first request after /ready against the steady p50,
  with warm-up and without (`--no-warmup`), per model size, and the seconds to /ready each way;
* dynamic batching on the GPU: the requests/s within the SLO at batch 16 against batch 1;
* the same node on the same machine's CPU (one torch thread, as the CPU bench runs it) for scale;
* greedy completions on the GPU equal the CPU's for the same prompts;
* streamed answers against whole ones (``node_streaming.py``'s comparison, on the GPU): a step with a
  streamed row in it reads the device once, which the CPU cannot show the price of.

Usage: python bench/node_gpu.py [--slo-ms 2000] [--seconds 3] > bench/node_gpu.json
Exits with code 2 where torch sees no CUDA device (CI has none; run it where a GPU is).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_streaming import compare, poisson_arrivals  # noqa: E402
from node_targets import ROOT, Node, first_vs_steady  # noqa: E402

sys.path.insert(0, str(ROOT))
from inference_node.loadgen import BODY, profile  # noqa: E402

PROMPTS = ["Tell me about GPUs.", "The quick brown fox", "peakpilot prewarms nodes before the peak because"]


def time_to_ready(*args: str) -> dict:
    """Seconds from launching `peakpilot serve` to /ready answering 200, and the node's own split."""
    launched = time.perf_counter()
    node = Node(*args)
    try:
        ready = httpx.get(f"{node.url}/ready", timeout=10).json()
        return {"launch_to_ready_s": round(node.ready_at - launched, 2),
                "start_seconds": ready.get("start_seconds", {}), "device": ready.get("device")}
    finally:
        node.stop()


def completions(*args: str) -> list[str]:
    node = Node(*args)
    try:
        return [httpx.post(f"{node.url}/v1/completions", timeout=60,
                           json={"prompt": p, "max_tokens": 24, "temperature": 0.0}).json()["choices"][0]["text"]
                for p in PROMPTS]
    finally:
        node.stop()


def capacity(slo_ms: float, seconds: float, *args: str) -> dict:
    node = Node(*args)
    try:
        res = asyncio.run(profile(node.url, slo_ms, seconds, start_rps=4))
        print(f"capacity {' '.join(args)}: {res['rps_per_node']} req/s", file=sys.stderr)
        return {"rps": res["rps_per_node"], "steps": res["steps"]}
    finally:
        node.stop()


@contextmanager
def on_cpu():
    """Nodes launched inside see no CUDA device, so they run on the CPU."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slo-ms", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=3, help="seconds per load step of the capacity search")
    parser.add_argument("--sizes", default="small,medium", help="built-in model sizes for the warm-up rows")
    parser.add_argument("--capacity-model", default="builtin:medium")
    parser.add_argument("--stream-rate", type=float, default=20.0,
                        help="requests per second of the streamed-against-whole comparison (default 20)")
    parser.add_argument("--stream-seconds", type=float, default=10.0)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this bench measures the node on a GPU (node_targets.py is the CPU one)",
              file=sys.stderr)
        sys.exit(2)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "python": platform.python_version(), "cpus": os.cpu_count(), "slo_ms": args.slo_ms,
                    "body": BODY}

    warmup = {}
    for size in args.sizes.split(","):
        model = f"builtin:{size}"
        warmup[size] = {
            "warm": first_vs_steady("--model", model),
            "cold": first_vs_steady("--model", model, "--no-warmup"),
            "ready_warm": time_to_ready("--model", model),
            "ready_cold": time_to_ready("--model", model, "--no-warmup"),
        }
        print(f"{size}: first/steady warm {warmup[size]['warm']['ratio']}, cold {warmup[size]['cold']['ratio']}",
              file=sys.stderr)
    report["first_request"] = warmup

    model = args.capacity_model
    report["capacity_model"] = model
    gpu = {"batch_1": capacity(args.slo_ms, args.seconds, "--model", model, "--max-batch", "1", "--max-queue", "512"),
           "batch_16": capacity(args.slo_ms, args.seconds, "--model", model, "--max-batch", "16", "--max-queue", "512")}
    gpu_text = completions("--model", model)
    with on_cpu():
        cpu = {"batch_16": capacity(args.slo_ms, args.seconds, "--model", model, "--max-batch", "16",
                                    "--max-queue", "512")}
        cpu_text = completions("--model", model)
    report["capacity_rps"] = {"gpu_batch_1": gpu["batch_1"]["rps"], "gpu_batch_16": gpu["batch_16"]["rps"],
                              "cpu_1_thread_batch_16": cpu["batch_16"]["rps"]}
    report["batching_speedup_gpu"] = round(gpu["batch_16"]["rps"] / max(gpu["batch_1"]["rps"], 1e-9), 2)
    report["gpu_over_cpu"] = round(gpu["batch_16"]["rps"] / max(cpu["batch_16"]["rps"], 1e-9), 2)
    report["capacity_steps"] = {"gpu_batch_1": gpu["batch_1"]["steps"], "gpu_batch_16": gpu["batch_16"]["steps"],
                                "cpu_1_thread_batch_16": cpu["batch_16"]["steps"]}
    node = Node("--model", model, "--max-batch", "16", "--max-queue", "512")
    try:
        streaming = compare(node, poisson_arrivals(args.stream_rate, args.stream_seconds, 0), 2, "streaming, ")
    finally:
        node.stop()
    report["streaming"] = dict(streaming, rate_rps=args.stream_rate, seconds=args.stream_seconds)
    report["greedy_same_as_cpu"] = gpu_text == cpu_text
    report["completions"] = {"gpu": gpu_text, "cpu": cpu_text}
    report["targets_met"] = {
        "batching_3x": report["batching_speedup_gpu"] >= 3,
        "first_request_2x": all(w["warm"]["ratio"] <= 2 for w in warmup.values()),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
