"""Hugging Face causal language models, served as the node's own: ``--model hf:PATH``.

PATH is a directory written by ``save_pretrained`` (weights, ``config.json``, ``tokenizer.json``), or a
hub id where the pod can reach the hub. Needs the ``hf`` extra (``pip install 'peakpilot[hf]'``).

The node's batch (``model.DecodeBatch``) left-pads its rows and keeps their KV cache as plain tensors,
per layer keys and values ``(batch, heads, time, dim)``, so rows can join and leave between steps.
``HFCausalLM`` fits a ``transformers`` model to that: it gives the model each token's position from the
attention mask (a model counting positions itself would count the padding, and answer otherwise than
alone), hands the cache over as a ``DynamicCache`` and takes it back, and has only the last position's
logits computed. Decoders of attention layers: Llama, Qwen2 and GPT-2 answer in the node's batch as
transformers' own ``generate`` answers each prompt alone (tests/test_node_hf.py), and the others of their
kind (Mistral, Phi, Gemma) load the same way; a sliding window bounds the context (within it, a sliding
layer sees what a full one sees), and a model with other layers (recurrent, linear attention) is refused
at load. Each step hands the cache over and ``transformers`` concatenates to it, as its own ``generate``
does (the built-in model writes its cache in place).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from inference_node.tokenizer import HFTokenizer


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM behind the node's model interface: ``forward(input_ids, attention_mask,
    past) -> (logits, past)``."""

    supports_cache = True
    keeps_last_logits = True  # only the last position's, unless asked for all (``all_logits``: model.score)

    def __init__(self, model: nn.Module):
        from transformers import DynamicCache

        super().__init__()
        self.model = model
        self._cache_class = DynamicCache  # (imported once, not at every step)
        self.config = model.config  # its max_position_embeddings is the node's context (model.model_context)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
        self._logits_to_keep = "logits_to_keep" in params

    def forward(self, input_ids, attention_mask, past=None, all_logits: bool = False):
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        cache = self._cache_class(ddp_cache_data=past) if past else self._cache_class()
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 0 if all_logits else 1  # (0: all)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **kwargs)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        return out.logits, tuple((layer.keys, layer.values) for layer in cache.layers)


def load_hf(source: str, device: torch.device, dtype: str = "auto") -> tuple[nn.Module, HFTokenizer, str]:
    """The model and tokenizer at ``source`` (a directory or a hub id), for ``device``, in ``dtype``
    (``auto``: model.pick_dtype, from the dtype the model was saved in)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    except ImportError:
        raise ValueError(f"--model hf:{source} needs transformers: pip install 'peakpilot[hf]'") from None
    config = AutoConfig.from_pretrained(source)
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not kinds <= {"full_attention", "sliding_attention"}:
        raise ValueError(f"{source}: its layers are of kinds {', '.join(sorted(kinds))}; the node serves "
                         f"decoders of attention layers only")
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    tokenizer = AutoTokenizer.from_pretrained(source)
    from inference_node.model import pick_dtype

    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    saved = getattr(torch, saved) if isinstance(saved, str) else saved
    model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(dtype, device, saved or torch.float32))
    try:
        ends = GenerationConfig.from_pretrained(source).eos_token_id
    except OSError:  # no generation_config.json
        ends = None
    ends = [ends] if isinstance(ends, int) else list(ends or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ends:
        ends.insert(0, tokenizer.eos_token_id)
    module = HFCausalLM(model)
    if isinstance(window, int) and ("sliding_attention" in kinds or window < config.max_position_embeddings):
        # Within its window a sliding layer attends to every position, as a full one does: the node's
        # cache keeps them all, so requests are kept within the window.
        module.context_length = min(window, config.max_position_embeddings)
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return module, HFTokenizer.from_transformers(tokenizer, tuple(ends)), name
