"""Prompts longer than a text encoder takes: which words are cut, found and said once for every family.

A text encoder reads a fixed number of token positions (CLIP: 77, special tokens included); the
pipelines cut a longer prompt there, and the words past the cut play no part in the picture. Diffusers
says so in a log line ("The following part of your input was truncated because CLIP can only handle
sequences up to 77 tokens: ..."); diffexplain says it in a ``UserWarning`` naming the encoder, its
limit and the words dropped.

Each family names its encoders' limits (``Family.text_limits``: SD's one tokenizer at its
``model_max_length``, SDXL's two, SD3's two CLIPs and its T5 at ``max_sequence_length``, Flux's CLIP
and T5, IF's T5 at 77, the Kandinsky prior's CLIP); everything else is here: ``cut_prompts`` tokenizes
each prompt once per encoder without cutting, ``warn_cut`` words the warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffexplain.errors import user_stacklevel


@dataclass(frozen=True)
class TextLimit:
    """How many token positions one text encoder reads, and with which tokenizer."""

    encoder: str  # for people: the part's name and class, e.g. "text_encoder_3 (T5EncoderModel)"
    tokenizer: Any  # the part that tokenizes for it
    max_length: int  # token positions the encoder reads, special tokens (start, end) included
    preprocess: Callable[[str], str] | None = None  # what the pipeline does to a prompt first (IF lowers it)


def text_limit(
    parts: Mapping[str, Any],
    tokenizer: str,
    encoder: str,
    max_length: int | None = None,
    preprocess: Callable[[str], str] | None = None,
) -> TextLimit | None:
    """The limit of the encoder ``parts[encoder]`` reading through ``parts[tokenizer]``: ``max_length``
    positions, or the tokenizer's ``model_max_length``; None where the family has no such part."""
    tokenizer_part, encoder_part = parts.get(tokenizer), parts.get(encoder)
    if tokenizer_part is None or encoder_part is None:
        return None
    length = int(tokenizer_part.model_max_length if max_length is None else max_length)
    return TextLimit(f"{encoder} ({type(encoder_part).__name__})", tokenizer_part, length, preprocess)


def split_at_limit(tokenizer: Any, text: str, max_length: int) -> tuple[str, str]:
    """(read, dropped): the part of ``text`` an encoder of ``max_length`` positions reads, and the part
    cut off ("" when the text fits), as the pipelines cut it (``truncation=True``, special tokens added).

    A cut inside a word (a word-piece tokenizer splits "purplish" into "purp", "##lish") drops the whole
    word here, so the warning names it.
    """
    room = max(int(max_length) - tokenizer.num_special_tokens_to_add(pair=False), 0)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    except NotImplementedError:  # a slow (Python) tokenizer has no character offsets: decode the pieces
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= room:
            return text, ""
        return tokenizer.decode(ids[:room]).strip(), tokenizer.decode(ids[room:]).strip()
    offsets = encoded["offset_mapping"]
    if len(offsets) <= room:
        return text, ""
    cut = int(offsets[room][0])
    if 0 < cut < len(text) and text[cut].isalnum():
        while cut > 0 and text[cut - 1].isalnum():  # back to the start of the word it cuts
            cut -= 1
    return text[:cut].rstrip(), text[cut:].strip()


@dataclass(frozen=True)
class PromptCut:
    """One prompt that at least one text encoder cuts."""

    argument: str  # which argument: "prompt", "prompt[1]", "negative_prompt"
    text: str  # the prompt as given
    dropped: tuple[tuple[TextLimit, str], ...]  # per encoder that cuts it: (its limit, the text it drops)
    read: str  # the most of the prompt any encoder reads: the whole of it where one reads it all


def _entries(argument: str, value: str | Sequence[str] | None) -> list[tuple[str, str]]:
    """(argument name, text) of each distinct non-empty prompt; a batch's repeats are named once."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(argument, value)] if value else []
    indices: dict[str, list[int]] = {}
    for i, text in enumerate(value):
        if text:
            indices.setdefault(text, []).append(i)
    return [
        (argument if len(where) == len(value) else ", ".join(f"{argument}[{i}]" for i in where), text)
        for text, where in indices.items()
    ]


def cut_prompts(
    limits: Sequence[TextLimit],
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
) -> list[PromptCut]:
    """The prompts (and negative prompts) that some encoder of ``limits`` cuts, with what each drops."""
    cuts = []
    for argument, text in _entries("prompt", prompt) + _entries("negative_prompt", negative_prompt):
        dropped, reads = [], []
        for limit in limits:
            seen = limit.preprocess(text) if limit.preprocess is not None else text
            read, cut_off = split_at_limit(limit.tokenizer, seen, limit.max_length)
            reads.append(text if not cut_off else read)
            if cut_off:
                dropped.append((limit, cut_off))
        if dropped:
            cuts.append(PromptCut(argument, text, tuple(dropped), max(reads, key=len)))
    return cuts


def read_text(text: str, cuts: Sequence[PromptCut]) -> str:
    """The part of ``text`` the model reads: all of it, unless a cut in ``cuts`` is of this text."""
    for cut in cuts:
        if cut.text == text:
            return cut.read
    return text


def warn_cut(cuts: Sequence[PromptCut], *, stacklevel: int | None = None) -> None:
    """One ``UserWarning`` per cut prompt, naming each encoder that cuts it, its limit and the words dropped;
    shown at ``stacklevel`` (None: the first line outside diffexplain)."""
    for cut in cuts:
        details = "; ".join(
            f"{limit.encoder} reads at most {limit.max_length} tokens (start and end tokens included), "
            f"so it drops {dropped!r}"
            for limit, dropped in cut.dropped
        )
        if cut.read == cut.text:  # another encoder reads all of it (SD3's T5 beside its CLIPs)
            effect = "cut by some of the model's text encoders (another one reads all of it)"
        else:
            effect = "longer than the text encoder takes, so its last words are cut and play no part in the picture"
        warnings.warn(
            f"{cut.argument} is {effect}: {details}. Shorten the prompt, or put what matters first.",
            UserWarning,
            stacklevel=user_stacklevel() if stacklevel is None else stacklevel + 1,
        )
