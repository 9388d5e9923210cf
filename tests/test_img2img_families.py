"""Start from a picture with SDXL, SD3 and Flux: parity with StableDiffusionXLImg2ImgPipeline,
StableDiffusion3Img2ImgPipeline and FluxImg2ImgPipeline bit for bit, for every scheduler name of the
family, guidance on and off, two strengths; the flow-matching entry rule; forks and trace files."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline, StableDiffusionXLImg2ImgPipeline

from diffexplain import Explainer, Trace
from diffexplain.families.flux import FLUX_SCHEDULER_NAMES
from diffexplain.img2img import DEFAULT_STRENGTHS
from diffexplain.scheduler_state import FLOW_SCHEDULER_NAMES, SCHEDULER_NAMES, scheduler_by_name
from tests.conftest import PROMPT
from tests.tiny_families import (
    FLUX_MAX_SEQUENCE_LENGTH,
    SD3_MAX_SEQUENCE_LENGTH,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)

STEPS = 10
SIZE = 16  # px: SDXL and Flux latents [B, 4, 8, 8], SD3's [B, 16, 8, 8]
OPTIONS = {
    "sdxl": {},
    "sd3": {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH},
    "flux": {"max_sequence_length": FLUX_MAX_SEQUENCE_LENGTH},
}
IMG2IMG = {
    "sdxl": StableDiffusionXLImg2ImgPipeline,
    "sd3": StableDiffusion3Img2ImgPipeline,
    "flux": FluxImg2ImgPipeline,
}
NAMES = {"sdxl": SCHEDULER_NAMES, "sd3": FLOW_SCHEDULER_NAMES, "flux": FLUX_SCHEDULER_NAMES}
# (ours, the pipeline's) guidance: w on and off; Flux's w is true CFG (the pipeline needs a negative prompt
# for it) and g (embedded_guidance) is the pipeline's guidance_scale, whose img2img default is 7, not 3.5
GUIDANCE = {
    "sdxl": [(dict(guidance_scale=5.0), dict(guidance_scale=5.0)), (dict(guidance_scale=1.0),) * 2],
    "sd3": [(dict(guidance_scale=7.0), dict(guidance_scale=7.0)), (dict(guidance_scale=1.0),) * 2],
    "flux": [
        (dict(guidance_scale=1.0), dict(guidance_scale=3.5)),
        (
            dict(guidance_scale=3.0, negative_prompt="blurry", embedded_guidance=5.0),
            dict(true_cfg_scale=3.0, negative_prompt="blurry", guidance_scale=5.0),
        ),
    ],
}
CASES = [(family, name, i) for family in ("sdxl", "sd3", "flux") for name in NAMES[family] for i in range(2)]


def picture(seed: int = 0, rows: int = 1) -> torch.Tensor:
    """A random picture in [0, 1]  [rows, 3, SIZE, SIZE]."""
    return torch.rand(rows, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipes() -> dict:
    """The tiny text-to-image pipelines (shared: tests build their img2img pipelines from their parts)."""
    return {"sdxl": tiny_sdxl_pipeline(), "sd3": tiny_sd3_pipeline(), "flux": tiny_flux_pipeline()}


def explainer_for(pipes: dict, family: str) -> Explainer:
    return Explainer.from_pipeline(pipes[family], progress=False)


def pipeline_run(pipes: dict, family: str, scheduler_name: str, image, seed: int, **kwargs) -> tuple:
    """The family's img2img pipeline's final latents over the same parts (Flux's unpacked: [B, C, h, w]),
    and its scheduler after the run (its timesteps as the pipeline set them)."""
    base = pipes[family]
    pipe = IMG2IMG[family].from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler_by_name(scheduler_name, base.scheduler.config, NAMES[family])
    out = pipe(
        image=image,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        **OPTIONS[family],
        **kwargs,
    ).images
    if family == "flux":
        out = pipe._unpack_latents(out, SIZE, SIZE, pipe.vae_scale_factor)
    return out, pipe.scheduler


def pipeline_latents(*args: object, **kwargs: object) -> torch.Tensor:
    return pipeline_run(*args, **kwargs)[0]


# ---- parity -------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Flux. guidance_scale > 1 is true CFG")
@pytest.mark.parametrize("strength", [0.35, 1.0])
@pytest.mark.parametrize(("family", "scheduler_name", "guidance"), CASES)
def test_run_from_a_picture_equals_the_family_img2img_pipeline(
    pipes, family, scheduler_name, guidance, strength
):
    ours, theirs = GUIDANCE[family][guidance]
    explainer = explainer_for(pipes, family).set_scheduler(scheduler_name)
    image = picture()
    trace = explainer.run(
        PROMPT, image=image, strength=strength, num_inference_steps=STEPS, seed=11, decode=False,
        **OPTIONS[family], **ours,
    )  # fmt: skip
    expected, scheduler = pipeline_run(
        pipes, family, scheduler_name, image, 11, prompt=PROMPT, strength=strength, **theirs
    )
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["do_cfg"] is (ours["guidance_scale"] > 1)
    ran = scheduler.timesteps[
        trace.settings["entry_step"] * scheduler.order :
    ]  # the pipeline's get_timesteps
    assert [s.timestep for s in trace.steps] == [float(t) for t in ran]


def test_flow_matching_enters_where_its_pipelines_do():
    """SD and SDXL skip N − ⌊N·s⌋ steps; SD3 and Flux ⌊N − N·s⌋ (N = 10, s = 0.35: 7 and 6)."""
    sdxl, sd3 = tiny_sdxl_pipeline(), tiny_sd3_pipeline()
    assert Explainer.from_pipeline(sdxl, progress=False).family.entry_step(10, 0.35) == 7
    assert Explainer.from_pipeline(sd3, progress=False).family.entry_step(10, 0.35) == 6
    assert Explainer.from_pipeline(sd3, progress=False).family.entry_step(10, 0.3) == 7  # 10 − 3.0000…04


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_default_strength_is_the_pipeline_default_and_batches_match(pipes, family):
    scheduler_name = "euler_a" if family == "sdxl" else "flow_euler"
    explainer = explainer_for(pipes, family).set_scheduler(scheduler_name)
    prompts, images = [PROMPT, "a blue circle"], picture(3, rows=2)
    run = dict(num_inference_steps=STEPS, seed=2, decode=False, **OPTIONS[family])
    trace = explainer.run(prompts, image=images, **run)
    assert trace.settings["strength"] == DEFAULT_STRENGTHS[family]
    theirs = dict(guidance_scale=3.5) if family == "flux" else {}
    expected = pipeline_latents(pipes, family, scheduler_name, images, 2, prompt=prompts, **theirs)
    assert torch.equal(trace.final_latents, expected)
    one = explainer.run(prompts, image=images[:1], **run)  # one picture for both prompts
    assert one["image.input"].shape[0] == 1 and one["image.latents"].shape[0] == 2
    x0, noise = one["image.latents"], one["image.noise"]
    if family != "sdxl":  # flow matching: x_{t_s} = (1 − σ)·x0 + σ·ε at the first σ the loop runs
        sigma = -one.steps[0].level.b  # x̂0 = x_t − σ·v
        torch.testing.assert_close(one["latents.init"], (1 - sigma) * x0 + sigma * noise)


# ---- forks and files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_forks_and_trace_files_of_a_run_from_a_picture_are_bit_exact(pipes, family, tmp_path):
    explainer = explainer_for(pipes, family)
    guidance = dict(guidance_scale=1.0 if family == "flux" else 3.0)
    trace = explainer.run(
        PROMPT, image=picture(2), strength=0.6, num_inference_steps=6, seed=7, **OPTIONS[family], **guidance
    )
    for k in range(len(trace)):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, len(trace)):
            assert torch.equal(forked["step.guidance", i], trace["step.guidance", i]), (k, i)
    path = tmp_path / f"{family}.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.run_settings == trace.run_settings and loaded.hook_names == trace.hook_names
    for name in ("image.input", "image.latents", "image.noise", "latents.init"):
        assert torch.equal(loaded[name], trace[name]), name
    assert torch.equal(explainer.fork(loaded, 1).final_latents, trace.final_latents)
