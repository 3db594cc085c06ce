"""The tokenizers the server's process uses, apart from the models so that it never imports torch.

The engine process sends the server its model's tokenizer (the server counts prompt tokens and
decodes completions); unpickling one needs only this module (and ``tokenizers`` and ``jinja2`` for a
Hugging Face model's), so the HTTP side stays a small process without torch's hundreds of megabytes.
"""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as tokens (256) plus an end-of-text token."""

    vocab_size = 257
    eos = 256

    def encode(self, text: str, special: bool | None = None) -> list[int]:
        return list(text.encode("utf-8"))  # (no special tokens to add)

    def token_str(self, token: int) -> str:
        """The token as its vocabulary writes it: a printable ASCII byte as itself, another as ``<0xXX>``
        (as a SentencePiece vocabulary's byte tokens are written), the end of text as ``<|endoftext|>``."""
        if token >= 256:
            return "<|endoftext|>"
        return chr(token) if 0x20 <= token < 0x7F else f"<0x{token:02X}>"

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""


class HFTokenizer:
    """A Hugging Face fast tokenizer (its ``tokenizer.json``) and chat template, as the node's tokenizer.

    Built from ``transformers``' tokenizer in the engine, and sent to the server's process as the JSON
    and the template alone: there it needs only ``tokenizers`` (Rust) and ``jinja2``, where unpickling
    ``transformers``' own tokenizer imports torch (3 s and 290 MB more in a process that only tokenizes).
    Encoding, decoding and the template's rendering are transformers' own (the same post-processor adds
    a beginning-of-text token; a templated prompt that already starts with it gets no second one)."""

    def __init__(self, tokenizer_json: str, chat_template: str | None, special_tokens: dict[str, str],
                 end_tokens: tuple[int, ...], model_max_length: int | None):
        self.tokenizer_json, self.chat_template, self.special_tokens = tokenizer_json, chat_template, special_tokens
        self.end_tokens = end_tokens
        self.eos = end_tokens[0] if end_tokens else None
        self.model_max_length = model_max_length
        self._backend = self._template = None

    @classmethod
    def from_transformers(cls, tok, end_tokens: tuple[int, ...]) -> "HFTokenizer":
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{type(tok).__name__} is not a fast tokenizer: the node needs the model's "
                             f"tokenizer.json")
        special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
        template = tok.chat_template if isinstance(tok.chat_template, str) else None
        return cls(backend.to_str(), template, special, end_tokens, tok.model_max_length)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_backend": None, "_template": None}

    @property
    def backend(self):
        if self._backend is None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self.tokenizer_json)
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str, special: bool | None = None) -> list[int]:
        """The text's token ids; ``special``: the post-processor's special tokens added (True), or not
        (False), or (None) added unless the text already starts with the beginning-of-text token (a
        templated prompt), so that it is never there twice."""
        if special is None:
            bos = self.special_tokens.get("bos_token")
            special = not (bos and text.startswith(bos))
        return self.backend.encode(text, add_special_tokens=special).ids

    def token_str(self, token: int) -> str:
        """The token as its vocabulary writes it (transformers' ``convert_ids_to_tokens``: ``Ġ`` for a
        byte-level BPE's space)."""
        return self.backend.id_to_token(token)

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            **kwargs):
        """The conversation as the model was trained to read it, rendered as ``transformers`` renders it
        (a sandboxed jinja2 with its helpers; ``kwargs`` are the template's own variables, as transformers
        passes them). ``ValueError`` where the template refuses the messages (its own ``raise_exception``)
        or fails on them."""
        if self.chat_template is None:
            raise ValueError("the model's tokenizer has no chat template")
        import jinja2

        try:
            if self._template is None:
                self._template = _compile_chat_template(self.chat_template)
            text = self._template.render(**{**self.special_tokens, **kwargs}, messages=messages,
                                         add_generation_prompt=add_generation_prompt)
        except jinja2.TemplateError as exc:  # what the messages lack that the template reads, say
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
        return self.encode(text) if tokenize else text


def _compile_chat_template(source: str):
    """A chat template compiled as ``transformers`` compiles it: trimmed blocks, loop controls, and the
    globals templates call (``raise_exception``, ``strftime_now``)."""
    import json
    from datetime import datetime

    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
