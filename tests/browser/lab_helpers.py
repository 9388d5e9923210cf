"""Drive a real JupyterLab in headless Chromium: helpers for widget tests (the server is lab_server.py).

The fixtures live in ``conftest.py``; tests import the helpers from here::

    from lab_helpers import open_notebook, run_all, wait_for_widget_image

Every helper takes a Playwright ``Page`` (sync API) and waits explicitly, with generous
timeouts: the test machines have 2 cores, and plotly renders seconds after the widgets.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab_server import (
    ARTIFACTS_DIR,
    DOCS_SCREENSHOTS_DIR,
    KERNEL_IDLE_TEXT,
    LOAD_TIMEOUT_S,
    TIMEOUT_S,
    LabServer,
    current_server,
)

# ----------------------------------------------------------------------------------------- page helpers


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    """Print how long a step took (pytest shows it with a failure, or with ``-s``)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        print(f"[lab] {what}: {time.monotonic() - t0:.1f} s", flush=True)


def _ms(timeout: float) -> float:
    return timeout * 1000.0


def _scope(css_class: str | None) -> str:
    """``'.cls'`` for a widget CSS class (as given to ``add_class``), ``''`` for the whole page."""
    if not css_class:
        return ""
    return css_class if css_class[:1] in ".#[" else "." + css_class


_KERNEL_IDLE_JS = """
([path, text]) => {
  const app = window.jupyterapp;
  if (app) {  // exact: the current notebook is ``path`` and its kernel is connected and idle
    const w = app.shell.currentWidget;
    const ctx = w && w.context, sc = w && w.sessionContext;
    const kernel = sc && sc.session && sc.session.kernel;
    return !!ctx && (path === null || ctx.path === path) && !!kernel
      && kernel.connectionStatus === 'connected' && kernel.status === 'idle'
      && !!document.querySelector('.jp-Notebook .jp-Cell');
  }
  const s = document.getElementById('jp-main-statusbar');
  return !!s && s.innerText.includes(text);
}
"""


def wait_for_kernel_idle(page, timeout: float = TIMEOUT_S, path: str | None = None) -> None:
    """Wait until the current notebook's kernel is connected and idle.

    Reads the app's session (the status bar's "(ipykernel) | Idle" when the app is not exposed); the
    toolbar's idle circle is no use: it shows idle before any kernel exists.
    """
    page.wait_for_function(_KERNEL_IDLE_JS, arg=[path, KERNEL_IDLE_TEXT], polling=250, timeout=_ms(timeout))


_CLOSE_ALL_JS = """
() => {
  const app = window.jupyterapp;
  const docs = [...app.shell.widgets('main')];
  for (const w of docs) {
    if (w.context && w.context.model) w.context.model.dirty = false;  // discard: no "save?" dialog
    w.dispose();
  }
  return docs.length;
}
"""


def close_all_documents(page) -> None:
    """Close every open tab without saving and shut down every kernel (the served copies stay as they were)."""
    if page.evaluate("() => !!window.jupyterapp"):
        page.evaluate(_CLOSE_ALL_JS)
    current_server().shutdown_kernels()


def _lab_loaded(page, server: LabServer) -> bool:
    if not page.url.startswith(server.url + "/lab"):
        return False
    try:
        return bool(
            page.evaluate("() => !!(window.jupyterapp && document.getElementById('jp-main-statusbar'))")
        )
    except Exception:
        return False


