"""Explainer construction, schedulers by name, seeds, pixel space, devices, progress bars, timestep_cond."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffexplain import SCHEDULER_NAMES, Explainer
from tests.conftest import PROMPT
from tests.tiny_parts import tiny_unet


def test_set_scheduler_names(explainer):
    for name in SCHEDULER_NAMES:
        assert explainer.set_scheduler(name) is explainer
    explainer.set_scheduler("dpm++2m_sde")
    assert explainer.scheduler.config.algorithm_type == "sde-dpmsolver++"
    explainer.set_scheduler("dpm++2m")
    assert explainer.scheduler.config.algorithm_type == "dpmsolver++"
    explainer.set_scheduler("euler", use_karras_sigmas=True)
    assert explainer.scheduler.config.use_karras_sigmas
    assert not explainer.set_scheduler(
        "lms"
    ).scheduler.config.use_karras_sigmas  # overrides do not carry over
    with pytest.raises(ValueError, match="unknown scheduler 'dpm'; valid names: ddim, ddpm, pndm"):
        explainer.set_scheduler("dpm")


def test_seed_generator_and_reproducibility(explainer):
    with pytest.raises(ValueError, match="not both"):
        explainer.run(PROMPT, seed=1, generator=torch.Generator())
    drawn = explainer.run(PROMPT, num_inference_steps=2, decode=False)
    seed = drawn.settings["seed"]
    assert isinstance(seed, int)
    again = explainer.run(PROMPT, num_inference_steps=2, decode=False, seed=seed)
    assert torch.equal(drawn.final_latents, again.final_latents)
    with_gen = explainer.run(
        PROMPT, num_inference_steps=2, decode=False, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(with_gen.final_latents, again.final_latents)
    assert explainer.last_trace is with_gen


def test_run_defaults_come_from_the_model(explainer):
    explainer.defaults = {"num_inference_steps": 3, "guidance_scale": 2.5}
    trace = explainer.run(PROMPT, seed=0, decode=False)
    assert trace.settings["num_inference_steps"] == 3
    assert trace.settings["guidance_scale"] == 2.5
    assert len(trace.timesteps) == 3
    explicit = explainer.run(PROMPT, seed=0, decode=False, num_inference_steps=2, guidance_scale=1.0)
    assert explicit.settings["num_inference_steps"] == 2 and not explicit.settings["do_cfg"]
    explainer.defaults = {}
    assert explainer.run(PROMPT, seed=0, decode=False).settings["guidance_scale"] == 7.5


def test_from_pipeline_and_from_pretrained(parts, tmp_path):
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    explainer = Explainer.from_pipeline(pipe, progress=False)
    assert explainer.unet is parts["unet"] and explainer.vae_scale_factor == 2
    pipe.save_pretrained(tmp_path / "tiny")
    loaded = Explainer.from_pretrained(tmp_path / "tiny", progress=False)
    a = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    assert torch.equal(a.final_latents, b.final_latents)
    assert "Explainer(unet=UNet2DConditionModel" in repr(loaded)


def test_pixel_space(pixel_parts):
    explainer = Explainer(**pixel_parts, progress=False).set_scheduler("euler")
    assert explainer.vae_scale_factor == 1
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    assert trace.image.shape == (1, 3, 8, 8) and torch.equal(trace.image, trace.final_latents)
    assert trace.images[0].size == (8, 8)


def test_dtype_and_device_follow_the_parts(parts):
    explainer = Explainer(**parts, progress=False).set_scheduler("euler_a")
    assert explainer.device.type == "cpu" and explainer.dtype == torch.float32
    half = Explainer(**{**parts, "unet": tiny_unet().to(torch.bfloat16)}, progress=False).set_scheduler(
        "euler_a"
    )
    half.text_encoder = parts["text_encoder"]
    trace = half.run(
        PROMPT, num_inference_steps=2, seed=0, decode=False, hooks={"prompt.cond": lambda x, *, ctx: None}
    )
    assert trace.settings["dtype"] == "bfloat16"
    assert trace["step.model.cond", 0].dtype == torch.bfloat16


def test_progress_bar_switches(explainer, capsys):
    explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False, progress=True)
    assert "denoising" in capsys.readouterr().err
    explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    assert "denoising" not in capsys.readouterr().err


def test_timestep_cond_unet_runs_unguided(parts):
    unet = tiny_unet(time_cond_proj_dim=8)
    explainer = Explainer(**{**parts, "unet": unet}, progress=False).set_scheduler("ddim")
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, decode=False, guidance_scale=7.5)
    assert trace.settings["do_cfg"] is False and "step.model.uncond" not in trace.steps[0].tensors
    pipe = StableDiffusionPipeline(
        **{**parts, "unet": unet, "scheduler": explainer.scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent"
    ).images
    assert torch.equal(ref, trace.final_latents)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "25"])
def test_run_refuses_a_step_count_that_is_not_a_positive_whole_number(explainer, steps):
    with pytest.raises(ValueError, match="num_inference_steps must be a whole number of at least 1"):
        explainer.run(PROMPT, num_inference_steps=steps, seed=0, decode=False)
