"""StepExplorer and GuidanceLab in the front ends beside JupyterLab 4, each in headless Chromium, and the
anywidget ES module on its own (what VS Code's widget manager does with it: VS Code cannot run here).

- classic Notebook 6.5 with ipywidgets 7.7 and widgetsnbextension 3.6 (the nearest to Colab's widget
  stack that runs here; anywidget's classic nbextension beside), plots in image mode
  (``DIFFEXPLAIN_PLOTS=image``: PNGs drawn in the kernel);
- Notebook 7 (ipywidgets 8, plotly figures);
- Voilà serving ``notebooks/00_quickstart.ipynb`` as a dashboard (no code shown);
- the StepExplorer's ES module imported from a blob URL in a bare page and mounted on a stand-in model
  (anywidget's model API: get/set/on/off/send/save_changes), as every anywidget host loads it.

Each front-end test: both widgets render, the StepExplorer (an anywidget) scrubs with the arrow keys in
the browser (pictures and timeline marker follow), the w slider changes GuidanceLab's picture and plot,
no error output, and a screenshot of the page is saved (``test-artifacts/browser/frontends/``; with
``DIFFEXPLAIN_UPDATE_SCREENSHOTS=1`` into ``docs/assets/screenshots/frontends/``).

The environments come from ``scripts/frontends.sh`` (CI runs it first); a missing one skips its test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_server import (
    ARTIFACTS_DIR,
    LAB_EXTENSIONS_OFF,
    LAB_USER_SETTINGS,
    NOTEBOOKS_DIR,
    REPO_ROOT,
    SERVER_EXTENSIONS_OFF,
    TIMEOUT_S,
    _die_with_parent,
    _free_port,
    isolated_env,
    launch_chromium,
)
from PIL import Image

FRONTENDS_DIR = Path(
    os.environ.get("DIFFEXPLAIN_FRONTENDS_DIR", Path(tempfile.gettempdir()) / "diffexplain-frontends")
)
CLASSIC_PYTHON = FRONTENDS_DIR / "classic" / "bin" / "python"
NOTEBOOK = "frontends.ipynb"  # tests/browser/notebooks/: StepExplorer and GuidanceLab on the default model
QUICKSTART = REPO_ROOT / "notebooks" / "00_quickstart.ipynb"
SCREENSHOTS = (
    REPO_ROOT / "docs" / "assets" / "screenshots" / "frontends"
    if os.environ.get("DIFFEXPLAIN_UPDATE_SCREENSHOTS") == "1"
    else ARTIFACTS_DIR / "frontends"
)

# A slider's track: noUiSlider in ipywidgets 8, jQuery UI in ipywidgets 7, the anywidget views' range input.
SLIDER_TRACK = ".noUi-base, .ui-slider, input[type=range]"
# Error outputs in every front end: classic's output areas, JupyterLab's mimetype attributes (Notebook 7,
# Voilà), widgets that failed to render, and the widgets' own error status line.
ERRORS_JS = """
() => {
  const out = [];
  const add = (what, e) => out.push(what + ': ' + e.innerText.slice(0, 2000));
  document.querySelectorAll('.output_stderr, .output_error, [data-mime-type="application/vnd.jupyter.stderr"]')
    .forEach((e) => add('stderr/error output', e));
  document.querySelectorAll('.jupyter-widgets-error-widget').forEach((e) => add('widget error', e));
  document.querySelectorAll('.output_subarea, .jp-OutputArea-output').forEach((e) => {
    if (e.innerText.trim().startsWith('Error displaying widget')) add('widget error', e);
  });
  document.querySelectorAll('.dx-status').forEach((e) => { if (e.innerText.includes('Error')) add('status', e); });
  document.querySelectorAll('.dx-errors').forEach((e) => { if (e.innerText.trim()) add('widget output', e); });
  return out;
}
"""
_IMAGE_JS = """
([sel, old]) => {
  const img = document.querySelector(`img${sel}, ${sel} img`);
  if (!img || !img.complete || img.naturalWidth === 0) return null;
  return (old === null || img.src !== old) ? img.src : null;
}
"""
_CURSOR_JS = """
([sel, old]) => {  // the anywidget StepExplorer's SVG timeline: where its step line is
  const line = document.querySelector(`${sel} .dx-cursor`);
  const x = line && line.getAttribute('x1');
  return x && (old === null || x !== old) ? x : null;
}
"""
_PLOTLY_JS = """
([sel, old]) => {
  const gd = document.querySelector(`${sel} .js-plotly-plot`);
  if (!gd || !gd.querySelector('.main-svg') || !gd.data || !gd.data.length) return null;
  const key = JSON.stringify(gd.data, (k, v) => (ArrayBuffer.isView(v) ? Array.from(v) : v));
  return (old === null || key !== old) ? key : null;
}
"""


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _kernelspec(env: dict[str, str], python: Path | str) -> None:
    """The ``python3`` kernel of the served notebooks runs ``python`` (the front end's own environment)."""
    spec = Path(env["JUPYTER_DATA_DIR"]) / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    body = {"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(body))


@contextlib.contextmanager
def serve(args: list[str], python: Path | str, base: Path, **extra_env: str) -> Iterator[Server]:
    """Run ``python -m <args>`` on a free loopback port (``{port}``, ``{token}`` filled in) with isolated
    Jupyter dirs and ``python``'s kernel; yields once the port answers; stops the process group after."""
    env = isolated_env(base)
    env.update(extra_env)
    _kernelspec(env, python)
    for rel, settings in LAB_USER_SETTINGS.items():  # Notebook 7 and Voila read JupyterLab's settings
        path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    config_dir = Path(env["JUPYTER_CONFIG_DIR"])  # the extensions the JupyterLab tests switch off, off
    server_config = {"ServerApp": {"jpserver_extensions": dict.fromkeys(SERVER_EXTENSIONS_OFF, False)}}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(server_config))
    (config_dir / "labconfig").mkdir(exist_ok=True)
    page_config = {"disabledExtensions": dict.fromkeys(LAB_EXTENSIONS_OFF, True)}
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(page_config))
    port, token = _free_port(), os.urandom(12).hex()
    cmd = [str(python), "-m", *(a.format(port=port, token=token) for a in args)]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and args[0] != "voila":
        cmd.append("--allow-root")
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=base / "served",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    server = Server(f"http://127.0.0.1:{port}", token, proc, log_path)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=5).close()
                break
            except urllib.error.HTTPError:  # Voilà has no /api/status, but it answers
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} did not answer:\n{server.log_tail()}") from None
                time.sleep(0.25)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def chromium(playwright_session):
    """One headless Chromium (fresh user-data dir) for this module's front ends."""
    with tempfile.TemporaryDirectory(prefix="diffexplain-chromium-") as user_data:
        context = launch_chromium(playwright_session, user_data)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(request, chromium):
    """A fresh tab; a failure leaves a screenshot and the console (conftest's report hook)."""
    tab = chromium.new_page()
    console: list[str] = []
    tab.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    tab.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    request.node._lab_page, request.node._lab_console = tab, console
    try:
        yield tab
    finally:
        request.node._lab_page = None
        tab.close()


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A temp folder to serve from (the servers may write checkpoints next to the notebooks)."""
    folder = tmp_path / "served"
    folder.mkdir()
    shutil.copy2(NOTEBOOKS_DIR / NOTEBOOK, folder / NOTEBOOK)
    return folder


def _wait(page, js: str, arg, timeout: float = TIMEOUT_S):
    return page.wait_for_function(js, arg=arg, polling=250, timeout=timeout * 1000).json_value()


def _image(page, css: str, changed_from: str | None = None) -> str:
    return _wait(page, _IMAGE_JS, [f".{css}", changed_from])


def _plot(page, css: str, changed_from: str | None = None) -> str:
    return _wait(page, _PLOTLY_JS, [f".{css}", changed_from])


def _move(page, css: str, fraction: float) -> None:
    """Click the slider with class ``css`` at ``fraction`` of its track (noUiSlider in ipywidgets 8, jQuery
    UI in 7; an arrow key on the handle moves neither in Notebook 7)."""
    track = page.locator(f".{css}").locator(SLIDER_TRACK).first
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)


_MARKER_JS = """
(old) => {
  const m = document.querySelector('.dx-view .dx-marker');
  const d = m && m.getAttribute('d');
  return d && d !== old ? d : null;
}
"""


def _check_step_explorer(page) -> None:
    """The anywidget StepExplorer: every panel drawn from its frames buffer; five ArrowRight presses on the
    focused view move the pictures, the readout and the timeline's marker (in the browser, no kernel)."""
    for css in (
        "dx-xt-image",
        "dx-x0-image",
        "dx-eps-cond-image",
        "dx-eps-uncond-image",
        "dx-eps-guided-image",
    ):
        _image(page, css)
    xt = _image(page, "dx-xt-image")
    marker = _wait(page, _MARKER_JS, None)
    view = page.locator(".dx-step-explorer .dx-view[tabindex]").first  # the mounted view: it takes the keys
    view.scroll_into_view_if_needed()
    view.focus()
    for _ in range(5):
        view.press("ArrowRight")
    _image(page, "dx-xt-image", changed_from=xt)
    _wait(page, _MARKER_JS, marker)
    assert page.locator(".dx-view .dx-step-readout").first.inner_text().strip() == "5"
    assert page.locator(".dx-view img.dx-xt-image").first.get_attribute("data-step") == "5"
    xt = _image(page, "dx-xt-image")
    timeline = _wait(page, _CURSOR_JS, [".dx-step-explorer", None])  # drawn in the browser, in any mode
    _move(page, "dx-step-slider", 0.85)  # a click on the range input too
    _image(page, "dx-xt-image", changed_from=xt)
    _wait(page, _CURSOR_JS, [".dx-step-explorer", timeline])


