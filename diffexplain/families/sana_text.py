"""SANA's text side: the Gemma 2 sequence, the complex human instruction, and which positions the
transformer's cross-attention reads (``SanaPipeline.encode_prompt``).

Per prompt p (lower-cased and stripped first: ``_text_preprocessing`` without ``clean_caption``), with the
instruction c = "\\n".join(complex_human_instruction)::

    text       = c + p                              (p alone without an instruction)
    n_c        = len(tokenizer.encode(c))           c's tokens, <bos> included
    L          = n_c + M − 2                        (M without an instruction)   M = max_sequence_length
    ids        = tokenizer(text, padding="max_length", max_length=L, truncation=True)   <bos> first
    states     = Gemma2(ids, attention_mask)        [B, L, D], causal: each token has read all before it
    kept       = [0] + [L − M + 1, ..., L − 1]      <bos>, then the last M − 1 positions   [B, M, D]

So the transformer reads M positions: <bos>, then the sequence's tail, which starts where the instruction
ends (position n_c − 1). Where the instruction's last piece joins the prompt's first word (the default
instruction ends in "User Prompt: ", and "▁a" is one piece) no instruction token is among them: the
instruction acts only through Gemma's causal attention on the prompt's states. The negative (or empty)
prompt is encoded without the instruction, M positions, none dropped.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffexplain.attention.tokens import Token, words_of

INSTRUCTION = "instruction"
"""The token kind of the complex human instruction's own tokens (``Token.kind``)."""


def pipeline_instruction(pipeline_class: type) -> list[str]:
    """The pipeline's default ``complex_human_instruction``, read from its ``__call__`` (never copied): the
    first in its class hierarchy that names one (a subclass may take ``**kwargs``)."""
    for cls in pipeline_class.__mro__:
        call = cls.__dict__.get("__call__")
        parameter = (
            None if call is None else inspect.signature(call).parameters.get("complex_human_instruction")
        )
        if parameter is not None:
            return [str(line) for line in parameter.default]
    raise TypeError(f"{pipeline_class.__name__}.__call__ takes no complex_human_instruction")


def check_instruction(value: Any) -> list[str] | None:
    """A ``complex_human_instruction``: a list of strings, or None (or empty: no instruction)."""
    if value is None or (isinstance(value, list | tuple) and len(value) == 0) or value is False:
        return None
    if isinstance(value, str) or not all(isinstance(line, str) for line in value):
        raise ValueError(
            "complex_human_instruction must be a list of strings (joined with newlines, put before the "
            f"prompt) or None for none; got {value!r:.80}"
        )
    return list(value)


def preprocess(text: str) -> str:
    """The prompt as ``SanaPipeline._text_preprocessing`` gives it to the tokenizer (no ``clean_caption``)."""
    return text.lower().strip()


def sequence_length(tokenizer: Any, instruction: list[str] | None, max_sequence_length: int) -> int:
    """L, the padded length of the Gemma sequence (see the module docstring)."""
    if not instruction:
        return max_sequence_length
    return len(tokenizer.encode("\n".join(instruction))) + max_sequence_length - 2


def kept_positions(length: int, max_sequence_length: int) -> list[int]:
    """The positions ``encode_prompt`` keeps of a sequence of ``length``: <bos>, then the last M − 1."""
    return [0] + [length + i for i in range(-max_sequence_length + 1, 0)]


def sana_tokens(
    tokenizer: Any, prompt: str, max_sequence_length: int, instruction: list[str] | None
) -> list[Token]:
    """The M text positions SANA's cross-attention reads for one prompt, each with its word: "start" for
    <bos>, "instruction" for the instruction's own tokens (word None: a word of the instruction is no word
    of the prompt), "word" for the prompt's (a piece that also holds the instruction's last space is the
    prompt's word), "pad" for padding."""
    text = preprocess(prompt)
    head = "\n".join(instruction) if instruction else ""
    length = sequence_length(tokenizer, instruction, max_sequence_length)
    enc = tokenizer(
        head + text,
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_offsets_mapping=True,
    )
    ids, mask, spans = list(enc["input_ids"]), list(enc["attention_mask"]), enc["offset_mapping"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", ())) - {getattr(tokenizer, "unk_token_id", None)}
    words = [(a + len(head), b + len(head), w) for a, b, w in words_of(text)]
    tokens = []
    for index, position in enumerate(kept_positions(length, max_sequence_length)):
        token_id, piece, start, end = ids[position], str(pieces[position]), *spans[position]
        word = word_index = None
        if not mask[position]:
            kind = "pad"
        elif token_id in special:
            kind = "start" if position == 0 else "end"
        elif end <= len(head):
            kind = INSTRUCTION
        else:
            kind = "word"
            word_index = next((k for k, (a, b, _) in enumerate(words) if a < end and start < b), None)
            word = words[word_index][2] if word_index is not None else piece.replace("▁", "") or piece
        tokens.append(Token(index, piece, word, kind, word_index, "gemma"))
    return tokens
