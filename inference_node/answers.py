"""What the node answers: each answer's text as its tokens arrive, and the OpenAI shapes it goes out in,
whole or streamed as server-sent events.

A streamed answer is sent as it is generated, so a client reads the first words after the prefill, not
after the last token (the time to first token is what a chat user waits on). Two things are held back
until the tokens after them come, as vLLM's detokenizer does: the bytes of a character not yet whole (a
byte-level tokenizer splits a multi-byte character over tokens), and text that could be the start of a
stop string (the answer ends before a stop string, which is never sent). Whole or streamed, the same
tokens give the same text.
"""

from __future__ import annotations

import json
import time
import uuid

INCOMPLETE = "\ufffd"  # what a decoder writes for the bytes of a character not yet whole


def until_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text up to the first of the stop strings (which is left out, as OpenAI's API does), and whether
    one was found."""
    cut = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class AnswerText:
    """One answer, fed its tokens as they are generated: its text so far, whether a stop string ended it,
    and ``take()``, the text that can be sent now and was not yet."""

    def __init__(self, tokenizer, stop: list[str], max_tokens: int):
        self.tokenizer, self.stop, self.max_tokens = tokenizer, stop, max_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string came: the answer ends before it
        self.finished = False  # no more tokens will come
        self._sent = 0  # characters of ``text`` taken

    def feed(self, tokens: list[int], finished: bool = False) -> None:
        self.finished = self.finished or finished
        if self.stopped:
            return
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens)
        # A character not yet whole is no stop string's match yet: the next token may complete it.
        whole = text if self.finished else text.rstrip(INCOMPLETE)
        cut, self.stopped = until_stop(whole, self.stop)
        self.text = cut if self.stopped else text

    @property
    def finish_reason(self) -> str:
        """``stop`` where a stop string or the end-of-text token ended it, ``length`` at max_tokens."""
        return "stop" if self.stopped or len(self.tokens) < self.max_tokens else "length"

    @property
    def kept_tokens(self) -> int:
        """The tokens the answer kept: all of them, or where a stop string cut the text, the longest run of
        them that reads as a beginning of the text."""
        if not self.stopped:
            return len(self.tokens)
        decode = self.tokenizer.decode
        return max(k for k in range(len(self.tokens) + 1) if self.text.startswith(decode(self.tokens[:k])))

    def take(self) -> str:
        """The text that can be sent now and was not yet: all of it once the answer is over; before, not a
        character still incomplete, nor an ending that a stop string could begin with."""
        end = len(self.text)
        if not (self.finished or self.stopped):
            while end > self._sent and self.text[end - 1] == INCOMPLETE:
                end -= 1
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text[:end].endswith(s[:k])),
                       default=0)
        piece = self.text[self._sent:max(end, self._sent)]
        self._sent += len(piece)
        return piece


def usage(prompts: list[list[int]], answers: list[AnswerText]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(a.kept_tokens for a in answers)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


DONE = "data: [DONE]\n\n"


def event(doc: dict) -> str:
    return f"data: {json.dumps(doc)}\n\n"


class CompletionShape:
    """``/v1/completions``: a ``text_completion``, whole or as chunks of the same object."""

    def __init__(self, model: str):
        self.head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                     "model": model}

    def whole(self, answers: list[AnswerText], used: dict) -> dict:
        return dict(self.head, usage=used, choices=[
            {"text": a.text, "index": i, "logprobs": None, "finish_reason": a.finish_reason}
            for i, a in enumerate(answers)])

    def opening(self, count: int) -> list[str]:
        return []

    def piece(self, index: int, text: str, finish_reason: str | None = None) -> str:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        return event(dict(self.head, choices=[choice]))

    def usage(self, used: dict) -> str:
        return event(dict(self.head, choices=[], usage=used))


class ChatShape:
    """``/v1/chat/completions``: a ``chat.completion`` (the assistant's message per choice), or its
    ``chat.completion.chunk`` events: each choice's role first, then its text as it comes, then its
    finish reason."""

    def __init__(self, model: str):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}

    def whole(self, answers: list[AnswerText], used: dict) -> dict:
        return dict(self.head, object="chat.completion", usage=used, choices=[
            {"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": None,
             "finish_reason": a.finish_reason} for i, a in enumerate(answers)])

    def _chunk(self, choices: list[dict], **extra) -> str:
        return event(dict(self.head, object="chat.completion.chunk", choices=choices, **extra))

    def opening(self, count: int) -> list[str]:
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]) for i in range(count)]

    def piece(self, index: int, text: str, finish_reason: str | None = None) -> str:
        delta = {"content": text} if text else {}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def usage(self, used: dict) -> str:
        return self._chunk([], usage=used)
