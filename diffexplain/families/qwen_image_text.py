"""Qwen-Image's prompt as its text encoder reads it: a chat template around the prompt, a fixed number of
leading tokens dropped, and the last hidden state of what is left (``QwenImagePipeline._get_qwen_prompt_embeds``).

Notation: P the prompt's tokens, S_pre and S_post the template's tokens before and after it, d the drop
(``prompt_template_encode_start_idx`` = 34), T the positions the transformer reads::

    text   = template.format(prompt)
             "<|im_start|>system\\nDescribe the image by detailing …<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n"
    tokens = S_pre + P + S_post                  Qwen2.5-VL runs on all of them (its causal attention reads the
                                                 system prompt before the prompt)
    kept   = tokens[d:][:max_sequence_length]    T = |kept|; the pipeline pads a batch to its longest and masks

The 34 is counted for Qwen2.5-VL's own tokenizer: its S_pre is exactly 34 tokens, so the transformer reads
P + S_post (the prompt, then "<|im_end|>", "\\n", "<|im_start|>", "assistant", "\\n"). Another tokenizer (a
tiny test vocabulary) splits the system prompt into another number of tokens, and the pipeline still drops
34: what is dropped and kept is then counted here from the tokenizer, never assumed (``template_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffexplain.attention.tokens import Token, words_of

PROMPT_TEMPLATE_DROP = 34
"""``QwenImagePipeline.prompt_template_encode_start_idx``: the leading tokens dropped, counted for
Qwen2.5-VL's tokenizer (its system-prompt prefix, through ``<|im_start|>user\\n``)."""


@dataclass(frozen=True)
class TemplateToken:
    """One token of the templated prompt as the text encoder reads it."""

    position: int  # along the encoded sequence (0 = "<|im_start|>")
    text: str  # the tokenizer's token
    role: str  # "template" (the chat template's, before or after the prompt) or "prompt"
    dropped: bool  # among the first d the pipeline drops: the transformer never reads it

    def __str__(self) -> str:
        mark = " (dropped)" if self.dropped else ""
        return f"{self.position}: {self.text!r} [{self.role}]{mark}"


def template_parts(template: str) -> tuple[str, str]:
    """(before, after): the template's text around the prompt's ``{}``."""
    before, sep, after = template.partition("{}")
    if not sep:
        raise ValueError(f"the prompt template has no '{{}}' where the prompt goes: {template!r}")
    return before, after


def _encoded(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """The ids of ``text`` (no special tokens added: the template writes its own) and their character spans."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return list(tokenizer(text)["input_ids"]), None


def template_tokens(tokenizer: Any, template: str, prompt: str, drop: int) -> list[TemplateToken]:
    """Every token of ``template.format(prompt)``, each marked as the template's or the prompt's, and
    whether the pipeline drops it (the first ``drop``)."""
    before, _ = template_parts(template)
    text = template.format(prompt)
    ids, spans = _encoded(tokenizer, text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    start, end = len(before), len(before) + len(prompt)
    if spans is None:  # no offsets: count the template's own tokens before the prompt
        prefix = len(_encoded(tokenizer, before)[0])
        spans = [(0, 0) if i < prefix else (start, start + 1) for i in range(len(ids))]
    tokens = []
    for i, (piece, (a, b)) in enumerate(zip(pieces, spans, strict=True)):
        role = "prompt" if a < end and start < b else "template"
        tokens.append(TemplateToken(i, str(piece), role, i < drop))
    return tokens


def prefix_token_count(tokenizer: Any, template: str, prompt: str = "a") -> int:
    """How many tokens the template puts before the prompt with this tokenizer (34 for Qwen2.5-VL's)."""
    tokens = template_tokens(tokenizer, template, prompt, 0)
    return next((t.position for t in tokens if t.role == "prompt"), len(tokens))


def prompt_tokens(
    tokenizer: Any, template: str, prompt: str, drop: int, max_sequence_length: int
) -> list[Token]:
    """The positions the transformer reads for one prompt (``tokens[drop:][:max_sequence_length]``), with
    the prompt's words; the template's tokens kept there have no word (kind "special" before the prompt,
    "end" after it) and source "template", the prompt's have source "prompt". A batch pads shorter
    prompts to its longest with masked positions, which are not listed (they get no attention)."""
    before, _ = template_parts(template)
    words = [(a + len(before), b + len(before), w) for a, b, w in words_of(prompt)]
    prompt_end = len(before) + len(prompt)
    text = template.format(prompt)
    ids, spans = _encoded(tokenizer, text)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    marked = template_tokens(tokenizer, template, prompt, drop)
    seen_prompt = False
    tokens: list[Token] = []
    for i in range(drop, min(len(ids), drop + int(max_sequence_length))):
        index = i - drop
        if marked[i].role == "template":
            after = spans[i][0] >= prompt_end if spans is not None else seen_prompt
            kind = "end" if after else "special"
            tokens.append(Token(index, str(pieces[i]), None, kind, None, "template"))
            continue
        seen_prompt = True
        word_index = None
        if spans is not None:
            a, b = spans[i]
            word_index = next((k for k, (s, e, _) in enumerate(words) if s < b and a < e), None)
        word = (
            words[word_index][2]
            if word_index is not None
            else tokenizer.convert_tokens_to_string([pieces[i]]).strip()
        )
        tokens.append(Token(index, str(pieces[i]), word or str(pieces[i]), "word", word_index, "prompt"))
    return tokens
