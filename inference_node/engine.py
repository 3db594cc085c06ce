"""Where the model runs: in its own process (the default), or in a thread of the server's process.

Generation is a Python loop of many small torch ops. In the server's process it shares the GIL with
the event loop that parses requests and answers 429s, and under a flood every op boundary waits for
the loop (the convoy effect): the node then serves far fewer requests than it measured idle, and the
latencies it promised when it admitted them are broken. So by default the model lives in an engine
process of its own (as vLLM's engine core does), fed one batch at a time over a pipe; the server's
process only tokenizes, batches and answers. ``thread`` keeps everything in one process, for models
whose tokenizer cannot be sent between processes.

Both engines load the model, run the warm-up passes and report how long each phase took; ``run``
generates one batch (blocking: the batcher calls it from a worker thread).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass

ENGINES = ("process", "thread")


@dataclass
class EngineSpec:
    model: str = "builtin"
    seed: int = 0
    quantize: str | None = None
    threads: int | None = None  # torch intra-op threads
    warmup: bool = True
    max_batch: int = 16


class EngineError(RuntimeError):
    pass


class EngineGone(EngineError):
    """The engine process died (killed for memory, a crash in native code): no batch will run again."""


def _load_and_warm(spec: EngineSpec):
    """Load the model and run representative passes: the batch sizes and lengths the batcher will
    run, twice over. Returns the loaded model and the seconds each phase took."""
    import torch

    from inference_node.model import generate, load_model

    if spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.perf_counter()
    model = load_model(spec.model, seed=spec.seed, quantize=spec.quantize)
    timings = {"model_load": time.perf_counter() - started}
    warm_started = time.perf_counter()
    if spec.warmup:
        sizes = sorted({1, max(1, spec.max_batch // 2), spec.max_batch})
        for _ in range(2):
            for b in sizes:
                for length in (8, 64):
                    generate(model, [[65] * length] * b, [8] * b, [0.0] * b)
    timings["warmup"] = time.perf_counter() - warm_started
    return model, timings


def describe_device(device) -> str:
    """What the model runs on, as /ready and the start log say it: 'cpu', or 'cuda:0 (NVIDIA H100 ...)'."""
    import torch

    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def missing_gpu() -> str | None:
    """Why a container that was given a GPU serves on the CPU, or None. The NVIDIA device plugin names
    the GPUs it gives a container in ``NVIDIA_VISIBLE_DEVICES``; a CPU build of torch in the image (the
    Dockerfile's smaller controller image, say) or a driver older than torch's CUDA would otherwise
    serve on the CPU, far slower, with nothing saying why."""
    import os

    import torch

    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if visible.lower() in ("", "void", "none") or torch.cuda.is_available():
        return None
    why = (f"torch {torch.__version__} is a CPU build" if torch.version.cuda is None else
           f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU: is the node's driver older "
           f"than that CUDA?")
    return f"NVIDIA_VISIBLE_DEVICES={visible} says this container was given a GPU, but {why}; serving on the CPU"


class ThreadEngine:
    """The model in the server's own process."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.model = None
        self.name = self.tokenizer = self.device = self.device_warning = None
        self.timings: dict[str, float] = {}

    def start(self) -> None:
        import sys

        # The generation thread holds the GIL between torch ops; a short switch interval lets the event
        # loop answer /ready, /metrics and 429s promptly while a batch runs.
        sys.setswitchinterval(0.0005)
        from inference_node.model import generate

        self._generate = generate
        self.model, self.timings = _load_and_warm(self.spec)
        self.name, self.tokenizer = self.model.name, self.model.tokenizer
        self.device = describe_device(self.model.device)
        self.device_warning = missing_gpu() if self.model.device.type == "cpu" else None

    def run(self, prompts: list[list[int]], max_tokens: list[int], temperatures: list[float],
            seed: int, on_finished=None) -> list[list[int]]:
        return self._generate(self.model, prompts, max_tokens, temperatures, seed, on_finished)

    def gone(self) -> str | None:
        return None  # the model lives in the server's own process

    def close(self) -> None:
        self.model = None


def _engine_main(conn, spec: EngineSpec) -> None:
    """The engine process: load, warm, report; then one batch per message until told to stop or the
    server's end of the pipe closes (the server died: the engine goes with it)."""
    # Signals are the server's to handle: a drain needs the engine alive until the last batch is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model, timings = _load_and_warm(spec)
        conn.send(("ready", {"name": model.name, "tokenizer": model.tokenizer, "timings": timings,
                             "device": describe_device(model.device),
                             "device_warning": missing_gpu() if model.device.type == "cpu" else None}))
    except Exception as exc:
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
        return
    from inference_node.model import generate

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            # Each row as it finishes (a short request is answered at its own length); then the batch's end.
            generate(model, *message, on_finished=lambda i, tokens: conn.send(("row", i, tokens)))
            conn.send(("ok", None))
        except Exception as exc:  # a failing batch is answered; the engine lives on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessEngine:
    """The model in an engine process of its own (spawned: safe with CUDA and threads)."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.name = self.tokenizer = self.device = self.device_warning = None
        self.timings: dict[str, float] = {}
        self._proc = self._conn = None
        self._lock = threading.Lock()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_main, args=(child, self.spec), name="peakpilot-engine", daemon=True)
        self._proc.start()
        child.close()
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise EngineError(f"the engine process exited while loading the model (exit code "
                              f"{self._proc.exitcode})") from None
        if kind != "ready":
            raise EngineError(f"{payload}; a tokenizer that cannot be sent between processes needs --engine thread"
                              if "pickle" in str(payload).lower() else payload)
        self.name, self.tokenizer, self.timings = payload["name"], payload["tokenizer"], payload["timings"]
        self.device, self.device_warning = payload["device"], payload["device_warning"]

    def run(self, prompts: list[list[int]], max_tokens: list[int], temperatures: list[float],
            seed: int, on_finished=None) -> list[list[int]]:
        """One batch; ``on_finished(i, tokens)`` for each row as the engine reports it done (every row is,
        once: the batch's answer is those rows)."""
        rows: dict[int, list[int]] = {}
        with self._lock:
            try:
                self._conn.send((prompts, max_tokens, temperatures, seed))
                while True:
                    kind, *payload = self._conn.recv()
                    if kind != "row":
                        break
                    i, tokens = payload
                    rows[i] = tokens
                    if on_finished is not None:
                        on_finished(i, tokens)
            except (EOFError, OSError):
                self._proc.join(1)
                raise EngineGone(f"the engine process is gone (exit code {self._proc.exitcode})") from None
        if kind != "ok":
            raise EngineError(payload[0])
        return [rows[i] for i in range(len(prompts))]

    def gone(self) -> str | None:
        """Why the engine process cannot run a batch any more (it died: killed for memory, a crash in
        native code), or None while it lives. Asked by the probes, so an idle node finds out too."""
        if self._proc is None or self._proc.exitcode is None:
            return None
        return f"the engine process is gone (exit code {self._proc.exitcode})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._proc = None


def make_engine(kind: str, spec: EngineSpec):
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose {' or '.join(ENGINES)}")
    return ProcessEngine(spec) if kind == "process" else ThreadEngine(spec)
