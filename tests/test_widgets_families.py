"""Every widget on SDXL and SD3 (Python level): built without errors, a control moved, and labels that
name what the model predicts (a flow model's output is a velocity, not a noise)."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch

from diffexplain import Explainer, Trace
from diffexplain.widgets import ForwardProcess, GuidanceLab, NoiseLab, PromptSwap, StepExplorer, TracePlayer
from tests.tiny_families import tiny_sd3_pipeline, tiny_sdxl_pipeline

PROMPT = "a red circle on the left"
STEPS = 3


@pytest.fixture(scope="module", params=["sdxl", "sd3"])
def ex(request) -> Explainer:
    pipe = tiny_sdxl_pipeline() if request.param == "sdxl" else tiny_sd3_pipeline()
    return Explainer.from_pipeline(pipe, progress=False)


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
    if ex.family.name == "sd3":  # x_t = (1 − σ)·x0 + σ·ε with x0 = 0, ε = 1: every value is σ
        assert torch.allclose(noisy, torch.full_like(noisy, float(noisy.flatten()[0])))
