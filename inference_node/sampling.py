"""How a request's answer draws its tokens: one value that travels whole from the parsed request through
the batcher and the engine's pipe to the row of the batch (``model.DecodeBatch``), rather than a growing
list of positional parameters at every hop. Plain data, no torch: the server's process never loads it.

The parameters are OpenAI's, with its ranges and meaning:

- ``temperature`` (0: greedy, the likeliest token every time) and ``top_p`` (nucleus sampling);
- ``seed``: the row draws from a random generator of its own, so the same seed gives the same answer
  whatever else the batch holds;
- ``presence_penalty`` and ``frequency_penalty``: each token's logit is lowered by ``frequency_penalty``
  for every time the answer has generated it so far, and by ``presence_penalty`` once if it has (the
  answer's own tokens, not the prompt's: OpenAI's formula, as vLLM applies it); negative values raise it;
- ``logit_bias``: token id -> a value from -100 to 100 added to its logit at every step (-100 bans the
  token in practice, 100 makes it all but certain);
- ``top_k``, ``min_p`` and ``repetition_penalty`` (vLLM's extensions, with its meaning): a drawing row
  keeps only its ``top_k`` likeliest tokens (0 or -1: all), then those whose probabilities reach ``top_p``
  of what is left, and only those at least ``min_p`` times as likely as the likeliest; a token already in
  the prompt or the answer has its logit divided by ``repetition_penalty`` where positive and multiplied
  where negative (1: none; greedy rows too);
- ``min_tokens`` and ``ignore_eos`` (vLLM's extensions): no end-of-text (nor a chat model's end of turn)
  is drawn before the answer has ``min_tokens``, or, with ``ignore_eos``, at all, so the answer is
  ``max_tokens`` long: what a benchmark asks for, to measure a fixed amount of work per request (vLLM
  generates past an end-of-text with ``ignore_eos``; here it is never drawn: the same length, none in the
  text).

Penalties and biases change the logits before both greedy choice and sampling. ``logprobs`` (None: not
asked) has the row report, at the step that draws each token, its log-probability and those of the
``logprobs`` likeliest tokens in its place: the model's own distribution, before biases, penalties and
temperature (as vLLM reports by default)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

PENALTY_RANGE = (-2.0, 2.0)  # presence_penalty and frequency_penalty, as OpenAI takes them
BIAS_RANGE = (-100.0, 100.0)  # each logit_bias value


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()  # vLLM's: tokens that end this answer too (left out of it)

    @property
    def narrowed(self) -> bool:
        """Whether it draws from only part of the distribution (top_p under 1, a top_k, a min_p)."""
        return self.top_p < 1 or self.top_k > 0 or self.min_p > 0

    @property
    def repeats_penalized(self) -> bool:
        """Whether the tokens already in its prompt and answer change its logits (repetition_penalty)."""
        return self.repetition_penalty != 1

    @property
    def penalized(self) -> bool:
        """Whether its logits depend on what it has generated so far."""
        return bool(self.presence_penalty or self.frequency_penalty)

    def least_tokens(self, max_tokens: int) -> int:
        """The tokens an answer of at most ``max_tokens`` has before an end token may be drawn."""
        return max_tokens if self.ignore_eos else min(self.min_tokens, max_tokens)

    def stops_held(self, made: int, max_tokens: int) -> bool:
        """Whether its ``stop_token_ids`` may not be drawn yet: as in vLLM, ``min_tokens`` holds them off
        too, and ``ignore_eos`` does not (it is about the model's end-of-text only)."""
        return bool(self.stop_token_ids) and made < min(self.min_tokens, max_tokens)

    def nth(self, i: int) -> Sampling:
        """The ``i``-th of ``n`` answers asked for with these settings: a seed gives each its own draws
        (seed + i), so n answers of one seed still differ and each is the same again next time."""
        if self.seed is None or i == 0:
            return self
        return replace(self, seed=self.seed + i)


GREEDY = Sampling(temperature=0.0)
