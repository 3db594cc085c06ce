"""Where the model runs: in its own process (the default), or in a thread of the server's process.

Generation is a Python loop of many small torch ops. In the server's process it shares the GIL with
the event loop that parses requests and answers 429s, and under a flood every op boundary waits for
the loop (the convoy effect): the node then serves far fewer requests than it measured idle, and the
latencies it promised when it admitted them are broken. So by default the model lives in an engine
process of its own (as vLLM's engine core does), told over a pipe which requests join and leave its
batch; the server's process only tokenizes, schedules and answers. ``thread`` keeps everything in one
process, for models whose tokenizer cannot be sent between processes.

Both engines load the model, find how many rows of the longest request fit in the device's memory, run
the warm-up passes and report how long each phase took (and the model's context, where it says, and that
batch limit), then run ``engine_loop``: requests join its batch (``submit``) and leave it
(``drop``); it reports each row as it finishes, and the new tokens of the rows ``submit`` asked to watch
(a streamed answer, or one with stop strings) at every step. Between two steps it also scores the
sequences it is asked to (``score``: their tokens' log-probabilities, model.score).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from inference_node.sampling import GREEDY, Sampling

ENGINES = ("process", "thread")
DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")  # serve --dtype (model.pick_dtype)


@dataclass
class EngineSpec:
    model: str = "builtin"
    seed: int = 0
    quantize: str | None = None
    threads: int | None = None  # torch intra-op threads
    warmup: bool = True
    max_batch: int = 16
    dtype: str = "auto"  # model.pick_dtype
    longest_row: int | None = None  # the most tokens, prompt and answer, the node admits (the memory probe's length)


class EngineError(RuntimeError):
    pass


class EngineGone(EngineError):
    """The engine process died (killed for memory, a crash in native code): no batch will run again."""


def _load_and_warm(spec: EngineSpec):
    """Load the model; find how many rows of the longest request the node admits fit in the device's
    memory at once (model.fitting_batch: ``spec.max_batch``, or fewer by halves); run representative
    passes, the batch sizes and lengths the batcher will run, twice over; give back the memory they held.
    Returns the loaded model, the seconds each phase took and that batch limit. With no warm-up, neither is
    run."""
    import torch

    from inference_node.model import DecodeBatch, TooLongForMemory, fitting_batch, generate, load_model, trim_c_heap

    if spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.perf_counter()
    model = load_model(spec.model, seed=spec.seed, quantize=spec.quantize, dtype=spec.dtype)
    timings = {"model_load": time.perf_counter() - started}
    fits = spec.max_batch
    longest = min((n for n in (spec.longest_row, model.context) if n), default=None)  # tokens a request may take
    if spec.warmup and longest:
        probe_started = time.perf_counter()
        try:
            fits = fitting_batch(model, spec.max_batch, longest)
        except TooLongForMemory as exc:
            raise TooLongForMemory(f"{exc}; admit shorter requests (serve --max-model-len, or --max-prompt-tokens "
                                   f"and --max-new-tokens), or hold the weights in less (--dtype, --quantize)"
                                   ) from None
        timings["memory_probe"] = time.perf_counter() - probe_started
    warm_started = time.perf_counter()
    if spec.warmup:
        sizes = sorted({1, max(1, fits // 2), fits})
        # prompt lengths with room for their 8 tokens of answer in the longest request
        short, long = (max(1, min(length, (longest or length + 8) - 8)) for length in (8, 64))
        for _ in range(2):
            for b in sizes:
                for length in (short, long):
                    generate(model, [[65] * length] * b, [8] * b)
            joined = DecodeBatch(model)  # and a request joining a batch already generating
            joined.add(0, [65] * short, 8)
            joined.step()
            joined.add(1, [65] * long, 4)
            while len(joined):
                joined.step()
    timings["warmup"] = time.perf_counter() - warm_started
    # What the probe's widest batch and the warm-up held on the CPU: no batch holds it now. (A GPU's cache is
    # kept: its blocks are what the first batches would otherwise wait to allocate.)
    trim_c_heap()
    return model, timings, fits


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


Listener = Callable[[str, object, object], None]  # (kind, key, payload), on the engine's own thread


def add_message(key, prompt: list[int], max_tokens: int, sampling: Sampling, watch: bool) -> tuple:
    """What tells ``engine_loop`` a request joins its batch (both engines send the same)."""
    return ("add", key, prompt, max_tokens, sampling, watch)


def engine_loop(model, seed: int, receive, send) -> None:
    """Generate for whatever requests are in: take the messages that came in (``receive(block)``:
    ``("add", key, prompt, max_tokens, sampling, watch)``, ``("drop", key)``, ``("score", key,
    tokens, start, top)``, or None to stop; blocking
    only while nothing is generating), run one step, ``send`` the log-probabilities of the tokens drawn for
    rows that ask (``("logprobs", None, {key: entries})``, DecodeBatch.take_logprobs), the watched rows' new
    tokens (``("tokens", None, {key: tokens})``, one message a step for all) and the rows that finished
    (``("row", key, tokens)``, the whole answer, after ``("stopped_by", key, token)`` where one of its
    ``stop_token_ids`` ended it) and the sequences scored (``("scored", key, entries)``:
    model.score); again. A
    step that fails answers every request in the batch with the error (``("error", key, why)``, or where the
    device ran out of memory ``("oom", key, (why, rows))``: the batch was too wide or too long for it), and
    the loop goes on with an empty batch."""
    from inference_node.model import DecodeBatch, is_out_of_memory, release_memory, score

    batch, inside, watched = DecodeBatch(model, seed), set(), set()
    while True:
        scores = []
        for message in receive(not len(batch)):
            if message is None:
                return
            kind, key, *args = message
            if kind == "score":
                scores.append((key, *args))
            elif kind == "add":
                prompt, max_tokens, sampling, watch = args
                batch.add(key, prompt, max_tokens, sampling)
                inside.add(key)
                if watch:
                    watched.add(key)
            elif kind == "drop" and batch.drop(key):
                inside.discard(key)
                watched.discard(key)
        for key, tokens, start, top in scores:  # between steps, as a joining row's prefill is
            try:
                send(("scored", key, score(model, tokens, start, top)))
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                if is_out_of_memory(exc):
                    release_memory(model)
                    send(("oom", key, (why, 0)))  # (0 rows: the batch is not to blame)
                else:
                    send(("error", key, why))
        if not len(batch):
            continue
        try:
            finished = batch.step()
            new = batch.new_tokens(watched) if watched else {}
            scored = batch.take_logprobs() if batch.scored else {}
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if is_out_of_memory(exc):
                rows = len(batch)
                for key in inside:
                    send(("oom", key, (why, rows)))
                release_memory(model)
            else:
                for key in inside:
                    send(("error", key, why))
            batch, inside, watched = DecodeBatch(model, seed + batch.steps), set(), set()
            continue
        if scored:  # before the tokens and rows they are of
            send(("logprobs", None, scored))
        if new:
            send(("tokens", None, new))
        for key, tokens in finished:
            inside.discard(key)
            watched.discard(key)
            if key in batch.stopped_by:  # before its row: the answer is told whole with what ended it
                send(("stopped_by", key, batch.stopped_by.pop(key)))
            send(("row", key, tokens))


class ThreadEngine:
    """The model in the server's own process, generating on a thread of its own."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.model = None
        self.name = self.tokenizer = self.device = self.device_warning = self.context = self.dtype = None
        self.max_batch = spec.max_batch  # the rows that fit in the device's memory (model.fitting_batch)
        self.timings: dict[str, float] = {}
        self._inbox: queue.Queue = queue.Queue()
        self._listener: Listener = lambda kind, key, payload: None
        self._thread: threading.Thread | None = None
        self._failed: str | None = None  # why the engine thread stopped, once it did

    def start(self) -> None:
        import sys

        # The generation thread holds the GIL between torch ops; a short switch interval lets the event
        # loop answer /ready, /metrics and 429s promptly while a batch runs.
        sys.setswitchinterval(0.0005)
        self.model, self.timings, self.max_batch = _load_and_warm(self.spec)
        self.name, self.tokenizer, self.context = self.model.name, self.model.tokenizer, self.model.context
        self.dtype = self.model.dtype
        self.device = describe_device(self.model.device)
        self.device_warning = missing_gpu() if self.model.device.type == "cpu" else None

        def receive(block: bool) -> list:
            messages = [self._inbox.get()] if block else []
            while True:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue.Empty:
                    return messages

        def run() -> None:
            try:
                engine_loop(self.model, self.spec.seed, receive, lambda e: self._listener(*e))
            except Exception as exc:  # a fault of the loop itself (a request's failure is answered in it)
                logging.getLogger("peakpilot.node").exception("the engine thread failed")
                self._failed = f"the engine thread failed: {type(exc).__name__}: {exc}"
                self._listener("gone", None, self._failed)

        self._thread = threading.Thread(target=run, name="peakpilot-engine", daemon=True)
        self._thread.start()

    def listen(self, listener: Listener) -> None:
        self._listener = listener

    def submit(self, key, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY, watch: bool = False) -> None:
        self._put(add_message(key, prompt, max_tokens, sampling, watch))

    def _put(self, message: tuple) -> None:
        if self._failed is not None:  # nothing would ever answer it
            raise EngineGone(self._failed)
        self._inbox.put(message)

    def drop(self, key) -> None:
        self._inbox.put(("drop", key))

    def score(self, key, tokens: list[int], start: int, top: int) -> None:
        self._put(("score", key, tokens, start, top))

    def gone(self) -> str | None:
        """Why the engine thread stopped (a fault of its loop), or None while it runs: a request would
        otherwise wait for ever on a thread that is gone."""
        return self._failed

    def close(self) -> None:
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(5)
            self._thread = None
        self.model = None