def open_notebook(page, name: str, timeout: float | None = None, fresh: bool = False) -> None:
    """Open ``name`` (relative to the served folder) and wait until its kernel is idle.

    The first call loads ``/lab/tree/<name>?reset&token=...`` (a fresh workspace; minutes on a busy
    machine). Later calls on the same page close every open tab and kernel, then open ``name`` in the
    already loaded app, which is much faster; ``fresh=True`` forces the full page load.
    """
    server = current_server()
    with timed(f"open_notebook {name}"):
        if fresh or not _lab_loaded(page, server):
            limit = timeout or LOAD_TIMEOUT_S
            page.goto(f"{server.url}/lab/tree/{name}?reset&token={server.token}", timeout=_ms(limit))
        else:
            limit = timeout or TIMEOUT_S
            close_all_documents(page)
            page.evaluate(
                "(path) => { window.jupyterapp.commands.execute('docmanager:open', {path}); }", name
            )
        # Every plugin (the widget manager, anywidget) active before any cell runs.
        page.wait_for_function("() => !!window.jupyterapp", polling=250, timeout=_ms(limit))
        page.evaluate("async () => { await window.jupyterapp.restored; }")
        # No file browser: the notebook gets the page's width (widgets' rows are wide; screenshots too).
        page.evaluate("() => { const s = window.jupyterapp.shell; if (s.collapseLeft) s.collapseLeft(); }")
        wait_for_kernel_idle(page, limit, path=name)


_RUN_STATE_JS = """
() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
    .map((p) => p.innerText.trim());
  const running = prompts.filter((t) => t.includes('*')).length;
  const done = prompts.filter((t) => /\\[\\d+\\]/.test(t)).length;
  const errors = (__ERRORS__)(true).length;
  return {total: prompts.length, running, done, errors};
}
"""


def run_all(page, timeout: float = TIMEOUT_S) -> dict:
    """Run All Cells and wait until no cell is running and every code cell ran (or an error stopped it).

    Returns ``{"total", "running", "done", "errors"}``: code cells, and ``errors`` as counted by
    ``count_error_outputs(page)`` (stderr included).
    """
    with timed("run_all"):
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(
            f"() => {{ const s = ({_RUN_STATE_JS})();"
            " return s.running === 0 && (s.done === s.total || s.errors > 0); }",
            polling=250,
            timeout=_ms(timeout),
        )
        wait_for_kernel_idle(page, timeout)
        return page.evaluate(_RUN_STATE_JS)


def _wait_value(page, js: str, arg: Any, timeout: float) -> Any:
    """``page.wait_for_function`` polling every 250 ms (not every frame), returning the truthy value."""
    return page.wait_for_function(js, arg=arg, polling=250, timeout=_ms(timeout)).json_value()


def wait_for_widget_image(
    page, css_class: str, changed_from: str | None = None, timeout: float = TIMEOUT_S
) -> str:
    """Wait for the widget image with ``css_class`` to be loaded (``naturalWidth > 0``); returns its src.

    With ``changed_from``, wait until the src differs from it (each image update gets a new blob URL).
    """
    with timed(f"wait_for_widget_image {css_class}"):
        return _wait_value(
            page,
            """([sel, old]) => {
              const img = document.querySelector(`img${sel}, ${sel} img`);
              if (!img || !img.complete || img.naturalWidth === 0) return null;
              return (old === null || img.src !== old) ? img.src : null;
            }""",
            [_scope(css_class), changed_from],
            timeout,
        )


_PLOTLY_STATE_JS = """
(sel) => {
  const gd = document.querySelector(sel ? `${sel}.js-plotly-plot, ${sel} .js-plotly-plot` : '.js-plotly-plot');
  if (!gd || !gd.querySelector('.main-svg') || !gd.data) return null;
  const plain = (k, v) => (ArrayBuffer.isView(v) ? Array.from(v) : v);
  const full = gd._fullLayout || {};  // the layout as drawn
  const title = (full.title && full.title.text) || null;
  const height = Math.round(gd.getBoundingClientRect().height);  // 0: drawn, but takes no room
  return JSON.parse(JSON.stringify({data: gd.data, title, height}, plain));
}
"""


MIN_PLOT_HEIGHT = 50  # pixels: a drawn figure lower than this has collapsed


def plotly_state(page, css_class: str | None = None) -> dict | None:
    """The rendered figure's ``{"data": [traces...], "title": ..., "height": px}`` as drawn, or None."""
    return page.evaluate(_PLOTLY_STATE_JS, _scope(css_class))


