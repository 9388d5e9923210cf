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