def _engine_main(conn, spec: EngineSpec) -> None:
    """The engine process: load, warm, report; then the engine loop until told to stop or the server's
    end of the pipe closes (the server died: the engine goes with it)."""
    # Signals are the server's to handle: a drain needs the engine alive until the last request is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model, timings, fits = _load_and_warm(spec)
        conn.send(("ready", {"name": model.name, "tokenizer": model.tokenizer, "timings": timings, "max_batch": fits,
                             "context": model.context, "dtype": model.dtype, "device": describe_device(model.device),
                             "device_warning": missing_gpu() if model.device.type == "cpu" else None}))
    except Exception as exc:
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
        return

    def receive(block: bool) -> list:
        try:
            messages = [conn.recv()] if block else []
            while conn.poll():
                messages.append(conn.recv())
        except (EOFError, OSError):
            return [None]
        return messages

    engine_loop(model, spec.seed, receive, conn.send)


class ProcessEngine:
    """The model in an engine process of its own (spawned: safe with CUDA and threads). A reader thread
    hands the engine's reports to the listener."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.name = self.tokenizer = self.device = self.device_warning = self.context = self.dtype = None
        self.max_batch = spec.max_batch  # the rows that fit in the device's memory (model.fitting_batch)
        self.timings: dict[str, float] = {}
        self._proc = self._conn = None
        self._lock = threading.Lock()  # sends come from the event loop and from close
        self._listener: Listener = lambda kind, key, payload: None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        proc = ctx.Process(target=_engine_main, args=(child, self.spec), name="peakpilot-engine", daemon=True)
        proc.start()
        self._proc = proc  # only once started: a close while it spawns has no process to join yet
        child.close()
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise EngineError(f"the engine process exited while loading the model (exit code "
                              f"{proc.exitcode})") from None
        if kind != "ready":
            raise EngineError(f"{payload}; a tokenizer that cannot be sent between processes needs --engine thread"
                              if "pickle" in str(payload).lower() else payload)
        self.name, self.tokenizer, self.timings = payload["name"], payload["tokenizer"], payload["timings"]
        self.context, self.dtype, self.max_batch = payload["context"], payload["dtype"], payload["max_batch"]
        self.device, self.device_warning = payload["device"], payload["device_warning"]
        self._reader = threading.Thread(target=self._read, name="peakpilot-engine-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        conn = self._conn
        while True:
            try:
                kind, key, payload = conn.recv()
            except (EOFError, OSError):
                break
            self._listener(kind, key, payload)
        proc = self._proc
        if proc is not None:  # not closed by us: it died
            proc.join(1)
            self._listener("gone", None, self.gone() or "the engine process closed its pipe")

    def listen(self, listener: Listener) -> None:
        self._listener = listener

    def submit(self, key, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY, watch: bool = False) -> None:
        self._send(add_message(key, prompt, max_tokens, sampling, watch))

    def _send(self, message: tuple) -> None:
        """Tell the engine process something that wants an answer: ``EngineGone`` if it cannot hear."""
        try:
            with self._lock:
                self._conn.send(message)
        except (OSError, ValueError):
            self._proc.join(1)
            raise EngineGone(self.gone() or "the engine process closed its pipe") from None

    def drop(self, key) -> None:
        try:
            with self._lock:
                self._conn.send(("drop", key))
        except (OSError, ValueError):
            pass  # gone: the reader tells the listener

    def score(self, key, tokens: list[int], start: int, top: int) -> None:
        self._send(("score", key, tokens, start, top))

    def gone(self) -> str | None:
        """Why the engine process cannot generate any more (it died: killed for memory, a crash in native
        code), or None while it lives. Asked by the probes, so an idle node finds out too."""
        if self._proc is None or self._proc.exitcode is None:
            return None
        return f"the engine process is gone (exit code {self._proc.exitcode})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            with self._lock:
                self._conn.send(None)
        except (OSError, ValueError):
            pass
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self._conn.close()


def make_engine(kind: str, spec: EngineSpec):
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose {' or '.join(ENGINES)}")
    return ProcessEngine(spec) if kind == "process" else ThreadEngine(spec)
