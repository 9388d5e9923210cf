"""Warnings about a run's text before it runs: the words cut at a text encoder's token limit
(``diffexplain.prompt_limits``), then the words the model never saw (models with a ``vocabulary``)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from diffexplain.errors import user_stacklevel
from diffexplain.prompt_limits import PromptCut, cut_prompts, read_text, warn_cut

if TYPE_CHECKING:
    from diffexplain.families.base import Family


def warn_prompt(
    family: Family,
    vocabulary: frozenset[str] | None,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None,
    options: dict[str, Any],
) -> None:
    """Warn about the prompts given (None: unchanged, as in a fork), shown at the user's line."""
    cuts = cut_prompts(family.text_limits(options), prompt, negative_prompt)
    warn_cut(cuts)
    if prompt is not None:
        warn_unknown_words(vocabulary, prompt, cuts)


def warn_unknown_words(
    vocabulary: frozenset[str] | None, prompt: str | list[str], cuts: list[PromptCut] | None = None
) -> None:
    """A ``UserWarning`` listing the prompt's words the model never saw (models with a ``vocabulary``),
    leaving out words cut at the text encoder's limit (``cuts``): the model reads them in no case."""
    if not vocabulary:
        return
    from diffexplain.data.vocab import unknown_words  # the data package: only models with a vocabulary

    prompts = [prompt] if isinstance(prompt, str) else prompt
    text = " ".join(read_text(p, cuts or []) for p in prompts)
    unknown = unknown_words(text, vocabulary)
    if unknown:
        warnings.warn(
            f"this model was trained on captions with a small vocabulary, and the prompt's words "
            f"{', '.join(repr(w) for w in unknown)} are not in it: expect a picture that ignores them "
            f"(often a blank one). It knows: {', '.join(sorted(vocabulary))}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
