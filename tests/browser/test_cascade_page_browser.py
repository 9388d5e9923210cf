"""``CascadeTrace.to_html`` in headless Chromium, opened from file:// with no server: the stage buttons
show each stage's page, whose slider moves its own pictures; nothing is requested but the file and data:
URIs. Screenshot: test-artifacts/browser/screenshots/cascade_page.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_server import ARTIFACTS_DIR

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    import torch

    from diffexplain import Cascade
    from tests.tiny_families import tiny_if_pipelines

    torch.set_num_threads(1)
    cascade = Cascade.from_pipelines(*tiny_if_pipelines(), progress=False)
    trace = cascade.run(PROMPT, seed=4, I=dict(num_inference_steps=3), II=dict(num_inference_steps=2))
    return trace.to_html(tmp_path_factory.mktemp("cascade") / "cascade.html")


def _frame(page, stage: str):
    handle = page.wait_for_selector(f'iframe[data-stage="{stage}"]', state="attached")
    frame = handle.content_frame()
    frame.wait_for_selector("#dx-step", state="attached")  # a hidden stage's page is loaded too
    return handle, frame


def _src(frame, selector: str) -> str:
    frame.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
    )
    return frame.eval_on_selector(selector, "i => i.src")


def test_the_stage_buttons_show_each_stages_page(page_file: Path, browser_page) -> None:
    page, requests, errors = browser_page
    page.goto(page_file.as_uri())
    one, frame_one = _frame(page, "I")
    two, frame_two = _frame(page, "II")
    # the last stage first: its button pressed, its frame shown, stage I's hidden
    assert page.get_attribute('button[data-stage="II"]', "aria-pressed") == "true"
    assert two.is_visible() and not one.is_visible()
    assert frame_two.eval_on_selector("#dx-step", "s => s.max") == "1"  # stage II's 2 steps
    page.click('button[data-stage="I"]')
    assert one.is_visible() and not two.is_visible()
    assert page.get_attribute('button[data-stage="I"]', "aria-pressed") == "true"
    assert frame_one.eval_on_selector("#dx-step", "s => s.max") == "2"  # stage I's 3 steps
    assert one.bounding_box()["height"] > 300  # the frame is as tall as its page
    before = _src(frame_one, "img.dx-x0-image")
    frame_one.focus("#dx-step")
    frame_one.press("#dx-step", "ArrowRight")
    assert frame_one.input_value("#dx-step") == "1" and _src(frame_one, "img.dx-x0-image") != before
    folder = ARTIFACTS_DIR / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "cascade_page.png"), full_page=True)
    assert not errors, errors
    outside = [u for u in requests if not u.startswith(("file:", "data:", "about:"))]
    assert not outside, outside
