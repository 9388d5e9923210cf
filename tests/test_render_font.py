"""Text in pictures: the font shipped with the package draws Greek letters, x̂ and ≤, not boxes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

import diffexplain
from diffexplain import render
from diffexplain.widgets.base import blank

FONT = Path(diffexplain.__file__).parent / render.FONT_FILE
# what the package writes in its pictures' labels and placeholders (ε̂ and x̂ carry a combining mark)
SYMBOLS = ["ε", "σ", "α", "ᾱ", "Δ", "≤", "≥", "‖", "−", "·", "√", "“", "”", "…", "ε̂", "x̂"]
NOT_IN_ANY_FONT = "\ue000"  # a private-use character: every font draws its .notdef box


def shipped_font(size: int = 11) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(io.BytesIO(FONT.read_bytes()), size)


def test_the_font_file_and_its_licence_ship_side_by_side() -> None:
    assert FONT.is_file() and FONT.stat().st_size < 100_000  # a subset, not the 740 kB font
    licence = (FONT.parent / "LICENSE-DejaVu.txt").read_text()
    assert "Bitstream Vera Fonts Copyright" in licence and "Arev Fonts Copyright" in licence


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_the_shipped_font_draws_each_symbol_not_a_box(symbol: str) -> None:
    font = shipped_font()
    box = bytes(font.getmask(NOT_IN_ANY_FONT))
    assert bytes(font.getmask(symbol)) != box, f"{symbol!r} is drawn as the missing-glyph box"
    assert font.getlength(symbol[0]) != font.getlength(NOT_IN_ANY_FONT)  # its own advance, not the box's


def test_pillows_default_font_draws_greek_as_boxes() -> None:
    """Why the package ships a font: Pillow's own one has no ε (if it ever gains one, drop the subset)."""
    try:
        default = ImageFont.load_default(size=11)
    except ImportError:
        pytest.skip("Pillow without FreeType")
    assert bytes(default.getmask("ε")) == bytes(default.getmask(NOT_IN_ANY_FONT))


def test_pictures_use_the_shipped_font() -> None:
    font = render.font(11)
    assert isinstance(font, ImageFont.FreeTypeFont) and font.getname() == ("DejaVu Sans", "Book")
    assert render.label_font() is font
    box = np.asarray(Image.open(io.BytesIO(blank(80, NOT_IN_ANY_FONT))))
    for text in ("ε_c not kept", "ε̂ not kept", "x̂0 ≤ 1"):
        drawn = np.asarray(Image.open(io.BytesIO(blank(80, text))))
        assert (drawn != box).any()
    eps = np.asarray(Image.open(io.BytesIO(blank(80, "ε"))))
    assert (eps != box).any()  # not the box a font without ε draws
    tile = Image.new("RGB", (40, 40), "white")
    labelled = [np.asarray(render.strip([tile], [text])) for text in ("ε", NOT_IN_ANY_FONT)]
    assert labelled[0][40:].min() < 128 and (labelled[0] != labelled[1]).any()  # a label, not a box
