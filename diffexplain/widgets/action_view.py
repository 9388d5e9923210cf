"""``ActionView``: a ``TraceView`` whose actions run the model (Run, Invert …) and may also be called from
Python (``lab.run()``), and the browser parts such views share (``diffexplain/web/view_parts.js``: a small
SVG line plot, the status / progress / Stop shell, input boxes, a step slider, picture panels).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from diffexplain.widgets.trace_view import TraceView

VIEW_PARTS = "view_parts.js"


def view_parts_js() -> str:
    """The shared parts' text: appended after a view's module in its bundle (function declarations are
    hoisted, so the view's render calls them)."""
    return resources.files("diffexplain.web").joinpath(VIEW_PARTS).read_text(encoding="utf-8")


def view_bundle(view: str) -> str:
    """``diffexplain.web.bundle(view)`` with the shared parts of ``view_parts.js`` after it."""
    from diffexplain.web import bundle

    return bundle(view) + "\n" + view_parts_js()


class ActionView(TraceView):
    """A view whose actions run the model: Stop and the progress bar shown (``can_stop``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.can_stop = True
