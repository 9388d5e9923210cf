"""Z-Image's text side as data: the chat-template text its LLM reads, the token list with the template's own
tokens marked, and the LLM's chosen hidden states (``ZImagePipeline._encode_prompt``).

Z-Image reads the prompt with a Qwen3 LLM, through the tokenizer's chat template as a user turn with
``add_generation_prompt=True`` and ``enable_thinking=True``::

    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n

padded (right) to ``max_sequence_length`` tokens. The pipeline takes the LLM's second-to-last hidden
states, ``hidden_states[-2]`` [B, T, D], and hands the transformer a *list* of each prompt's real tokens,
``embeds[i][mask[i]]`` [L_i, D]: the padding is dropped, so each prompt has its own length.

Here the conditioning keeps the states at every position and the mask beside them:

    embeds  [B, T, D]   hidden_states[-2], padding positions included   (prompt.cond, prompt.uncond)
    mask    [B, T]      True where a token is real (the tokenizer's attention mask, as bool)
    ids     [B, T]      the token ids the LLM read: ``tokenizer.decode`` gives the template text back

and the model call takes ``embeds[i][mask[i]]``, the very list the pipeline makes.
"""

from __future__ import annotations

from typing import Any

import torch

from diffexplain.attention.tokens import Token, words_of

CHAT_SOURCE = "qwen3"
"""``Token.source`` of Z-Image's tokens: the LLM's sequence."""


def chat_text(tokenizer: Any, prompt: str) -> str:
    """The text Z-Image's LLM reads for ``prompt``: its chat template, as ``ZImagePipeline._encode_prompt``."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )


def prompt_span(tokenizer: Any, prompt: str) -> tuple[str, int]:
    """(the chat text, where ``prompt`` starts in it): the template's text around it is the template's own."""
    text, empty = chat_text(tokenizer, prompt), chat_text(tokenizer, "")
    for start in range(len(empty) + 1):
        if (
            text[start : start + len(prompt)] == prompt
            and text[:start] + text[start + len(prompt) :] == empty
        ):
            return text, start
    raise ValueError(f"the tokenizer's chat template does not hold the prompt {prompt!r} as written")


def template_tokens(tokenizer: Any, prompt: str, length: int) -> list[Token]:
    """The ``length`` token positions the LLM reads for ``prompt`` (padding included), each marked: the
    prompt's own tokens are ``kind="word"`` with their word; the chat template's tokens (``<|im_start|>``,
    ``user``, ``assistant``, newlines) are ``kind="special"``, and padding ``kind="pad"``."""
    text, start = prompt_span(tokenizer, prompt)
    end = start + len(prompt)
    enc = tokenizer(
        text,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_attention_mask=True,
        return_offsets_mapping=True,
    )
    texts = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    words = [(a + start, b + start, w) for a, b, w in words_of(prompt)]
    tokens = []
    for i, (token_text, real, (a, b)) in enumerate(
        zip(texts, enc["attention_mask"], enc["offset_mapping"], strict=True)
    ):
        if not real:
            tokens.append(Token(i, str(token_text), None, "pad", None, CHAT_SOURCE))
            continue
        if b <= start or a >= end or a == b:  # outside the prompt: the template's own
            tokens.append(Token(i, str(token_text), None, "special", None, CHAT_SOURCE))
            continue
        index = next((k for k, (c, d, _) in enumerate(words) if c < b and a < d), None)
        word = (
            words[index][2] if index is not None else tokenizer.convert_tokens_to_string([token_text]).strip()
        )
        tokens.append(Token(i, str(token_text), word or str(token_text), "word", index, CHAT_SOURCE))
    return tokens


def template_prefix(tokenizer: Any) -> int:
    """How many tokens the chat template puts before the prompt (``<|im_start|>user\\n``): the positions of
    ``max_sequence_length`` the prompt cannot have. The template's closing tokens come after the prompt and
    are cut first (``truncation=True`` keeps the start)."""
    text, start = prompt_span(tokenizer, "x")  # a one-letter prompt: where the template puts it
    return len(tokenizer(text[:start])["input_ids"])


@torch.no_grad()
def encode_texts(
    tokenizer: Any, text_encoder: Any, prompts: list[str], max_sequence_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """``embeds`` [B, T, D] (the LLM's ``hidden_states[-2]``), ``mask`` [B, T] (bool) and ``ids`` [B, T] of
    ``prompts``, encoded in one batch through the chat template, as ``ZImagePipeline._encode_prompt``."""
    texts = [chat_text(tokenizer, p) for p in prompts]
    inputs = tokenizer(
        texts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    )
    ids = inputs.input_ids.to(device)
    mask = inputs.attention_mask.to(device).bool()
    embeds = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return {"embeds": embeds, "mask": mask, "ids": ids}


def caption_list(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The transformer's captions: ``embeds[i][mask[i]]`` [L_i, D] per row, the pipeline's list exactly."""
    if mask.shape != embeds.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"Z-Image's mask must be bool [B, T] = {list(embeds.shape[:2])} beside embeds {list(embeds.shape)}; "
            f"got {mask.dtype} {list(mask.shape)}"
        )
    captions = [embeds[i][mask[i]] for i in range(embeds.shape[0])]
    empty = [i for i, c in enumerate(captions) if c.shape[0] == 0]
    if empty:
        raise ValueError(f"Z-Image's mask leaves row(s) {empty} without a token: the transformer needs one")
    return captions
