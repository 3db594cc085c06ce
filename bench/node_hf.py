"""A Hugging Face model in the node's batch against transformers' own batched ``generate``.

The same Llama-shaped model (random weights, saved and loaded as a user's would be: ``--model hf:PATH``)
answers the same 16 prompts of different lengths greedily, 64 new tokens each, in one process on one
torch thread, the two ways taking turns:

* ``node``: ``model.generate`` (a ``DecodeBatch`` nobody joins: left-padded rows, positions from the
  mask, the cache handed to transformers as a ``DynamicCache`` and taken back every step);
* ``transformers``: ``model.generate`` of transformers on the left-padded batch (its own cache).

Reports tokens per second each way (best of ``--rounds``), their ratio, and whether the answers are the
same. Prints one JSON object.

Usage: python bench/node_hf.py [--hidden 256] [--layers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference_node.model import generate, load_model  # noqa: E402
from tests.node_models import write_hf_model  # noqa: E402

NEW_TOKENS = 64
PROMPTS = [("A GPU node boots, pulls its image " * k)[: 8 + 11 * k] for k in range(1, 17)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-llama"
        write_hf_model(path, hidden=args.hidden, layers=args.layers, context=512)
        node = load_model(f"hf:{path}", device=torch.device("cpu"))
        reference = AutoModelForCausalLM.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        tok.pad_token = tok.eos_token
        ids = [node.tokenizer.encode(p) for p in PROMPTS]
        padded = tok(PROMPTS, return_tensors="pt", padding=True)

        def ours() -> list[list[int]]:
            return generate(node, ids, [NEW_TOKENS] * len(ids))

        def theirs() -> list[list[int]]:
            with torch.inference_mode():
                out = reference.generate(**padded, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                         do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
            return out[:, padded["input_ids"].shape[1]:].tolist()

        best, answers = {}, {}
        ours(), theirs()  # warm
        for _ in range(args.rounds):
            for name, run in (("node", ours), ("transformers", theirs)):
                started = time.perf_counter()
                answers[name] = run()
                took = time.perf_counter() - started
                best[name] = min(best.get(name, took), took)
    tokens = len(PROMPTS) * NEW_TOKENS
    # the node cuts an answer at an end token; transformers was told to go on: compare up to the node's end
    same = all(a == b[: len(a)] for a, b in zip(answers["node"], answers["transformers"]))
    print(json.dumps({
        "model": {"hidden": args.hidden, "layers": args.layers, "rows": len(PROMPTS), "new_tokens": NEW_TOKENS,
                  "prompt_tokens": [min(map(len, ids)), max(map(len, ids))]},
        "threads": 1, "rounds": args.rounds,
        "tokens_per_second": {name: round(tokens / s, 1) for name, s in best.items()},
        "node_over_transformers": round(best["transformers"] / best["node"], 2),
        "same_greedy_answers": same,
    }, indent=2))


if __name__ == "__main__":
    main()