_SERIES_JS = """
([sel, old]) => {  // the anywidget GuidanceLab's SVG plot: its series lines, all together
  const d = [...document.querySelectorAll(`${sel} path.dx-series`)].map((p) => p.getAttribute('d')).join('|');
  return d && d !== old ? d : null;
}
"""


def _check_widgets(page, *, plots: str) -> None:
    """Both widgets drawn; the StepExplorer scrubs; the w slider changes GuidanceLab's picture and plot."""
    strip = _image(page, "dx-reguide-strip")
    _image(page, "dx-on-image")
    guidance_plot = _wait(page, _SERIES_JS, [".dx-guidance-plot", None])  # drawn in the browser, any mode
    if plots == "image":  # the figures are pictures, not plotly
        assert page.locator(".dx-guidance-plot .js-plotly-plot").count() == 0
    _check_step_explorer(page)
    _move(page, "dx-guidance-slider", 0.45)
    _image(page, "dx-reguide-strip", changed_from=strip)
    _wait(page, _SERIES_JS, [".dx-guidance-plot", guidance_plot])  # ‖w·Δ‖ follows the slider
    page.wait_for_timeout(1000)  # anything the last change printed has arrived
    assert page.evaluate(ERRORS_JS) == []


_SCROLLER_JS = """
() => {
  // The element that scrolls the notebook (classic: #site; Notebook 7: its panel; Voila: its main area):
  // scrolled to the top, and how much taller than its box it is.
  let best = null, extra = 0;
  for (const e of document.querySelectorAll('body *')) {
    const more = e.scrollHeight - e.clientHeight;
    const style = getComputedStyle(e);
    if (more > extra && /(auto|scroll)/.test(style.overflowY)) { best = e; extra = more; }
  }
  if (best) best.scrollTop = 0;
  return extra;
}
"""


