"""The one-file HTML page (``trace.to_html``) in headless Chromium, opened from file:// with no server.

Moving the slider changes the pictures, the step line and the timeline marker; play advances the steps;
the guidance pair follows the slider; nothing is requested from any address but the file itself and
data: URIs. Needs no JupyterLab. Screenshot: docs/assets/screenshots/html_page.png with
DIFFEXPLAIN_UPDATE_SCREENSHOTS=1, else test-artifacts/browser/screenshots/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lab_helpers import DOCS_SCREENSHOT_MAX_BYTES
from lab_server import ARTIFACTS_DIR, DOCS_SCREENSHOTS_DIR

PROMPT = "a red circle on the left and a blue square on the right"


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    """The page of a default-model run (25 steps, w = 5) with its guidance-off twin; tiny parts without it."""
    import torch

    from diffexplain import Explainer

    torch.set_num_threads(1)
    try:
        from diffexplain.models.default import load_default

        ex, steps = load_default(progress=False), 25
    except FileNotFoundError:  # the default model is not installed: tiny random parts
        from tests.tiny_parts import tiny_parts

        ex, steps = Explainer(**tiny_parts(), progress=False), 4
    on = ex.run(PROMPT, num_inference_steps=steps, seed=0, guidance_scale=5.0)
    off = ex.run(PROMPT, num_inference_steps=steps, seed=0, guidance_scale=1.0)
    return on.to_html(tmp_path_factory.mktemp("page") / "lesson.html", compare=off)


def _src(page, selector: str) -> str:
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
    )
    return page.eval_on_selector(selector, "i => i.src")


def _screenshot(page) -> Path:
    folder = (
        DOCS_SCREENSHOTS_DIR
        if os.environ.get("DIFFEXPLAIN_UPDATE_SCREENSHOTS") == "1"
        else ARTIFACTS_DIR / "screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "html_page.png"
    page.mouse.move(0, 0)
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    if path.stat().st_size > DOCS_SCREENSHOT_MAX_BYTES:  # as the widget screenshots: a 256-colour palette
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path


def test_the_page_works_offline_from_a_file(page_file: Path, browser_page) -> None:
    page, requests, errors = browser_page
    page.goto(page_file.as_uri())
    xt, x0 = _src(page, "img.dx-xt-image"), _src(page, "img.dx-x0-image")
    eps = _src(page, "img.dx-eps_c-image")
    pair = _src(page, "img.dx-compare-x0-1")
    cursor = page.get_attribute("#dx-cursor", "x1")
    assert page.input_value("#dx-step") == "0" and "step 0" in page.inner_text("#dx-info")

    page.focus("#dx-step")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#dx-step") == "2"
    assert _src(page, "img.dx-xt-image") != xt and _src(page, "img.dx-x0-image") != x0
    assert _src(page, "img.dx-eps_c-image") != eps and _src(page, "img.dx-compare-x0-1") != pair
    assert page.get_attribute("#dx-cursor", "x1") != cursor
    assert "step 2" in page.inner_text("#dx-info") and page.inner_text("#dx-step-readout") == "2"

    page.click("#dx-play")  # plays from step 2 on, one step per 600 ms
    page.wait_for_function("() => Number(document.getElementById('dx-step').value) >= 4")
    page.click("#dx-play")  # pause
    stopped = page.input_value("#dx-step")
    page.wait_for_timeout(1300)
    assert page.input_value("#dx-step") == stopped

    page.click("#dx-timeline", position={"x": 60, "y": 120})  # a click on the timeline picks the nearest step
    assert page.input_value("#dx-step") == "0"
    assert "x̂0 (the model's current guess)" in page.inner_text("body")  # the StepExplorer's panel titles

    _screenshot(page)
    assert not errors, errors
    outside = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert not outside, outside
    assert page_file.as_uri() in requests  # the recorder works: it saw the page itself
