"""The anywidget labs (NoiseLab, PromptSwap, ForwardProcess) in a real JupyterLab: each renders its
pictures, a scrub in the browser changes the picture with no comm message to the kernel, and one model
action (a button) round-trips to Python. Python-level tests: tests/test_widgets_labs_anywidget.py.
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
    python_says,
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
from diffexplain.widgets import ForwardProcess, NoiseLab, PromptSwap
try:
    from diffexplain.models.default import load_default
    ex = load_default(progress=False)
    STEPS = 12
except FileNotFoundError:  # the default model is not installed: tiny random parts (noise pictures)
    from tests.tiny_parts import tiny_parts
    ex = Explainer(**tiny_parts(), progress=False)
    STEPS = 4
PROMPT = "a red circle on the left and a blue square on the right"
"""

VIEWS = {
    "noise_lab": """\
widget = NoiseLab(ex, PROMPT, seed=0, guidance_scale=5.0, num_inference_steps=STEPS)
widget.use_rect.value = True
widget.strength.value = 2.0
widget""",
    "prompt_swap": """\
widget = PromptSwap(ex, PROMPT, "a green triangle on the top", num_inference_steps=STEPS, sweep_points=4)
widget""",
    "forward_process": """\
widget = ForwardProcess(ex, t=300)
widget""",
}


def _open(page, lab_server, tmp_path: Path, name: str) -> None:
    open_notebook(page, serve_cells(lab_server, tmp_path, f"lab_{name}", SETUP, VIEWS[name]))
    state = run_all(page, timeout=300)
    assert state["done"] == state["total"] == 2 and state["errors"] == 0, (state, error_outputs(page))


def _scrubs_without_kernel(page, css: str, img: str, slider: str, presses: int = 2) -> None:
    """``presses`` ArrowRight on ``slider`` change ``img`` (its data-step) with no comm message sent."""
    sel = f".{css} img.{img}"
    wait_for_widget_image(page, img)
    install(page, sel)
    before = page.eval_on_selector(sel, "i => [i.src, i.dataset.step]")
    rapid(page, f".{css} .{slider} input[type=range]", presses)
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel); return i.src !== old && i.complete; }",
        arg=[sel, before[0]],
        polling=50,
        timeout=10_000,
    )
    assert counts(page)["comm"] == 0, counts(page)  # drawn in the page: the kernel heard nothing
    return before


@pytest.mark.timeout(600)
def test_noise_lab_scrubs_k_in_the_browser_and_forks_in_python(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "noise_lab")
    wait_for_widget_image(page, "dx-original-image")
    branch = wait_for_widget_image(page, "dx-branch-image")
    assert page.locator(".dx-noise-lab .dx-rect").is_visible()  # use_rect set in Python, drawn here
    before = _scrubs_without_kernel(page, "dx-noise-lab", "dx-xk-image", "dx-inject-step", presses=1)
    step = page.eval_on_selector(".dx-noise-lab img.dx-xk-image", "i => i.dataset.step")
    assert int(step) == int(before[1]) + 1
    page.wait_for_timeout(800)  # the move settled: Python hears k once
    assert python_says(page, "print(widget.step.value)").strip() == step
    click_button(page, "dx-inject-button")
    wait_for_widget_image(page, "dx-branch-image", changed_from=branch)
    wait_for_widget_image(page, "dx-diff-image")
    wait_for_text(page, "dx-status", "ran again")
    assert python_says(page, "print(widget.branch.forked_from)").strip() == step
    assert count_error_outputs(page) == 0, error_outputs(page)
    docs_screenshot(page, "noise_lab", "dx-noise-lab")


@pytest.mark.timeout(600)
def test_prompt_swap_scrubs_k_in_the_browser_and_sweeps_in_python(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "prompt_swap")
    swap = wait_for_widget_image(page, "dx-swap-image")
    wait_for_widget_image(page, "dx-a-image")
    _scrubs_without_kernel(page, "dx-prompt-swap", "dx-a-x0-image", "dx-swap-step", presses=1)
    step = page.eval_on_selector(".dx-prompt-swap img.dx-a-x0-image", "i => i.dataset.step")
    page.wait_for_timeout(800)  # the move settled: Python hears k once
    assert python_says(page, "print(widget.step.value)").strip() == step
    click_button(page, "dx-swap-button")
    wait_for_widget_image(page, "dx-swap-image", changed_from=swap)
    wait_for_text(page, "dx-status", "with B")
    click_button(page, "dx-sweep-button")
    wait_for_text(page, "dx-status", "sweep done")
    wait_for_widget_image(page, "dx-sweep-strip")
    assert page.locator(".dx-prompt-swap .dx-sweep-tile").count() == 5  # 4 sweep points and A
    assert page.locator(".dx-prompt-swap .dx-sweep-plot path.dx-series").count() == 2
    assert python_says(page, "print(sorted(widget.sweep))").strip().startswith("[0,")
    assert count_error_outputs(page) == 0, error_outputs(page)
    docs_screenshot(page, "prompt_swap", "dx-prompt-swap")


@pytest.mark.timeout(600)
def test_forward_process_noises_in_the_browser_and_asks_the_model_in_python(lab_page, lab_server, tmp_path):
    page = lab_page
    _open(page, lab_server, tmp_path, "forward_process")
    wait_for_widget_image(page, "dx-clean-image")
    guess = wait_for_widget_image(page, "dx-model-x0-image")
    marker = page.eval_on_selector(".dx-abar-plot .dx-chart-marker", "m => m.getAttribute('cx')")
    _scrubs_without_kernel(page, "dx-forward-process", "dx-forward-image", "dx-t-slider", presses=3)
    assert page.eval_on_selector(".dx-forward-process img.dx-forward-image", "i => i.dataset.t") == "303"
    assert page.eval_on_selector(".dx-abar-plot .dx-chart-marker", "m => m.getAttribute('cx')") != marker
    assert "t = 303:" in page.locator(".dx-forward-process .dx-forward-info").inner_text()
    before = counts(page)["comm"]
    page.locator(".dx-forward-process .dx-schedule select").select_option(label="cosine")  # drawn here too
    page.wait_for_function(
        "() => document.querySelector('.dx-abar-plot path.dx-series') !== null", timeout=10_000
    )
    assert counts(page)["comm"] == before
    # the t slider settled: Python hears t (and the schedule) once and asks the model at t = 303
    guess = wait_for_widget_image(page, "dx-model-x0-image", changed_from=guess)
    assert python_says(page, "print(widget.t.value, widget.schedule.value)").split() == [
        "303",
        "squaredcos_cap_v2",
    ]
    click_button(page, "dx-ask-button")
    wait_for_text(page, "dx-status", "t = 303")
    assert count_error_outputs(page) == 0, error_outputs(page)
    docs_screenshot(page, "forward_process", "dx-forward-process")
