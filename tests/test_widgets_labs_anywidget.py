"""The anywidget labs (NoiseLab, PromptSwap, ForwardProcess) in Python: what they send the browser (the
pictures once, as one binary buffer; the controls in ``_controls``) and what they do with its messages
(control moves, button clicks with the values shown, uploads). In a real browser:
tests/browser/test_labs_browser.py.

Tiny random parts, 3 inference steps.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from ipywidgets.widgets.widget import _instances, _remove_buffers

from diffexplain import Explainer
from diffexplain.widgets import ForwardProcess, NoiseLab, PromptSwap
from diffexplain.widgets.lab_view import LabView

PNG = b"\x89PNG\r\n\x1a\n"
PROMPT = "a red circle on the left"
STEPS = 3


@pytest.fixture(scope="module")
def ex(parts: dict) -> Explainer:
    torch.set_num_threads(1)
    return Explainer(**parts, progress=False)


def message(widget: LabView, content: dict, buffers: list | None = None) -> None:
    """What the browser's ``model.send(content, callbacks, buffers)`` does, as the kernel hears it."""
    widget._handle_custom_msg(content, buffers or [])


def picture(widget: LabView, key: str) -> bytes:
    """The PNG the browser got under ``key``."""
    offset, length = widget._index[key]
    return widget._frames[offset : offset + length]


def assert_one_buffer(widget: LabView) -> None:
    state, paths, buffers = _remove_buffers(widget.get_state())
    assert ["_frames"] in paths and len(buffers) == 1  # a binary buffer, not base64 in JSON
    assert "base64" not in json.dumps(state) and "data:image" not in json.dumps(state)
    for offset, length in widget._index.values():
        assert widget._frames[offset : offset + 8] == PNG and length > 8


@pytest.mark.parametrize("view", [NoiseLab, PromptSwap, ForwardProcess])
def test_one_module_with_no_name_declared_twice(view: type) -> None:
    esm = str(view._esm)
    names = re.findall(r"^(?:export )?(?:async )?(?:function|const|let|class) (\w+)", esm, flags=re.M)
    twice = sorted({n for n in names if names.count(n) > 1})
    assert twice == [], f"declared twice in {view.__name__}'s module: {twice}"
    assert esm.count("export default") == 1 and "mountLab(" in esm


def test_noise_lab_sends_every_x_k_once_and_scrubs_without_python(ex: Explainer) -> None:
    before = set(_instances)
    lab = NoiseLab(ex, PROMPT, seed=0, num_inference_steps=STEPS)
    made = {type(_instances[i]).__name__ for i in set(_instances) - before}
    assert made == {"NoiseLab", "Layout"}  # no plain ipywidgets control
    assert "step" not in lab.traits()  # ``step`` is the injection step k's stand-in, not a synced step
    assert_one_buffer(lab)
    n = len(lab.original)
    assert {f"{k}/xk" for k in range(n)} | {"init", "original", "branch", "diff"} <= set(lab._index)
    assert lab._view["steps"] == n and lab._controls["step"] == lab.step.value
    for k in range(n):  # Python's x_k is the picture the browser got (no rectangle drawn)
        lab.step.value = k
        assert lab.images["xk"].value == picture(lab, f"{k}/xk")
    version, frames = lab._version, lab._frames
    lab.set_state({"_controls": {**lab._controls, "step": 1, "use_rect": True, "rows": [0, 50]}})
    assert lab.step.value == 1 and lab.use_rect.value and lab.rows.value == (0, 50)  # the browser's moves
    assert lab._version == version and lab._frames is frames  # nothing sent back: the browser draws them
    assert lab.images["xk"].value != picture(lab, "1/xk")  # Python draws the rectangle when asked
    lab.strength.value = 2.5  # a Python change shows in the browser
    assert lab._controls["strength"] == 2.5


