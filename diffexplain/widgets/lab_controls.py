"""Stand-ins for GuidanceLab's own controls, beside ``stand_ins`` (the shared ones): a float slider, a
step-range slider and a picture whose PNG Python sets. Not widgets: the browser draws them."""

from __future__ import annotations

from typing import Any

import traitlets as T

from diffexplain.widgets.stand_ins import Layout


class FloatControl(T.HasTraits):
    """A float slider: ``value`` within ``min`` .. ``max`` (clipped), ``step``."""

    value = T.Float(1.0)
    min = T.Float(1.0)
    max = T.Float(20.0)
    step = T.Float(0.5)

    @T.validate("value")
    def _clip(self, proposal: dict) -> float:
        return max(self.min, min(self.max, float(proposal["value"])))


class RangeControl(T.HasTraits):
    """A step-range slider: ``value`` = (a, b) with ``min`` ≤ a ≤ b ≤ ``max`` (clipped and ordered)."""

    value = T.Tuple((0, 1))
    min = T.Int(0)
    max = T.Int(1)

    @T.validate("value")
    def _clip(self, proposal: dict) -> tuple[int, int]:
        a, b = (max(self.min, min(self.max, int(v))) for v in proposal["value"])
        return (min(a, b), max(a, b))


class Picture(T.HasTraits):
    """A picture Python draws: ``value`` (PNG bytes), ``layout.display``."""

    value = T.Bytes(b"")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = Layout()
