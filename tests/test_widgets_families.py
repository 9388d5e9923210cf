"""Every widget on SDXL, SD3 and a U-Net trained with the flow objective (Python level): built without
errors, a control moved, and labels that name what the model predicts (a flow model's output is a
velocity, not a noise)."""

from __future__ import annotations

import dataclasses

import ipywidgets as W
import pytest
import torch

from diffexplain import Explainer, Trace, load_model
from diffexplain.models.config import preset
from diffexplain.training.run import train
from diffexplain.widgets import (
    AttentionMaps,
    ForwardProcess,
    GuidanceLab,
    NoiseLab,
    PromptSwap,
    StepExplorer,
    TracePlayer,
)
from tests.tiny_families import tiny_sd3_pipeline, tiny_sdxl_pipeline

PROMPT = "a red circle on the left"
STEPS = 3


@pytest.fixture(scope="module", params=["sdxl", "sd3", "flow"])
def ex(request, tmp_path_factory) -> Explainer:
    if request.param == "flow":  # the embedded model's architecture, a few steps of the flow objective
        config = dataclasses.replace(preset("tiny"), objective="flow")
        return load_model(
            train(config, tmp_path_factory.mktemp("flow") / "run", progress=False), progress=False
        )
    pipe = tiny_sdxl_pipeline() if request.param == "sdxl" else tiny_sd3_pipeline()
    return Explainer.from_pipeline(pipe, progress=False)


def is_flow(ex: Explainer) -> bool:
    """A flow model: SD3's transformer, or a U-Net whose scheduler reads its output as a velocity."""
    return ex.family.name == "sd3" or ex.scheduler.config.prediction_type == "flow_prediction"


@pytest.fixture(scope="module")
def trace(ex: Explainer) -> Trace:
    return ex.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=5.0)


def texts(widget: W.Widget) -> str:
    """Every HTML text inside a widget, recursively."""
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_step_explorer_names_the_models_output(ex, trace):
    widget = StepExplorer(trace)
    assert errors(widget) == ""
    words = texts(widget)
    if ex.family.name == "sd3":
        assert (
            "velocity predicted with prompt" in words
            and "the transformer" in words
            and "noise predicted" not in words
        )
    elif is_flow(ex):
        assert (
            "velocity predicted with prompt" in words and "U-Net" in words and "noise predicted" not in words
        )
    else:
        assert "noise predicted with prompt" in words and "U-Net" in words
    before = widget.images["x0"].value
    widget.slider.value = STEPS - 1
    assert errors(widget) == "" and widget.images["x0"].value != before


def test_guidance_lab_reguides_without_a_model_call(ex):
    widget = GuidanceLab(ex, PROMPT, num_inference_steps=STEPS)
    assert errors(widget) == ""
    calls = []
    handle = ex.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        before = widget.strip.value
        widget.scale.value = widget.scale.value + 2
    finally:
        handle.remove()
    assert errors(widget) == "" and calls == [] and widget.strip.value != before
    assert ("transformer" in texts(widget)) is (ex.family.name == "sd3")


@pytest.mark.parametrize("make", ["noise_lab", "prompt_swap", "forward_process", "trace_player"])
def test_the_other_widgets_build_and_run(ex, trace, make):
    widget = {
        "noise_lab": lambda: NoiseLab(ex, PROMPT, num_inference_steps=STEPS),
        "prompt_swap": lambda: PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=STEPS),
        "forward_process": lambda: ForwardProcess(ex),
        "trace_player": lambda: TracePlayer(trace),
    }[make]()
    assert errors(widget) == ""


def test_forward_process_uses_the_familys_forward_process(ex):
    from diffexplain.probe import noise_latents_at

    x0 = torch.zeros(1, *ex.family.latent_shape(1, *ex.family.default_size())[1:])
    noise = torch.ones_like(x0)
    noisy, t = noise_latents_at(ex, x0, 500, noise)
    assert noisy.shape == x0.shape and float(noisy.abs().max()) > 0
    if is_flow(ex):  # x_t = (1 − σ)·x0 + σ·ε with x0 = 0, ε = 1: every value is σ
        assert torch.allclose(noisy, torch.full_like(noisy, float(noisy.flatten()[0])))


def test_attention_maps_and_the_html_page(ex, trace, tmp_path):
    widget = AttentionMaps(trace)
    assert errors(widget) == "" and trace.steps[0].attention  # maps are on by default
    page = tmp_path / "page.html"
    trace.to_html(page)
    text = page.read_text(encoding="utf-8")
    assert ("velocity" in text) is is_flow(ex)
