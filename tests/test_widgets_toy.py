"""ToyPaths at Python level: both dialects' paths from the same noise, one step slider for both plots."""

from __future__ import annotations

import pytest
import torch

from diffexplain import toy2d
from diffexplain.widgets import ToyPaths


@pytest.fixture(scope="module")
def models() -> dict[str, toy2d.ToyModel]:
    return {o: toy2d.train(o, steps=800, seed=0) for o in toy2d.OBJECTIVES}


def test_toy_paths_draws_both_dialects_from_the_same_noise(models):
    widget = ToyPaths(colour="green", num_steps=5, samples=6, models=models)
    (eps_path, _), (flow_path, _) = widget.paths["epsilon"], widget.paths["flow"]
    assert torch.equal(eps_path[0], flow_path[0])  # the same x_T
    assert eps_path.shape == flow_path.shape == (6, 6, 2)
    assert "straightness" in widget.summary.value and "land in the green cluster" in widget.summary.value
    drawn = list(widget.figures["flow"].data[1].x)
    widget.step.value = 2  # one slider, both plots
    assert list(widget.figures["flow"].data[1].x) != drawn
    assert len(widget.figures["epsilon"].data[2].x) == 6 and widget.status.value.startswith("step 2 of 5")
    before = widget.summary.value
    widget.guidance.value = 4.0  # guidance: sampled again
    assert widget.summary.value != before and widget.step.value == 5
    with pytest.raises(ValueError, match="colour='teal': expected one of"):
        ToyPaths(colour="teal", models=models)


def test_toy_paths_sends_the_paths_once_and_samples_on_a_message(models):
    widget = ToyPaths(colour="green", num_steps=5, samples=6, models=models)
    plots, version = widget._view["plots"], widget._version
    assert set(plots) == set(toy2d.OBJECTIVES) and widget._view["num_steps"] == 5
    assert len(plots["flow"]["path"]) == 6 and len(plots["flow"]["path"][0]) == 6  # [S+1, n, 2]
    widget.shown_step = 2  # what the browser sends once scrubbing settles: nothing is sent back
    assert (
        widget._version == version
        and widget.step.value == 2
        and widget.status.value.startswith("step 2 of 5")
    )
    widget._handle_custom_msg({"action": "settings", "colour": "red", "num_steps": 3, "guidance": 2.0}, [])
    assert widget._version == version + 1 and widget.colour.value == "red" and widget._view["num_steps"] == 3
    assert widget.step.value == widget.shown_step == 3 and "red cluster" in widget.summary.value
    widget._handle_custom_msg({"action": "settings", "colour": "teal", "num_steps": 3, "guidance": 2.0}, [])
    assert "colour='teal'" in widget.error_text and widget._version == version + 1


def test_the_classic_toy_paths_still_builds(models):
    from diffexplain.widgets import ClassicToyPaths

    new, classic = (
        cls(colour="red", num_steps=4, samples=5, models=models) for cls in (ToyPaths, ClassicToyPaths)
    )
    assert new.summary.value == classic.summary.value and classic.output.outputs == ()
    assert list(new.figures["flow"].data[1].x) == list(classic.figures["flow"].data[1].x)
