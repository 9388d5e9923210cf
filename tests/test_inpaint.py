"""Inpainting: parity with StableDiffusionInpaintPipeline bit for bit, per scheduler, for a regular U-Net
(the known region blended back each step) and a 9-channel inpainting U-Net, on tiny parts and on the
embedded default model; what the trace records, forks, trace files, hooks and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from diffexplain import SCHEDULER_NAMES, Explainer, Trace, load_default
from diffexplain.scheduler_state import scheduler_by_name
from diffexplain.settings import RunSettings, SettingsError
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sd3_parts
from tests.tiny_parts import tiny_unet

STEPS = 6


def picture(seed: int = 0, size: int = 16, rows: int = 1) -> torch.Tensor:
    """A random picture in [0, 1]  [rows, 3, size, size]."""
    return torch.rand(rows, 3, size, size, generator=torch.Generator().manual_seed(seed))


def square_mask(size: int = 16) -> torch.Tensor:
    """1 (repaint) in a square off the centre, 0 elsewhere  [1, 1, size, size]."""
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : size * 3 // 4, size // 8 : size * 5 // 8] = 1.0
    return mask


@pytest.fixture(scope="module")
def parts9(parts: dict) -> dict:
    """The tiny parts with a 9-channel inpainting U-Net (x_t, the mask, the masked picture's latents)."""
    return {**parts, "unet": tiny_unet(in_channels=9, out_channels=4)}


def inpaint_pipeline(parts: dict, scheduler: object) -> StableDiffusionInpaintPipeline:
    pipe = StableDiffusionInpaintPipeline(
        **{**parts, "scheduler": scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(pipe: StableDiffusionInpaintPipeline, image: object, mask: object, seed: int, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    size = dict(height=16, width=16)  # the pipeline's default is the U-Net's sample size; the picture's here
    size = {**size, **{k: kwargs.pop(k) for k in ("height", "width") if k in kwargs}}
    out = pipe(image=image, mask_image=mask, generator=generator, output_type="latent", **size, **kwargs)
    return out.images


# ---- parity -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unet", ["regular", "inpainting"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_inpainting_equals_the_inpaint_pipeline(
    parts, parts9, scheduler_name, guidance_scale, strength, unet
):
    chosen = parts if unet == "regular" else parts9
    explainer = Explainer(**chosen, progress=False).set_scheduler(scheduler_name)
    image, mask = picture(), square_mask()
    run = dict(num_inference_steps=STEPS, guidance_scale=guidance_scale, strength=strength)
    trace = explainer.run(PROMPT, image=image, mask_image=mask, seed=3, decode=False, **run)
    pipe = inpaint_pipeline(chosen, scheduler_by_name(scheduler_name, chosen["scheduler"].config))
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, image, mask, 3, prompt=PROMPT, **run))
    assert trace.settings["inpaint"] == ("blend" if unet == "regular" else "channels")
    assert trace.settings["entry_step"] == STEPS - int(STEPS * strength)


def test_pil_pictures_and_masks_batches_and_the_default_strength_equal_the_pipeline(parts, parts9):
    pixels = (picture(3, rows=2).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    mask = Image.fromarray((square_mask()[0, 0].numpy() * 255).astype(np.uint8))  # mode L
    prompts = [PROMPT, "a blue circle"]
    for chosen in (parts, parts9):
        explainer = Explainer(**chosen, progress=False).set_scheduler("euler_a")
        run = dict(negative_prompt=["blurry", "green"], num_inference_steps=STEPS)
        trace = explainer.run(
            prompts, image=images, mask_image=mask.convert("RGB"), seed=2, decode=False, **run
        )
        pipe = inpaint_pipeline(chosen, scheduler_by_name("euler_a", chosen["scheduler"].config))
        expected = pipeline_latents(pipe, images, mask.convert("RGB"), 2, prompt=prompts, **run)
        assert torch.equal(trace.final_latents, expected)
        assert trace.run_settings.strength == 1.0 and trace.run_settings.entry_step == 0  # the pipeline's
        one = explainer.run(prompts, image=images[0], mask_image=[mask, mask], seed=2, decode=False, **run)
        expected = pipeline_latents(pipe, images[0], [mask, mask], 2, prompt=prompts, **run)
        assert torch.equal(one.final_latents, expected)
        assert one["image.mask"].shape == (2, 1, 8, 8) and one["image.masked_latents"].shape == (2, 4, 8, 8)


@pytest.fixture(scope="module")
def default_model() -> Explainer:
    return load_default(progress=False)


@pytest.mark.parametrize(
    ("scheduler_name", "guidance_scale", "strength"), [("ddim", 7.5, 1.0), ("euler", 1.0, 0.6)]
)
def test_the_default_model_inpaints_as_the_pipeline(default_model, scheduler_name, guidance_scale, strength):
    scheduler = default_model.set_scheduler(scheduler_name).scheduler
    parts = {name: default_model.family.parts[name] for name in ("unet", "vae", "tokenizer", "text_encoder")}
    pipe = inpaint_pipeline(parts, type(scheduler).from_config(scheduler.config))
    explainer = default_model.set_scheduler(pipe.scheduler)
    image, mask, prompt = picture(5, size=64), square_mask(64), "a red circle on the left"
    run = dict(num_inference_steps=8, guidance_scale=guidance_scale, strength=strength)
    trace = explainer.run(prompt, image=image, mask_image=mask, seed=4, decode=False, **run)
    expected = pipeline_latents(pipe, image, mask, 4, prompt=prompt, height=64, width=64, **run)
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["inpaint"] == "blend"


# ---- what the trace records ----------------------------------------------------------------------------
@pytest.fixture
def blended(explainer) -> Trace:
    return explainer.run(
        PROMPT, image=picture(1), mask_image=square_mask(), num_inference_steps=STEPS, seed=9
    )


def test_the_trace_records_the_mask_the_masked_picture_and_each_blend(explainer, blended):
    names = blended.hook_names
    at = names.index("latents.init")
    assert names[at - 3 : at + 3] == (
        "image.input",
        "image.latents",
        "image.noise",
        "latents.init",
        "image.mask",
        "image.masked_latents",
    )
    at = names.index("step.next")
    assert names[at + 1 : at + 3] == ("step.inpaint.known", "step.inpaint.blend")
    mask = blended["image.mask"]  # the square at latent size (the tiny VAE halves each side)
    assert torch.equal(mask, torch.nn.functional.interpolate(square_mask(), size=(8, 8)))
    assert torch.equal(blended["latents.init"], blended["image.noise"])  # s = 1, DDIM: σ_init = 1
    x0 = blended["image.latents"]
    for i in range(len(blended)):  # the next step enters from the blend; outside the mask, the picture
        out, known, mixed = (blended[n, i] for n in ("step.next", "step.inpaint.known", "step.inpaint.blend"))
        assert torch.equal(mixed, (1 - mask) * known + mask * out)
        nxt = blended.steps[i + 1].restart.latents if i + 1 < len(blended) else blended.final_latents
        assert torch.equal(nxt, mixed)
    assert torch.equal(blended.final_latents * (1 - mask), x0 * (1 - mask))  # the kept region is x0's
    assert set(blended.inpainting) == {"mask", "image_latents", "noise"}
    plain = explainer.run(PROMPT, image=picture(1), num_inference_steps=2, seed=9)
    assert "image.mask" not in plain.hook_names and "inpaint" not in plain.settings


def test_an_inpainting_unet_reads_the_mask_and_blends_nothing(parts9):
    trace = Explainer(**parts9, progress=False).run(
        PROMPT, image=picture(1), mask_image=square_mask(), num_inference_steps=4, seed=9
    )
    assert "step.inpaint.blend" not in trace.hook_names
    assert (
        "image.latents" not in trace.run_tensors
    )  # s = 1: the picture itself is not encoded, as the pipeline
    assert set(trace.inpainting) == {"mask", "masked_image_latents"}
    assert set(trace.conditioning["cond"]) == {"embeds"}  # the prompt's: the mask is the run's state


# ---- forks, files, hooks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("unet", ["regular", "inpainting"])
@pytest.mark.parametrize("scheduler_name", ["ddim", "euler_a", "heun", "dpm++2m_sde"])
def test_forks_of_an_inpainting_run_are_bit_exact(parts, parts9, scheduler_name, unet):
    explainer = Explainer(**(parts if unet == "regular" else parts9), progress=False)
    explainer.set_scheduler(scheduler_name)
    trace = explainer.run(
        PROMPT, image=picture(2), mask_image=square_mask(), strength=0.7, num_inference_steps=5, seed=7
    )
    for k in range(len(trace)):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, len(trace)):
            for name, x in trace.steps[i].tensors.items():
                assert torch.equal(forked[name, i], x), (k, name, i)


def test_a_trace_file_of_an_inpainting_run_round_trips_and_forks(parts9, explainer, blended, tmp_path):
    for trace, owner in ((blended, explainer), (None, Explainer(**parts9, progress=False))):
        if trace is None:
            trace = owner.run(
                PROMPT, image=picture(1), mask_image=square_mask(), num_inference_steps=4, seed=1
            )
        path = tmp_path / f"inpaint-{trace.settings['inpaint']}.safetensors"
        trace.save(path)
        loaded = Trace.load(path, explainer=owner)
        assert loaded.run_settings == trace.run_settings and loaded.hook_names == trace.hook_names
        assert loaded.inpainting.keys() == trace.inpainting.keys()
        for key, x in trace.inpainting.items():
            assert torch.equal(loaded.inpainting[key], x), key
        assert torch.equal(owner.fork(loaded, 2).final_latents, trace.final_latents)


def test_forks_with_a_new_prompt_keep_the_mask(explainer, blended):
    other = explainer.fork(blended, 2, prompt="a blue circle")
    mask = blended["image.mask"]
    assert not torch.equal(other.final_latents, blended.final_latents)
    assert torch.equal(other.final_latents * (1 - mask), blended.final_latents * (1 - mask))


def test_a_hook_on_the_blend_replaces_the_next_latents(explainer):
    run = dict(image=picture(4), mask_image=square_mask(), num_inference_steps=4, seed=1)
    zeros = lambda x, *, ctx: torch.zeros_like(x)  # noqa: E731
    hooked = explainer.run(PROMPT, hooks={"step.inpaint.blend": zeros}, **run)
    assert torch.equal(hooked.steps[1].restart.latents, torch.zeros(1, 4, 8, 8))
    assert [(r.name, r.step) for r in hooked.replacements][:2] == [
        ("step.inpaint.blend", 0),
        ("step.inpaint.blend", 1),
    ]
    everywhere = explainer.run(PROMPT, hooks={"image.mask": lambda x, *, ctx: torch.ones_like(x)}, **run)
    assert torch.equal(everywhere.final_latents, everywhere["step.next", -1])  # m = 1: nothing kept


# ---- bad inputs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(mask_image=square_mask(8)), ValueError, r"mask_image is 8×8 pixels .* the image is 16×16"),
        (dict(mask_image=square_mask().repeat(3, 1, 1, 1)), ValueError, r"mask_image holds 3 masks for 1"),
        (dict(mask_image=square_mask() * 2), ValueError, r"mask_image holds values from 0 to 2"),
        (dict(mask_image=square_mask().repeat(1, 3, 1, 1)), ValueError, r"mask_image is a tensor of shape"),
        (dict(mask_image=square_mask().bool()), ValueError, r"mask_image is a tensor of dtype torch.bool"),
        (dict(mask_image=np.zeros((16, 16))), TypeError, r"mask_image must be a PIL image.* got ndarray"),
        (dict(mask_image=square_mask(), strength=0.0), ValueError, r"strength must be in \(0, 1\]"),
    ],
)
def test_bad_masks_name_the_argument(explainer, kwargs, error, message):
    with pytest.raises(error, match=message):
        explainer.run(PROMPT, image=picture(), num_inference_steps=STEPS, seed=0, **kwargs)


