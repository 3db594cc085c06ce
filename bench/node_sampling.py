"""What drawing, presence/frequency penalties, logit_bias and log-probabilities cost a batch, by vocabulary
size.

A batch keeps a ``(rows, vocab)`` count of each row's generated tokens while some row is penalized, and a
``(rows, vocab)`` bias while some row has one (``model.DecodeBatch``); each step then adds them to the
logits. With no row asking, nothing is kept or added. This bench times one batch of ``--rows`` rows (32
prompt tokens, ``--new-tokens`` each, greedy, no end-of-text so every row runs its length) of the built-in
model's ``--size`` with its output widened to each vocabulary (257: the byte tokenizer's; 32,000: Llama 2's
and Mistral's; 151,936: Qwen2's logits) and its weights scaled by ``--logit-scale`` (8: peaked as a trained
model's distributions are, the likeliest token about 0.4 and the 0.9 nucleus a hundred tokens or so, where
random weights spread it over most of the vocabulary; both are reported), on one torch thread, the settings
taking turns in each of ``--repeats`` rounds (best of them kept, so the machine's noise falls on all alike):

* ``plain``: greedy, no row penalized or biased;
* ``one_sampled``: one row drawing at temperature 1, the rest greedy (only that row pays for a draw);
* ``all_sampled``: every row drawing at temperature 1: the softmax and the draw over the whole vocabulary
  that every row of every batch paid for before, greedy or not (its argmax was then taken instead);
* ``all_top_p``: every row drawing at temperature 1 within top_p 0.9 (looked for among the 1,024 likeliest
  tokens, or in a sort of the whole vocabulary where they do not hold it);
* ``all_top_p_sorted``: the same, always sorting the whole vocabulary (what every top_p draw did before);
* ``all_top_k_top_p``: within top_k 50 and top_p 0.9 (vLLM's extension, the usual pair);
* ``one_penalized``: one row with both penalties, the rest plain (the counts are kept for all rows);
* ``all_penalized``: every row with both penalties;
* ``all_biased``: every row with a logit_bias of 20 tokens;
* ``all_both``: both, on every row;
* ``one_logprobs``: one row asking for log-probabilities and the 5 likeliest tokens' at each step (a
  softmax, a top 5 and a read of the device at every step), the rest plain;
* ``all_logprobs``: every row asking for them.

Prints one JSON object: per vocabulary, milliseconds per step of each setting and its ratio to ``plain``.

Usage: python bench/node_sampling.py [--size small] [--rows 16] [--new-tokens 32] [--repeats 3] [--logit-scale 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCABS = (257, 32_000, 151_936)


class NoEnd:
    """A tokenizer with no end-of-text: every row generates all its tokens, so each setting does the same work."""

    eos = None


def settings(rows: int) -> dict:
    from inference_node.sampling import GREEDY, Sampling

    penalized = Sampling(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.5)
    biased = Sampling(temperature=0.0, logit_bias={t: (-1) ** t * 5.0 for t in range(40, 60)})
    scored = Sampling(temperature=0.0, logprobs=5)
    both = Sampling(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.5, logit_bias=biased.logit_bias)
    drawn = Sampling(temperature=1.0)
    nucleus, narrowed = Sampling(temperature=1.0, top_p=0.9), Sampling(temperature=1.0, top_p=0.9, top_k=50)
    return {"plain": [GREEDY] * rows, "one_sampled": [drawn] + [GREEDY] * (rows - 1), "all_sampled": [drawn] * rows,
            "all_top_p": [nucleus] * rows, "all_top_p_sorted": [nucleus] * rows, "all_top_k_top_p": [narrowed] * rows,
            "one_penalized": [penalized] + [GREEDY] * (rows - 1),
            "all_penalized": [penalized] * rows, "all_biased": [biased] * rows, "all_both": [both] * rows,
            "one_logprobs": [scored] + [GREEDY] * (rows - 1), "all_logprobs": [scored] * rows}


def distribution(model, prompts: list[list[int]]) -> dict:
    """How peaked the model's next-token distributions are after the prompts: the likeliest token's mean
    probability, and the mean count of tokens in the 0.9 nucleus."""
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        probs = torch.softmax(model.module(ids, torch.ones_like(ids))[0][:, -1].float(), dim=-1)
    ranked = probs.sort(dim=-1, descending=True)[0]
    return {"top1_probability": round(float(ranked[:, 0].mean()), 3),
            "nucleus_0_9_tokens": round(float(((ranked.cumsum(-1) - ranked) < 0.9).sum(-1).float().mean()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="the built-in model's size (tiny, small, medium)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logit-scale", type=float, default=8.0, help="the output layer's weights times this")
    args = parser.parse_args()

    import torch

    import inference_node.model as model_module
    from inference_node.model import SIZES, LoadedModel, TinyGPT, generate

    ranked = model_module._ranked

    torch.set_num_threads(1)
    prompts = [[40 + r % 50] * 32 for r in range(args.rows)]
    out = {"size": args.size, "rows": args.rows, "new_tokens": args.new_tokens, "repeats": args.repeats,
           "logit_scale": args.logit_scale, "vocabularies": {}}
    for vocab in VOCABS:
        torch.manual_seed(0)
        module = TinyGPT(vocab, **SIZES[args.size]).eval()
        with torch.no_grad():
            module.head.weight.mul_(args.logit_scale)
        model = LoadedModel(module, NoEnd(), f"builtin-{args.size}-{vocab}", torch.device("cpu"))
        runs = settings(args.rows)
        best = {name: float("inf") for name in runs}
        answers = {}
        generate(model, prompts, [8] * args.rows)  # warm
        for round_ in range(args.repeats):
            for name, rules in runs.items():
                if name.endswith("_sorted"):  # the whole vocabulary sorted, as before the top 1,024 were looked at
                    model_module._ranked = lambda probs, *rest: probs.sort(dim=-1, descending=True)
                started = time.perf_counter()
                answers[name] = generate(model, prompts, [args.new_tokens] * args.rows, rules)
                best[name] = min(best[name], time.perf_counter() - started)
                model_module._ranked = ranked
            print(f"vocab {vocab}: round {round_ + 1} of {args.repeats}", file=sys.stderr)
        assert all(len(a) == args.new_tokens for rows in answers.values() for a in rows)
        assert answers["all_top_p"] == answers["all_top_p_sorted"]  # the same draws either way
        per_step = {name: round(1000 * s / args.new_tokens, 3) for name, s in best.items()}
        out["vocabularies"][str(vocab)] = {
            **distribution(model, prompts),
            "ms_per_step": per_step,
            "over_plain": {name: round(ms / per_step["plain"], 3) for name, ms in per_step.items() if name != "plain"},
            "penalties_changed_the_answer": answers["all_penalized"] != answers["plain"],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
