"""SDXL inpainting: parity with StableDiffusionXLInpaintPipeline bit for bit, per scheduler name, for a
regular U-Net (the known region blended back each step) and a 9-channel inpainting U-Net; its default
strength (0.9999); forks and trace files; a VAE with latent statistics (img2img and inpainting encode
differently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
from PIL import Image

from diffexplain import SCHEDULER_NAMES, Explainer, Trace
from diffexplain.inpaint import DEFAULT_STRENGTHS
from diffexplain.scheduler_state import scheduler_by_name
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sdxl_parts, tiny_vae

STEPS = 6
SIZE = 16  # px: latents [B, 4, 8, 8]


def picture(seed: int = 0, rows: int = 1) -> torch.Tensor:
    """A random picture in [0, 1]  [rows, 3, SIZE, SIZE]."""
    return torch.rand(rows, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def square_mask() -> torch.Tensor:
    """1 (repaint) in a square off the centre, 0 elsewhere  [1, 1, SIZE, SIZE]."""
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., SIZE // 4 : SIZE * 3 // 4, SIZE // 8 : SIZE * 5 // 8] = 1.0
    return mask


@pytest.fixture(scope="module")
def sdxl_parts() -> dict:
    """The tiny SDXL parts with a regular U-Net (4 input channels); shared, never modified."""
    return tiny_sdxl_parts()


@pytest.fixture(scope="module")
def sdxl_parts9(sdxl_parts: dict) -> dict:
    """The same parts with a 9-channel inpainting U-Net (x_t, the mask, the masked picture's latents)."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config({**sdxl_parts["unet"].config, "in_channels": 9}).eval()
    return {**sdxl_parts, "unet": unet}


def pipeline_latents(parts: dict, scheduler_name: str, image, mask, seed: int, **kwargs) -> torch.Tensor:
    pipe = StableDiffusionXLInpaintPipeline(
        **{**parts, "scheduler": scheduler_by_name(scheduler_name, parts["scheduler"].config)}
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        image=image, mask_image=mask, generator=generator, output_type="latent", height=SIZE, width=SIZE,
        num_inference_steps=STEPS, **kwargs,
    ).images  # fmt: skip


# ---- parity -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unet", ["regular", "inpainting"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_sdxl_inpainting_equals_the_pipeline(
    sdxl_parts, sdxl_parts9, scheduler_name, guidance_scale, strength, unet
):
    parts = sdxl_parts if unet == "regular" else sdxl_parts9
    explainer = Explainer(**parts, progress=False).set_scheduler(scheduler_name)
    image, mask = picture(), square_mask()
    run = dict(guidance_scale=guidance_scale, strength=strength)
    trace = explainer.run(
        PROMPT, image=image, mask_image=mask, num_inference_steps=STEPS, seed=3, decode=False, **run
    )
    expected = pipeline_latents(parts, scheduler_name, image, mask, 3, prompt=PROMPT, **run)
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["inpaint"] == ("blend" if unet == "regular" else "channels")


@pytest.mark.parametrize("unet", ["regular", "inpainting"])
def test_pil_masks_batches_and_the_default_strength_equal_the_pipeline(sdxl_parts, sdxl_parts9, unet):
    parts = sdxl_parts if unet == "regular" else sdxl_parts9
    explainer = Explainer(**parts, progress=False).set_scheduler("euler_a")
    pixels = (picture(3, rows=2).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    masks = [Image.fromarray((square_mask()[0, 0].numpy() * 255).astype(np.uint8)), Image.new("L", (16, 16))]
    prompts, negative = [PROMPT, "a blue circle"], ["blurry", "green"]
    trace = explainer.run(
        prompts, image=images, mask_image=masks, negative_prompt=negative, num_inference_steps=STEPS,
        seed=2, decode=False,
    )  # fmt: skip
    assert trace.settings["strength"] == DEFAULT_STRENGTHS["sdxl"] == 0.9999
    assert trace.settings["entry_step"] == 1  # ⌊6 · 0.9999⌋ = 5 steps run
    theirs = dict(prompt=prompts, negative_prompt=negative, guidance_scale=5.0)  # the pipeline's default: 7.5
    expected = pipeline_latents(parts, "euler_a", images, masks, 2, **theirs)
    assert torch.equal(trace.final_latents, expected)


# ---- forks and files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("unet", ["regular", "inpainting"])
def test_forks_and_trace_files_of_sdxl_inpainting_are_bit_exact(sdxl_parts, sdxl_parts9, unet, tmp_path):
    explainer = Explainer(**(sdxl_parts if unet == "regular" else sdxl_parts9), progress=False)
    trace = explainer.run(
        PROMPT, image=picture(2), mask_image=square_mask(), strength=1.0, num_inference_steps=STEPS, seed=7
    )
    for k in range(len(trace)):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
    path = tmp_path / "inpaint.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.run_settings == trace.run_settings
    assert torch.equal(explainer.fork(loaded, 2).final_latents, trace.final_latents)
    if unet == "regular":  # the known region is put back: outside the mask, the picture's latents
        keep = trace["image.mask"] == 0  # [B, 1, h, w]
        x0 = trace["image.latents"]
        assert torch.equal(trace.final_latents[keep.expand_as(x0)], x0[keep.expand_as(x0)])


# ---- a VAE with latent statistics ----------------------------------------------------------------------
def test_a_vae_with_latent_statistics_encodes_as_each_pipeline(sdxl_parts):
    """SDXL's img2img pipeline encodes (z − latents_mean)·scaling_factor / latents_std; its inpainting
    pipeline z·scaling_factor. Both runs equal their pipeline with such a VAE."""
    stats = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
    parts = {
        **sdxl_parts,
        "vae": tiny_vae(latent_channels=4, scaling_factor=0.13025, force_upcast=True, **stats),
    }
    explainer = Explainer(**parts, progress=False).set_scheduler("euler")
    image, mask = picture(), square_mask()
    run = dict(strength=0.5, num_inference_steps=STEPS, guidance_scale=5.0)
    img2img = explainer.run(PROMPT, image=image, seed=1, decode=False, **run)
    pipe = StableDiffusionXLImg2ImgPipeline(**{**parts, "scheduler": explainer.scheduler})
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        PROMPT, image=image, generator=torch.Generator().manual_seed(1), output_type="latent", **run
    ).images
    assert torch.equal(img2img.final_latents, expected)
    inpainted = explainer.run(PROMPT, image=image, mask_image=mask, seed=1, decode=False, **run)
    theirs = dict(prompt=PROMPT, strength=0.5, guidance_scale=5.0)  # pipeline_latents takes STEPS
    assert torch.equal(inpainted.final_latents, pipeline_latents(parts, "euler", image, mask, 1, **theirs))
    mean, std = (torch.tensor(stats[k]).view(1, 4, 1, 1) for k in ("latents_mean", "latents_std"))
    z = inpainted["image.latents"] / 0.13025  # the same posterior draw, encoded two ways
    torch.testing.assert_close(img2img["image.latents"], (z - mean) * 0.13025 / std)
