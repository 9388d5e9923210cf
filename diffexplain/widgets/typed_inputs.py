"""Python stand-ins for the typed boxes an anywidget view draws in the browser (its own, beside
``stand_ins``): a seed box (``.seed``, checked), a number box clipped to its bounds, and a picture
upload (``value`` in ipywidgets 8's ``FileUpload`` format). None of them opens a comm."""

from __future__ import annotations

from typing import Any

import traitlets as T

from diffexplain.widgets.inputs import parse_seed
from diffexplain.widgets.stand_ins import Layout


class SeedText(T.HasTraits):
    """A seed box: ``value`` (the text typed; an int is taken too) and ``seed`` (checked: ``InputError``
    naming the box, as ``inputs.SeedBox``)."""

    value = T.Unicode("0")

    def __init__(self, seed: int | str = 0, *, description: str = "seed") -> None:
        super().__init__(value=str(seed))
        self.description = description
        self.layout = Layout()

    @T.validate("value")
    def _as_text(self, proposal: dict) -> str:
        return str(proposal["value"])

    @property
    def seed(self) -> int:
        """The seed typed in the box."""
        return parse_seed(self.value, self.description)


class Number(T.HasTraits):
    """A number box (``BoundedFloatText`` / ``BoundedIntText``): ``value`` clipped to ``min`` .. ``max``."""

    value = T.Float(0.0)
    min = T.Float(0.0)
    max = T.Float(1.0)

    def __init__(self, value: float, *, min: float, max: float, integer: bool = False) -> None:  # noqa: A002
        self._integer = integer
        super().__init__(min=min, max=max)
        self.value = value
        self.layout = Layout()

    @T.validate("value")
    def _clip(self, proposal: dict) -> float:
        value = max(self.min, min(self.max, float(proposal["value"])))
        return int(round(value)) if self._integer else value


class PictureUpload(T.HasTraits):
    """The upload's stand-in: ``value`` as ipywidgets 8's ``FileUpload`` gives it (a tuple of dicts with
    ``name`` and ``content``). The browser's upload sends the file's bytes as a binary buffer."""

    value = T.Tuple()

    def __init__(self) -> None:
        super().__init__()
        self.layout = Layout()


def as_upload(name: str, content: bytes) -> tuple[dict[str, Any], ...]:
    """One uploaded file in ``FileUpload``'s value format."""
    return ({"name": name, "type": "", "size": len(content), "content": memoryview(content)},)


def parse_number(value: Any, box: str) -> float:
    """A number typed in the browser's ``box`` (text or a number), else an ``InputError`` naming the box."""
    import math

    from diffexplain.widgets.inputs import InputError

    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"the {box} box holds {str(value)!r}: type a number")
    return number
