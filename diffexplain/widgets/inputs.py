"""Input boxes whose values are checked where they are read, with messages that name the box.

A seed box is a text box, not an ``IntText``: the browser's number box reads "1e30" as 1 (and shows
something else), and it cannot hold the seeds torch takes (up to 2**64 − 1, past JavaScript's exact
integers). Here the text is read as a whole number or refused with a message.
"""

from __future__ import annotations

import re
from typing import Any

import ipywidgets as W
import traitlets

from diffexplain.checks import SEED_RANGE

_WHOLE = re.compile(r"^\s*\d[\d_]*\s*$")


class InputError(ValueError):
    """A value typed in a box that cannot be used. A widget shows its message on the status line, with
    no traceback: the message names the box, what it holds and what it takes."""


def parse_seed(text: str, box: str = "seed") -> int:
    """The seed a box's ``text`` says: a whole number from 0 to 2**64 − 1, else an ``InputError``."""
    low, high = SEED_RANGE
    if not _WHOLE.match(text):
        raise InputError(
            f"the {box} box holds {text.strip()!r}: type a whole number from {low} to 2**64 − 1, e.g. 0"
        )
    value = int(text.replace("_", ""))
    if value > high:
        raise InputError(f"the {box} box holds {value}, past the largest seed 2**64 − 1 ({high})")
    return value


class SeedBox(W.Text):
    """A text box for a seed: ``.seed`` is its value as a checked int; ``.value = 5`` is taken too."""

    value = traitlets.Union([traitlets.Unicode(), traitlets.Int()], default_value="0").tag(sync=True)

    def __init__(self, seed: int = 0, *, description: str = "seed", width: str = "160px", **kwargs: Any):
        kwargs.setdefault("continuous_update", False)  # read on Enter or leaving the box, not per key
        super().__init__(value=str(seed), description=description, layout=W.Layout(width=width), **kwargs)
        self.add_class("dx-seed")

    @traitlets.validate("value")
    def _as_text(self, proposal: dict) -> str:
        value = proposal["value"]
        return value if isinstance(value, str) else str(int(value))

    @property
    def seed(self) -> int:
        """The seed typed in the box (``InputError``, a ``ValueError``, naming the box for anything else)."""
        return parse_seed(self.value, self.description)


def steps_box(value: int, *, description: str = "steps", css: str = "dx-steps") -> W.BoundedIntText:
    """A box for the number of denoising steps, 1 to 1000 (the training schedule's steps)."""
    box = W.BoundedIntText(value=value, min=1, max=1000, description=description)
    box.layout.width = "160px"
    box.add_class(css)
    return box
