"""The prompt's tokens as the denoiser's cross-attention sees them: one entry per text position T.

Every position is listed, the special and padding tokens included, each with the word of the prompt
it comes from (a word split into several tokens gives several entries with the same word). Words
are the prompt's runs of letters and digits, and each punctuation mark on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
"""A word of the prompt: letters and digits (with inner apostrophes), or one punctuation mark."""

KINDS = (
    "start",
    "word",
    "end",
    "pad",
    "special",
    "template",
    "instruction",
)  # "instruction": SANA's, before the prompt


@dataclass(frozen=True)
class Token:
    """One text position of the prompt, as the model's cross-attention keys see it."""

    index: int  # position along T (the column of the attention maps)
    text: str  # the tokenizer's token, e.g. "red", "##ish", "[CLS]", "<|endoftext|>"
    word: str | None  # the prompt's word it comes from, None for special and padding tokens
    kind: str  # "start", "word", "end", "pad" (padding), "special" or "template" (a chat template's own text)
    word_index: int | None = None  # which word of the prompt (0, 1, ...), None where word is None
    source: str = "text"  # the encoder whose sequence it is in (SD3: "clip" or "t5")

    def __str__(self) -> str:
        return self.text if self.word is None else f"{self.text} ({self.word})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for trace files)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Token:
        """The token a ``to_json`` dict describes."""
        return cls(**data)


def words_of(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) of every word of ``text``, by character offset."""
    return [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]


def tokenize(tokenizer: Any, text: str, length: int, *, source: str = "text", offset: int = 0) -> list[Token]:
    """``length`` tokens of ``text`` padded and truncated as the pipelines do, each with its word.

    Uses the tokenizer's character offsets (fast tokenizers); without them each token is its own word.
    ``offset`` is added to every index (for a sequence placed after another, as SD3's T5 after CLIP).
    """
    try:
        enc = tokenizer(
            text,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_attention_mask=True,
            return_offsets_mapping=True,
        )
        spans = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        enc = tokenizer(
            text, padding="max_length", max_length=length, truncation=True, return_attention_mask=True
        )
        spans = None
    ids = list(enc["input_ids"])
    mask = list(enc.get("attention_mask") or [1] * len(ids))
    texts = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", ())) - {getattr(tokenizer, "unk_token_id", None)}
    starts = {getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "cls_token_id", None)} - {None}
    words = words_of(text)
    tokens = []
    for i, (token_id, token_text, real) in enumerate(zip(ids, texts, mask, strict=True)):
        word = word_index = None
        if not real:
            kind = "pad"
        elif token_id in special:  # [CLS] / <|startoftext|> first; [SEP], <|endoftext|>, </s> after
            kind = "start" if i == 0 and token_id in starts else "end"
        else:
            kind = "word"
            if spans is not None:
                start, end = spans[i]
                word_index = next((k for k, (a, b, _) in enumerate(words) if a < end and start < b), None)
            if word_index is not None:
                word = words[word_index][2]
            else:
                word = tokenizer.convert_tokens_to_string([token_text]).strip() or token_text
        tokens.append(Token(i + offset, str(token_text), word, kind, word_index, source))
    return tokens


def find_token(tokens: Sequence[Token], which: str | int | Token, *, prompt: str = "") -> list[int]:
    """The indices along T of ``which``: a word of the prompt (all its tokens), a token index, or a Token.

    ``ValueError`` for a word the prompt does not have (listing the words it has), for a word it has
    more than once (pass a token index instead), and for an index outside 0..T−1.
    """
    if isinstance(which, Token):
        which = which.index
    if isinstance(which, bool) or not isinstance(which, int | str):
        raise TypeError(f"a token is a word (str), an index (int) or a Token, not {type(which).__name__}")
    if isinstance(which, int):
        indices = [t.index for t in tokens]
        if which not in indices:
            raise ValueError(
                f"token index {which} out of range: the text has positions {indices[0]}..{indices[-1]}"
            )
        return [which]
    wanted = which.strip().lower()
    hits = [t for t in tokens if t.word is not None and t.word.lower() == wanted]
    if not hits:
        hits = [t for t in tokens if t.text.lower() == wanted]  # a special token by its text, e.g. "[CLS]"
    if not hits:
        known = list(dict.fromkeys(t.word for t in tokens if t.word is not None))
        truncated = wanted in (w.lower() for _, _, w in words_of(prompt))
        why = " (it was cut off: the prompt is longer than the text encoder takes)" if truncated else ""
        raise ValueError(f"{which!r} is not a word of the prompt{why}; its words are: {', '.join(known)}")
    occurrences = sorted({t.word_index for t in hits}, key=str)  # one word may be in two encoders' sequences
    if len(occurrences) > 1:
        where = ", ".join(str([t.index for t in hits if t.word_index == o]) for o in occurrences)
        raise ValueError(
            f"{which!r} occurs {len(occurrences)} times in the prompt (tokens {where}); pass a token index"
        )
    return [t.index for t in hits]


def tokens_to_json(lists: Iterable[Sequence[Token]]) -> list[list[dict[str, Any]]]:
    """Token lists as JSON-ready lists of dicts."""
    return [[t.to_json() for t in tokens] for tokens in lists]


def tokens_from_json(data: Iterable[Iterable[dict[str, Any]]]) -> list[list[Token]]:
    """Token lists from ``tokens_to_json``'s output."""
    return [[Token.from_json(t) for t in tokens] for tokens in data]
