"""Tokenizers for the tiny LLM text encoders, built here (never downloaded): a byte-level BPE in the
style of Qwen2/Qwen3 (GPT-2 byte alphabet, Qwen's split pattern, ``<|im_start|>``/``<|im_end|>`` chat
markers and ``<|endoftext|>`` as padding), wrapped in transformers' ``Qwen2Tokenizer`` and carrying a
Qwen3-style chat template (``enable_thinking`` as Qwen3's own template reads it).

    tok = qwen_tokenizer()
    tok.apply_chat_template([{"role": "user", "content": "a red cube"}], tokenize=False,
                            add_generation_prompt=True, enable_thinking=True)
    # '<|im_start|>user\\na red cube<|im_end|>\\n<|im_start|>assistant\\n'

Every builder is deterministic (the BPE is trained on a fixed corpus), so two calls give the same
vocabulary; ``QWEN_VOCAB_SIZE`` is the size a tiny text-encoder config must have (ids are below it).
"""

from __future__ import annotations

from functools import cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN_VOCAB_SIZE = 512
"""The tiny Qwen-style vocabulary's size: 256 bytes, the merges and the special tokens (ids 0..511)."""

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2/Qwen3 releases)
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Qwen3's chat template, cut to what a text-to-image pipeline uses: system/user/assistant turns, the
# generation prompt, and the empty think block Qwen3 writes when enable_thinking is false
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

CORPUS = (
    "a red cube on the left of a blue sphere",
    "a green triangle above a yellow circle, a photo of a cat, a painting of a dog in the snow",
    "an astronaut riding a horse on the moon; a bowl of fruit on a wooden table at sunset",
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:",
    "You are an assistant designed to generate high-quality images based on user prompts.",
    "system user assistant The the A An In On With small large big tiny bright dark white black orange",
    "purple pink brown grey square circle star heart house tree car boat city mountain river sky",
    "0123456789 .,;:!?'\"-()[]{}<>/\\|@#$%^&*_+=~`",
)


@cache
def _qwen_backend() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_VOCAB_SIZE,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tokenizer


def qwen_tokenizer(model_max_length: int = 512) -> Qwen2Tokenizer:
    """A fresh Qwen2/Qwen3-style tokenizer over the tiny byte-level BPE, with Qwen3's chat template,
    ``<|endoftext|>`` as its pad token and right padding (as Qwen's releases ship it)."""
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(_qwen_backend().to_str()),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer
