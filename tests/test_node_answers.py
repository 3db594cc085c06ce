"""An answer's text as its tokens arrive (inference_node/answers.py): streamed in pieces, it reads the same
as whole, never sends a character before it is whole, and never sends a stop string or any part of one."""

import random

import pytest

from inference_node.answers import AnswerText
from inference_node.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def streamed(tokens: list[int], stop: list[str], max_tokens: int, chunks: list[int]):
    """Feed ``tokens`` in pieces of the sizes in ``chunks`` (the last piece finished), as the engine tells
    them; the text taken after each piece, and the answer. Stops feeding once a stop string came (the
    row leaves the batch then)."""
    answer, pieces, at = AnswerText(TOK, stop, max_tokens), [], 0
    answer.seen = []  # ``taken`` after each piece
    for size in chunks:
        part, at = tokens[at:at + size], at + size
        answer.feed(part, finished=at >= len(tokens))
        pieces.append(answer.take())
        answer.seen.append(answer.taken)
        if answer.stopped or answer.finished:
            break
    if not answer.finished:  # ended early by its stop string: the batcher's last word, no tokens
        answer.feed([], finished=True)
        pieces.append(answer.take())
        answer.seen.append(answer.taken)
    return pieces, answer


def test_a_character_split_over_tokens_is_sent_once_whole():
    tokens = list("é€!".encode())  # 2 + 3 + 1 bytes
    pieces, answer = streamed(tokens, [], 16, [1] * len(tokens))
    assert pieces == ["", "é", "", "", "€", "!"]
    assert answer.text == "é€!" and answer.finish_reason == "stop"  # ended before max_tokens: end-of-text
    assert answer.generated_tokens == 7  # as vLLM counts completion_tokens: the end-of-text drawn too


def test_text_that_could_begin_a_stop_string_waits_and_the_stop_string_is_never_sent():
    pieces, answer = streamed(list(b"abc\nUser: more"), ["\nUser:"], 64, [1] * 14)
    assert "".join(pieces) == "abc" and answer.stopped and answer.finish_reason == "stop"
    assert pieces[:4] == ["a", "b", "c", ""]  # "\n" might begin the stop string
    assert answer.kept_tokens == 3
    assert answer.generated_tokens == 9  # vLLM's count: the stop string's tokens too, up to its last
    # a false start is sent once it is known not to be one
    pieces, answer = streamed(list(b"a\nUs!"), ["\nUser:"], 5, [1] * 5)
    assert pieces == ["a", "", "", "", "\nUs!"] and not answer.stopped and answer.finish_reason == "length"
    assert answer.generated_tokens == 5  # at max_tokens: no end-of-text was drawn


def test_a_stop_string_is_not_matched_by_a_character_not_yet_whole():
    """A decoder writes U+FFFD for the first byte of a character still to come; a stop string of U+FFFD
    must not end the answer there (whole, that text holds no U+FFFD)."""
    tokens = list("aé".encode())
    pieces, answer = streamed(tokens, ["\ufffd"], 8, [2, 1])
    assert not answer.stopped and "".join(pieces) == "aé"


@pytest.mark.parametrize("seed", range(40))
def test_streamed_in_any_pieces_an_answer_reads_as_it_does_whole(seed):
    rng = random.Random(seed)
    alphabet = [list(c.encode()) for c in "ab \n:é€日"] + [[0xff], [0xc3], [256]]  # stray bytes, end-of-text
    tokens = [t for _ in range(rng.randint(0, 40)) for t in rng.choice(alphabet)]
    whole_text = TOK.decode(tokens)
    stop = [whole_text[i:i + rng.randint(1, 4)] for i in rng.choices(range(len(whole_text) + 1), k=2)]
    stop = [s for s in stop if s] or ["zz"]
    max_tokens = len(tokens) + rng.randint(0, 2)
    whole = AnswerText(TOK, stop, max_tokens)
    whole.feed(tokens, finished=True)

    chunks = [rng.randint(1, 3) for _ in range(len(tokens) + 1)]
    pieces, answer = streamed(tokens, stop, max_tokens, chunks)
    assert "".join(pieces) == whole.text == answer.text
    assert answer.stopped == whole.stopped and answer.finish_reason == whole.finish_reason
    assert answer.kept_tokens == whole.kept_tokens
    # counted as vLLM counts them, whether the engine went on past the stop string (whole) or not (streamed):
    # up to the token that completes the stop string, or all of them and the end-of-text that ended them
    assert answer.generated_tokens == whole.generated_tokens >= whole.kept_tokens
    if whole.stopped:
        made = tokens[:whole.generated_tokens]
        assert TOK.decode(made).startswith(whole.text + whole.stop_string)
        assert not TOK.decode(made[:-1]).startswith(whole.text + whole.stop_string)
    else:
        assert whole.generated_tokens == len(tokens) + (len(tokens) < max_tokens)
    sent = ""
    for piece, (count, chars) in zip(pieces, answer.seen):
        sent += piece  # what was sent is always the start of the answer, and holds no stop string
        assert whole.text.startswith(sent) and not any(s in sent for s in stop)
        # the tokens counted as taken (their log-probabilities go out with this piece) are those of text sent
        assert chars <= len(sent) and TOK.decode(tokens[:count]) == sent[:chars]
    assert answer.seen == sorted(answer.seen) and answer.taken == (whole.kept_tokens, len(whole.text))


class WordTokenizer:
    """Words as tokens, a space between them: a token reads otherwise at the start of a text than after
    another (as a SentencePiece tokenizer's leading space does), so an answer's new tokens cannot be
    decoded alone."""

    words = ["Hello", "world", "and", "GPUs", "!"]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def test_new_tokens_are_read_after_the_ones_before_them():
    tok = WordTokenizer()
    tokens = [0, 1, 2, 3, 4, 1]
    answer, pieces = AnswerText(tok, [], 16), []
    for i, token in enumerate(tokens):
        answer.feed([token], finished=i == len(tokens) - 1)
        pieces.append(answer.take())
    assert pieces == ["Hello", " world", " and", " GPUs", " !", " world"]
    assert answer.text == tok.decode(tokens)
    stopped = AnswerText(tok, ["d an"], 16)  # a stop string over two tokens
    for token in tokens:
        stopped.feed([token])
        if stopped.stopped:
            break
    assert stopped.text == "Hello worl" and stopped.kept_tokens == 1 and stopped.finish_reason == "stop"
    assert stopped.generated_tokens == 3  # "Hello world and": "and" completes the stop string
