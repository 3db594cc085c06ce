"""The inference node's commands: ``serve`` a model, ``profile`` the load one node sustains within an SLO,
``loadgen`` a trace's arrivals against a node."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from controller.shipped import SAMPLE_TRACE as DEFAULT_TRACE
from peakpilot.cli.app import Command, app
from peakpilot.cli.common import above_zero, fail, listening_socket, or_exit, require_reachable
from peakpilot.cli.history_options import (CountColumn, RateColumn, TimestampColumn, TimestampZone, csv_columns,
                                           load_history)

# profile and loadgen: what their requests send
MODEL_FIELD_HELP = ("The model field each request sends: a served model name, for a server that asks for one "
                    "(vLLM's); default: none sent.")
API_KEY_HELP = "The key a node started with --api-key asks for."
ModelField = Annotated[Optional[str], typer.Option("--model", help=MODEL_FIELD_HELP)]
ApiKey = Annotated[Optional[str], typer.Option("--api-key", envvar="PEAKPILOT_API_KEY", show_envvar=True,
                                               help=API_KEY_HELP)]
HOUR_MS = 3_600_000  # the most an --slo-ms can mean


@app.command(cls=Command)
def serve(
    model: str = typer.Option("builtin", "--model", help="builtin[:tiny|small|medium], hf:PATH (a Hugging Face "
                                                          "model directory or hub id; the hf extra), a TorchScript "
                                                          "file, or module:factory returning (nn.Module, tokenizer)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 in a pod)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to serve on."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most requests generating together; "
                                   "a request joins the batch within 4 steps once one of these rows is free."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0, max=60000, help="Longest a request "
                                     "waits for others to start with it while nothing is generating."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Prompts waiting for a row before answering "
                                    "429 busy; a request's prompts are admitted whole, one with more is a 400."),
    max_prompt_tokens: int = typer.Option(512, "--max-prompt-tokens", min=1, help="Longest prompt a request may "
                                          "send, in tokens (a longer one is a 400)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Most tokens a request may ask for "
                                       "(its max_tokens; a chat request that asks nothing gets up to this)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=2, help="Most tokens, prompt and "
                                                "answer together, a request may take; default: the model's own "
                                                "context, where it says (over it is refused at start)."),
    drain_seconds: float = typer.Option(30.0, "--drain-seconds", min=0, max=86400,
                                        help="Deadline for in-flight work on SIGTERM."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic int8 quantization of Linear "
                                                                    "layers (CPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16 or bfloat16; auto: float32 on a CPU, on a "
                                                       "GPU the model's own (bfloat16 as float16 where the GPU has "
                                                       "none)."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip warm-up and the memory probe (for measuring "
                                                               "a cold start)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads (default: all cores)."),
    slo_ms: Optional[float] = typer.Option(None, "--slo-ms", help="Answer 429 at once when a request that must "
                                                                  "wait for a row would be late for this latency "
                                                                  "target (milliseconds); one that finds a row free "
                                                                  "starts."),
    slo_on: str = typer.Option("answer", "--slo-on", help="What --slo-ms bounds: 'answer' (the whole answer) or "
                                                          "'first-token' (a streamed answer's first token: a chat "
                                                          "service's target)."),
    engine: str = typer.Option("process", "--engine", help="Where the model runs: 'process' (its own, so "
                                                            "generation never waits on the HTTP side's GIL) or "
                                                            "'thread' (in the server's process)."),
    batching: str = typer.Option("continuous", "--batching", help="'continuous': a request joins the running batch "
                                 "within 4 steps; 'run-to-end': the next batch starts when the last one ends."),
    oom_backoff_s: float = typer.Option(600.0, "--oom-backoff-s", min=0, max=7 * 86400,
                                        help="After a batch runs out of the device's memory and the node halves "
                                        "its width: seconds before it tries "
                                        "twice as many rows again, doubled each time it runs out again (0: never)."),
    served_model_name: list[str] = typer.Option([], "--served-model-name", help="A name the API gives the model "
                                                "(vLLM's): /v1/models lists them, an answer carries the one asked "
                                                "for (the first where a request names none), and a request naming "
                                                "another model is a 404; repeat for several. Default: the model's "
                                                "own name, and any name a request sends is taken."),
    api_key: list[str] = typer.Option([], "--api-key", envvar="PEAKPILOT_API_KEY", help="A key the /v1 endpoints "
                                      "ask for as 'Authorization: Bearer KEY' (OpenAI's SDKs send their api_key so); "
                                      "repeat it for several (a rotation), or several in the variable, separated by "
                                      "spaces. Default: none asked for.", show_envvar=True),
    access_log: bool = typer.Option(False, "--access-log", help="Log a line per request (off: /metrics counts "
                                                                "every outcome)."),
) -> None:
    """Serve a PyTorch model: OpenAI-compatible /v1/completions and /v1/chat/completions, /health, /ready, /metrics."""
    from inference_node.engine import DTYPE_NAMES, ENGINES
    from inference_node.config import BATCHING, SLO_ON, NodeConfig
    from inference_node.server import NodeFailed
    from inference_node.server import serve as run_server

    if engine not in ENGINES:
        fail(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    if batching not in BATCHING:
        fail(f"unknown batching {batching!r}; choose {' or '.join(BATCHING)}")
    if slo_on not in SLO_ON:
        fail(f"unknown --slo-on {slo_on!r}; choose {' or '.join(SLO_ON)}")
    if dtype not in DTYPE_NAMES:
        fail(f"unknown dtype {dtype!r}; choose {', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}")
    above_zero(("--slo-ms", slo_ms, HOUR_MS))
    sock = listening_socket(host, port)
    logging.getLogger().setLevel(logging.INFO)
    try:
        run_server(NodeConfig(model=model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                              max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_new_tokens,
                              max_model_len=max_model_len, drain_seconds=drain_seconds, warmup=not no_warmup,
                              quantize=quantize, dtype=dtype, threads=threads, slo_ms=slo_ms, slo_on=slo_on,
                              engine=engine, batching=batching, oom_backoff_s=oom_backoff_s,
                              served_model_names=tuple(served_model_name), api_keys=tuple(k for k in api_key if k)),
                   host, port, access_log=access_log, sock=sock)
    except NodeFailed as exc:
        fail(str(exc), 1)


@app.command(cls=Command)
def profile(
    url: str = typer.Option(..., "--url", help="Base URL of a ready node."),
    slo_ms: float = typer.Option(..., "--slo-ms", help="Latency target for p99, milliseconds."),
    seconds: float = typer.Option(5.0, "--seconds", help="Seconds of load per measured rate."),
    start_rps: float = typer.Option(2.0, "--start-rps", help="The first rate measured; it doubles until the "
                                                             "SLO breaks, then bisects (4 more steps)."),
    max_rps: float = typer.Option(2000.0, "--max-rps", help="The highest rate sent: a node still within the "
                                                            "SLO there is reported at it, as capped."),
    max_tokens: int = typer.Option(16, "--max-tokens", min=1, help="Tokens each answer has (ignore_eos: the "
                                                                   "model is kept from ending it sooner)."),
    stream: bool = typer.Option(False, "--stream", help="Streamed answers, the SLO on the p99 of the first text "
                                                        "read (a chat service's), not of the whole answer."),
    model: ModelField = None,
    api_key: ApiKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: rps_per_node and every "
                                                       "measured step."),
) -> None:
    """Measure the requests/s a node sustains within a latency SLO; print it in the policy's form."""
    import asyncio

    from inference_node.loadgen import describe_errors, request_body
    from inference_node.loadgen import profile as run_profile

    def show(step: dict) -> None:
        errors = describe_errors(step["errors"])
        typer.echo(f"  {step['rps']:>8.2f} req/s  p99 {step['p99_ms']} ms  busy {step['busy']}"
                   + (f"  errors: {errors}" if errors else "") + f"  {'ok' if step['within_slo'] else 'over'}",
                   err=True)

    above_zero(("--slo-ms", slo_ms, HOUR_MS), ("--seconds", seconds, 86400), ("--max-rps", max_rps, 1e6))
    if not 0 < start_rps <= max_rps:
        fail(f"--start-rps ({start_rps:g}) must be above 0 and at most --max-rps ({max_rps:g})")
    if start_rps * seconds < 1:
        fail(f"--seconds {seconds:g} at --start-rps {start_rps:g} sends no request: give --seconds "
             f"{1 / start_rps:g} or more, or a higher --start-rps")
    require_reachable(url, api_key)
    try:
        result = asyncio.run(run_profile(url, slo_ms, seconds, start_rps, max_rps, progress=show,
                                         body=request_body(max_tokens, stream, model), api_key=api_key))
    except Exception as exc:  # httpx's timeouts say nothing in str(): name the kind
        fail(f"{url}: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
    if as_json:
        typer.echo(json.dumps(result))
        return
    start = result["start_seconds"]
    typer.echo("capacity:")
    measured = "p99 of the first text" if stream else "p99"
    typer.echo(f"  rps_per_node: {result['rps_per_node']}   # {measured} within {slo_ms:g} ms "
               f"({result['model']}, max_tokens {max_tokens}), measured by peakpilot profile")
    if result["capped"]:
        typer.echo(f"# at least: still within the SLO at --max-rps ({max_rps:g} req/s); raise it to find the limit")
    if start:
        typer.echo(f"# node start: model load {start.get('model_load', 0):.1f} s, memory probe "
                   f"{start.get('memory_probe', 0):.1f} s, warm-up {start.get('warmup', 0):.1f} s, process start to "
                   f"ready {start.get('total', 0):.1f} s (add boot and image pull for lead_time)")


def trace_time(text: str, index):
    """--start as a time of the trace: on its clock where the text has no offset, or exit 2 naming it."""
    import pandas as pd

    try:
        at = pd.Timestamp(text)
    except ValueError:
        fail(f"--start {text!r}: not a time; write it as the trace writes its timestamps, e.g. "
             f"{index[0].isoformat()}")
    if index.tz is None:
        return at.tz_convert("UTC").tz_localize(None) if at.tzinfo is not None else at
    return at.tz_localize(index.tz) if at.tzinfo is None else at


@app.command(cls=Command)
def loadgen(
    trace: Path = typer.Option(DEFAULT_TRACE, "--trace", help="CSV trace whose arrivals to replay."),
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    url: str = typer.Option(..., "--url", help="Base URL of the node (or load balancer)."),
    speedup: float = typer.Option(1.0, "--speedup", help="Compress time by this factor."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Multiply the trace's counts (e.g. 0.001)."),
    start: Optional[str] = typer.Option(None, "--start", help="Start at this time of the trace (on its clock where "
                                                              "no offset is given)."),
    max_tokens: int = typer.Option(16, "--max-tokens", min=1, help="Tokens each request asks for."),
    stream: bool = typer.Option(False, "--stream", help="Ask for streamed answers, and report when each "
                                                        "one's first text was read too."),
    model: ModelField = None,
    api_key: ApiKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: outcomes and latency "
                                                       "percentiles."),
) -> None:
    """Replay a trace's arrivals open-loop over HTTP; report outcomes and latency percentiles.

    With --stream the answers are streamed, and when each one's first text was read is reported too."""
    import asyncio

    from inference_node.loadgen import describe_errors, request_body, run_open_loop, schedule_from_counts

    above_zero(("--speedup", speedup, 1e6), ("--rate-scale", rate_scale, 1e6), ("--duration", duration, 366 * 86400))
    columns = csv_columns(timestamp_column, count_column, rate_column, timestamp_zone)
    history = load_history(trace, None, None, 0, None, columns=columns)
    counts = history.counts
    if start:
        counts = counts[counts.index >= trace_time(start, counts.index)]
        if counts.empty:
            fail(f"--start {start}: after the trace's last step ({history.counts.index[-1].isoformat()})")
    times = or_exit(ValueError, schedule_from_counts, counts.to_numpy(), history.step.total_seconds(), speedup,
                    rate_scale, duration)
    if len(times) == 0:
        fail("nothing to send: the slice is empty (check --start, --duration, --rate-scale)")
    require_reachable(url, api_key)
    typer.echo(f"sending {len(times)} requests over {times[-1]:.0f} s", err=True)
    result = asyncio.run(run_open_loop(url, times, request_body(max_tokens, stream, model),
                                       api_key=api_key)).summary()
    if as_json:
        typer.echo(json.dumps(result))
        return
    o, lat = result["outcomes"], result["latency_ms"]
    kinds = describe_errors(result["errors"])
    typer.echo(f"sent {result['sent']} in {result['seconds']} s ({result['rate_rps']} req/s): "
               f"ok {o['ok']}, busy {o['busy']}, error {o['error']}" + (f" ({kinds})" if kinds else ""))
    typer.echo(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    if stream:
        first = result["first_text_ms"]
        typer.echo(f"first text ms: p50 {first['p50']}  p90 {first['p90']}  p99 {first['p99']}  max {first['max']}")