def test_noise_lab_buttons_from_the_browser(ex: Explainer) -> None:
    lab = NoiseLab(ex, PROMPT, seed=0, num_inference_steps=STEPS)
    original, version = lab.original, lab._version
    controls = {
        **lab._controls,
        "step": 2,
        "strength": 2.0,
        "use_rect": True,
        "rows": [0, 50],
        "cols": [50, 100],
    }
    message(
        lab, {"action": "click", "name": "inject", "controls": controls}
    )  # the values shown, then the click
    b = lab.branch
    assert b is not None and b.forked_from == 2 and lab.original is original and lab._version == version + 1
    added = b["step.latents", 2] - original["step.latents", 2]
    h, w = added.shape[-2:]
    assert added[..., : h // 2, w // 2 :].abs().sum() > 0 and added[..., h // 2 :, :].abs().sum() == 0
    assert lab._view["branch_title"] == "<b>new branch (noise at step 2)</b>"
    assert picture(lab, "branch") == lab.images["branch"].value and "ran again" in lab.status_html
    message(lab, {"action": "click", "name": "run", "controls": {**lab._controls, "seed": "-1"}})
    assert "the seed box holds '-1'" in lab.status_html and lab.original is original  # nothing ran
    message(
        lab,
        {
            "action": "click",
            "name": "run",
            "controls": {**lab._controls, "seed": "3", "source": "checkerboard"},
        },
    )
    assert lab.original is not original and lab.branch is None and lab.error_text == ""
    message(lab, {"action": "click", "name": "nothing"})
    assert "no button 'nothing'" in lab.error_text


def test_noise_lab_upload_from_the_browser(ex: Explainer) -> None:
    from diffexplain.views import blank

    lab = NoiseLab(ex, PROMPT, seed=0, num_inference_steps=STEPS)
    init = lab.images["init"].value
    message(lab, {"action": "upload", "name": "grey.png"}, [memoryview(blank(64, "hi"))])
    assert lab.source.value == "image" and lab._controls["source"] == "image"
    message(lab, {"action": "click", "name": "run", "controls": lab._controls})
    assert lab.images["init"].value != init and lab.error_text == ""


def test_prompt_swap_scrubs_k_in_the_browser_and_sweeps_in_python(ex: Explainer) -> None:
    before = set(_instances)
    ps = PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=STEPS, sweep_points=3)
    assert {type(_instances[i]).__name__ for i in set(_instances) - before} == {"PromptSwap", "Layout"}
    assert_one_buffer(ps)
    n = len(ps.original)
    assert {f"{k}/x0" for k in range(n)} | {"a", "swap", "diff"} <= set(ps._index)
    version, frames = ps._version, ps._frames
    ps.set_state({"_controls": {**ps._controls, "step": 1}})  # the browser's k: nothing sent back
    assert ps.step.value == 1 and ps._version == version and ps._frames is frames
    assert ps.images["a_x0"].value == picture(ps, "1/x0")
    message(
        ps, {"action": "click", "name": "sweep", "controls": {**ps._controls, "prompt_b": "a green triangle"}}
    )
    assert ps.prompt_b.value == "a green triangle" and sorted(ps.sweep) == [0, 2, 3]
    assert all(ps.sweep[k].settings["prompt"] == "a green triangle" for k in ps.sweep)
    assert {"sweep/0", "sweep/2", "sweep/3", "sweep/A"} <= set(ps._index)  # the tiles, once
    assert ps._view["sweep"]["ks"] == [0, 2, 3] and len(ps._view["sweep"]["from_a"]) == 3
    assert list(ps.fig.data[0].x) == [0, 2, 3] and "sweep done" in ps.status_html
    message(ps, {"action": "click", "name": "swap", "controls": {**ps._controls, "step": 2}})
    assert ps.swapped.forked_from == 2 and ps._view["swap_title"] == "<b>A, then B from step 2</b>"
    assert ps.error_text == ""


