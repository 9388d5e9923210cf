"""PictureLab at the Python level, on the embedded default model (its pictures are real coloured shapes,
so a mask's effect and an inversion's error can be measured): where the loop enters, what a mask
changes, the inversion's plot, the picture sources, Stop, and bad values on the status line."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from PIL import Image

import diffexplain
from diffexplain import Explainer
from diffexplain.widgets import PictureLab
from diffexplain.widgets.base import ERROR_STATUS
from tests.test_jobs import ManualLoop

STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ex() -> Explainer:
    explainer = diffexplain.load_default()
    explainer.progress = False
    return explainer


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def test_the_entry_step_follows_the_strength(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS)
    marked = []
    for strength, entry in ((0.25, 6), (0.5, 4), (1.0, 0)):
        lab.strength.value = strength
        assert lab.entry_step == entry
        skipped, runs, mark = lab.schedule_fig.data
        assert tuple(mark.x) == (entry,) and len(runs.x) == STEPS - entry and len(skipped.x) == entry + 1
        assert f"enters at step <b>{entry}</b> of {STEPS}" in lab.entry_label.value
        marked.append(mark.y[0])
        trace = lab.run()
        assert trace.settings["entry_step"] == entry and len(trace) == STEPS - entry
        assert lab.step.max == len(trace) - 1
    assert marked[0] > marked[1] > marked[2]  # a smaller strength enters where more signal is left (ᾱ)


def test_the_mask_changes_its_region_more_than_the_rest(ex: Explainer) -> None:
    lab = PictureLab(
        ex, "a blue circle on the left", picture_caption="a red circle on the left", strength=0.8
    )
    lab.steps.value = STEPS
    lab.use_mask.value = True
    for name, value in (("x0", 0), ("y0", 0), ("x1", 32), ("y1", 64)):  # the left half: the circle
        lab.box[name].value = value
    trace = lab.run()
    assert trace.settings["inpaint"] == "blend"
    change = np.abs(pixels(trace.images[0]) - pixels(lab.picture)).mean(axis=-1)
    inside, outside = change[:, :32].mean(), change[:, 32:].mean()
    assert inside > 4 * outside, (inside, outside)
    lab.box["x0"].value, lab.box["x1"].value = 32, 64  # the right half: the circle must stay
    kept = np.abs(pixels(lab.run().images[0]) - pixels(lab.picture)).mean(axis=-1)
    assert kept[:, :32].mean() < inside / 4, (kept[:, :32].mean(), inside)


def test_the_inversion_plot_has_one_point_per_step(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS)
    blank = lab.images["rebuilt"].value
    rebuilt = lab.invert()
    (errors,) = lab.error_fig.data
    assert list(errors.x) == list(range(STEPS)) and len(lab.inversion.steps) == STEPS
    assert tuple(errors.y) == rebuilt.errors and rebuilt.final_error < 0.3
    assert lab.inversion.settings["prompt"] == "a red circle on the left"  # the scene's caption
    assert lab.images["rebuilt"].value != blank and "final error" in lab.status.value


def test_the_picture_sources(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS)
    scene = lab.picture
    lab.caption.value = ""  # a scene drawn from the seed
    lab.seed.value = "3"
    assert lab.picture_caption != "a red circle on the left" or not np.array_equal(
        pixels(lab.picture), pixels(scene)
    )
    trace = lab.run()
    lab.source.value = "last trace"
    assert np.abs(pixels(lab.picture) - pixels(trace.images[0])).max() < 0.02
    buffer = io.BytesIO()
    Image.new("RGB", (100, 80), (0, 200, 0)).save(buffer, format="PNG")
    content = buffer.getvalue()
    lab.source.value = "upload"
    assert lab.status.value.startswith(ERROR_STATUS) and "no file uploaded" in lab.status.value
    upload = {"name": "green.png", "type": "image/png", "size": len(content), "content": memoryview(content)}
    lab.upload.value = ({**upload, "last_modified": datetime.now(UTC)},)
    assert lab.picture.size == (64, 64) and pixels(lab.picture)[32, 32, 1] > 0.7
    assert not lab.status.value.startswith(ERROR_STATUS)


def test_stop_between_steps(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS, strength=1.0)
    loop = lab.schedule = ManualLoop()
    lab.run_button.click()
    assert lab.work is not None and lab.run_button.disabled and lab.invert_button.disabled
    loop.turn()
    loop.turn()
    lab.stop_button.click()
    loop.run_out()
    assert lab.work is None and lab.trace is None and not lab.run_button.disabled
    assert ex.last_trace.status == "stopped" and 0 < len(ex.last_trace) < STEPS
    assert "stopped after" in lab.status.value


def test_bad_values_are_refused_on_the_status_line(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS)
    lab.use_mask.value = True
    lab.box["x1"].value = lab.box["x0"].value  # an empty rectangle
    assert lab.status.value.startswith(ERROR_STATUS) and "mask rectangle is empty" in lab.status.value
    lab.status.value = ""
    lab.run_button.click()
    assert lab.trace is None and "mask rectangle is empty" in lab.status.value
    lab.use_mask.value = False
    lab.strength.value = 0.05  # ⌊8 · 0.05⌋ = 0: no step would run
    assert "no step runs" in lab.entry_label.value
    lab.run_button.click()
    assert (
        lab.trace is None and lab.status.value.startswith(ERROR_STATUS) and "runs no step" in lab.status.value
    )
    lab.caption.value = "a pink elephant"
    assert "the caption box" in lab.status.value and "'pink'" in lab.status.value
    lab.seed.value = "-1"
    assert lab.status.value.startswith(ERROR_STATUS) and "scene seed" in lab.status.value
    assert not lab.output.outputs  # typed values: the status line alone, no traceback


def test_the_step_slider_shows_x0_as_the_loop_goes(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS, strength=0.5)
    trace = lab.run()
    last = lab.images["x0"].value
    assert lab.x0_title.value == f"<b>x̂0 at step {STEPS - 1} of {STEPS}</b>"
    lab.step.value = 0  # the entry step: x̂0 from the noised picture
    assert lab.images["x0"].value != last
    assert lab.x0_title.value == f"<b>x̂0 at step {trace.settings['entry_step']} of {STEPS}</b>"


def test_image_plot_mode(ex: Explainer) -> None:
    from diffexplain.widgets import set_plot_mode

    set_plot_mode("image")
    try:
        lab = PictureLab(ex, num_inference_steps=STEPS)
    finally:
        set_plot_mode(None)
    before = bytes(lab.schedule_fig.output.value)
    assert before.startswith(b"\x89PNG")
    lab.strength.value = 0.25
    after = bytes(lab.schedule_fig.output.value)
    assert after != before and after.startswith(b"\x89PNG")


# ---- the anywidget view: what it sends the browser and what it does with its messages ----------------
def test_the_pictures_go_once_as_one_binary_buffer(ex: Explainer) -> None:
    from ipywidgets.widgets.widget import _instances, _remove_buffers

    before = set(_instances)
    lab = PictureLab(ex, num_inference_steps=STEPS, strength=0.5)
    made = {type(_instances[i]).__name__ for i in set(_instances) - before}
    assert made == {"PictureLab", "Layout"}  # no plain ipywidgets control (Layout: any DOMWidget's)
    assert set(lab._index) == {"input"} and lab._view["n"] == 0
    assert lab._schedule["steps"] == STEPS and len(lab._schedule["values"]) == STEPS
    lab.run()
    _, paths, buffers = _remove_buffers(lab.get_state())
    assert ["_frames"] in paths and len(buffers) == 1  # a binary buffer, not base64 in JSON
    assert {f"x0/{k}" for k in range(4)} | {"input", "start", "result"} == set(lab._index)
    version, frames = lab._version, lab._frames
    lab.shown_step = 1  # what the browser sends once the x̂0 slider settles: nothing is sent back
    assert lab._version == version and lab._frames is frames and lab.step.value == 1
    offset, length = lab._index["x0/1"]
    assert lab.images["x0"].value == frames[offset : offset + length]
    assert lab.x0_title.value == f"<b>x̂0 at step {STEPS // 2 + 1} of {STEPS}</b>"


def test_the_browsers_messages_are_actions(ex: Explainer) -> None:
    lab = PictureLab(ex, num_inference_steps=STEPS)
    send = lab._handle_custom_msg
    version = lab._version
    send({"action": "set", "steps": ""}, [])
    assert "the steps box holds ''" in lab.status.value and lab.steps.value == STEPS
    send({"action": "set", "strength": 0.25}, [])  # the strength slider settled: no picture resent
    assert lab.strength.value == 0.25 and "enters at step <b>6</b>" in lab.entry_label.value
    assert lab._inputs["strength"] == 0.25 and lab._version == version
    send({"action": "set", "use_mask": True, "box": {"x0": 10, "y0": 0, "x1": 10, "y1": 64}}, [])
    assert lab.status.value.startswith(ERROR_STATUS) and "mask rectangle is empty" in lab.status.value
    assert not lab.output.outputs and "mask rectangle is empty" not in lab.error_text  # status line alone
    buffer = io.BytesIO()
    Image.new("RGB", (100, 80), (0, 0, 220)).save(buffer, format="PNG")
    send({"action": "upload", "name": "blue.png"}, [memoryview(buffer.getvalue())])
    assert lab.source.value == "upload" and pixels(lab.picture)[32, 32, 2] > 0.7
    assert lab._version == version + 1 and lab._inputs["source"] == "upload"
    send({"action": "run", "prompt": "a red circle", "strength": 0.5, "steps": STEPS, "use_mask": True,
          "box": {"x0": 0, "y0": 0, "x1": 32, "y1": 64}}, [])  # fmt: skip
    assert (
        lab.trace is not None
        and lab.trace.settings["inpaint"] == "blend"
        and lab.prompt.value == "a red circle"
    )
    assert (
        lab._view["n"] == len(lab.trace) == STEPS // 2 and "inpainting: entered at step" in lab.status.value
    )
    send(
        {
            "action": "invert",
            "prompt": "a red circle",
            "strength": 0.5,
            "steps": 4,
            "use_mask": False,
            "box": {},
        },
        [],
    )
    assert len(lab._view["errors"]) == 4 and "rebuilt" in lab._index and "final error" in lab.status.value
