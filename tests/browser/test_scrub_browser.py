"""The anywidget StepExplorer in a real JupyterLab: scrubbing runs in the browser, with no kernel.

Ten rapid arrow presses land on step 10 (the picture, the readout and the info line), while the
kernel is held by a pure-Python loop (it answers nothing meanwhile) and while the page sends the
kernel no comm message for them; once the scrubbing settles, Python hears the step once.
Timings: ``benchmarks/bench_scrub.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import (
    count_error_outputs,
    error_outputs,
    open_notebook,
    python_says,
    run_all,
    screenshot,
    serve_cells,
    wait_for_widget_image,
)
from lab_server import ARTIFACTS_DIR
from scrub_probe import counts, install, kernel_still_busy, make_kernel_busy, rapid

SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Explainer
from diffexplain.widgets import StepExplorer
try:
    from diffexplain.models.default import load_default
    ex = load_default(progress=False)
    STEPS = 25
except FileNotFoundError:  # the default model is not installed: tiny random parts (noise pictures)
    from tests.tiny_parts import tiny_parts
    ex = Explainer(**tiny_parts(), progress=False)
    STEPS = 12
trace = ex.run("a red circle on the left and a blue square on the right", num_inference_steps=STEPS, seed=0)
"""
VIEW = "widget = StepExplorer(trace)\nwidget"
XT = ".dx-step-explorer img.dx-xt-image"
SLIDER = ".dx-step-explorer input[type=range]"


def _serve(lab_server, tmp_path: Path) -> str:
    return serve_cells(lab_server, tmp_path, "scrub", SETUP, VIEW)


def _landed(page, step: int) -> None:
    page.wait_for_function(
        """([sel, step]) => {
          const img = document.querySelector(`${sel}[data-step="${step}"]`);
          const info = document.querySelector('.dx-step-explorer .dx-step-info');
          const readout = document.querySelector('.dx-step-explorer .widget-readout');
          return !!img && img.complete && img.naturalWidth > 0 && info.innerText.startsWith(`step ${step} of`)
            && readout.textContent === String(step);
        }""",
        arg=[XT, step],
        polling=20,
        timeout=10_000,
    )


@pytest.mark.timeout(600)
def test_scrubbing_needs_no_kernel(lab_page, lab_server, tmp_path):
    page = lab_page
    open_notebook(page, _serve(lab_server, tmp_path))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))
    wait_for_widget_image(page, "dx-xt-image")
    _landed(page, 0)
    install(page, XT)

    # 10 rapid presses with the kernel free: the picture lands on step 10, no comm message meanwhile
    rapid(page, SLIDER, 10)
    _landed(page, 10)
    assert counts(page)["comm"] == 0, counts(page)
    page.wait_for_timeout(1000)  # the scrubbing settled: Python hears the step, once
    assert counts(page)["comm"] == 1, counts(page)
    assert python_says(page, "print(widget.slider.value, widget.step)").split() == ["10", "10"]

    # the kernel held by a pure-Python loop: scrubbing goes on, back 10 steps
    make_kernel_busy(page, 20)
    before = counts(page)
    rapid(page, SLIDER, 10, key="ArrowLeft")
    _landed(page, 0)
    assert kernel_still_busy(page)  # the pictures came while the kernel answered nothing
    page.keyboard.press("End")  # the range input's own keys: the last step
    _landed(page, int(page.eval_on_selector(SLIDER, "s => s.max")))
    assert counts(page)["comm"] - before["comm"] <= 1, counts(page)  # at most the settled step, queued
    page.keyboard.press("Home")
    _landed(page, 0)
    page.wait_for_timeout(600)
    assert python_says(page, "print(widget.step)").strip() == "0"  # heard once the loop ended
    assert count_error_outputs(page) == 0, error_outputs(page)
    screenshot(page, ARTIFACTS_DIR / "screenshots" / "anywidget_step_explorer.png", "dx-step-explorer")