@contextlib.contextmanager
def _explain_plotly_timeout(page, css_class: str | None) -> Iterator[None]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        yield
    except PlaywrightTimeout as exc:
        state = plotly_state(page, css_class)
        if state is None:
            why = f"no drawn plotly figure matches {_scope(css_class) or 'the page'}"
        elif not state["data"]:
            why = (
                "the figure is drawn with 0 traces (a go.FigureWidget does this when its 5 MB module loads "
                "slower than anywidget's 2 s limit: it never hears of its traces; use LiveFigure)"
            )
        elif state["height"] < MIN_PLOT_HEIGHT:
            why = f"the figure is drawn {state['height']} px high (collapsed: it would overlap what follows)"
        else:
            why = f"the figure is drawn but never matched: title={state['title']!r}, traces={len(state['data'])}"
        raise AssertionError(f"wait_for_plotly: {why}") from exc


def wait_for_plotly(
    page,
    css_class: str | None = None,
    changed_from: dict | None = None,
    title: str | None = None,
    min_traces: int = 1,
    timeout: float = TIMEOUT_S,
) -> dict:
    """Wait for a plotly figure (inside the widget with ``css_class``, or anywhere) to be drawn.

    The widgets draw their figures with ``LiveFigure`` (plotly's mimetype in an ``Output`` widget, sent
    again after each change); ``css_class`` is the class of a box around it (``figure_box``).

    Returns its ``plotly_state``, once it has at least ``min_traces`` traces and takes room on the page
    (``MIN_PLOT_HEIGHT``). With ``changed_from`` (an earlier state), wait until its traces or title
    differ; with ``title``, until the figure's title text equals it.
    """
    with timed(f"wait_for_plotly {css_class or ''}"), _explain_plotly_timeout(page, css_class):
        return _wait_value(
            page,
            f"""([sel, old, title, minTraces, minHeight]) => {{
              const s = ({_PLOTLY_STATE_JS})(sel);
              if (s === null || s.data.length < minTraces || s.height < minHeight) return null;
              if (title !== null && s.title !== title) return null;
              const key = (x) => JSON.stringify([x.data, x.title]);
              return (old === null || key(s) !== key(old)) ? s : null;
            }}""",
            [_scope(css_class), changed_from, title, min_traces, MIN_PLOT_HEIGHT],
            timeout,
        )


def wait_for_text(page, css_class: str, text: str, timeout: float = TIMEOUT_S) -> str:
    """Wait until the (first) element with ``css_class`` shows ``text`` in its text; returns that text."""
    with timed(f"wait_for_text {css_class} {text!r}"):
        return _wait_value(
            page,
            """([sel, text]) => {
              const e = document.querySelector(sel);
              return e && e.innerText.includes(text) ? e.innerText : null;
            }""",
            [_scope(css_class), text],
            timeout,
        )


def slider_readout(page, css_class: str) -> str:
    """The value a slider shows next to it (its readout text: ipywidgets', or the anywidget views')."""
    return page.locator(f"{_scope(css_class)} .widget-readout").first.inner_text().strip()


def press_slider(page, css_class: str, key: str = "ArrowRight", times: int = 1) -> None:
    """Focus the slider inside the widget with ``css_class`` (an ipywidgets slider's handle, or the
    anywidget views' range input) and press ``key`` ``times`` times."""
    sel = _scope(css_class)
    handle = page.locator(f"{sel} .noUi-handle, {sel} input[type=range]").first
    handle.wait_for(state="visible", timeout=_ms(TIMEOUT_S))
    handle.focus()
    for _ in range(times):
        handle.press(key)


