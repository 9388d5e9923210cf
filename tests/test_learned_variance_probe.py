"""ForwardProcess and ``probe.predict_x0_at`` on models whose output carries a learned variance (DeepFloyd
IF, the pixel cascade's stages, the Kandinsky decoder): x̂0 is read from the guided half of the output, as
the loop reads it, and the variance half goes nowhere near it."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Cascade, Explainer
from diffexplain.families.tiny_kandinsky import tiny_kandinsky_pipelines
from diffexplain.noise_levels import pred_x0_from
from diffexplain.probe import noise_latents_at, predict_x0_at
from diffexplain.widgets import ForwardProcess
from tests.tiny_families import tiny_if_pipelines

PROMPT = "a red circle on the left"


def errors(widget) -> str:
    return "".join(str(o.get("text", "")) for o in widget.output.outputs)


@pytest.fixture(scope="module")
def stage_one() -> Explainer:
    pipe, _ = tiny_if_pipelines()
    return Explainer.from_pipeline(pipe, progress=False)


def test_the_model_really_carries_a_variance(stage_one):
    unet = stage_one.model
    assert unet.config.out_channels == 2 * unet.config.in_channels  # ε and the variance, 3 + 3


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_x0_at_a_step_is_the_loops(stage_one, w):
    trace = stage_one.run(PROMPT, num_inference_steps=3, guidance_scale=w, seed=1, decode=False)
    k = 1
    x_t, t = trace["step.latents", k], trace.steps[k].timestep
    guess = predict_x0_at(stage_one, x_t, t, PROMPT, guidance_scale=w)
    assert guess.pred_x0.shape == x_t.shape == (1, 3, *x_t.shape[-2:])
    torch.testing.assert_close(guess.eps_cond, trace["step.model.cond", k], rtol=1e-5, atol=1e-5)
    if w > 1:
        torch.testing.assert_close(guess.eps_uncond, trace["step.model.uncond", k], rtol=1e-5, atol=1e-5)
    eps_guided = trace["step.guidance", k]
    torch.testing.assert_close(
        guess.pred_x0, pred_x0_from(x_t, eps_guided, trace.steps[k].level), rtol=1e-4, atol=1e-4
    )


def test_forward_process_shows_the_models_x0(stage_one):
    x0 = torch.zeros(1, 3, 8, 8)
    noisy, t = noise_latents_at(stage_one, x0, 400, torch.ones_like(x0))
    assert predict_x0_at(stage_one, noisy, float(t), PROMPT).pred_x0.shape == (1, 3, 8, 8)
    widget = ForwardProcess(stage_one, t=400, prompt=PROMPT, guidance_scale=2.0)
    assert errors(widget) == ""
    assert widget.images["model_x0"].value  # a picture drawn, not an error
    widget.t.value = 900
    assert errors(widget) == "" and "t = 900" in widget.status.value


def test_the_kandinsky_decoder_says_why_it_has_no_x0():
    cascade = Cascade.from_pipelines(*tiny_kandinsky_pipelines(), names=("prior", "decoder"), progress=False)
    widget = ForwardProcess(cascade.stages["decoder"], t=300)
    assert errors(widget) == ""
    assert "reads no prompt but a previous stage's image embeddings" in widget.status.value


def test_the_shipped_pixel_cascades_first_stage_in_forward_process():
    from diffexplain.models.pixel_cascade import load_pixel_cascade

    stage = load_pixel_cascade(progress=False).stages["I"]
    if stage.model.config.out_channels == stage.model.config.in_channels:
        pytest.skip("this pixel cascade's stage I predicts no variance")
    widget = ForwardProcess(stage, t=500, prompt="a red circle on the left", guidance_scale=3.0)
    assert errors(widget) == "" and widget.images["model_x0"].value