def _screenshot(page, name: str, max_height: int = 8000, between: tuple[str, str] | None = None) -> Path:
    """The whole page (the viewport stretched to the height of whatever scrolls the notebook), or only
    the part ``between`` the tops of two elements (CSS selectors) and the bottom of the second."""
    page.mouse.move(0, 0)
    size = page.viewport_size
    extra = page.evaluate(_SCROLLER_JS)
    page.set_viewport_size({"width": size["width"], "height": min(size["height"] + extra, max_height)})
    page.wait_for_timeout(1000)  # laid out and plots resized
    path = SCREENSHOTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    clip = None
    if between:
        first, last = (page.locator(sel).first.bounding_box() for sel in between)
        top = max(0, first["y"] - 110)  # the heading above it too
        clip = {"x": 0, "y": top, "width": size["width"], "height": last["y"] + last["height"] + 10 - top}
    page.screenshot(path=str(path), full_page=True, clip=clip)
    with Image.open(path) as img:  # a 256-colour palette: UI stays sharp, the docs' copy stays small
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


@pytest.mark.timeout(900)
def test_classic_notebook_ipywidgets7_image_plots(page, served, tmp_path):
    if not CLASSIC_PYTHON.exists():
        pytest.skip(f"no classic Notebook environment at {CLASSIC_PYTHON}: run scripts/frontends.sh")
    if not (CLASSIC_PYTHON.parents[1] / "share" / "jupyter" / "nbextensions" / "anywidget").is_dir():
        pytest.skip(f"no anywidget nbextension in {CLASSIC_PYTHON.parents[1]}: run scripts/frontends.sh")
    args = ["notebook", "--no-browser", "--ip=127.0.0.1", "--port={port}", "--NotebookApp.port_retries=0"]
    args += ["--NotebookApp.token={token}", "--NotebookApp.open_browser=False"]
    with serve(args, CLASSIC_PYTHON, tmp_path, DIFFEXPLAIN_PLOTS="image") as server:
        page.goto(f"{server.url}/notebooks/{NOTEBOOK}?token={server.token}")
        page.wait_for_function(
            "() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
            " && Jupyter.notebook.kernel.is_connected() && !!document.querySelector('.kernel_idle_icon')",
            polling=250,
        )
        page.evaluate("() => Jupyter.notebook.execute_all_cells()")
        versions = page.locator(".output_subarea").filter(has_text="ipywidgets ").first
        versions.wait_for()
        assert (
            versions.inner_text().strip().startswith("ipywidgets 7.7.")
            and "plots: image" in versions.inner_text()
        )
        _check_widgets(page, plots="image")
        _screenshot(page, "classic_notebook")


