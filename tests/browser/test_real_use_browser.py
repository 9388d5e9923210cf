"""The widgets as a new user meets them in a real JupyterLab (issue #19): run, change the prompt, run
again, and every picture changes; a failed action followed by a good one leaves no traceback; Stop
ends a long run between steps, with the page still answering."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import (
    click_button,
    error_outputs,
    wait_for_plotly,
    wait_for_text,
    wait_for_widget_image,
)
from test_widgets_browser import _no_errors, _open

PANELS = ("dx-off-image", "dx-on-image", "dx-diff-image", "dx-reguide-strip")


def _fill(page, css_class: str, text: str) -> None:
    """Type ``text`` into the text box of the widget with ``css_class`` (replacing what it held)."""
    box = page.locator(f".{css_class} input").first
    box.fill(text)
    box.press("Tab")  # the value syncs on change as well as on each key


def _stop_enabled(page, enabled: bool) -> None:
    page.wait_for_function(
        "(on) => { const b = document.querySelector('button.dx-stop'); return b && b.disabled !== on; }",
        arg=enabled,
        polling=100,
        timeout=120_000,
    )


@pytest.mark.timeout(600)
def test_a_new_prompt_changes_every_picture_and_errors_clear(lab_page, lab_server, tmp_path: Path):
    page = lab_page
    _open(page, lab_server, tmp_path, "guidance_lab")
    before = {css: wait_for_widget_image(page, css) for css in PANELS}
    plot = wait_for_plotly(page, "dx-guidance-plot")
    click_button(page, "dx-cfg-off-button")
    ranged = wait_for_text(page, "dx-status", "guidance off for steps")
    assert ranged
    range_picture = wait_for_widget_image(page, "dx-range-image")

    # a failed action: a seed torch cannot take, told on the status line without a traceback
    _fill(page, "dx-seed", "-4")
    click_button(page, "dx-run")
    wait_for_text(page, "dx-status", "the seed box holds")
    assert not any("Traceback" in e for e in error_outputs(page)), error_outputs(page)

    # then a good one, with a new prompt: every panel changes and the message goes
    _fill(page, "dx-seed", "3")
    _fill(page, "dx-prompt", "a yellow triangle at the top and a green circle at the bottom")
    click_button(page, "dx-run")
    wait_for_text(page, "dx-status", "done:")
    for css, src in before.items():
        wait_for_widget_image(page, css, changed_from=src)
    wait_for_widget_image(page, "dx-range-image", changed_from=range_picture)  # the old range is cleared
    wait_for_text(page, "dx-guidance-lab", "guidance off in a step range")
    wait_for_plotly(page, "dx-guidance-plot", changed_from=plot)
    _no_errors(page)


@pytest.mark.timeout(600)
def test_stop_ends_a_long_run_between_steps(lab_page, lab_server, tmp_path: Path):
    page = lab_page
    _open(page, lab_server, tmp_path, "guidance_lab")
    on = wait_for_widget_image(page, "dx-on-image")
    _fill(page, "dx-steps", "300")  # long enough to press Stop; a count that does not warn
    click_button(page, "dx-run")
    _stop_enabled(page, True)  # on while the model runs; Run is off
    assert page.locator("button.dx-run").first.is_disabled()
    wait_for_text(page, "dx-status", "running with guidance off")
    page.wait_for_function(  # the progress bar moves: the page hears from the kernel mid-run
        "() => { const b = document.querySelector('.dx-progress .progress-bar');"
        " return b && parseFloat(b.style.width) > 2; }",
        polling=100,
        timeout=120_000,
    )
    click_button(page, "dx-stop")
    text = wait_for_text(page, "dx-status", "stopped after")
    assert "of 300 steps" in text and "explainer.last_trace" in text
    _stop_enabled(page, False)
    assert not page.locator("button.dx-run").first.is_disabled()
    assert wait_for_widget_image(page, "dx-on-image") == on  # the last finished pictures stay
    _no_errors(page)
