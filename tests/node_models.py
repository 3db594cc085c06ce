"""Models a test node serves as a user's own (``--model tests.node_models:NAME``, a module:factory)."""

from __future__ import annotations

import os

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


class SmallMemory(TinyGPT):
    """The built-in decoder on a device whose memory holds the keys and values of at most ``ROOM``
    positions of a batch (rows x width): past that, the error a GPU raises out of memory."""

    ROOM = 160

    def forward(self, input_ids, attention_mask, past=None, positions=None):
        rows, width = attention_mask.shape
        if rows * width > self.ROOM:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows * width} positions")
        return super().forward(input_ids, attention_mask, past, positions)


class SqueezedMemory(SmallMemory):
    """SmallMemory whose device holds half as much while the file named by ``PEAKPILOT_TEST_SQUEEZE`` exists:
    another process holding part of the GPU for a while."""

    def forward(self, input_ids, attention_mask, past=None, positions=None):
        rows, width = attention_mask.shape
        if os.path.exists(os.environ.get("PEAKPILOT_TEST_SQUEEZE", "")) and rows * width > self.ROOM // 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows * width} positions")
        return super().forward(input_ids, attention_mask, past, positions)


def squeezed_memory():
    """SmallMemory's decoder, on a device another process takes half of while a file exists."""
    torch.manual_seed(0)
    return SqueezedMemory(ByteTokenizer.vocab_size, d_model=64, n_layers=1, n_heads=4), ByteTokenizer()


def small_memory():
    """A small decoder on a device with room for 160 positions of a batch."""
    torch.manual_seed(0)
    return SmallMemory(ByteTokenizer.vocab_size, d_model=64, n_layers=1, n_heads=4), ByteTokenizer()


def short_context():
    """A small decoder whose context is 48 tokens."""
    torch.manual_seed(0)
    return StrictPositions(ByteTokenizer.vocab_size, d_model=64, n_layers=1, n_heads=4, max_seq=48), ByteTokenizer()


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_hf_model(path, architecture: str = "llama", hidden: int = 64, layers: int = 2, context: int = 128) -> None:
    """A small decoder (``llama``, ``qwen2`` or ``gpt2``) with random weights and a byte-level BPE tokenizer
    trained here (nothing downloaded), saved as ``save_pretrained`` writes a real one: ``config.json``,
    ``generation_config.json`` (whose end tokens are the end of text and the chat template's end of turn),
    ``model.safetensors``, ``tokenizer.json`` and its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (GPT2Config, GPT2LMHeadModel, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

    specials = ["<s>", "</s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["A GPU node boots, pulls its image, loads the model and warms up before the peak."] * 40 + \
             ["Hello there! café naïve 日本 € — the service answers, busy or not."] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        additional_special_tokens=specials[2:], model_max_length=context)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    # initializer_range spreads the random logits apart: greedy answers then do not hang on near ties
    shape = dict(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, initializer_range=0.5)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=context, **shape))
    else:
        config, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
        model = cls(config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, **shape))
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=[1, 2])
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
