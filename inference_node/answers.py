"""What the node answers: each answer's text as its tokens arrive, and the OpenAI shapes it goes out in,
whole or streamed as server-sent events.

A streamed answer is sent as it is generated, so a client reads the first words after the prefill, not
after the last token (the time to first token is what a chat user waits on). Two things are held back
until the tokens after them come, as vLLM's detokenizer does: the bytes of a character not yet whole (a
byte-level tokenizer splits a multi-byte character over tokens), and text that could be the start of a
stop string (the answer ends before a stop string, which is never sent). Whole or streamed, the same
tokens give the same text. An answer, whole or streamed, can carry its tokens' log-probabilities, in the
legacy completions shape or the chat one; streamed, each event carries those of the tokens whose text it
completes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque

INCOMPLETE = "\ufffd"  # what a decoder writes for the bytes of a character not yet whole


def until_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    """The text up to the first of the stop strings (which is left out, as OpenAI's API does), and that
    string (None where none was found; of two found at one place, the one listed first)."""
    found = [(i, n) for n, i in enumerate(text.find(x) for x in stop) if i >= 0]
    if not found:
        return text, None
    cut, which = min(found)
    return text[:cut], stop[which]


class AnswerText:
    """One answer, fed its tokens as they are generated: its text so far, whether a stop string ended it,
    ``take()``, the text that can be sent now and was not yet, and ``taken``, how many tokens the text
    taken so far holds (and its length then): the ones whose log-probabilities can go out with it.

    Each feed decodes only the tokens it brings and those it brought last (vLLM's incremental
    detokenization): decoding the whole answer at every step cost the server CPU in the square of the
    answer's length, 11 times as much per token at 4,096 tokens (bench/node_detokenize.py). ``text`` holds
    what decoded whole; the tokens of a character not yet whole wait, unless the answer is over."""

    def __init__(self, tokenizer, stop: list[str], max_tokens: int):
        self.tokenizer, self.stop, self.max_tokens = tokenizer, stop, max_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string came: the answer ends before it
        self.stop_string: str | None = None  # that string
        self.stop_token: int | None = None  # the one of its stop_token_ids that ended it, as the engine says
        self.finished = False  # no more tokens will come
        self._sent = 0  # characters of ``text`` taken
        # ``tokens[_prefix:_read]`` decoded last time to the end of ``text``; ``tokens[_read:]`` are not in it yet
        self._prefix = self._read = 0
        self._longest_stop = max((len(x) for x in stop), default=0)
        # (tokens, characters): how long ``text`` was once it held the text of that many tokens, for each
        # feed that grew it; ``taken``: the last of them whose text ``take`` has given out
        self._marks: deque[tuple[int, int]] = deque()
        self.taken: tuple[int, int] = (0, 0)

    def feed(self, tokens: list[int], finished: bool = False) -> None:
        self.finished = self.finished or finished
        if self.stopped:
            return
        self.tokens += tokens
        new = self._new_text()
        if not new:
            return
        # A stop string not found before can only end in the new text.
        searched = max(0, len(self.text) - self._longest_stop + 1)
        self.text += new
        if self.stop:
            cut, self.stop_string = until_stop(self.text[searched:], self.stop)
            self.stopped = self.stop_string is not None
            if self.stopped:
                self.text = self.text[:searched] + cut
                return
        self._marks.append((len(self.tokens), len(self.text)))

    def _new_text(self) -> str:
        """The text the tokens not yet in ``text`` add: decoded after the ones read last time (a tokenizer may
        read a token otherwise at the start of a text: a leading space, a merge), less what those read as. Empty
        while it ends in a character not yet whole (the decoder's U+FFFD), unless the answer is over; a
        character that never comes whole is U+FFFD then, as decoding the whole answer writes it."""
        decode = self.tokenizer.decode
        before = decode(self.tokens[self._prefix:self._read])
        after = decode(self.tokens[self._prefix:])
        if len(after) <= len(before) or (after.endswith(INCOMPLETE) and not self.finished):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return after[len(before):]

    @property
    def finish_reason(self) -> str:
        """``stop`` where a stop string or the end-of-text token ended it, ``length`` at max_tokens."""
        return "stop" if self.stopped or len(self.tokens) < self.max_tokens else "length"

    @property
    def stop_reason(self) -> str | int | None:
        """vLLM's ``stop_reason``: the stop string or stop token id that ended the answer; None where its
        end-of-text or ``max_tokens`` did."""
        return self.stop_string if self.stopped else self.stop_token

    @property
    def kept_tokens(self) -> int:
        """The tokens the answer kept: all of them, or where a stop string cut the text, the longest run of
        them that reads as a beginning of the text (looked for from the end: the stop string's tokens are the
        last few, since its row ends as soon as it comes)."""
        if not self.stopped:
            return len(self.tokens)
        decode = self.tokenizer.decode
        return next(k for k in range(len(self.tokens), -1, -1) if self.text.startswith(decode(self.tokens[:k])))

    @property
    def generated_tokens(self) -> int:
        """The answer's ``completion_tokens``, counted as vLLM counts them: every token the model generated for
        it, the ones the text leaves out included, since each took a step of the GPU's: the end-of-text or
        stop token that ended it (drawn, not shown), and a stop string's own tokens, up to the one that
        completes the string (a few the engine made after it, before the row left the batch, are not
        counted)."""
        if not self.stopped:
            ended = self.finished and len(self.tokens) < self.max_tokens
            return len(self.tokens) + ended
        decode = self.tokenizer.decode
        return next((k for k in range(self.kept_tokens, len(self.tokens) + 1)
                     if decode(self.tokens[:k]).startswith(self.stop_string, len(self.text))), len(self.tokens))

    def take(self) -> str:
        """The text that can be sent now and was not yet: all of it once the answer is over; before, not an
        ending that a stop string could begin with (a character not yet whole is not in ``text`` yet)."""
        end = len(self.text)
        if not (self.finished or self.stopped):
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k], 0, end)),
                       default=0)
        piece = self.text[self._sent:max(end, self._sent)]
        self._sent += len(piece)
        while self._marks and self._marks[0][1] <= self._sent:
            self.taken = self._marks.popleft()
        if (self.finished or self.stopped) and self._sent == len(self.text):
            self.taken = (self.kept_tokens, len(self.text))
        return piece


def token_offsets(tokenizer, tokens: list[int]) -> list[int]:
    """Where each token's text begins in the text of them all (a character split over tokens begins at the
    first of them), decoded incrementally as a stream is."""
    text, offsets = AnswerText(tokenizer, [], len(tokens) + 1), []
    for token in tokens:
        offsets.append(len(text.text))
        text.feed([token])
    return offsets


def _token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def _token_bytes(tokenizer, token: int) -> list[int]:
    """The token's own bytes where the tokenizer knows them (a byte of a character split over tokens), else
    its text's."""
    own = getattr(tokenizer, "token_bytes", None)
    return list(own(token)) if callable(own) else list(_token_text(tokenizer, token).encode("utf-8"))


def completion_logprobs(tokenizer, tokens: list[int], entries: list, offset: int = 0) -> dict:
    """A completion choice's ``logprobs`` (OpenAI's legacy shape): each token's text, log-probability, the
    most likely tokens in its place (text: log-probability) and where its text begins (after ``offset``
    characters: a streamed event's tokens come after those sent before). ``entries`` (model.score) are
    those of the last of ``tokens``; the ones before (an echoed prompt's first token, which nothing
    precedes) have none."""
    none = [None] * (len(tokens) - len(entries))
    return {"tokens": [_token_text(tokenizer, t) for t in tokens],
            "token_logprobs": none + [lp for lp, _ in entries],
            "top_logprobs": none + [{_token_text(tokenizer, t): lp for t, lp in top} for _, top in entries],
            "text_offset": [offset + o for o in token_offsets(tokenizer, tokens)]}


def chat_logprobs(tokenizer, tokens: list[int], entries: list) -> dict:
    """A chat choice's ``logprobs``: per token its text, bytes, log-probability and the most likely tokens."""
    def item(token: int, logprob: float) -> dict:
        return {"token": _token_text(tokenizer, token), "logprob": logprob, "bytes": _token_bytes(tokenizer, token)}

    return {"content": [dict(item(t, lp), top_logprobs=[item(u, v) for u, v in top])
                        for t, (lp, top) in zip(tokens, entries)], "refusal": None}


def usage(prompts: list[list[int]], answers: list[AnswerText]) -> dict:
    """OpenAI's ``usage``: the prompts' tokens, and every token generated for the answers (vLLM's count)."""
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(a.generated_tokens for a in answers)
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

    def whole(self, answers: list[AnswerText], used: dict, logprobs: list | None = None,
              echoed: list[str] | None = None) -> dict:
        """``logprobs``: each answer's (``completion_logprobs``); ``echoed``: each answer's prompt, before it."""
        return dict(self.head, usage=used, choices=[
            {"text": (echoed[i] if echoed else "") + a.text, "index": i,
             "logprobs": logprobs[i] if logprobs else None, "finish_reason": a.finish_reason,
             "stop_reason": a.stop_reason}
            for i, a in enumerate(answers)])

    def logprobs(self, tokenizer, tokens: list[int], entries: list, offset: int = 0) -> dict:
        """``tokens``' log-probabilities as a completion's choice holds them, their text from ``offset``."""
        return completion_logprobs(tokenizer, tokens, entries, offset)

    def opening(self, count: int) -> list[str]:
        return []

    def piece(self, index: int, text: str, finish_reason: str | None = None, logprobs: dict | None = None,
              stop_reason: str | int | None = None) -> str:
        """``logprobs``: those of the tokens whose text this piece completes (``completion_logprobs``)."""
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason,
                  "stop_reason": stop_reason}
        return event(dict(self.head, choices=[choice]))

    def usage(self, used: dict) -> str:
        return event(dict(self.head, choices=[], usage=used))


