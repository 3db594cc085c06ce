"""Models a test node serves as a user's own (``--model tests.node_models:NAME``, a module:factory)."""

from __future__ import annotations

import torch

from inference_node.model import TinyGPT
from inference_node.tokenizer import ByteTokenizer


class StrictPositions(TinyGPT):
    """The built-in decoder, failing as most models do past their context (an embedding with no row for
    the position: ``IndexError``; on a GPU, a device-side assert), where the built-in one clamps."""

    def forward(self, input_ids, attention_mask, past=None, positions=None):
        longest = int(attention_mask.sum(-1).max())
        if longest > self.max_seq:
            raise IndexError(f"index out of range in self (position {longest - 1} of {self.max_seq})")
        return super().forward(input_ids, attention_mask, past, positions)


def short_context():
    """A small decoder whose context is 48 tokens."""
    torch.manual_seed(0)
    return StrictPositions(ByteTokenizer.vocab_size, d_model=64, n_layers=1, n_heads=4, max_seq=48), ByteTokenizer()
