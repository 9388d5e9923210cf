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


DEFAULT_EXPORT = "export default { render };"


def bundle(view: str) -> str:
    """One ES module for a view with panels of its own: the shared module (its helpers and
    ``mountTraceView`` in scope, its own default export dropped) followed by ``diffexplain/web/<view>``,
    which ends with its own ``export default { render }``. An anywidget's ``_esm`` is one module (loaded
    from a string: relative imports cannot resolve), and the HTML page inlines the same text, so the
    shared code is concatenated, not imported.

    ``FileNotFoundError`` naming the file where ``view`` is not a module of this folder."""
    folder = resources.files("diffexplain.web")
    shared = folder.joinpath(TRACE_VIEW).read_text(encoding="utf-8")
    if DEFAULT_EXPORT not in shared:
        raise RuntimeError(f"{TRACE_VIEW} lost its '{DEFAULT_EXPORT}' line, which bundle() drops")
    path = folder.joinpath(view)
    if not view.endswith(".js") or not path.is_file():
        raise FileNotFoundError(
            f"view={view!r}: expected an ES module file of diffexplain/web/ (e.g. 'noise_lab.js')"
        )
    own = path.read_text(encoding="utf-8")
    return (
        shared.replace(DEFAULT_EXPORT, f"// ({TRACE_VIEW}'s default export: {view} gives its own)")
        + "\n"
        + own
    )