def test_a_mask_needs_a_picture_and_an_inpainting_family(explainer):
    with pytest.raises(ValueError, match=r"mask_image= needs image="):
        explainer.run(PROMPT, mask_image=square_mask(), num_inference_steps=2, seed=0)
    sd3 = Explainer(**tiny_sd3_parts(), progress=False)
    with pytest.raises(ValueError, match=r"inpainting is for the Stable Diffusion 1.x / 2.x and SDXL .* 3"):
        sd3.run(PROMPT, image=picture(), mask_image=square_mask(), num_inference_steps=2, seed=0)


def test_an_inpainting_unet_needs_a_mask(parts9):
    explainer = Explainer(**parts9, progress=False)
    for kwargs in ({}, {"image": picture()}):
        with pytest.raises(ValueError, match=r"mask_image=: this U-Net is an inpainting U-Net \(9 input"):
            explainer.run(PROMPT, num_inference_steps=2, seed=0, **kwargs)


def test_settings_of_an_inpainting_run_are_checked(blended):
    doc = blended.settings
    assert RunSettings.from_json(doc) == blended.run_settings
    for bad, message in [
        ({"inpaint": "paint"}, r"settings.inpaint should be 'blend', 'channels' or null"),
        ({"strength": None, "entry_step": None}, r"settings.inpaint needs settings.strength"),
    ]:
        with pytest.raises(SettingsError, match=message):
            RunSettings.from_json({**doc, **bad})
