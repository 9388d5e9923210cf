"""How the widgets show their plots: plotly in the page, or a PNG drawn in the kernel.

Two plot modes:

- ``"plotly"``: the figure is sent as plotly's own mimetype into an ``ipywidgets.Output``; JupyterLab,
  Notebook 7, Voilà and VS Code draw it with the plotly.js they already have (hover, zoom).
- ``"image"``: the kernel draws the figure with PIL (``plot_image``) and shows the PNG in an
  ``ipywidgets.Image``, a core widget every front end renders. For Colab, where plotly inside an
  ``Output`` fails ("Plotly is not defined", googlecolab/colabtools#5889), and classic Notebook 6,
  which has no renderer for plotly's mimetype.

``"auto"`` (the default) picks ``"image"`` in Colab (``google.colab`` imported) and with ipywidgets 7
(classic Notebook 6, Colab's own widget stack), else ``"plotly"``. The environment variable
``DIFFEXPLAIN_PLOTS=plotly|image|auto`` or :func:`set_plot_mode` chooses; a widget keeps the mode it was
built with.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from diffexplain.widgets.plot_image import WIDTH, figure_png

PLOT_MODES = ("auto", "plotly", "image")
PLOTS_ENV = "DIFFEXPLAIN_PLOTS"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
IPYWIDGETS_MAJOR = int(W.__version__.split(".")[0])

_chosen: dict[str, str] = {}  # the mode set_plot_mode chose ("mode"), when it was called


def _check_mode(mode: str, source: str) -> str:
    value = str(mode).strip().lower()
    if value not in PLOT_MODES:
        raise ValueError(f"{source}={mode!r}: expected one of {', '.join(repr(m) for m in PLOT_MODES)}")
    return value


def in_colab() -> bool:
    """Whether this kernel runs in Google Colab (its ``google.colab`` module is imported)."""
    return "google.colab" in sys.modules


def set_plot_mode(mode: str | None) -> str:
    """Choose how widgets built from now on show their plots: ``"plotly"``, ``"image"`` or ``"auto"``;
    ``None`` goes back to ``$DIFFEXPLAIN_PLOTS`` (else auto). Returns the mode that now applies."""
    if mode is None:
        _chosen.pop("mode", None)
    else:
        _chosen["mode"] = _check_mode(mode, "mode")
    return plot_mode()


def plot_mode() -> str:
    """The mode a new widget's plots use: ``"plotly"`` or ``"image"`` (see the module's docstring)."""
    wanted = _chosen.get("mode")
    if wanted is None:
        wanted = _check_mode(os.environ.get(PLOTS_ENV, "auto") or "auto", PLOTS_ENV)
    if wanted != "auto":
        return wanted
    return "image" if in_colab() or IPYWIDGETS_MAJOR < 8 else "plotly"


class LiveFigure(go.Figure):
    """A plotly figure shown by a widget (``.output``) and drawn again after each ``batch_update``.

    In plotly mode ``.output`` is an ``ipywidgets.Output`` showing plotly's mimetype. Not a
    ``go.FigureWidget``: that is an anywidget whose 5 MB JavaScript module must load within anywidget's
    2 s limit, else the page never hears of its traces or of any later change (an empty plot on a busy
    or slow machine), and which Colab does not render. In image mode ``.output`` is an
    ``ipywidgets.Image`` with a PNG drawn in the kernel. Change the figure inside
    ``with fig.batch_update():`` (or call ``redraw()``) and the page shows the new figure.
    """

    def __init__(self, *args: Any, mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mode = plot_mode() if mode is None else _check_mode(mode, "mode")
        self._plot_mode = plot_mode() if mode == "auto" else mode
        if mode == "image":
            self._output: W.Output | W.Image = W.Image(format="png", width=str(WIDTH))
            self._output.layout.max_width = "100%"
            self._output.layout.height = "auto"
            self._output.add_class("dx-figure-image")
        else:
            self._output = W.Output(layout=W.Layout(width="100%"))
        self._output.add_class("dx-figure")

    @property
    def plot_mode(self) -> str:
        """``"plotly"`` or ``"image"``: how this figure is shown."""
        return self._plot_mode

    @property
    def output(self) -> W.Output | W.Image:
        """The widget that shows the figure (an ``Output`` in plotly mode, an ``Image`` in image mode)."""
        return self._output

    @contextlib.contextmanager
    def batch_update(self) -> Iterator[None]:
        """Apply the changes made in the block together, then draw the figure again."""
        with super().batch_update():
            yield
        self.redraw()

    def png(self) -> bytes:
        """The figure as PNG bytes, drawn in the kernel (what image mode shows)."""
        return figure_png(self)

    def redraw(self) -> None:
        """Send the current figure to the page (replaces what ``output`` showed)."""
        if isinstance(self._output, W.Image):
            self._output.value = self.png()
            return
        spec = json.loads(self.to_json())  # plain JSON: numpy arrays become lists
        spec["config"] = {"displaylogo": False}  # not "responsive": it sizes the plot from its 0-high box
        text = f"<plotly figure: {len(self.data)} traces>"
        bundle = {
            "output_type": "display_data",
            "data": {PLOTLY_MIME: spec, "text/plain": text},
            "metadata": {},
        }
        self._output.outputs = (bundle,)


def figure_box(fig: LiveFigure, css: str) -> W.Box:
    """A box with CSS class ``css`` around a figure's output, showing the figure as it is now."""
    fig.redraw()
    box = W.Box([fig.output], layout=W.Layout(width="100%"))
    box.add_class(css)
    return box
