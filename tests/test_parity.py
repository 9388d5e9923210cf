"""Parity: with no hooks, Explainer.run reproduces StableDiffusionPipeline bit for bit, per scheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffexplain import SCHEDULER_NAMES, Explainer
from diffexplain.scheduler_state import scheduler_by_name
from tests.conftest import PROMPT

STEPS = 4


def pipeline_latents(
    parts: dict, scheduler_name: str, guidance_scale: float, seed: int, **kwargs
) -> torch.Tensor:
    scheduler = scheduler_by_name(scheduler_name, parts["scheduler"].config)
    pipe = StableDiffusionPipeline(
        **{**parts, "scheduler": scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="latent",
        **kwargs,
    ).images


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_run_equals_pipeline(request, prediction, scheduler_name, guidance_scale):
    # torch.equal holds: the loop performs the pipeline's operations in the pipeline's order.
    parts = request.getfixturevalue("parts" if prediction == "epsilon" else "parts_v")
    explainer = Explainer(**parts, progress=False).set_scheduler(scheduler_name)
    trace = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        seed=11,
        decode=False,
    )
    expected = pipeline_latents(parts, scheduler_name, guidance_scale, seed=11)
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["prediction_type"] == prediction


def test_ddim_eta_equals_pipeline(parts):
    explainer = Explainer(**parts, progress=False).set_scheduler("ddim")
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, eta=0.7, seed=5, decode=False)
    assert torch.equal(trace.final_latents, pipeline_latents(parts, "ddim", 7.5, seed=5, eta=0.7))


def test_batch_and_negative_prompt_equal_pipeline(parts):
    explainer = Explainer(**parts, progress=False).set_scheduler("euler_a")
    prompts = [PROMPT, "a blue circle"]
    trace = explainer.run(prompts, negative_prompt=["blurry", "green"], num_inference_steps=STEPS, seed=2)
    scheduler = scheduler_by_name("euler_a", parts["scheduler"].config)
    pipe = StableDiffusionPipeline(
        **{**parts, "scheduler": scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompts,
        negative_prompt=["blurry", "green"],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(2),
        output_type="latent",
    ).images
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape[:2] == (len(trace), 2)
