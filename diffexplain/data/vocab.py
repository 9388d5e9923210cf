"""The words the default model knows, and what each one looks like.

Every visual constant of the procedural dataset lives here, so the renderer and the
attribute checker read the same table.
"""

from __future__ import annotations

# Saturated, well separated hues (degrees on the HSV wheel).
COLOURS: dict[str, float] = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 58.0,
    "green": 125.0,
    "blue": 225.0,
    "purple": 285.0,
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Object centres as fractions of the image side: (x, y), y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}

# Half-size of an object (circle radius, half the square's side), as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.11, "large": 0.19}
# Two-object scenes use one size between the two, so both objects fit their half.
PAIR_SIZE: float = 0.15

# Plain grey backgrounds: value ranges in [0, 1].
BACKGROUNDS: dict[str, tuple[float, float]] = {"light": (0.82, 0.95), "dark": (0.05, 0.18)}

# The two layouts of a two-object scene: (first position, second position).
PAIR_LAYOUTS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))

# How the position words are said in a caption.
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

# Jitter applied when rendering (kept small, so every image still reads as its caption).
HUE_JITTER_DEG: float = 4.0
POSITION_JITTER: float = 0.035
SIZE_JITTER: float = 0.1  # relative

WORDS: tuple[str, ...] = (
    *COLOURS,
    *SHAPES,
    *POSITIONS,
    *SIZES,
    *BACKGROUNDS,
)
"""Every content word the default model was trained on."""


def caption_words() -> frozenset[str]:
    """Every word the dataset's captions use (what a model trained on them has seen)."""
    words = {"a", "an", "and", "on", "background", *COLOURS, *SHAPES, *SIZES, *BACKGROUNDS}
    for phrase in POSITION_PHRASES.values():
        words.update(phrase.split())
    return frozenset(words)


def unknown_words(prompt: str, known: frozenset[str]) -> list[str]:
    """The words of ``prompt`` (letters only, case-insensitive) that are not in ``known``, in order, once."""
    import re

    found = [w.lower() for w in re.findall(r"[A-Za-z]+", prompt)]
    return list(dict.fromkeys(w for w in found if w not in known))