def click_button(page, css_class: str | None = None, *, text: str | None = None) -> None:
    """Click the button with ``css_class``, or else the one whose label is ``text`` (an ipywidgets Button,
    or a button an anywidget view draws)."""
    if css_class:
        sel = _scope(css_class)
        button = page.locator(f"button{sel}, {sel} button").first
    elif text is not None:
        button = page.locator("button.jupyter-button, .dx-widget button").filter(  # ipywidgets', the views'
            has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")
        )
        button = button.first
    else:
        raise ValueError("click_button needs a css_class or text")
    button.click(timeout=_ms(TIMEOUT_S))


_ERRORS_JS = """
(stderr) => {
  const out = [];
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const cells = nb && nb.content && nb.content.model ? nb.content.model.cells : null;
  if (cells) {  // the notebook model knows tracebacks from stderr text
    for (let i = 0; i < cells.length; i++) {
      const outputs = cells.get(i).outputs;
      if (!outputs) continue;
      for (let j = 0; j < outputs.length; j++) {
        const o = outputs.get(j).toJSON();
        if (o.output_type === 'error')
          out.push(`cell ${i} error: ${o.ename}: ${o.evalue}\\n` + (o.traceback || []).join('\\n').slice(-3000));
        else if (stderr && o.output_type === 'stream' && o.name === 'stderr')
          out.push(`cell ${i} stderr: ` + [].concat(o.text).join('').slice(0, 3000));
      }
    }
  } else if (stderr) {  // no exposed app: tracebacks render as stderr too
    document.querySelectorAll('.jp-Cell-outputArea > * > [data-mime-type="application/vnd.jupyter.stderr"]')
      .forEach((e) => out.push('stderr/error: ' + e.innerText.slice(0, 3000)));
  }
  // ipywidgets Output widgets keep their outputs out of the notebook model: read their DOM. A traceback
  // renders as stderr there too, so without ``stderr`` only text that looks like one counts.
  document.querySelectorAll('.widget-output [data-mime-type="application/vnd.jupyter.stderr"]')
    .forEach((e) => {
      const t = e.innerText;
      if (stderr || /Traceback|\\w+(Error|Exception)\b/.test(t)) out.push('Output widget stderr: ' + t.slice(0, 3000));
    });
  document.querySelectorAll('.jupyter-widgets-error-widget')
    .forEach((e) => out.push('widget error: ' + e.innerText.slice(0, 2000)));
  document.querySelectorAll('.jp-OutputArea-output').forEach((e) => {
    if (e.innerText.trim().startsWith('Error displaying widget'))
      out.push('widget error: ' + e.innerText.slice(0, 2000));
  });
  return out;
}
"""


_RUN_STATE_JS = _RUN_STATE_JS.replace("__ERRORS__", _ERRORS_JS.strip())


def error_outputs(page, stderr: bool = True) -> list[str]:
    """Error outputs (tracebacks), widgets that failed to render and, with ``stderr``, stderr text.

    Stderr counts by default: warnings printed by an import show up there too, so a test that must
    tolerate a known warning passes ``stderr=False`` (tracebacks and widget errors still count).
    """
    return page.evaluate(_ERRORS_JS, stderr)


def count_error_outputs(page, stderr: bool = True) -> int:
    """How many outputs ``error_outputs`` finds (0 for a clean notebook)."""
    return len(error_outputs(page, stderr))


