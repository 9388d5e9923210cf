"""FLUX.2's text side as data: a chat-templated prompt, a causal LM's hidden states at a few layers, stacked.

FLUX.2 reads no sentence embedding. Its text encoder is a chat LLM (klein: Qwen3, dev: Mistral Small 3.1);
the prompt goes through the model's chat template, the LM runs once, and the hidden states after a few of
its layers (klein: 9, 18, 27; dev: 10, 20, 30) are stacked and concatenated along the features::

    text    = chat_template(prompt)                 what is actually encoded (``chat_text``)
    H_l     = hidden_states[l]       [B, T, D]      after layer l (0: the token embeddings)
    layers  = stack(H_l for l in L)  [B, |L|, T, D] the hook point ``prompt.layers.cond``
    embeds  = concat over L          [B, T, |L|·D]  the transformer's encoder_hidden_states (``prompt.cond``)

Every position of the template's text is a text token the transformer attends to: the template's own
tokens (``<|im_start|>``, ``user``, the empty think block...) are marked ``kind="template"`` in the
token list, the prompt's tokens ``"word"``, padding ``"pad"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffexplain.attention.tokens import Token, words_of

SENTINEL = "\x00prompt\x00"
"""A stand-in prompt for finding where the prompt sits in the template's text."""


def stack_layers(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """[B, |L|, T, D]: the hidden states after each chosen layer, stacked as the pipelines stack them."""
    return torch.stack([hidden_states[k] for k in layers], dim=1)


def flatten_layers(layers: torch.Tensor) -> torch.Tensor:
    """[B, |L|, T, D] → [B, T, |L|·D]: each token's states at every chosen layer side by side (the
    pipelines' ``permute(0, 2, 1, 3).reshape``)."""
    batch, count, tokens, dim = layers.shape
    return layers.permute(0, 2, 1, 3).reshape(batch, tokens, count * dim)


def check_layers(layers: Any, name: str, num_layers: int, hidden: int, joint_dim: int) -> list[int]:
    """``text_encoder_out_layers`` as a list of whole numbers in 0..num_layers whose stack fits the
    transformer (|L|·D = ``joint_attention_dim``); ``ValueError`` naming what is wrong."""
    if isinstance(layers, int | str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"text_encoder_out_layers must be a non-empty list of layer indices, got {layers!r}")
    picked = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_layers:
            raise ValueError(
                f"text_encoder_out_layers={list(layers)!r}: {k!r} is not a layer of {name}, whose hidden "
                f"states are 0 (the token embeddings) .. {num_layers} (after its last layer)"
            )
        picked.append(int(k))
    if len(picked) * hidden != joint_dim:
        raise ValueError(
            f"text_encoder_out_layers={picked!r}: {len(picked)} layers × {name}'s width {hidden} = "
            f"{len(picked) * hidden} features per token, but the transformer reads {joint_dim} "
            f"(joint_attention_dim): pick {joint_dim // hidden} layers"
        )
    return picked


def prompt_span(render: Any, prompt: str) -> tuple[str, int, int]:
    """(text, start, end): the template's text of ``prompt`` and where the prompt sits in it (by characters)."""
    text = render(prompt)
    prefix = render(SENTINEL).split(SENTINEL)[0]
    if not text.startswith(prefix) or text[len(prefix) : len(prefix) + len(prompt)] != prompt:
        start = text.find(prompt)  # a template that changes what precedes the prompt (never seen)
        return text, start, start + len(prompt)
    return text, len(prefix), len(prefix) + len(prompt)


def chat_tokens(
    tokenizer: Any,
    render: Any,
    prompt: str,
    length: int,
    *,
    source: str,
    template_prompt: str | None = None,
    add_special_tokens: bool = True,
) -> list[Token]:
    """``length`` positions of the template's text of ``prompt``, padded and cut as the pipeline does: the
    prompt's tokens with their words, the template's own tokens (kind "template") and padding ("pad").

    ``template_prompt``: the prompt as the template receives it, where the pipeline cleans it first (dev
    removes "[IMG]"); words are found in it. ``add_special_tokens``: as the pipeline tokenizes (klein calls
    the tokenizer on the text; dev's chat template tokenizes without adding any).
    """
    shown = prompt if template_prompt is None else template_prompt
    text, start, end = prompt_span(render, shown)
    enc = tokenizer(
        text,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_attention_mask=True,
        return_offsets_mapping=True,
        add_special_tokens=add_special_tokens,
    )
    ids, mask, spans = list(enc["input_ids"]), list(enc["attention_mask"]), enc["offset_mapping"]
    texts = tokenizer.convert_ids_to_tokens(ids)
    words = [(a + start, b + start, w) for a, b, w in words_of(shown)]
    tokens = []
    for i, (token_text, real, (a, b)) in enumerate(zip(texts, mask, spans, strict=True)):
        if not real:
            tokens.append(Token(i, str(token_text), None, "pad", None, source))
            continue
        if not (a < end and start < b):  # outside the prompt: the template's own text
            tokens.append(Token(i, str(token_text), None, "template", None, source))
            continue
        index = next((k for k, (wa, wb, _) in enumerate(words) if wa < b and a < wb), None)
        word = (
            words[index][2] if index is not None else tokenizer.convert_tokens_to_string([token_text]).strip()
        )
        tokens.append(Token(i, str(token_text), word or str(token_text), "word", index, source))
    return tokens


# ---- klein: Qwen3 through its chat template ------------------------------------------------------------
def qwen3_chat_text(tokenizer: Any, prompt: str) -> str:
    """The text ``Flux2KleinPipeline`` encodes for ``prompt``: one user turn, the generation prompt, and
    thinking off (Qwen3 writes an empty think block)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )


def qwen3_inputs(tokenizer: Any, prompts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T]: each prompt's chat text tokenized on its own, padded to
    ``length`` and cut there, as ``Flux2KleinPipeline._get_qwen3_prompt_embeds``."""
    ids, masks = [], []
    for prompt in prompts:
        inputs = tokenizer(
            qwen3_chat_text(tokenizer, prompt),
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=length,
        )
        ids.append(inputs["input_ids"])
        masks.append(inputs["attention_mask"])
    return torch.cat(ids), torch.cat(masks)


# ---- dev: Mistral Small 3.1 through its processor's chat template -----------------------------------
def mistral_messages(prompts: Sequence[str]) -> list[list[dict[str, Any]]]:
    """``Flux2Pipeline``'s conversations: its system message, then the prompt ("[IMG]" removed) as the user."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    return format_input(prompts=list(prompts))


def mistral_chat_text(processor: Any, prompt: str) -> str:
    """The text ``Flux2Pipeline`` encodes for ``prompt`` (system message and user turn, no generation prompt)."""
    return processor.apply_chat_template(
        mistral_messages([prompt])[0], tokenize=False, add_generation_prompt=False
    )


def mistral_inputs(processor: Any, prompts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T] as ``Flux2Pipeline._get_mistral_3_small_prompt_embeds``: the whole
    batch through the processor's (or tokenizer's) chat template, padded to ``length`` and cut there."""
    inputs = processor.apply_chat_template(
        mistral_messages(prompts),
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=length,
    )
    return inputs["input_ids"], inputs["attention_mask"]


def text_tokenizer(part: Any) -> Any:
    """The tokenizer itself: a processor's ``tokenizer`` (dev's PixtralProcessor), else the part."""
    return getattr(part, "tokenizer", part)
