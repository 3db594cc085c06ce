"""Inference-node targets on this machine's CPU with the built-in model; prints one JSON object.

Measured side by side in one run (issue 5):
* dynamic batching serves >= 3x the requests/s of batch size 1 at the same p99 latency target;
* after /ready, the first request's latency is <= 2x the steady p50 (and a cold start without
  warm-up, for contrast);
* under 5x overload: no 5xx, every refused request answered 429 within 50 ms, p99 of accepted
  requests within the SLO, resident memory flat;
* the effect of --quantize int8 on capacity, and of continuous batching (the default) against batches
  run to their end (``--batching run-to-end``).

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
        # One torch thread: the other core is the load generator's, so it is not starved.
        self.proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(self.port),
                                      "--threads", "1", *args],
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

    def children(self) -> list[int]:
        """The server's child processes (its engine)."""
        return [int(c) for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
                for c in (task / "children").read_text().split()]

    def rss_mb(self) -> float:
        """Resident memory of the server and its engine process together."""
        total = 0.0
        for pid in [self.proc.pid, *self.children()]:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS"):
                    total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def server_busy_latency(url: str) -> float | None:
    """Upper bound (ms) of the slowest 429 the node answered, from its busy-answer histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    buckets = [(float(s.labels["le"]), s.value) for f in text_string_to_metric_families(text)
               if f.name == "peakpilot_busy_answer_seconds" for s in f.samples if s.name.endswith("_bucket")]
    total = max((v for _, v in buckets), default=0)
    if not total:
        return None
    return min(le for le, v in buckets if v >= total) * 1000


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
    parser.add_argument("--slo-ms", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--model", default="builtin:small", help="for capacity, batching and first request")
    parser.add_argument("--overload-model", default="builtin:medium",
                        help="for the overload run: heavier, so the 2-core load generator is not the bottleneck")
    args = parser.parse_args()
    report: dict = {"model": args.model, "slo_ms": args.slo_ms, "body": BODY}

    capacity = {}
    for label, extra in (("batch_1", ["--max-batch", "1"]), ("batch_16", ["--max-batch", "16"]),
                         ("batch_16_run_to_end", ["--max-batch", "16", "--batching", "run-to-end"]),
                         ("batch_16_int8", ["--max-batch", "16", "--quantize", "int8"])):
        node = Node("--model", args.model, "--max-queue", "256", *extra)
        try:
            capacity[label] = asyncio.run(profile(node.url, args.slo_ms, args.seconds, start_rps=2))
            print(f"{label}: {capacity[label]['rps_per_node']} req/s", file=sys.stderr)
        finally:
            node.stop()
    report["capacity_rps"] = {k: v["rps_per_node"] for k, v in capacity.items()}
    report["batching_speedup"] = round(capacity["batch_16"]["rps_per_node"] / max(capacity["batch_1"]["rps_per_node"], 1e-9), 2)
    report["continuous_over_run_to_end"] = round(
        capacity["batch_16"]["rps_per_node"] / max(capacity["batch_16_run_to_end"]["rps_per_node"], 1e-9), 2)
    report["int8_speedup"] = round(capacity["batch_16_int8"]["rps_per_node"] / max(capacity["batch_16"]["rps_per_node"], 1e-9), 2)

    report["first_request_warm"] = first_vs_steady("--model", args.model)
    report["first_request_cold"] = first_vs_steady("--model", args.model, "--no-warmup")

    # Overload: 5x the measured capacity of the overload model, the node shedding by its SLO (--slo-ms).
    node = Node("--model", args.overload_model, "--max-batch", "8", "--max-queue", "256")
    try:
        overload_capacity = asyncio.run(profile(node.url, args.slo_ms, args.seconds, start_rps=1))["rps_per_node"]
    finally:
        node.stop()
    rate = overload_capacity * 5
    report["overload_model"] = args.overload_model
    report["overload_capacity_rps"] = overload_capacity
    # Batch size 8: a batch must fit well inside the SLO, since a request can wait for the one running.
    # The default engine (the model in its own process) against the in-process one, side by side.
    for engine, key in (("process", "overload_5x"), ("thread", "overload_5x_thread_engine")):
        node = Node("--model", args.overload_model, "--max-batch", "8", "--max-queue", "256", "--slo-ms",
                    str(args.slo_ms * 0.6),  # margin for the HTTP stack and queueing the estimate does not see
                    "--engine", engine)
        try:
            rss_before = node.rss_mb()
            rounds = []
            for _ in range(3):
                res = asyncio.run(run_open_loop(node.url, constant_rate(rate, args.seconds * 2)))
                rounds.append((res, node.rss_mb()))
            res = rounds[-1][0]
            summary = res.summary()
            server_busy = server_busy_latency(node.url)
            report[key] = {
                "engine": engine, "target_rate_rps": round(rate, 1), **summary,
                "busy_429_server_max_bucket_ms": server_busy,
                "rss_mb": [round(rss_before, 1)] + [round(r, 1) for _, r in rounds],
                "status_5xx": 0 if summary["outcomes"]["error"] == 0 else "see outcomes.error",
            }
            report[key]["targets_met"] = bool(
                summary["outcomes"]["ok"] > 0 and summary["latency_ms"]["p99"] is not None
                and summary["outcomes"]["error"] == 0 and server_busy is not None and server_busy <= 50
                and (summary["latency_ms"]["p99"] or 0) <= args.slo_ms
                and rounds[-1][1] <= rounds[0][1] * 1.1)
        finally:
            node.stop()
        print(f"overload ({engine} engine): p99 {report[key]['latency_ms']['p99']} ms, "
              f"ok {report[key]['outcomes']['ok']}", file=sys.stderr)
    report["targets_met"] = {"batching_3x": report["batching_speedup"] >= 3,
                             "first_request_2x": report["first_request_warm"]["ratio"] <= 2,
                             "overload": report["overload_5x"]["targets_met"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
