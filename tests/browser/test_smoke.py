"""The harness itself: a slider drives an image widget and a plotly figure (in an Output widget) in JupyterLab."""

from __future__ import annotations

import sys

from lab_helpers import (
    ARTIFACTS_DIR,
    click_button,
    count_error_outputs,
    error_outputs,
    open_notebook,
    output_text,
    press_slider,
    run_all,
    screenshot,
    wait_for_plotly,
    wait_for_widget_image,
)


def test_smoke_slider_drives_image_and_figure(lab_page):
    page = lab_page
    open_notebook(page, "smoke.ipynb")
    state = run_all(page)
    assert state["done"] == state["total"] == 2, state

    # The kernel is this interpreter (the project's venv), and diffexplain imports in it.
    text = output_text(page)
    assert f"kernel: {sys.executable}" in text, text
    assert "diffexplain/__init__.py" in text, text

    src0 = wait_for_widget_image(page, "smoke-image")
    fig0 = wait_for_plotly(page, "smoke-figure")
    assert fig0["title"] == "step 0"
    screenshot(page, ARTIFACTS_DIR / "smoke" / "step0.png")

    press_slider(page, "smoke-slider", "ArrowRight")
    src1 = wait_for_widget_image(page, "smoke-image", changed_from=src0)
    fig1 = wait_for_plotly(page, "smoke-figure", changed_from=fig0, title="step 1")
    assert fig1["data"][0]["y"] != fig0["data"][0]["y"]

    press_slider(page, "smoke-slider", "ArrowRight", times=2)
    wait_for_plotly(page, "smoke-figure", title="step 3")
    src3 = wait_for_widget_image(page, "smoke-image", changed_from=src1)
    shot = screenshot(page, ARTIFACTS_DIR / "smoke" / "step3.png")
    assert shot.stat().st_size > 10_000
    screenshot(page, ARTIFACTS_DIR / "smoke" / "figure.png", css_class="smoke-figure")

    click_button(page, "smoke-reset")
    wait_for_widget_image(page, "smoke-image", changed_from=src3)
    fig_reset = wait_for_plotly(page, "smoke-figure", title="step 0")
    assert fig_reset["data"][0]["y"] == fig0["data"][0]["y"]

    assert count_error_outputs(page) == 0, error_outputs(page)


def test_second_notebook_reuses_the_loaded_lab(lab_page, lab_server):
    """A later test opens its notebook in the loaded app: fresh document, one kernel, same widgets."""
    page = lab_page
    open_notebook(page, "smoke.ipynb")
    assert len(lab_server.api("GET", "/api/kernels")) == 1
    assert output_text(page).strip() == ""  # the served copy was not saved with the last test's outputs
    state = run_all(page)
    assert state["done"] == state["total"] == 2, state
    wait_for_widget_image(page, "smoke-image")
    wait_for_plotly(page, "smoke-figure", title="step 0")
    assert count_error_outputs(page) == 0, error_outputs(page)
