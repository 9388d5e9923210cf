"""The anywidget AttentionMaps in a real JupyterLab: choosing the step and the token redraws the map in the
browser with no comm message to the kernel; the reweight fork goes to Python and its picture comes back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import (
    click_button,
    count_error_outputs,
    error_outputs,
    open_notebook,
    python_says,
    run_all,
    screenshot,
    serve_cells,
    wait_for_text,
    wait_for_widget_image,
)
from lab_server import ARTIFACTS_DIR
from scrub_probe import counts, install

SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Explainer
from diffexplain.widgets import AttentionMaps
try:
    from diffexplain.models.default import load_default
    ex = load_default(progress=False)
    STEPS = 8
except FileNotFoundError:  # the default model is not installed: tiny random parts (noise pictures)
    from tests.tiny_parts import tiny_parts
    ex = Explainer(**tiny_parts(), progress=False)
    STEPS = 6
trace = ex.run("a red circle on the left and a blue square on the right", num_inference_steps=STEPS, seed=0)
"""
VIEW = 'widget = AttentionMaps(trace, token="blue")\nwidget'
OVERLAY = ".dx-attention-maps img.dx-overlay-image"
SLIDER = ".dx-attention-maps .dx-attention-step input[type=range]"


def _serve(lab_server, tmp_path: Path) -> str:
    return serve_cells(lab_server, tmp_path, "attention", SETUP, VIEW)


def _overlay_at(page, step: int) -> str:
    """Wait until the overlay shows ``step`` (its picture and the info line); returns its src."""
    return page.wait_for_function(
        """([sel, step]) => {
          const img = document.querySelector(`${sel}[data-step="${step}"]`);
          const info = document.querySelector('.dx-attention-maps .dx-attention-info');
          return img && img.complete && img.naturalWidth > 0 && info.innerText.includes(`step ${step} (t =`)
            ? img.src : null;
        }""",
        arg=[OVERLAY, step],
        polling=50,
        timeout=20_000,
    ).json_value()


@pytest.mark.timeout(600)
def test_attention_maps_choose_in_the_browser_and_fork_in_python(lab_page, lab_server, tmp_path):
    page = lab_page
    open_notebook(page, _serve(lab_server, tmp_path))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))
    wait_for_widget_image(page, "dx-map-image")
    last = int(page.eval_on_selector(SLIDER, "s => s.max"))
    start = _overlay_at(page, last)
    bars = page.inner_html(".dx-attention-maps .dx-token-shares svg")
    assert page.locator(".dx-attention-maps .dx-token-shares rect.dx-bar").count() > 2
    install(page, OVERLAY)

    # the step and the token chosen in the browser: new pictures, new bars, no comm message meanwhile
    page.focus(SLIDER)
    for _ in range(last):
        page.keyboard.press("ArrowLeft")
    assert _overlay_at(page, 0) != start
    assert page.inner_html(".dx-attention-maps .dx-token-shares svg") != bars
    token = page.locator(".dx-attention-maps select.dx-token")
    token.select_option(index=1)
    wait_for_text(page, "dx-attention-info", token.locator("option").nth(1).inner_text())
    assert counts(page)["comm"] == 0, counts(page)
    page.wait_for_timeout(1000)  # the choices settled: Python hears them, once
    assert counts(page)["comm"] == 1, counts(page)
    assert python_says(page, "print(widget.step.value, widget.token.value)").split() == ["0", "1"]

    # the reweight fork: a message to Python, its picture comes back
    token.select_option(index=2)
    click_button(page, "dx-reweight-button")
    wait_for_widget_image(page, "dx-after-image")
    wait_for_text(page, "dx-status", "forked at step 0")
    assert "× 0 from step 0" in page.inner_text(".dx-attention-maps .dx-row")
    assert python_says(page, "print(widget.forked.forked_from, widget.token.value)").split() == ["0", "2"]
    assert count_error_outputs(page) == 0, error_outputs(page)
    screenshot(page, ARTIFACTS_DIR / "screenshots" / "anywidget_attention_maps.png", "dx-attention-maps")
