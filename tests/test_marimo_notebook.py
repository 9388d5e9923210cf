"""The marimo quickstart (``notebooks/quickstart_marimo.py``) as plain Python: it passes ``marimo check``,
runs end to end (``app.run()``), shows the StepExplorer anywidget, and its re-guide cell (a named cell,
``reguide_at_w``) makes no model call and agrees with the run at the run's own w.

Its page in a real browser (``marimo export html`` and ``marimo run``) is tests/browser/test_marimo_browser.py.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("marimo")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart_marimo.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_marimo", NOTEBOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marimo_check_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "marimo", "check", "--strict", str(NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def ran() -> tuple[ModuleType, dict]:
    module = _load()
    _outputs, defs = module.app.run()
    return module, dict(defs)


def _pictures(html: str) -> dict[str, np.ndarray]:
    """The re-guide cell's two pictures, by CSS class, as arrays."""
    found = re.findall(r'<img class="(dx-[a-z0-9-]+)" src="data:image/png;base64,([^"]+)"', html)
    return {
        css: np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")) for css, data in found
    }


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_notebook_runs_and_shows_the_step_explorer(ran) -> None:
    from diffexplain.widgets import StepExplorer
    from diffexplain.widgets.trace_view import TraceView

    _module, defs = ran
    trace, explorer = defs["trace"], defs["explorer"]
    assert len(trace) == defs["STEPS"] and trace.settings["guidance_scale"] == defs["W_RUN"]
    assert isinstance(explorer.widget, StepExplorer) and isinstance(explorer.widget, TraceView)
    assert explorer.widget.trace is trace and explorer.value["step"] == 0
    assert explorer.widget.output.outputs == () and "Error" not in explorer.widget.status.value
    assert len(explorer.widget._index) == 7 * len(trace)  # every panel of every step sent to the browser


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reguide_cell_uses_the_cache_and_agrees_with_the_run(ran) -> None:
    module, defs = ran
    explainer, trace = defs["explainer"], defs["trace"]
    refs = {k: defs[k] for k in ("base64", "explainer", "explorer", "mo", "probe", "render", "trace")}
    calls: list[int] = []
    handle = explainer.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        at_run, _ = module.reguide_at_w.run(**refs, w=SimpleNamespace(value=defs["W_RUN"]))
        explorer = defs["explorer"].widget
        explorer.step = 3  # as the browser sets it once scrubbing settles
        unguided, _ = module.reguide_at_w.run(**refs, w=SimpleNamespace(value=0.0))
    finally:
        handle.remove()
        defs["explorer"].widget.step = 0
    assert calls == [], "re-guiding must not call the model"
    assert 'data-step="0" data-w="7.5"' in at_run.text and 'data-step="3" data-w="0"' in unguided.text
    same, other = _pictures(at_run.text), _pictures(unguided.text)
    assert set(same) == {"dx-run-x0", "dx-reguided-x0"} == set(other)
    # at the run's own w the re-guided x̂0 is the recorded one (to the 8-bit pictures' rounding)
    assert np.abs(same["dx-run-x0"].astype(int) - same["dx-reguided-x0"]).max() <= 1
    # w = 0 (no prompt) moves the guess of step 3
    assert np.abs(other["dx-run-x0"].astype(int) - other["dx-reguided-x0"]).mean() > 2
    assert len(trace) > 3
