"""The anywidget GuidanceLab in a real JupyterLab: its pictures render, the step slider scrubs the
unguided / guided x̂0 in the browser with no comm message to the kernel, and its model actions (the w
slider's re-guide, guidance off in a step range, Count seeds) are messages that come back from Python.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import (
    click_button,
    count_error_outputs,
    docs_screenshot,
    error_outputs,
    open_notebook,
    press_slider,
    run_all,
    serve_cells,
    wait_for_text,
    wait_for_widget_image,
)
from scrub_probe import counts, install, rapid

SETUP = """\
import os, warnings
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from diffexplain import Explainer
from diffexplain.widgets import GuidanceLab
try:
    from diffexplain.models.default import load_default
    ex = load_default(progress=False)
    STEPS = 10
except FileNotFoundError:  # the default model is not installed: tiny random parts (noise pictures)
    from tests.tiny_parts import tiny_parts
    ex = Explainer(**tiny_parts(), progress=False)
    STEPS = 6
"""
VIEW = (
    'widget = GuidanceLab(ex, "a red circle on the left and a blue square on the right", seed=0, '
    "guidance_scale=5.0, num_inference_steps=STEPS, seeds=4)\nwidget"
)
LAB = ".dx-guidance-lab"
STEP_ON = f"{LAB} img.dx-step-on-image"
SLIDER = f"{LAB} input.dx-lab-step"


def _serve(lab_server, tmp_path: Path) -> str:
    return serve_cells(lab_server, tmp_path, "guidance_lab", SETUP, VIEW)


def _landed(page, step: int) -> None:
    page.wait_for_function(
        """([lab, step]) => {
          const on = document.querySelector(`${lab} img.dx-step-on-image[data-step="${step}"]`);
          const off = document.querySelector(`${lab} img.dx-step-off-image[data-step="${step}"]`);
          const info = document.querySelector(`${lab} .dx-step-info`);
          const strip = document.querySelectorAll(`${lab} .dx-strip-on img`)[step];
          return !!on && on.complete && on.naturalWidth > 0 && !!off && off.naturalWidth > 0
            && info.innerText.startsWith(`step ${step} of`) && strip.classList.contains('dx-on');
        }""",
        arg=[LAB, step],
        polling=20,
        timeout=10_000,
    )


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_guidance_lab_scrubs_in_the_browser_and_runs_in_python(lab_page, lab_server, tmp_path):
    page = lab_page
    open_notebook(page, _serve(lab_server, tmp_path))
    state = run_all(page, timeout=400)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))
    for css in ("dx-off-image", "dx-on-image", "dx-diff-image", "dx-step-off-image", "dx-reguide-strip"):
        wait_for_widget_image(page, css)
    _landed(page, 0)

    # scrubbing: the unguided and guided x̂0 of step 3, with no comm message to the kernel
    install(page, STEP_ON)
    first = page.eval_on_selector(STEP_ON, "img => img.src")
    rapid(page, SLIDER, 3)
    _landed(page, 3)
    assert page.eval_on_selector(STEP_ON, "img => img.src") != first
    assert counts(page)["comm"] == 0, counts(page)
    page.locator(f"{LAB} .dx-strip-off img").nth(1).click()  # a click on the strip scrubs too
    _landed(page, 1)
    assert counts(page)["comm"] == 0, counts(page)

    # the w slider: re-guiding needs the cached ε_c and ε_u in Python (a message, the strip comes back)
    strip = wait_for_widget_image(page, "dx-reguide-strip")
    press_slider(page, "dx-guidance-slider", "ArrowRight", times=2)
    wait_for_widget_image(page, "dx-reguide-strip", changed_from=strip)
    wait_for_text(page, "dx-reguide-label", "re-guided at w = 6 ")

    # guidance off in a step range: a fork in Python; its x̂0 per step joins the scrubbed pictures
    click_button(page, "dx-cfg-off-button")
    wait_for_text(page, "dx-status", "guidance off for steps")
    wait_for_widget_image(page, "dx-range-image")
    wait_for_widget_image(page, "dx-step-range-image")

    # the seed grid: Count seeds runs in Python, with Stop offered meanwhile; 3 columns of 4 pictures
    click_button(page, "dx-grid-run")
    wait_for_text(page, "dx-status", "steps · ")
    page.wait_for_function(
        """(lab) => { const imgs = [...document.querySelectorAll(`${lab} img.dx-grid-image`)];
                      return imgs.length === 12 && imgs.every((i) => i.complete && i.naturalWidth > 0); }""",
        arg=LAB,
        timeout=120_000,
    )
    assert page.locator(f"{LAB} .dx-grid-count").count() == 3
    assert page.eval_on_selector(f"{LAB} button.dx-stop", "b => b.disabled")  # nothing runs now
    assert count_error_outputs(page) == 0, error_outputs(page)
    docs_screenshot(page, "guidance_lab", "dx-guidance-lab")
