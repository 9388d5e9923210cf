"""TwoDialects at Python level: the ε model and a flow model from the same noise, one step slider."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffexplain import load_default, load_model
from diffexplain.models.config import preset
from diffexplain.training.run import train
from diffexplain.widgets import TwoDialects
from diffexplain.widgets.two_dialects import settle_curve


@pytest.fixture(scope="module")
def flow_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow") / "run"
    return train(dataclasses.replace(preset("tiny"), objective="flow"), out, progress=False)


@pytest.fixture(scope="module")
def widget(flow_folder: Path) -> TwoDialects:
    return TwoDialects(
        load_default(progress=False),
        load_model(flow_folder, progress=False),
        "a red circle",
        seed=2,
        num_inference_steps=4,
    )


def test_both_dialects_run_from_the_same_noise(widget: TwoDialects) -> None:
    eps, flow = widget.traces["epsilon"], widget.traces["flow"]
    assert len(eps) == len(flow) == 4
    assert torch.equal(eps["latents.init"], flow["latents.init"])  # same seed, same x_T
    assert (
        eps.settings["prediction_type"] == "epsilon" and flow.settings["prediction_type"] == "flow_prediction"
    )
    assert widget.status.value.startswith("ran both: 4 steps each")
    # the plot holds each model's settle curve, ending at 0 (the last x̂0 is the final latents)
    for series, trace in zip(widget.fig.data[:2], (eps, flow), strict=True):
        assert list(series.y) == pytest.approx(settle_curve(trace))
        assert series.y[-1] == pytest.approx(0.0, abs=1e-5)


def test_one_slider_moves_both_rows(widget: TwoDialects) -> None:
    widget.step.value = 0
    before = {d: widget.images[d]["pred_x0"].value for d in ("epsilon", "flow")}
    widget.step.value = 2
    for dialect in ("epsilon", "flow"):
        assert widget.images[dialect]["pred_x0"].value != before[dialect]
        assert widget.labels[dialect].value.count("step 2:") == 1
    assert "x̂0 = x_t − σ·v̂" in widget.labels["flow"].value
    assert "ε̂" in widget.labels["epsilon"].value
    assert list(widget.fig.data[2].x) == [2, 2]
    assert list(widget.fig.data[2].y) == [widget.curves["epsilon"][2], widget.curves["flow"][2]]


def test_a_bad_seed_is_refused_on_the_status_line_and_the_runs_are_kept(widget: TwoDialects) -> None:
    traces = widget.traces
    widget.guidance.value = -1.0  # the box's own bounds clip it to 0
    assert widget.guidance.value == 0.0
    widget.seed.value = "not a seed"
    widget.run_button.click()
    assert "seed box holds 'not a seed'" in widget.status.value
    assert widget.traces is traces  # nothing the user had is lost
    widget.seed.value = "2"


# ---- the anywidget view: what it sends the browser and what it does with its messages ----------------
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_pictures_go_once_as_one_binary_buffer(widget: TwoDialects) -> None:
    from ipywidgets.widgets.widget import _instances, _remove_buffers

    before = set(_instances)
    fresh = TwoDialects(widget.explainers["epsilon"], widget.explainers["flow"], run=False)
    made = {type(_instances[i]).__name__ for i in set(_instances) - before}
    assert made == {"TwoDialects", "Layout"}  # no plain ipywidgets control (Layout: any DOMWidget's)
    assert "export default { render: renderTwoDialects }" in str(fresh._esm)
    assert fresh._view["n"] == 0 and fresh._frames == b""  # nothing run yet: the boxes and Run alone
    state, paths, buffers = _remove_buffers(widget.get_state())
    assert ["_frames"] in paths and len(buffers) == 1  # a binary buffer, not base64 in JSON
    index, frames = widget._index, widget._frames
    keys = {
        f"{d}/{k}/{p}"
        for d in ("epsilon", "flow")
        for k in range(4)
        for p in ("latents", "output", "pred_x0")
    }
    assert keys | {"epsilon/final", "flow/final", "epsilon/strip", "flow/strip"} == set(index)
    for offset, length in index.values():
        assert frames[offset : offset + 8] == PNG and length > 8
    version = widget._version
    widget.shown_step = 3  # what the browser sends once scrubbing settles: nothing is sent back
    assert widget._version == version and widget._frames is frames and widget.step.value == 3
    offset, length = index["flow/3/pred_x0"]
    assert widget.images["flow"]["pred_x0"].value == frames[offset : offset + length]
    assert widget._view["rows"][1]["labels"][3] in widget.labels["flow"].value  # the label the browser shows
    assert list(widget.fig.data[2].x) == [3, 3]


def test_run_both_from_the_browser(widget: TwoDialects) -> None:
    traces, version = widget.traces, widget._version
    widget._handle_custom_msg(
        {"action": "run", "prompt": "a red circle", "seed": "x", "steps": 4, "w": 3}, []
    )
    assert "seed box holds 'x'" in widget.status.value and widget.traces is traces
    assert widget._version == version and not widget.run_button.disabled and not widget.busy
    widget._handle_custom_msg(
        {"action": "run", "prompt": "a red circle", "seed": "2", "steps": "many", "w": "3"}, []
    )
    assert "the steps box holds 'many'" in widget.status.value and widget.traces is traces
    assert not widget.output.outputs  # a typed value: the status line alone, no traceback
    widget._handle_custom_msg(
        {"action": "run", "prompt": "a blue square", "seed": "5", "steps": "3", "w": "2"}, []
    )
    assert widget.traces is not traces and len(widget.traces["flow"]) == 3
    assert widget.traces["epsilon"].settings["seed"] == 5 and widget.guidance.value == 2.0
    assert widget._version == version + 1 and widget._view["inputs"]["prompt"] == "a blue square"
    assert widget.step.max == 2 and widget.status.value.startswith("ran both: 3 steps each")
    decoded = widget.images["epsilon"]["pred_x0"].value
    widget._handle_custom_msg({"action": "preview", "value": True}, [])
    assert widget.preview.value and widget._view["inputs"]["preview"] is True
    assert widget.images["epsilon"]["pred_x0"].value != decoded