@pytest.mark.timeout(900)
def test_notebook7(page, served, tmp_path):
    pytest.importorskip("notebook", minversion="7")
    args = ["notebook", "--no-browser", "--ip=127.0.0.1", "--port={port}", "--ServerApp.port_retries=0"]
    args += ["--IdentityProvider.token={token}", "--JupyterNotebookApp.expose_app_in_browser=True"]
    with serve(args, sys.executable, tmp_path) as server:
        page.goto(f"{server.url}/notebooks/{NOTEBOOK}?token={server.token}")
        page.wait_for_function(
            """() => {
              const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
              const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
              return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
            }""",
            polling=250,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        versions = page.locator(".jp-OutputArea-output").filter(has_text="ipywidgets ").first
        versions.wait_for()
        assert (
            versions.inner_text().strip().startswith("ipywidgets 8.")
            and "plots: plotly" in versions.inner_text()
        )
        _check_widgets(page, plots="plotly")
        _screenshot(page, "notebook7")


@pytest.mark.timeout(900)
def test_voila_quickstart(page, served, tmp_path):
    pytest.importorskip("voila")
    shutil.copy2(QUICKSTART, served / QUICKSTART.name)
    args = ["voila", QUICKSTART.name, "--no-browser", "--port={port}", "--Voila.ip=127.0.0.1"]
    args += ["--show_tracebacks=True"]
    # The quickstart also shows a plain go.Figure: plotly's own mimetype, as in JupyterLab (not "json").
    with serve(args, sys.executable, tmp_path, PLOTLY_RENDERER="plotly_mimetype") as server:
        page.goto(server.url + "/", timeout=2 * TIMEOUT_S * 1000)
        _check_widgets(page, plots="plotly")
        text = page.evaluate("() => document.body.innerText")
        assert "StepExplorer(trace)" not in text and "GuidanceLab(explainer" not in text  # no code shown
        _screenshot(page, "voila_quickstart", between=(".dx-step-explorer", ".dx-guidance-lab"))


_MOUNT_JS = """
async ([esm, state, frames]) => {
  // A stand-in for anywidget's model (get/set/on/off/send/save_changes), as VS Code's, JupyterLab's and
  // marimo's hosts give it: the ES module comes as text and is imported from a blob URL.
  const bytes = Uint8Array.from(atob(frames), (c) => c.charCodeAt(0));
  const values = {...state, _frames: new DataView(bytes.buffer)};
  const handlers = {};
  const log = window.dxLog = {set: [], saved: 0, sent: []};
  const model = {
    get: (k) => values[k],
    set: (k, v) => { values[k] = v; log.set.push([k, v]); },
    save_changes: () => { log.saved += 1; },
    send: (msg) => log.sent.push(msg),
    on: (evt, cb) => { (handlers[evt] = handlers[evt] || []).push(cb); },
    off: (evt, cb) => { handlers[evt] = (handlers[evt] || []).filter((f) => f !== cb); },
  };
  window.dxFromPython = (k, v) => { values[k] = v; (handlers['change:' + k] || []).forEach((f) => f()); };
  const url = URL.createObjectURL(new Blob([esm], {type: 'text/javascript'}));
  const mod = await import(url);
  const host = document.getElementById('host');
  const cleanup = await mod.default.render({model, el: host});
  window.dxCleanup = cleanup;
  return [Object.keys(mod.default), typeof cleanup];
}
"""


@pytest.mark.timeout(300)
def test_esm_loads_from_a_blob_url_and_scrubs_a_fake_model(page, parts):
    """What VS Code relies on (it cannot run here): the StepExplorer's ES module, as text, imported from a
    blob URL in a bare page with no network, mounted on a stand-in model with the widget's own state and
    frames buffer; it draws, scrubs with the keyboard, syncs the step once (debounced) and sends actions."""
    import base64

    from ipywidgets.widgets.widget import _remove_buffers

    from diffexplain import Explainer
    from diffexplain.widgets import StepExplorer

    explorer = StepExplorer(
        Explainer(**parts, progress=False).run("a red circle", num_inference_steps=4, seed=0)
    )
    state, paths, buffers = _remove_buffers(explorer.get_state())
    assert paths == [["_frames"]]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.set_content("<!doctype html><html><body><div id='host'></div></body></html>")
    keys, cleanup = page.evaluate(
        _MOUNT_JS, [state["_esm"], state, base64.b64encode(bytes(buffers[0])).decode()]
    )
    assert keys == ["render"] and cleanup == "function"
    for css in (
        "dx-xt-image",
        "dx-x0-image",
        "dx-channels-image",
        "dx-eps-cond-image",
        "dx-eps-guided-image",
    ):
        _image(page, css)
    xt = _image(page, "dx-xt-image")
    view = page.locator(".dx-view[tabindex]").first
    view.focus()
    for _ in range(3):
        view.press("ArrowRight")
    _image(page, "dx-xt-image", changed_from=xt)
    assert page.locator("img.dx-xt-image").get_attribute("data-step") == "3"
    page.wait_for_function("() => window.dxLog.saved > 0", polling=100, timeout=10_000)
    page.wait_for_timeout(500)
    log = page.evaluate("() => window.dxLog")
    assert log["set"] == [["step", 3]] and log["saved"] == 1  # once, after scrubbing settled
    page.evaluate("() => window.dxFromPython('step', 1)")  # Python moves the step
    assert page.locator("img.dx-xt-image").get_attribute("data-step") == "1"
    page.locator(".dx-preview-toggle input").check()
    assert page.evaluate("() => window.dxLog.sent") == [{"action": "preview", "value": True}]
    explorer._on_message(explorer, {"action": "preview", "value": True}, [])  # as the comm delivers it
    assert explorer.preview.value is True and explorer.output.outputs == ()
    page.evaluate("() => window.dxCleanup()")
    assert all(u.startswith(("about:", "blob:", "data:")) for u in requests), requests
