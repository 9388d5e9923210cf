"""diffexplain's views in the browser: ONE ES module (``trace_view.js``) that draws a trace's step view.

The one-file HTML page (``trace.to_html``) inlines it; the anywidget views
(``diffexplain.widgets.StepExplorer``, ``TracePlayer``) load it as their ``_esm``. The data they give
it is built by :mod:`diffexplain.web.view_data` (no ipywidgets, no plotly: ``trace.to_html`` loads no
widget code).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TRACE_VIEW = "trace_view.js"


def trace_view_path() -> Path:
    """The path of the shared ES module (package data)."""
    return Path(str(resources.files("diffexplain.web").joinpath(TRACE_VIEW)))


def trace_view_js() -> str:
    """The shared ES module's text."""
    return resources.files("diffexplain.web").joinpath(TRACE_VIEW).read_text(encoding="utf-8")