def test_forward_process_sends_x0_and_the_noise_once_for_the_browser_to_noise() -> None:
    import numpy as np
    from PIL import Image

    from diffexplain import schedules

    before = set(_instances)
    fp = ForwardProcess(t=100)
    assert {type(_instances[i]).__name__ for i in set(_instances) - before} == {"ForwardProcess", "Layout"}
    c, h, w = fp._view["shape"]
    arrays = np.frombuffer(fp._arrays, dtype=np.float32).reshape(2, c, h, w)
    x0, eps = torch.from_numpy(arrays[0].copy())[None], torch.from_numpy(arrays[1].copy())[None]
    assert torch.equal(x0, fp.x0)  # 64 pixels: sent as they are
    for schedule, t in (("scaled_linear", 100), ("squaredcos_cap_v2", 900)):
        # what the browser computes (√ᾱ_t·x0 + √(1−ᾱ_t)·ε from the arrays) is Python's x_t picture
        sent = next(s for s in fp._schedules if s["name"] == schedule)
        mine = np.sqrt(sent["abar"][t]) * arrays[0] + np.sqrt(1 - sent["abar"][t]) * arrays[1]
        mine = np.round((np.clip(mine, -1, 1) + 1) * 127.5)
        exact = schedules.add_noise(x0, t, schedule=schedule, noise=eps)[0].clamp(-1, 1)
        assert np.abs(mine - np.round((exact.numpy() + 1) * 127.5)).max() <= 1
        version, arrays_before = fp._version, fp._arrays
        fp.set_state({"_controls": {**fp._controls, "schedule": schedule, "t": t}})  # the browser's moves
        assert fp._arrays is arrays_before and fp._version == version  # no model: nothing sent back
        assert fp.t.value == t and fp.schedule.value == schedule
        python = np.asarray(Image.open(io.BytesIO(fp.images["xt"].value)).convert("RGB"), dtype=np.int16)
        ours = Image.fromarray(mine.transpose(1, 2, 0).astype(np.uint8)).resize(
            python.shape[:2], Image.NEAREST
        )
        assert np.abs(np.asarray(ours, dtype=np.int16) - python).max() <= 1  # the picture Python shows
    fp.set_state({"_controls": {**fp._controls, "seed": "5"}})  # new noise: new arrays
    assert fp._arrays != arrays_before and fp._view["arrays"] > 1
    assert fp.fig.data[4].x == (fp.t.value,)


def test_forward_process_asks_the_model_from_the_browser(ex: Explainer) -> None:
    fp = ForwardProcess(ex, t=200)
    guess, version = fp.images["model_x0"].value, fp._version
    assert picture(fp, "model_x0") == guess and fp._view["model"] and fp._view["model_t"] == 200
    fp.set_state({"_controls": {**fp._controls, "t": 800}})  # the t slider settled: one model call
    assert fp._version == version + 1 and picture(fp, "model_x0") != guess and fp._view["model_t"] == 800
    guess = picture(fp, "model_x0")
    message(
        fp,
        {
            "action": "click",
            "name": "ask",
            "controls": {**fp._controls, "guidance": 4.0, "prompt": "a blue square"},
        },
    )
    assert fp.guidance.value == 4.0 and picture(fp, "model_x0") != guess and "w = 4" in fp.status_html
    assert fp.error_text == ""


def test_the_classic_ipywidgets_labs_still_build(ex: Explainer) -> None:
    import ipywidgets as W

    from diffexplain.widgets import ClassicForwardProcess, ClassicNoiseLab, ClassicPromptSwap

    for widget in (
        ClassicNoiseLab(ex, PROMPT, num_inference_steps=STEPS),
        ClassicPromptSwap(ex, PROMPT, "a blue square", num_inference_steps=STEPS),
        ClassicForwardProcess(t=100),
    ):
        assert (
            isinstance(widget, W.VBox) and widget.output.outputs == () and "Error" not in widget.status.value
        )
