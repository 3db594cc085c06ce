"""The built-in tokenizer, apart from the model so that the server's process never imports torch.

The engine process sends the server its model's tokenizer (the server counts prompt tokens and
decodes completions); unpickling this one needs only this module, so the HTTP side stays a small
process without torch's hundreds of megabytes.
"""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as tokens (256) plus an end-of-text token."""

    vocab_size = 257
    eos = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
