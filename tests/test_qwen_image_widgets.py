"""Every widget and the HTML page on Qwen-Image traces (Python level): built without errors, a control moved,
words for a velocity and a transformer; GuidanceLab re-guides with the family's true CFG, no model call."""

from __future__ import annotations

import ipywidgets as W
import pytest

from diffexplain import Explainer, Trace
from diffexplain.widgets import (
    AttentionMaps,
    ForwardProcess,
    GuidanceLab,
    NoiseLab,
    PromptSwap,
    StepExplorer,
    TracePlayer,
)
from tests.tiny_qwen_image import QWEN_MAX_SEQUENCE_LENGTH, tiny_qwen_image_pipeline

PROMPT = "a red square on the left"
OPTIONS = {"max_sequence_length": QWEN_MAX_SEQUENCE_LENGTH}
NO_NEGATIVE = "ignore:Qwen-Image. guidance_scale=.* but no negative prompt"


@pytest.fixture(scope="module")
def ex() -> Explainer:
    return Explainer.from_pipeline(tiny_qwen_image_pipeline(), progress=False)


@pytest.fixture(scope="module")
def guided(ex) -> Trace:
    return ex.run(PROMPT, num_inference_steps=3, seed=5, negative_prompt="blue", **OPTIONS)


def texts(widget: W.Widget) -> str:
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_and_the_page_open_a_qwen_image_trace(guided, tmp_path):
    explorer = StepExplorer(guided)
    assert errors(explorer) == ""
    words = texts(explorer)
    assert "velocity predicted with prompt" in words and "the transformer" in words
    before = explorer.images["x0"].value
    explorer.slider.value = 2
    assert errors(explorer) == "" and explorer.images["x0"].value != before
    path = tmp_path / "qwen.safetensors"
    guided.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    page = guided.to_html(tmp_path / "page.html")
    assert "velocity" in page.read_text(encoding="utf-8")


def test_guidance_lab_on_qwen_image_reguides_without_a_model_call(ex):
    widget = GuidanceLab(ex, PROMPT, negative_prompt=" ", num_inference_steps=2)
    assert errors(widget) == ""
    assert widget.off.settings["do_cfg"] is False and widget.on.settings["do_cfg"] is True
    calls = []
    handle = ex.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = widget.strip.value
        widget.scale.value = widget.scale.value + 2
    finally:
        handle.remove()
    assert errors(widget) == "" and calls == [] and widget.strip.value != before


@pytest.mark.filterwarnings(NO_NEGATIVE)
@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "attention_maps"])
def test_the_other_widgets_build_on_qwen_image(ex, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=2),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=2),
        "forward_process": lambda: ForwardProcess(ex),
        "attention_maps": lambda: AttentionMaps(
            ex.run(PROMPT, num_inference_steps=2, seed=0, negative_prompt="blue", **OPTIONS)
        ),
    }[make]()
    assert errors(widget) == ""
