"""Inference-node targets on this machine's CPU with the built-in model; prints one JSON object.

Measured side by side in one run (issue 5):
* dynamic batching serves >= 3x the requests/s of batch size 1 at the same p99 latency target;
* after /ready, the first request's latency is <= 2x the steady p50 (and a cold start without
  warm-up, for contrast);
* under 5x overload: no 5xx, every refused request answered 429 within 50 ms, p99 of accepted
  requests within the SLO, resident memory flat;
* the effect of --quantize int8 on capacity.

Usage: python bench/node_targets.py [--slo-ms 1000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference_node.loadgen import BODY, constant_rate, profile, run_open_loop  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    self.ready_at = time.perf_counter()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise TimeoutError("node did not become ready")

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def first_vs_steady(*args: str) -> dict:
    node = Node(*args)
    try:
        started = time.perf_counter()
        httpx.post(f"{node.url}/v1/completions", json=BODY, timeout=60)
        first = time.perf_counter() - started
        steady = []
        for _ in range(30):
            started = time.perf_counter()
            httpx.post(f"{node.url}/v1/completions", json=BODY, timeout=60)
            steady.append(time.perf_counter() - started)
        return {"first_ms": round(first * 1000, 1), "steady_p50_ms": round(float(np.median(steady)) * 1000, 1),
                "ratio": round(first / float(np.median(steady)), 2)}
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slo-ms", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--model", default="builtin:small")
    args = parser.parse_args()
    report: dict = {"model": args.model, "slo_ms": args.slo_ms, "body": BODY}

    capacity = {}
    for label, extra in (("batch_1", ["--max-batch", "1"]), ("batch_16", ["--max-batch", "16"]),
                         ("batch_16_int8", ["--max-batch", "16", "--quantize", "int8"])):
        node = Node("--model", args.model, "--max-queue", "256", *extra)
        try:
            capacity[label] = asyncio.run(profile(node.url, args.slo_ms, args.seconds, start_rps=2))
            print(f"{label}: {capacity[label]['rps_per_node']} req/s", file=sys.stderr)
        finally:
            node.stop()
    report["capacity_rps"] = {k: v["rps_per_node"] for k, v in capacity.items()}
    report["batching_speedup"] = round(capacity["batch_16"]["rps_per_node"] / max(capacity["batch_1"]["rps_per_node"], 1e-9), 2)
    report["int8_speedup"] = round(capacity["batch_16_int8"]["rps_per_node"] / max(capacity["batch_16"]["rps_per_node"], 1e-9), 2)

    report["first_request_warm"] = first_vs_steady("--model", args.model)
    report["first_request_cold"] = first_vs_steady("--model", args.model, "--no-warmup")

    rate = capacity["batch_16"]["rps_per_node"] * 5
    node = Node("--model", args.model, "--max-batch", "16", "--max-queue", "32")
    try:
        rss_before = node.rss_mb()
        rounds = []
        for _ in range(3):
            res = asyncio.run(run_open_loop(node.url, constant_rate(rate, args.seconds * 2)))
            rounds.append((res, node.rss_mb()))
        res = rounds[-1][0]
        summary = res.summary()
        report["overload_5x"] = {
            "rate_rps": round(rate, 1), **summary,
            "busy_429_max_ms": summary["busy_latency_ms"]["max"],
            "rss_mb": [round(rss_before, 1)] + [round(r, 1) for _, r in rounds],
        }
        report["overload_5x"]["targets_met"] = bool(
            summary["outcomes"]["error"] == 0 and (summary["busy_latency_ms"]["max"] or 0) <= 50
            and (summary["latency_ms"]["p99"] or 0) <= args.slo_ms
            and rounds[-1][1] <= rounds[0][1] * 1.1)
    finally:
        node.stop()
    report["targets_met"] = {"batching_3x": report["batching_speedup"] >= 3,
                             "first_request_2x": report["first_request_warm"]["ratio"] <= 2,
                             "overload": report["overload_5x"]["targets_met"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