def output_text(page) -> str:
    """All cell outputs' text, in order (for asserting on printed values)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')].map((e) => e.innerText).join('\\n')"
    )


def screenshot(page, path: str | os.PathLike, css_class: str | None = None) -> Path:
    """Save a PNG of the whole notebook, or only of the (first) widget with ``css_class``; returns the path."""
    if css_class:
        return widget_screenshot(page, path, css_class)
    return full_page_screenshot(page, path)


_SCROLLERS_JS = """
(tops) => {
  // JupyterLab scrolls inside its panels, not the document. Without ``tops``: scroll them to the top
  // and return [how much is hidden, their old scroll positions]; with ``tops``: restore those.
  const panels = [...document.querySelectorAll('.jp-WindowedPanel-outer')];
  if (tops) { panels.forEach((e, i) => { e.scrollTop = tops[i] || 0; }); return null; }
  const old = panels.map((e) => e.scrollTop);
  let extra = 0;
  panels.forEach((e) => { extra = Math.max(extra, e.scrollHeight - e.clientHeight); e.scrollTop = 0; });
  return [extra, old];
}
"""


@contextlib.contextmanager
def _tall_viewport(page, max_height: int = 8000) -> Iterator[None]:
    """Stretch the viewport (for the block) so that the whole open notebook is on screen.

    JupyterLab's document never scrolls, its panels do: ``full_page=True`` and element screenshots
    alone are clipped at the panel's edge.
    """
    size = page.viewport_size
    old_tops = None
    try:
        extra, old_tops = page.evaluate(_SCROLLERS_JS, None) if size else (0, None)
        if extra > 0:
            page.set_viewport_size(
                {"width": size["width"], "height": min(size["height"] + extra, max_height)}
            )
            page.wait_for_timeout(500)  # let lumino lay out the taller panel
        yield
    finally:
        if size and page.viewport_size != size:
            page.set_viewport_size(size)
        if old_tops is not None:
            page.evaluate(_SCROLLERS_JS, old_tops)


def full_page_screenshot(page, path: str | os.PathLike, max_height: int = 8000) -> Path:
    """Screenshot of the page with the viewport stretched so the whole open notebook is visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _tall_viewport(page, max_height):
        page.screenshot(path=str(path), full_page=True, timeout=_ms(TIMEOUT_S))
    return path


def widget_screenshot(page, path: str | os.PathLike, css_class: str, max_bytes: int = 0) -> Path:
    """Screenshot of the whole widget with ``css_class`` (not clipped by the notebook panel).

    The mouse is moved off the page first (no hover toolbars). With ``max_bytes``, a larger PNG is
    reduced to a 256-colour palette (UI screenshots stay sharp; the docs keep each image small).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)
    with _tall_viewport(page):
        widget = page.locator(_scope(css_class)).first
        widget.scroll_into_view_if_needed(timeout=_ms(TIMEOUT_S))
        widget.screenshot(path=str(path), timeout=_ms(TIMEOUT_S), animations="disabled", caret="hide")
    if max_bytes and path.stat().st_size > max_bytes:
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path


DOCS_SCREENSHOT_MAX_BYTES = 280_000


def docs_screenshot(page, name: str, css_class: str) -> Path:
    """Save the screenshot the documentation shows as ``docs/assets/screenshots/<name>.png``.

    Tracked docs images are only rewritten when ``DIFFEXPLAIN_UPDATE_SCREENSHOTS=1``; otherwise the PNG
    goes to ``test-artifacts/browser/screenshots/`` so an ordinary test run leaves the tree clean.
    Either way it is the whole widget, at most ``DOCS_SCREENSHOT_MAX_BYTES``.
    """
    folder = (
        DOCS_SCREENSHOTS_DIR
        if os.environ.get("DIFFEXPLAIN_UPDATE_SCREENSHOTS") == "1"
        else ARTIFACTS_DIR / "screenshots"
    )
    wait_for_kernel_idle(page)  # every change the test made has been drawn
    return widget_screenshot(page, folder / f"{name}.png", css_class, DOCS_SCREENSHOT_MAX_BYTES)


def serve_cells(lab_server: LabServer, tmp_path: Path, name: str, *cells: str) -> str:
    """A notebook of these code cells (a python3 kernel), written to ``tmp_path`` and served by the lab;
    returns its name for ``open_notebook``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cell) for cell in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return lab_server.add_notebook(path)


def python_says(page, code: str) -> str:
    """Run ``code`` in the open notebook's kernel (after whatever it is doing) and return what it printed."""
    return page.evaluate(
        """async (code) => {
          const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
          let out = '';
          const future = kernel.requestExecute({ code, store_history: false });
          future.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
          await future.done;
          return out;
        }""",
        code,
    )
