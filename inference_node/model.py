"""The models a node serves: a built-in GPT-style decoder with a KV cache, or the user's own.

No weights can be downloaded here, so the built-in model has random weights (seeded) and a
configurable size: it does the same work per token as a real decoder of that size, which is what
capacity, batching and warm-up are about. Users serve their own model with ``--model``:

* ``builtin`` or ``builtin:tiny|small|medium`` - the decoder below;
* ``path/to/model.pt`` - a TorchScript module ``forward(input_ids, attention_mask) -> logits``;
* ``package.module:factory`` - a function returning ``(nn.Module, tokenizer)`` with the same
  forward; the tokenizer needs ``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
  ``vocab_size``.

Models without a KV cache re-read the whole sequence for every new token (correct, slower).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from inference_node.tokenizer import ByteTokenizer

SIZES = {
    "tiny": {"d_model": 128, "n_layers": 2, "n_heads": 4},
    "small": {"d_model": 256, "n_layers": 4, "n_heads": 8},
    "medium": {"d_model": 512, "n_layers": 8, "n_heads": 8},
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask, past):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x)), (k, v)


class TinyGPT(nn.Module):
    """A decoder-only transformer with a KV cache."""

    supports_cache = True

    def __init__(self, vocab: int = 257, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, max_seq: int = 1024):
        super().__init__()
        self.max_seq = max_seq
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, input_ids, attention_mask, past=None, positions=None):
        """``attention_mask`` (batch, total_len): 1 for real tokens of the whole sequence so far."""
        b, t = input_ids.shape
        total = attention_mask.shape[1]
        if positions is None:
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
        x = self.tok(input_ids) + self.pos(positions.clamp(max=self.max_seq - 1))
        causal = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(total - t)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        new_past = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if past is None else past[i])
            new_past.append(kv)
        return self.head(self.ln(x)), new_past


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


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: str = "builtin", seed: int = 0, device: torch.device | None = None,
               quantize: str | None = None) -> LoadedModel:
    device = device or pick_device()
    if spec == "builtin" or spec.startswith("builtin:"):
        size = spec.split(":", 1)[1] if ":" in spec else "tiny"
        if size not in SIZES:
            raise ValueError(f"unknown built-in size {size!r}; choose one of {', '.join(SIZES)}")
        torch.manual_seed(seed)
        tokenizer = ByteTokenizer()
        module = TinyGPT(tokenizer.vocab_size, **SIZES[size])
        name = f"peakpilot-builtin-{size}"
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
        raise ValueError(f"cannot load model {spec!r}: use builtin[:size], a TorchScript file, or module:factory")
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
    return LoadedModel(module.to(device), tokenizer, name, device)


EOS_EVERY = 8  # steps between looks for rows that ended with their end-of-text token


@torch.inference_mode()
def generate(model: LoadedModel, prompts: list[list[int]], max_tokens: list[int], temperatures: list[float],
             seed: int = 0, on_finished=None) -> list[list[int]]:
    """Generate for a batch: left-padded prompts, one forward per new token (KV cache if the model has one).

    A row leaves the batch once it has its ``max_tokens`` or its end-of-text token (seen within
    ``EOS_EVERY`` steps), and ``on_finished(i, tokens)`` is told then: a short request batched with a
    long one is answered at its own length, not the longest's, and the rows still generating stop
    paying for the finished ones."""
    device = model.device
    b = len(prompts)
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(b, longest, dtype=torch.long, device=device)
    mask = torch.zeros(b, longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        if p:
            ids[i, longest - len(p):] = torch.tensor(p, device=device)
            mask[i, longest - len(p):] = 1
    steps = max(max_tokens)
    temps = torch.tensor(temperatures, device=device).clamp(min=0)[:, None]
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.zeros(b, steps, dtype=torch.long, device=device)
    alive = list(range(b))  # the rows still in the batch, by their index in ``prompts``
    result: list[list[int] | None] = [None] * b
    eos = model.eos
    past = None
    step_ids = ids
    for s in range(steps):
        if model.supports_cache:
            logits, past = model.module(step_ids, mask, past)
        else:
            logits = model.module(torch.cat([ids, out[:, :s]], dim=1), mask)
        logits = logits[:, -1, :].float()
        greedy = logits.argmax(-1)
        probs = torch.softmax(logits / temps.clamp(min=1e-4), dim=-1)
        sampled = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        nxt = torch.where(temps.squeeze(-1) > 0, sampled, greedy)
        out[:, s] = nxt
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=mask.dtype, device=device)], dim=1)
        step_ids = nxt[:, None]
        # Done by length is known without reading the device; an end-of-text is read every few steps
        # (each read waits for the device: on a GPU, every step would stall the queue of launches).
        done = [r for r, i in enumerate(alive) if s + 1 >= max_tokens[i]]
        if eos is not None and (s + 1) % EOS_EVERY == 0:
            ended = (out[:, : s + 1] == eos).any(dim=1).tolist()
            done = sorted(set(done) | {r for r, e in enumerate(ended) if e})
        if not done:
            continue
        for r in done:
            i = alive[r]
            tokens = out[r, : min(s + 1, max_tokens[i])].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            result[i] = tokens
            if on_finished is not None:
                on_finished(i, tokens)
        finished = set(done)
        keep = [r for r in range(len(alive)) if r not in finished]
        if not keep:
            break
        rows = torch.tensor(keep, device=device)
        alive = [alive[r] for r in keep]
        ids, mask, out, temps, step_ids = (t.index_select(0, rows) for t in (ids, mask, out, temps, step_ids))
        past = _select_rows(past, rows)
    return result


def _select_rows(past, rows: torch.Tensor):
    """The KV cache of the rows kept (every tensor in it has the batch first, however it is nested)."""
    if past is None:
        return None
    if isinstance(past, torch.Tensor):
        return past.index_select(0, rows)
    return type(past)(_select_rows(p, rows) for p in past)
