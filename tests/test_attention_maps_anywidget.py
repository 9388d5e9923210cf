"""AttentionMaps as an anywidget, in Python: the maps go to the browser once (binary buffers), the browser's
choices send nothing back, the reweight fork is a message with its picture sent on its own. In a real
browser: tests/browser/test_attention_browser.py.

Tiny random parts, 3 inference steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from ipywidgets.widgets.widget import _instances, _remove_buffers

from diffexplain import Explainer, Trace
from diffexplain.attention import maps as reading
from diffexplain.web.attention_data import map_size
from diffexplain.widgets import AttentionMaps, StepExplorer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ex(parts: dict) -> Explainer:
    torch.set_num_threads(1)
    return Explainer(**parts, progress=False)


@pytest.fixture(scope="module")
def trace(ex: Explainer) -> Trace:
    return ex.run("a red circle on the left", num_inference_steps=3, seed=0, guidance_scale=5.0)


def message(widget: AttentionMaps, content: dict) -> None:
    """What the browser's ``model.send(content)`` does, as the kernel hears it."""
    widget._handle_custom_msg(content, [])


def test_the_maps_go_once_as_binary_buffers(trace: Trace) -> None:
    before = set(_instances)
    widget = AttentionMaps(trace, token="red")
    made = {type(_instances[i]).__name__ for i in set(_instances) - before}
    assert made == {"AttentionMaps", "Layout"}  # no plain ipywidgets control
    assert "mountAttentionMaps" in str(widget._esm) and "mountTraceView" in str(widget._esm)
    state, paths, buffers = _remove_buffers(widget.get_state())
    assert ["_maps"] in paths and ["_frames"] in paths and ["_after"] in paths  # binary, not base64
    assert "data:image" not in json.dumps(state)
    index = widget._view["maps"]
    h, w, n = index["h"], index["w"], len(trace)
    assert (h, w) == map_size(trace) and max(h, w) <= 32
    layers = [value for _, value in widget.layer.options]
    branches = ["cond", "uncond"]  # guidance on: the negative prompt's maps too
    assert set(index["blocks"]) == {
        f"{b}|{layer}|{s}" for b in branches for layer in layers for s in [*range(n), "all"]
    }
    tokens = len(trace.tokens)
    block = index["blocks"]["cond|all|1"]
    got = torch.frombuffer(bytearray(widget._maps), dtype=torch.uint8)
    got = got[block["offset"] : block["offset"] + tokens * h * w].reshape(tokens, h, w)
    want = reading.attention_maps(trace, steps=1, branch="cond", size=(h, w))[0]
    peaks = want.amax(dim=(-1, -2))
    torch.testing.assert_close(
        got.float() / 255 * peaks[:, None, None], want, atol=float(peaks.max()) / 250, rtol=0
    )
    assert block["mean"][widget.token.value] == pytest.approx(
        float(want[widget.token.value].mean()), abs=1e-4
    )
    for k in range(n):  # the x̂0 pictures, PNGs in the one frames buffer
        offset, length = widget._index[f"{k}/x0"]
        assert widget._frames[offset : offset + 8] == PNG
    assert widget._view["tokens"]["cond"][widget.token.value][0] == widget.token.label


def test_the_browsers_choices_send_nothing_back(trace: Trace) -> None:
    widget = AttentionMaps(trace, token="red")
    version, maps, overlay = widget._version, widget._maps, widget.images["overlay"].value
    with widget.hold_sync():  # what the browser sets once a choice settles
        widget.map_step, widget.layer_key, widget.token_index = 0, widget.layer.options[1][1], 2
    assert widget._version == version and widget._maps is maps
    assert widget.step.value == 0 and widget.token.value == 2 and widget.layers == widget.layer.options[1][1]
    torch.testing.assert_close(widget.map(), trace.attention(2, steps=0, layers=widget.layers)[0])
    assert widget.images["overlay"].value != overlay and "step 0 (t =" in widget.info.value
    widget.branch_name = "uncond"
    assert widget.token.options == [tuple(pair) for pair in widget._view["tokens"]["uncond"]]


def test_the_reweight_fork_is_a_message(trace: Trace, ex: Explainer) -> None:
    widget = AttentionMaps(trace, ex, token="red")
    version = widget._version
    assert widget._after == b"" and not widget.fork_disabled and widget.can_stop
    message(widget, {"action": "reweight", "factor": 0.0, "step": 1})
    assert widget.output.outputs == () and widget.forked is not None and widget.forked.forked_from == 1
    assert widget._after[:8] == PNG and widget.images["after"].value == widget._after
    assert "× 0 from step 1" in widget.after_html and "forked at step 1" in widget.status_html
    assert widget._version == version  # the maps and pictures were not sent again
    message(widget, {"action": "reweight", "factor": "x", "step": 1})
    assert "ValueError" in widget.error_text


def test_a_linked_step_explorer_moves_the_step(trace: Trace) -> None:
    explorer = StepExplorer(trace)
    widget = AttentionMaps(trace).link(explorer)
    explorer.step = 1  # the explorer's browser settled on step 1
    assert widget.map_step == 1 and widget.step.value == 1
    widget.map_step = 0  # this view's browser chose step 0
    assert explorer.slider.value == 0


def test_the_classic_ipywidgets_view_still_builds(trace: Trace) -> None:
    from diffexplain.widgets import ClassicAttentionMaps

    classic = AttentionMaps(trace, token="red"), ClassicAttentionMaps(trace, token="red")
    assert all(w.output.outputs == () for w in classic)
    assert classic[0].help.value == classic[1].children[0].value  # the same help, reader clause and all
    torch.testing.assert_close(classic[0].map(), classic[1].map())
