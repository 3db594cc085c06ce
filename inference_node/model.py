"""The models a node serves: a built-in GPT-style decoder with a KV cache, or the user's own.

No weights can be downloaded here, so the built-in model has random weights (seeded) and a
configurable size: it does the same work per token as a real decoder of that size, which is what
capacity, batching and warm-up are about. Users serve their own model with ``--model``:

* ``builtin`` or ``builtin:tiny|small|medium`` - the decoder below;
* ``hf:PATH`` - a Hugging Face causal LM (a ``save_pretrained`` directory or a hub id; hf_model.py);
* ``path/to/model.pt`` - a TorchScript module ``forward(input_ids, attention_mask) -> logits``;
* ``package.module:factory`` - a function returning ``(nn.Module, tokenizer)`` with the same
  forward; the tokenizer needs ``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
  ``vocab_size``.

Models without a KV cache re-read the whole sequence for every new token (correct, slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from inference_node.sampling import GREEDY, Sampling
from inference_node.tokenizer import ByteTokenizer

SIZES = {
    "tiny": {"d_model": 128, "n_layers": 2, "n_heads": 4},
    "small": {"d_model": 256, "n_layers": 4, "n_heads": 8},
    "medium": {"d_model": 512, "n_layers": 8, "n_heads": 8},
}


class KVCache:
    """Keys and values of every layer in buffers with room to grow, ``(batch, heads, capacity, head_dim)``,
    of which the first ``length`` positions are used. Each step writes its keys and values in place:
    concatenating them to the cache instead copied the whole cache every step, 64% of a CPU step at 16
    rows of 170 tokens (torch.profiler), more than the model's own matrix products."""

    SLACK = 64  # positions of room a rebuilt cache gets (a step adds one)
    MAX_GROWTH = 256  # the most positions of room a growing cache adds (memory is the GPU's scarcest)

    def __init__(self, layers: int, length: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.length = length

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values after the used ones; the layer's whole keys and values."""
        end = self.length + k.shape[2]
        for store, new in ((self.keys, k), (self.values, v)):
            buf = store[layer]
            if buf is None or buf.shape[2] < end:  # grow: a copy every so many steps, not every one
                room = max(self.SLACK, min(end, self.MAX_GROWTH))  # doubling while small
                grown = new.new_empty(new.shape[0], new.shape[1], end + room, new.shape[3])
                if buf is not None:
                    grown[:, :, :self.length] = buf[:, :, :self.length]
                store[layer] = buf = grown
            buf[:, :, self.length:end] = new
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def used(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:, :, :self.length], self.values[layer][:, :, :self.length]

    def rebuilt(self, change, length: int) -> "KVCache":
        """A new cache of ``change(keys or values used)`` per layer, ``length`` positions used."""
        out = KVCache(len(self.keys), length)
        for layer in range(len(self.keys)):
            for store, used in zip((out.keys, out.values), self.used(layer)):
                new = change(used)
                store[layer] = new.new_empty(new.shape[0], new.shape[1], length + self.SLACK, new.shape[3])
                store[layer][:, :, :length] = new
        return out

    def keep(self, rows: torch.Tensor, cut: int) -> "KVCache":
        """The ``rows`` kept, without the first ``cut`` positions (padding in every row kept): one copy."""
        return self.rebuilt(lambda t: t.index_select(0, rows)[:, :, cut:], self.length - cut)

    def join(self, other: "KVCache", length: int) -> "KVCache":
        """This cache's rows, then ``other``'s, each left-padded with zeros to ``length`` positions."""
        out = KVCache(len(self.keys), length)
        for layer in range(len(self.keys)):
            for store, a, b in zip((out.keys, out.values), self.used(layer), other.used(layer)):
                buf = a.new_empty(a.shape[0] + b.shape[0], a.shape[1], length + self.SLACK, a.shape[3])
                for rows, part in ((slice(0, a.shape[0]), a), (slice(a.shape[0], None), b)):
                    buf[rows, :, : length - part.shape[2]] = 0  # padding
                    buf[rows, :, length - part.shape[2]:length] = part
                store[layer] = buf
        return out


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask, cache: KVCache, layer: int):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        k, v = cache.write(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A decoder-only transformer with a KV cache (``KVCache``)."""

    supports_cache = True

    def __init__(self, vocab: int = 257, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, max_seq: int = 1024):
        super().__init__()
        self.max_seq = max_seq
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, input_ids, attention_mask, past: KVCache | None = None, positions=None):
        """``attention_mask`` (batch, total_len): 1 for real tokens of the whole sequence so far; ``past``
        holds the keys and values of all but the last ``input_ids.shape[1]`` of them, and is written on."""
        b, t = input_ids.shape
        total = attention_mask.shape[1]
        if positions is None:
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
        x = self.tok(input_ids) + self.pos(positions.clamp(max=self.max_seq - 1))
        causal = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(total - t)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        cache = past if past is not None else KVCache(len(self.blocks))
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        cache.length += t
        return self.head(self.ln(x)), cache


@dataclass
class LoadedModel:
    module: nn.Module
    tokenizer: object
    name: str
    device: torch.device

    @property
    def supports_cache(self) -> bool:
        return getattr(self.module, "supports_cache", False)

    @property
    def eos(self) -> int | None:
        return getattr(self.tokenizer, "eos", None)

    @property
    def end_tokens(self) -> tuple[int, ...]:
        """The tokens that end an answer: the tokenizer's ``end_tokens`` (a chat model's end of turn as well
        as its end of text), else its ``eos``."""
        ends = getattr(self.tokenizer, "end_tokens", None)
        if ends is not None:
            return tuple(ends)
        return () if self.eos is None else (self.eos,)

    @property
    def context(self) -> int | None:
        return model_context(self.module, self.tokenizer)

    @property
    def dtype(self) -> str:
        """What its weights are held in: float32, float16, bfloat16 (int8: quantized)."""
        if self.name.endswith("-int8"):
            return "int8"
        weights = next(self.module.parameters(), None)
        return "unknown" if weights is None else str(weights.dtype).removeprefix("torch.")


# A Hugging Face tokenizer that does not know its model's context says 1e30; nothing real is this long.
_UNKNOWN_CONTEXT = 10**7


def model_context(module, tokenizer) -> int | None:
    """The most tokens, prompt and answer together, the model takes, where it says: its ``context_length``
    (a user's factory can set it), the built-in model's ``max_seq``, a Hugging Face config's
    ``max_position_embeddings`` or ``n_positions``, or the tokenizer's ``model_max_length``; else None. Past
    it a model fails (a position it has no embedding for, one request failing the whole batch) or, as the
    built-in one would, answers from positions it never learned."""
    config = getattr(module, "config", None)
    for owner, name in ((module, "context_length"), (module, "max_seq"), (config, "max_position_embeddings"),
                        (config, "n_positions"), (tokenizer, "model_max_length")):
        value = getattr(owner, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _UNKNOWN_CONTEXT:
            return value
    return None


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # engine.DTYPE_NAMES


def pick_dtype(asked: str, device: torch.device, own: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype to serve in: the one asked for, or ``auto``: float32 on a CPU (it has no fast half-precision
    matrix products); on a GPU the model's own (a Hugging Face model's saved dtype, bfloat16 for most), but
    float16 for bfloat16 where the GPU cannot do bfloat16 (before Ampere: a T4, a V100), as vLLM does."""
    if asked != "auto":
        if asked not in DTYPES:
            raise ValueError(f"unknown dtype {asked!r}; choose auto, {', '.join(DTYPES)}")
        return DTYPES[asked]
    if device.type != "cuda":
        return torch.float32
    if own == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return own if own in DTYPES.values() else torch.float32


def load_model(spec: str = "builtin", seed: int = 0, device: torch.device | None = None,
               quantize: str | None = None, dtype: str = "auto") -> LoadedModel:
    device = device or pick_device()
    if quantize == "int8" and dtype not in ("auto", "float32"):
        raise ValueError(f"--quantize int8 quantizes a float32 model; it cannot be served in {dtype}")
    if spec == "builtin" or spec.startswith("builtin:"):
        size = spec.split(":", 1)[1] if ":" in spec else "tiny"
        if size not in SIZES:
            raise ValueError(f"unknown built-in size {size!r}; choose one of {', '.join(SIZES)}")
        torch.manual_seed(seed)
        tokenizer = ByteTokenizer()
        module = TinyGPT(tokenizer.vocab_size, **SIZES[size])
        name = f"peakpilot-builtin-{size}"
    elif spec.startswith("hf:"):
        from inference_node.hf_model import load_hf

        module, tokenizer, name = load_hf(spec[3:], device, dtype)
    elif spec.endswith((".pt", ".pth", ".ts")):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"model file {spec} does not exist")
        module, tokenizer, name = torch.jit.load(str(path), map_location="cpu"), ByteTokenizer(), path.stem
    elif ":" in spec:
        mod, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
        module, tokenizer = factory()
        name = spec
    else:
        raise ValueError(f"cannot load model {spec!r}: use builtin[:size], hf:PATH, a TorchScript file, or "
                         f"module:factory")
    module.eval()
    if quantize == "int8":
        if device.type != "cpu":
            raise ValueError("--quantize int8 (dynamic quantization) runs on CPU only")
        module = torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
        if isinstance(module, TinyGPT) or hasattr(module, "blocks"):
            module.supports_cache = True
        name += "-int8"
    elif quantize:
        raise ValueError(f"unknown quantization {quantize!r}; only int8")
    else:  # (a Hugging Face model was loaded in its dtype already)
        module = module.to(pick_dtype(dtype, device, next(module.parameters(), torch.empty(0)).dtype))
    return LoadedModel(module.to(device), tokenizer, name, device)


