"""What a streamed answer's text costs the server, by answer length: incremental against whole decoding.

The node's server process turns each streamed row's new tokens into text at every step (answers.py,
``AnswerText``). It used to decode the whole answer at every step and look for the stop strings in all
of it: work in the square of the answer's length. It now decodes only the new tokens and the few before
them, and looks for a stop string only where one could end. Both are fed the same answers, one token
at a time (a row's tokens as the engine reports them every step), with the built-in byte tokenizer and
one stop string that never comes (a chat template's "\\nUser:"); the text sent must be the same.

Per length: microseconds of server CPU per token each way (best of ``--repeats``), their ratio, and
the milliseconds that the last step of 16 rows that long costs the server's one thread (the last token
of one answer, timed, times 16).

Usage: python bench/node_detokenize.py [--lengths 256,1024,4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from inference_node.answers import INCOMPLETE, AnswerText, until_stop  # noqa: E402
from inference_node.tokenizer import ByteTokenizer  # noqa: E402

STOP = ["\nUser:"]
WORDS = "the GPU node boots pulls its image loads the model and warms up before the peak, café naïve 日本 €".split()


class WholeEachStep:
    """What ``AnswerText`` did up to this bench: the whole answer decoded, and searched, at every feed."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop, self.tokens, self.text, self.sent = tokenizer, stop, [], "", 0
        self.stopped = self.finished = False

    def feed(self, tokens: list[int], finished: bool = False) -> None:
        self.finished = self.finished or finished
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens)
        whole = text if self.finished else text.rstrip(INCOMPLETE)
        cut, self.stopped = until_stop(whole, self.stop)
        self.text = cut if self.stopped else text

    def take(self) -> str:
        end = len(self.text)
        if not self.finished:
            while end > self.sent and self.text[end - 1] == INCOMPLETE:
                end -= 1
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text[:end].endswith(s[:k])),
                       default=0)
        piece = self.text[self.sent:max(end, self.sent)]
        self.sent += len(piece)
        return piece


def answer_tokens(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    data = b""
    while len(data) < length:
        data += (rng.choice(WORDS) + (" " if rng.random() < 0.9 else "\n")).encode()
    return list(data[:length])


def stream(make, tokens: list[int]) -> tuple[float, str]:
    """Seconds of CPU to feed ``tokens`` one a step and take the text after each; and the text sent."""
    answer, pieces = make(), []
    started = time.process_time()
    for i, token in enumerate(tokens):
        answer.feed([token], finished=i == len(tokens) - 1)
        pieces.append(answer.take())
    return time.process_time() - started, "".join(pieces)


def last_step(make, tokens: list[int]) -> float:
    """Seconds of CPU the answer's last step costs (its last token fed and its text taken)."""
    answer = make()
    for token in tokens[:-1]:
        answer.feed([token])
        answer.take()
    started = time.perf_counter()
    answer.feed(tokens[-1:], finished=True)
    answer.take()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tok = ByteTokenizer()
    ways = {"whole": lambda: WholeEachStep(tok, STOP), "incremental": lambda: AnswerText(tok, STOP, 1 << 30)}
    out = {"tokenizer": "byte (built-in)", "stop": STOP, "repeats": args.repeats, "lengths": {}}
    for length in (int(x) for x in args.lengths.split(",")):
        tokens = answer_tokens(length, seed=length)
        best, texts = {}, {}
        for _ in range(args.repeats):
            for name, make in ways.items():  # taking turns, so the machine's noise falls on both alike
                seconds, texts[name] = stream(make, tokens)
                best[name] = min(best.get(name, seconds), seconds)
        if texts["whole"] != texts["incremental"] or texts["whole"] != tok.decode(tokens):
            raise SystemExit(f"the two ways sent different text at {length} tokens")
        us = {name: round(best[name] / length * 1e6, 2) for name in ways}
        last = {name: min(last_step(make, tokens) for _ in range(args.repeats)) for name, make in ways.items()}
        out["lengths"][str(length)] = {
            "us_per_token": us,
            "whole_over_incremental": round(best["whole"] / best["incremental"], 1),
            # the server's one thread, at the step where 16 rows that long end
            "ms_per_step_16_rows_at_end": {name: round(16 * last[name] * 1e3, 3) for name in ways},
        }
        print(f"{length} tokens: {us}", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
