"""How one inference node is set up (``peakpilot serve``'s options), as the server, the request parser and the
CLI read it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeConfig:
    model: str = "builtin"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    # The longest prompt and answer a request may ask for (they bound one request's share of the batch), and
    # together no longer than the model's context: its own (where it says, model.model_context) or this.
    max_prompt_tokens: int = 512
    max_tokens_limit: int = 256
    max_model_len: int | None = None
    # The most a request's body may hold: a full queue's worth of the longest prompts fits many times over,
    # and a client sending more (a bug, or worse) is refused before the server holds it all in memory.
    max_body_bytes: int = 1 << 20
    drain_seconds: float = 30.0
    warmup: bool = True
    quantize: str | None = None
    dtype: str = "auto"  # what the weights are held in (model.pick_dtype)
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (default: torch's choice, all cores)
    slo_ms: float | None = None  # shed requests whose expected wait is over this
    slo_on: str = "answer"  # what slo_ms bounds: the whole answer, or (a chat service's) its first token
    engine: str = "process"  # where the model runs: its own process, or a thread (inference_node/engine.py)
    # continuous: a request joins the running batch within 4 steps; run-to-end: the next batch starts when
    # the last one ends (what the node did before; bench/node_continuous.py compares them)
    batching: str = "continuous"
    # the names the API gives the model (vLLM's --served-model-name): the first in answers and /v1/models where a
    # request names none, and a request naming another is a 404; none: the model's own name, any name taken
    served_model_names: tuple[str, ...] = ()
    # keys a /v1 request must send as "Authorization: Bearer KEY" (none: every request is served)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # after a batch ran out of the device's memory and the node halved its width: how long before it tries
    # twice as many rows again (doubled each time it runs out again; 0: never; inference_node/batch_limit.py)
    oom_backoff_s: float = 600.0


BATCHING = ("continuous", "run-to-end")
SLO_ON = ("answer", "first-token")