EOS_EVERY = 8  # steps between looks for rows that ended with their end-of-text token
JOIN_WAIT_STEPS = 4  # the most steps a request waits to join a busy batch with others (DecodeBatch._joining_now)


class DecodeBatch:
    """The rows a node is generating, one token per step for all of them; requests join between steps and
    leave as they finish (continuous batching, as vLLM and TGI schedule): a request arriving while others
    generate starts within ``JOIN_WAIT_STEPS`` steps, not when the longest of them is done.

    Rows are left-padded to a common width (positions come from the attention mask, so padding changes
    no answer). Joining rows are prefilled together and their KV cache padded to the batch's; the columns
    that only padding still fills are cut as rows leave. A model with a KV cache returns it as layers of
    tensors shaped ``(batch, ..., time, dim)`` (Hugging Face's legacy layout), or as the built-in model's
    ``KVCache``.

    Each row draws as its request's ``Sampling`` says. What only some requests ask for costs nothing while
    no row in the batch does: a ``(rows, vocab)`` count of each row's generated tokens is held only while
    some row has a presence or frequency penalty, a ``(rows, vocab)`` bias only while some row has a
    logit_bias, a ``(rows, vocab)`` mask of the tokens seen only while some row has a repetition_penalty;
    only the rows that draw pay for a draw, and log-probabilities are read from the device only at steps
    where some row asks for them."""

    def __init__(self, model: LoadedModel, seed: int = 0):
        self.model = model
        self.gen = torch.Generator(device=model.device).manual_seed(seed)
        self.ends = model.end_tokens  # tokens that end an answer (left out of it)
        self._ends = torch.tensor(self.ends, dtype=torch.long, device=model.device)
        self.keys: list = []  # by row: the caller's name for it
        self.max_tokens: list[int] = []
        self.rules: list[Sampling] = []  # by row: how it draws (known without asking the device)
        self.generators: list = []  # by row: its own random generator where the request gave a seed, else None
        self.made: list[int] = []  # by row: tokens generated so far (the last ``made`` columns of ``seq``)
        # (rows, width): every token so far, prompt and generated, left-padded; the KV cache (``past``)
        # covers all but the last column, whose token the next step feeds.
        # ``sampling``: (rows, 7), each row's temperature (0: greedy), top_p (1: the whole distribution),
        # presence and frequency penalties, top_k, min_p and repetition_penalty (SAMPLING_COLUMNS). ``counts``
        # (rows, vocab): how often each row generated each token, while some row is penalized; ``bias``
        # (rows, vocab): each row's logit_bias, while some row has one; ``seen`` (rows, vocab): the tokens in
        # each row's prompt and answer, while some row has a repetition_penalty.
        self.seq = self.mask = self.sampling = self.past = self.counts = self.bias = self.seen = None
        # (key, prompt, max_tokens, sampling), joining at a coming step
        self.pending: list[tuple] = []
        self.pending_since = 0  # the step the oldest of them arrived at
        self.steps = 0
        self.told: dict = {}  # by key, for rows someone reads as they go (``new_tokens``): tokens told so far
        # by key, for rows asking for log-probabilities: those of the tokens drawn since ``take_logprobs``
        self.scored: dict = {}
        self.ended: set = set()  # keys whose end-of-text ``new_tokens`` has read: they finish at the next step
        # by key, for rows that finished on one of their own stop_token_ids: that token (vLLM's stop_reason);
        # the engine takes each as it reports the row
        self.stopped_by: dict = {}

    def __len__(self) -> int:
        return len(self.keys) + len(self.pending)

    def add(self, key, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY,
            join_now: bool = False) -> None:
        """A request joins at a coming step (``join_now``: at the next, as one that waited its most steps
        does). With a ``seed`` its draws come from a generator of its own, so it gets the same answer
        whatever else is in the batch (as far as the batch's arithmetic allows)."""
        # An empty prompt starts from the end-of-text token, as a new document does.
        prompt = list(prompt) or [self.model.eos if self.model.eos is not None else 0]
        if not self.pending:
            self.pending_since = self.steps
        if join_now:
            self.pending_since = self.steps - JOIN_WAIT_STEPS
        self.pending.append((key, prompt, max_tokens, sampling))

    def drop(self, key) -> bool:
        """Stop generating for ``key`` (its client went away); False if it is not here."""
        self.scored.pop(key, None)
        for j, p in enumerate(self.pending):
            if p[0] == key:
                del self.pending[j]
                return True
        if key not in self.keys:
            return False
        self._keep([r for r, k in enumerate(self.keys) if k != key])
        return True

    @torch.inference_mode()
    def step(self) -> list[tuple[object, list[int]]]:
        """One new token for every row (the joiners' first, from their prompts); returns the rows that
        finished, ``(key, tokens)``, which have left the batch."""
        if self.keys:
            self._decode()
        if self.pending and self._joining_now():
            self._join()
        self.steps += 1
        return self._finished()

    def new_tokens(self, keys) -> dict:
        """The tokens each row of ``keys`` generated since it was last asked, up to its end-of-text (for a
        client reading its answer as it is generated): one read of the device for all of them. A row whose
        end-of-text is read here finishes at the next step, not at the next periodic look (``EOS_EVERY``)."""
        rows = [r for r, k in enumerate(self.keys)
                if k in keys and k not in self.ended and self.told.get(k, 0) < self.made[r]]
        if not rows:
            return {}
        back = max(self.made[r] - self.told.get(self.keys[r], 0) for r in rows)
        tails = self.seq[rows, self.seq.shape[1] - back:].tolist()
        new = {}
        for r, tail in zip(rows, tails):
            key = self.keys[r]
            told = self.told.get(key, 0)
            tokens, end = _until_end(tail[back - (self.made[r] - told):][: self.max_tokens[r] - told],
                                     self._row_ends(r))
            if end is not None:
                self.ended.add(key)
            self.told[key] = told + len(tokens)
            if tokens:
                new[key] = tokens
        return new

    def take_logprobs(self) -> dict:
        """By key, for the rows asking: each token drawn since the last take, ``(log-probability, [(token,
        log-probability)] of the likeliest)``, as model.score gives them, in the order drawn (a row that
        finished at this step too: it may hold entries past its last token, for tokens after its end)."""
        taken = {key: entries for key, entries in self.scored.items() if entries}
        here = set(self.keys)
        self.scored = {key: [] for key in self.scored if key in here}
        return taken

    def _score(self, logits: torch.Tensor, chosen: torch.Tensor, rules: list[Sampling], keys: list) -> None:
        """Keep the log-probabilities of the tokens just drawn, for the rows that ask: one softmax over the
        vocabulary and one read of the device for all of them, only at the steps where some row asks."""
        asking = [r for r, rule in enumerate(rules) if rule.logprobs is not None]
        if not asking:
            return
        index = torch.tensor(asking, device=logits.device)
        logprobs = torch.log_softmax(logits[:, -1, :].float().index_select(0, index), dim=-1)
        drawn = logprobs.gather(-1, chosen.index_select(0, index)[:, None]).squeeze(-1).tolist()
        top = min(max(rules[r].logprobs for r in asking), logprobs.shape[-1])
        values, tokens = logprobs.topk(top, dim=-1) if top else (None, None)
        values, tokens = (values.tolist(), tokens.tolist()) if top else ([[]] * len(asking), [[]] * len(asking))
        for i, r in enumerate(asking):
            k = rules[r].logprobs
            self.scored.setdefault(keys[r], []).append((drawn[i], list(zip(tokens[i][:k], values[i][:k]))))

    def _joining_now(self) -> bool:
        """Whether the requests waiting join at this step. Joining costs a prefill and a copy of the cache
        however many join, so into a busy batch they join a few at a time: once a quarter of the batch
        waits, or the oldest has waited ``JOIN_WAIT_STEPS`` (as TGI's ``waiting_served_ratio`` and
        ``max_waiting_tokens`` do). Joining one at a time, 16 rows of 16-token answers were served at half
        the rate of batches run to their end, in this process on one thread (49 against 99 a second)."""
        return (len(self.pending) >= max(1, len(self) // 4)
                or self.steps - self.pending_since >= JOIN_WAIT_STEPS)

    def _sample(self, logits: torch.Tensor, draw: _Draw) -> torch.Tensor:
        """Each row's next token: its likeliest (temperature 0) or a draw, from the logits as its bias and
        penalties leave them, without the tokens it may not draw yet (``held``: short of its min_tokens). Only
        the rows that draw pay for a draw: a softmax and a draw over a vocabulary of 152,000 cost a
        greedy batch of 16 rows as much as the model's output layer did (on a CPU)."""
        logits, sampling, rules = logits[:, -1, :].float(), draw.sampling, draw.rules
        if draw.bias is not None:
            logits = logits + draw.bias
        if draw.counts is not None:  # OpenAI's penalties, on the tokens each row generated so far
            presence, frequency = sampling[:, 2:3], sampling[:, 3:4]
            logits = logits - draw.counts * frequency - (draw.counts > 0).to(logits.dtype) * presence
        if draw.seen is not None:  # vLLM's (and transformers') repetition_penalty, on prompt and answer
            penalty = sampling[:, 6:7]
            logits = torch.where(draw.seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        if draw.held:  # rows short of their min_tokens (or ignoring the end-of-text): tokens they may not draw
            rows = torch.tensor([r for r, ids in draw.held.items() for _ in ids], device=logits.device)
            ids = torch.tensor([t for held in draw.held.values() for t in held], device=logits.device)
            logits = logits.index_put((rows, ids), logits.new_full((), float("-inf")))
        drawing = [r for r, rule in enumerate(rules) if rule.temperature > 0]  # (host-side: no wait for the device)
        if not drawing:
            return logits.argmax(-1)
        every = len(drawing) == len(rules)
        index = None if every else torch.tensor(drawing, device=logits.device)
        some, rows = (logits, sampling) if every else (logits.index_select(0, index), sampling.index_select(0, index))
        probs = torch.softmax(some / rows[:, :1].clamp(min=1e-4), dim=-1)
        if any(rules[r].narrowed for r in drawing):
            probs = _narrowed(probs, rows, top_k=any(rules[r].top_k > 0 for r in drawing))
        sampled = torch.multinomial(probs, 1, generator=self.gen).squeeze(-1)
        for i, r in enumerate(drawing):  # seeded rows draw again, from their own generators
            if draw.generators[r] is not None:
                sampled[i] = torch.multinomial(probs[i], 1, generator=draw.generators[r])[0]
        return sampled if every else logits.argmax(-1).index_copy(0, index, sampled)

    def _forward(self, ids, mask, past):
        if self.model.supports_cache:
            return self.model.module(ids, mask, past)
        return self.model.module(ids, mask), None  # no cache: the whole sequence every step

    def _decode(self) -> None:
        ids = self.seq[:, -1:] if self.model.supports_cache else self.seq
        logits, self.past = self._forward(ids, self.mask, self.past)
        nxt = self._sample(logits, _Draw(self.sampling, self.rules, self.generators, self.counts, self.bias, self.seen,
                                         self._held(self.rules, self.made, self.max_tokens)))
        self._score(logits, nxt, self.rules, self.keys)
        if self.counts is not None:
            self.counts.scatter_add_(1, nxt[:, None], torch.ones_like(self.counts[:, :1]))
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        self.seq = torch.cat([self.seq, nxt[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.made = [m + 1 for m in self.made]

    def _join(self) -> None:
        device = self.model.device
        joining, self.pending = self.pending, []
        width = max(len(p[1]) for p in joining)
        ids = torch.zeros(len(joining), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, (_, prompt, *_) in enumerate(joining):
            ids[i, width - len(prompt):] = torch.tensor(prompt, device=device)
            mask[i, width - len(prompt):] = 1
        rules = [p[3] for p in joining]
        sampling = torch.tensor([_columns(r) for r in rules], device=device)
        logits, past = self._forward(ids, mask, None)
        vocab = logits.shape[-1]
        bias = _biases(rules, vocab, device) if any(r.logit_bias for r in rules) else None
        # the prompts' tokens, where some row has a repetition_penalty (or will have, with these)
        repeating = self.seen is not None or any(r.repeats_penalized for r in rules)
        seen = _counts(ids, mask, vocab) > 0 if repeating else None
        generators = [None if r.seed is None else torch.Generator(device=device).manual_seed(r.seed) for r in rules]
        # (no presence or frequency penalty yet: a joining row has generated nothing)
        nxt = self._sample(logits, _Draw(sampling, rules, generators, None, bias, seen,
                                         self._held(rules, [0] * len(joining), [p[2] for p in joining])))
        self._score(logits, nxt, rules, [p[0] for p in joining])
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        seq = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if bias is None and self.bias is not None:
            bias = torch.zeros(len(joining), vocab, device=device)
        elif bias is not None and self.seq is not None and self.bias is None:
            self.bias = torch.zeros(len(self.keys), vocab, device=device)
        if seen is not None and self.seq is not None and self.seen is None:
            self.seen = _counts(self.seq, self.mask, vocab) > 0
        if self.seq is None:
            self.seq, self.mask, self.sampling, self.past, self.bias, self.seen = seq, mask, sampling, past, bias, seen
        else:
            wide = max(seq.shape[1], self.seq.shape[1])
            self.seq = torch.cat([_pad_left(self.seq, wide), _pad_left(seq, wide)])
            self.mask = torch.cat([_pad_left(self.mask, wide), _pad_left(mask, wide)])
            self.sampling = torch.cat([self.sampling, sampling])
            self.past = _join_caches(self.past, past, wide - 1)
            self.bias = None if bias is None else torch.cat([self.bias, bias])
            self.seen = None if seen is None else torch.cat([self.seen, seen])
        self.keys += [p[0] for p in joining]
        self.max_tokens += [p[2] for p in joining]
        self.rules += rules
        self.generators += generators
        self.made += [1] * len(joining)
        if self.counts is None and any(r.penalized for r in self.rules):
            self.counts = _counts(self.seq, _generated(self.seq, self.made), vocab)
        elif self.counts is not None:
            self.counts = torch.cat([self.counts, _counts(seq, _generated(seq, [1] * len(joining)), vocab)])

    def _finished(self) -> list[tuple[object, list[int]]]:
        # Done by length is known without reading the device; an end-of-text is read every few steps
        # (each read waits for the device: on a GPU, every step would stall the queue of launches).
        done = {r for r in range(len(self.keys)) if self.made[r] >= self.max_tokens[r] or self.keys[r] in self.ended}
        stops = set().union(*(rule.stop_token_ids for rule in self.rules))
        maybe = set()  # rows holding some row's stop token: theirs, or another's (read to tell)
        if (self.ends or stops) and self.steps % EOS_EVERY == 0 and self.keys:
            ends = self._ends if not stops else torch.tensor(sorted(stops.union(self.ends)), device=self.seq.device)
            ended = (torch.isin(self.seq, ends) & _generated(self.seq, self.made)).any(dim=1).tolist()
            maybe = {r for r, e in enumerate(ended) if e} - done
        finished = []
        for r in sorted(done | maybe):
            n = min(self.made[r], self.max_tokens[r])
            tokens, end = _until_end(self.seq[r, self.seq.shape[1] - self.made[r]:][:n].tolist(), self._row_ends(r))
            if r in done or end is not None:
                finished.append((self.keys[r], tokens))
                if end is not None and end in self.rules[r].stop_token_ids:
                    self.stopped_by[self.keys[r]] = end
            else:
                maybe.discard(r)
        if finished:
            gone = done | maybe
            self._keep([r for r in range(len(self.keys)) if r not in gone])
        return finished

    def _held(self, rules: list[Sampling], made: list[int], max_tokens: list[int]) -> dict[int, tuple[int, ...]]:
        """By row, the tokens it may not draw yet: the model's end tokens short of its min_tokens (or for good,
        with ignore_eos), and its own stop_token_ids short of its min_tokens."""
        held = {}
        for r, (rule, n, most) in enumerate(zip(rules, made, max_tokens)):
            ids = (self.ends if n < rule.least_tokens(most) else ()) + \
                (rule.stop_token_ids if rule.stops_held(n, most) else ())
            if ids:
                held[r] = ids
        return held

    def _row_ends(self, r: int) -> tuple[int, ...]:
        """The tokens that end row ``r``'s answer: the model's end tokens, and its own stop_token_ids."""
        return self.ends + self.rules[r].stop_token_ids

    def _keep(self, rows: list[int]) -> None:
        """Keep only ``rows``; and cut the leading columns that are padding in every row left."""
        self.keys, self.max_tokens, self.made, self.rules, self.generators = (
            [x[r] for r in rows] for x in (self.keys, self.max_tokens, self.made, self.rules, self.generators))
        if self.told or self.ended:
            kept = set(self.keys)
            self.told = {k: n for k, n in self.told.items() if k in kept}
            self.ended &= kept
        if not rows:
            self.seq = self.mask = self.sampling = self.past = self.counts = self.bias = self.seen = None
            return
        index = torch.tensor(rows, device=self.seq.device)
        self.seq, self.mask, self.sampling = (t.index_select(0, index) for t in (self.seq, self.mask, self.sampling))
        # the counts, biases and tokens seen go with the last row that asks for them
        self.counts = _rows_kept(self.counts, index, any(r.penalized for r in self.rules))
        self.bias = _rows_kept(self.bias, index, any(r.logit_bias for r in self.rules))
        self.seen = _rows_kept(self.seen, index, any(r.repeats_penalized for r in self.rules))
        cut = int(self.mask.any(dim=0).long().argmax())  # the first column some row still uses
        self.seq, self.mask = self.seq[:, cut:], self.mask[:, cut:]
        self.past = _keep_in_cache(self.past, index, cut)


@torch.inference_mode()
def score(model: LoadedModel, tokens: list[int], start: int, top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each of ``tokens[start:]`` (``start`` at least 1), its log-probability given the tokens before it,
    and the ``top`` most likely tokens in its place with theirs: one forward pass over the whole sequence,
    apart from the batch. The model's own distribution, before temperature and top_p (what vLLM reports by
    default); for a token the batch generated, the figure its step saw, as far as the batch's arithmetic
    is the same."""
    start = max(1, start)
    if start >= len(tokens):
        return []
    ids = torch.tensor([tokens], device=model.device)
    mask = torch.ones_like(ids)
    module = model.module
    if model.supports_cache:
        extra = {"all_logits": True} if getattr(module, "keeps_last_logits", False) else {}
        logits = module(ids, mask, None, **extra)[0]
    else:
        logits = module(ids, mask)
    logprobs = torch.log_softmax(logits[0, start - 1:-1].float(), dim=-1)
    chosen = logprobs.gather(-1, ids[0, start:, None]).squeeze(-1).tolist()
    if not top:
        return [(lp, []) for lp in chosen]
    values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return [(lp, list(zip(i, v))) for lp, i, v in zip(chosen, indices.tolist(), values.tolist())]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a step failed for the device's memory (torch's own error, or a backend's message)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_memory(model: LoadedModel) -> None:
    """Give a failed step's buffers back to the device (and the C heap's to the system), for the next batch."""
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    trim_c_heap()


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


def trim_c_heap() -> bool:
    """Hand the C heap's free pages back to the system. Tensors on the CPU come from malloc, which keeps
    what they free for the process: after the memory probe's batch (8 rows of 768 tokens) and the warm-up the
    engine of the built-in ``medium`` model stayed at 672 MB resident where it needs 342 (a trim takes 2-20
    ms). True where the C library could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class TooLongForMemory(RuntimeError):
    """Not even one request of the longest length the node admits fits in the device's memory."""


def fitting_batch(model: LoadedModel, rows: int, length: int) -> int:
    """The most rows of ``length`` tokens each, ``rows`` or fewer by halves, that the device's memory holds
    in one batch: found before the node is ready (as vLLM profiles its memory at start), not by the first
    batch that wide under load failing every request in it. Each try runs the batch as the node would at its
    widest: ``rows - 1`` rows prefilled together, one more joining them a step later (its prefill, and the
    copy of the KV cache a join makes), and all of them stepped on to ``length`` tokens each. Raises
    ``TooLongForMemory`` where one row does not fit."""
    while True:
        try:
            batch = DecodeBatch(model)
            for i in range(rows - 1):
                batch.add(i, [65] * max(1, length - 3), 3)
            if rows > 1:
                batch.step()
            batch.add(rows - 1, [65] * max(1, length - 2), 2, join_now=True)
            while len(batch):
                batch.step()
            return rows
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            batch = None
            release_memory(model)
            if rows == 1:
                raise TooLongForMemory(f"one request of {length} tokens does not fit in the memory of "
                                       f"{model.device}: {str(exc).splitlines()[0][:200]}") from None
            rows //= 2


def generate(model: LoadedModel, prompts: list[list[int]], max_tokens: list[int],
             sampling: Sampling | list[Sampling] = GREEDY, seed: int = 0, on_finished=None) -> list[list[int]]:
    """Generate for one batch of prompts that start together (a ``DecodeBatch`` nobody joins), each drawn
    as ``sampling`` says (one for all, or one per prompt; greedy by default).

    A row leaves the batch once it has its ``max_tokens`` or its end-of-text token (seen within
    ``EOS_EVERY`` steps), and ``on_finished(i, tokens)`` is told then."""
    batch = DecodeBatch(model, seed)
    rules = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
    for i, (p, n, rule) in enumerate(zip(prompts, max_tokens, rules)):
        batch.add(i, p, n, rule)
    result: list[list[int] | None] = [None] * len(prompts)
    while len(batch):
        for i, tokens in batch.step():
            result[i] = tokens
            if on_finished is not None:
                on_finished(i, tokens)
    return result


def _until_end(tokens: list[int], ends: tuple[int, ...]) -> tuple[list[int], int | None]:
    """The tokens before the first that ends an answer, and that token (None where none did)."""
    cut = next((i for i, t in enumerate(tokens) if t in ends), None)
    return (tokens, None) if cut is None else (tokens[:cut], tokens[cut])


@dataclass
class _Draw:
    """What a step's draw needs of the rows it draws for: the batch's, or those joining it."""

    sampling: torch.Tensor  # (rows, len(SAMPLING_COLUMNS))
    rules: list[Sampling]
    generators: list
    counts: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    held: dict = field(default_factory=dict)  # by row, the tokens it may not draw yet (DecodeBatch._held)


SAMPLING_COLUMNS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_k", "min_p",
                    "repetition_penalty")


def _columns(rule: Sampling) -> list[float]:
    return [max(0.0, rule.temperature), rule.top_p, rule.presence_penalty, rule.frequency_penalty,
            float(max(0, rule.top_k)), rule.min_p, rule.repetition_penalty]


NARROW_CANDIDATES = 1024  # the likeliest tokens a narrowed draw looks among first (_ranked)


def _narrowed(probs: torch.Tensor, rows: torch.Tensor, top_k: bool,
              candidates: int = NARROW_CANDIDATES) -> torch.Tensor:
    """The drawing rows' probabilities with only the tokens they may draw kept: their ``top_k`` likeliest,
    then those whose probabilities reach ``top_p`` of what that leaves (the likeliest always kept), then
    those at least ``min_p`` times as likely as the likeliest; rows at 0, 1 and 0 keep every probability as
    it is, so their draws are those without it."""
    top_p, k, min_p = rows[:, 1:2], rows[:, 4:5], rows[:, 5:6]
    ranked, order = _ranked(probs, top_p, k, min_p, candidates)
    kept = ranked
    if top_k:  # (and top_p on what is left, renormalised, as vLLM does)
        place = torch.arange(ranked.shape[-1], device=ranked.device)[None, :]
        kept = ranked.masked_fill((place >= k) & (k > 0), 0.0)
        share = kept / kept.sum(dim=-1, keepdim=True)
    else:
        share = ranked
    beyond = ((share.cumsum(dim=-1) - share) >= top_p) & (top_p < 1)
    beyond |= (ranked < min_p * ranked[:, :1]) & (min_p > 0)
    return torch.zeros_like(probs).scatter(-1, order, kept.masked_fill(beyond, 0.0))


def _ranked(probs: torch.Tensor, top_p: torch.Tensor, k: torch.Tensor, min_p: torch.Tensor,
            candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities in descending order and their tokens: only the likeliest ``candidates`` where
    every row keeps no token past them (its top_k among them; or, with no top_k, its top_p reached or its
    min_p passed within them), else all of them. A trained model's nucleus is a few dozen tokens: sorting a
    vocabulary of 152,000 for each row at every step cost a CPU 12 times what the top 1,024 do, and one read
    of the device decides."""
    if probs.shape[-1] <= 2 * candidates:
        return probs.sort(dim=-1, descending=True)
    values, order = probs.topk(candidates, dim=-1)
    within = ((k > 0) & (k <= candidates)) | ((k == 0) & (
        ((top_p < 1) & (values.sum(dim=-1, keepdim=True) >= top_p))
        | ((min_p > 0) & (values[:, -1:] < min_p * values[:, :1]))))
    if bool(within.all()):
        return values, order
    return probs.sort(dim=-1, descending=True)


def _generated(seq: torch.Tensor, made: list[int]) -> torch.Tensor:
    """(rows, width), bool: the columns of each row's last ``made[row]`` tokens, the ones it generated."""
    width = seq.shape[1]
    return torch.arange(width, device=seq.device)[None, :] >= (width - torch.tensor(made, device=seq.device))[:, None]


def _counts(seq: torch.Tensor, where: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab): how often each row holds each token in the columns ``where`` says (its mask: padding is
    not a token; or the columns it generated)."""
    return torch.zeros(seq.shape[0], vocab, device=seq.device).scatter_add_(1, seq, where.float())


def _rows_kept(held: torch.Tensor | None, index: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    """A tensor held by row only while some row asks for it: the rows kept of it, or None once none asks."""
    return held.index_select(0, index) if held is not None and wanted else None


def _biases(rules: list[Sampling], vocab: int, device) -> torch.Tensor:
    """(rows, vocab): each row's logit_bias, zero elsewhere; a token id past the model's vocabulary is
    left out (the server refuses those by the tokenizer's, which may be wider than the model's output)."""
    bias = torch.zeros(len(rules), vocab, device=device)
    for r, rule in enumerate(rules):
        for token, value in rule.logit_bias.items():
            if 0 <= token < vocab:
                bias[r, token] = value
    return bias


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (width - t.shape[1], 0)) if t.shape[1] < width else t


def _join_caches(a, b, time: int):
    """Two KV caches, rows of ``a`` then of ``b``, each left-padded with zeros to ``time`` positions."""
    if a is None or b is None:
        return None
    if isinstance(a, KVCache):
        return a.join(b, time)
    if isinstance(a, torch.Tensor):
        pad = [(0, 0, time - x.shape[-2], 0) for x in (a, b)]
        return torch.cat([F.pad(a, pad[0]), F.pad(b, pad[1])])
    return type(a)(_join_caches(x, y, time) for x, y in zip(a, b))


def _keep_in_cache(past, rows: torch.Tensor, cut: int):
    """The KV cache of the rows kept, without its first ``cut`` positions (padding in every row kept)."""
    if past is None:
        return None
    if isinstance(past, KVCache):
        return past.keep(rows, cut)
    if isinstance(past, torch.Tensor):
        return past.index_select(0, rows)[..., cut:, :]
    return type(past)(_keep_in_cache(p, rows, cut) for p in past)
