"""The anywidget views (StepExplorer, TracePlayer) in Python: what they send the browser and what they
do with its messages. In a real browser: tests/browser/test_scrub_browser.py.

Tiny random parts, 3 inference steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from ipywidgets.widgets.widget import _instances, _remove_buffers

from diffexplain import Explainer, Trace
from diffexplain.web import trace_view_js
from diffexplain.widgets import StepExplorer, TracePlayer
from diffexplain.widgets.trace_view import TraceView

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trace(parts: dict) -> Trace:
    torch.set_num_threads(1)
    ex = Explainer(**parts, progress=False)
    return ex.run("a red circle on the left", num_inference_steps=3, seed=0, guidance_scale=5.0)


def message(widget: TraceView, content: dict, buffers: list | None = None) -> None:
    """What the browser's ``model.send(content, callbacks, buffers)`` does, as the kernel hears it."""
    widget._handle_custom_msg(content, buffers or [])


def test_the_pictures_go_once_as_one_binary_buffer(trace: Trace) -> None:
    before = set(_instances)
    widget = StepExplorer(trace)
    made = {type(_instances[i]).__name__ for i in set(_instances) - before}
    assert made == {"StepExplorer", "Layout"}  # no plain ipywidgets control (Layout: any DOMWidget's)
    assert isinstance(widget._esm, str) and "export default" in str(widget._esm)
    assert str(widget._esm) == trace_view_js()  # the module the HTML page inlines
    state, paths, buffers = _remove_buffers(widget.get_state())
    assert ["_frames"] in paths and len(buffers) == 1  # a binary buffer, not base64 in JSON
    assert "base64" not in json.dumps(state) and "data:image" not in json.dumps(state)
    frames, index = widget._frames, widget._index
    n = len(trace)
    assert {
        f"{k}/{key}" for k in range(n) for key in ("xt", "x0", "eps_c", "eps_u", "delta", "guided")
    } <= set(index)
    for offset, length in index.values():
        assert frames[offset : offset + 8] == PNG and length > 8
    for k in range(n):  # the picture Python reads is the one the browser got
        widget.slider.value = k
        offset, length = index[f"{k}/x0"]
        assert widget.images["x0"].value == frames[offset : offset + length]
    version = widget._version
    widget.step = 1  # what the browser sends once scrubbing settles: nothing is sent back
    assert widget._version == version and widget._frames is frames and widget.slider.value == 1
    assert "step 1</b> of" in widget.info.value


def test_the_browsers_messages_are_actions(trace: Trace) -> None:
    widget = StepExplorer(trace)
    decoded, version = widget.images["x0"].value, widget._version
    message(widget, {"action": "preview", "value": True})
    assert widget.preview.value and widget._version == version + 1 and widget.images["x0"].value != decoded
    assert widget._view["preview"]["value"] is True
    message(widget, {"action": "no such thing"})
    assert "unknown action 'no such thing'" in widget.output.text() and "Error" in widget.status.value
    assert "no such thing" in widget.error_text  # what the browser shows
    message(widget, {"action": "preview", "value": False})
    assert widget.output.outputs == () and widget.error_text == ""  # it worked: the old error goes


def test_trace_player_loads_from_the_browser(trace: Trace, tmp_path) -> None:
    path = tmp_path / "run.trace"
    trace.save(path)
    player = TracePlayer()
    assert player.explorer is None and player._view["loader"]["path"] == "" and "steps" not in player._view
    message(player, {"action": "load", "path": str(tmp_path / "missing.trace")})
    assert "that is no file" in player.status.value and player.trace is None
    message(player, {"action": "upload", "name": "run.trace"}, [memoryview(path.read_bytes())])
    assert player.explorer is player and len(player.trace) == len(trace)
    assert player._view["loader"] and len(player._view["steps"]) == len(trace) and player._frames
    assert "loaded" in player.status.value and player.output.outputs == ()
    message(player, {"action": "load", "path": str(path)})
    assert player.path.value == str(path) and player.output.outputs == ()