class ChatShape:
    """``/v1/chat/completions``: a ``chat.completion`` (the assistant's message per choice), or its
    ``chat.completion.chunk`` events: each choice's role first, then its text as it comes, then its
    finish reason (and vLLM's ``stop_reason``)."""

    def __init__(self, model: str):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}

    def whole(self, answers: list[AnswerText], used: dict, logprobs: list | None = None,
              echoed: list[str] | None = None) -> dict:
        """``logprobs``: each answer's (``chat_logprobs``)."""
        return dict(self.head, object="chat.completion", usage=used, choices=[
            {"index": i, "message": {"role": "assistant", "content": a.text},
             "logprobs": logprobs[i] if logprobs else None, "finish_reason": a.finish_reason,
             "stop_reason": a.stop_reason}
            for i, a in enumerate(answers)])

    def logprobs(self, tokenizer, tokens: list[int], entries: list, offset: int = 0) -> dict:
        """``tokens``' log-probabilities as a chat choice holds them (each token's own text: no offsets)."""
        return chat_logprobs(tokenizer, tokens, entries)

    def _chunk(self, choices: list[dict], **extra) -> str:
        return event(dict(self.head, object="chat.completion.chunk", choices=choices, **extra))

    def opening(self, count: int) -> list[str]:
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]) for i in range(count)]

    def piece(self, index: int, text: str, finish_reason: str | None = None, logprobs: dict | None = None,
              stop_reason: str | int | None = None) -> str:
        """``logprobs``: those of the tokens whose text this piece completes (``chat_logprobs``)."""
        delta = {"content": text} if text else {}
        return self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
                             "stop_reason": stop_reason}])

    def usage(self, used: dict) -> str:
        return self._chunk([], usage=used)
