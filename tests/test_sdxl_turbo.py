"""SDXL-Turbo runs through the SDXL family: Euler ancestral on "trailing" timesteps, 1 to 4 steps, guidance
off (w = 0), bit for bit with StableDiffusionXLPipeline; with one step, x̂0 of the only step is the picture."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Explainer
from diffexplain.families import StableDiffusionXL
from diffexplain.scheduler_state import scheduler_by_name
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_sdxl_pipeline()
    # SDXL-Turbo's scheduler config: Euler ancestral, timesteps from the last training step ("trailing")
    pipe.scheduler = scheduler_by_name("euler_a", pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


@pytest.mark.parametrize("steps", [1, 4])
def test_sdxl_turbo_settings_equal_the_pipeline(pipe, steps):
    explainer = Explainer.from_pipeline(pipe, progress=False)
    assert isinstance(explainer.family, StableDiffusionXL)
    trace = explainer.run(PROMPT, num_inference_steps=steps, guidance_scale=0.0, seed=4)
    expected = pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(4),
        output_type="latent",
    ).images
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["do_cfg"] is False and "step.model.uncond" not in trace.steps[0].tensors  # one call
    assert trace.steps[0].timestep == 999  # trailing: the first step is the noisiest
    assert torch.equal(explainer.fork(trace, steps - 1).final_latents, trace.final_latents)
