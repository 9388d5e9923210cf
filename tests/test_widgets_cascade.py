"""StepExplorer, GuidanceLab and TracePlayer on a cascade (DeepFloyd IF, tiny parts): a stage chooser
switches which stage's trace each widget shows (Python level; nothing on the widgets' error output)."""

from __future__ import annotations

import warnings

import pytest

from diffexplain import Cascade, CascadeTrace
from diffexplain.widgets import GuidanceLab, StepExplorer, TracePlayer
from tests.tiny_families import tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 5


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return Cascade.from_pipelines(*tiny_if_pipelines(), progress=False)


@pytest.fixture(scope="module")
def trace(cascade) -> CascadeTrace:
    return cascade.run(PROMPT, seed=0, I=dict(num_inference_steps=STEPS), II=dict(num_inference_steps=3))


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_step_explorer_switches_stages(trace):
    widget = StepExplorer(trace)
    assert widget.stage == "II" and widget.trace is trace.stages["II"]  # the final stage first
    assert [v for _, v in widget.stage_chooser.options] == ["I", "II"]
    assert widget.stage_chooser.layout.display is None and "stage II" in widget.header.value
    assert widget.slider.max == 2
    picture = widget.images["x0"].value
    widget.stage_chooser.value = "I"
    assert errors(widget) == ""
    assert widget.trace is trace.stages["I"] and widget.slider.max == STEPS - 1
    assert "stage I</b>" in widget.header.value and widget.images["x0"].value != picture
    widget.slider.value = 3
    assert errors(widget) == "" and widget.slider.value == 3
    single = StepExplorer(trace.stages["I"])  # a single trace: no chooser
    assert single.stage_chooser.layout.display == "none" and single.cascade_trace is None


def test_trace_player_opens_a_cascade_file(trace, tmp_path):
    path = tmp_path / "if.safetensors"
    trace.save(path)
    player = TracePlayer(path)
    assert errors(player) == "" and isinstance(player.cascade_trace, CascadeTrace)
    assert "stages I, II" in player.status.value
    explorer = player.explorer
    assert explorer.stage == "II" and explorer.trace.settings["model"]["family"] == "if_sr"
    explorer.stage_chooser.value = "I"
    assert errors(explorer) == "" and explorer.trace.settings["model"]["family"] == "if"
    assert explorer.frames.trace is explorer.trace  # the saved pictures follow the stage shown
    trace.stages["I"].save(tmp_path / "one.safetensors")
    player.load(tmp_path / "one.safetensors")  # then a single trace: the chooser goes
    assert explorer.stage_chooser.layout.display == "none" and player.cascade_trace is None


def test_guidance_lab_varies_w_in_the_chosen_stage(cascade):
    lab = GuidanceLab(cascade, PROMPT, num_inference_steps=3)
    assert errors(lab) == "" and lab.stage == "I"
    assert lab.on.settings["model"]["family"] == "if" and lab.off.settings["guidance_scale"] == 1.0
    assert lab.grid.layout.display == "none"
    lab.stage_chooser.value = "II"
    assert errors(lab) == "" and lab.stage == "II"
    assert lab.on.settings["model"]["family"] == "if_sr" and lab.off.settings["do_cfg"] is False
    assert lab.on.settings["guidance_scale"] > 1
    lab.range.value = (1, 2)
    lab.guidance_off_range()
    assert lab.ranged.forked_from == 1 and errors(lab) == ""
    with pytest.raises(ValueError, match="the seed grid counts runs of one model"):
        lab.count_seeds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="stage='III': expected one of I, II"):
            GuidanceLab(cascade, PROMPT, stage="III")
