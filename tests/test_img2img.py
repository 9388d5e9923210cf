"""Start from a picture (img2img): parity with StableDiffusionImg2ImgPipeline bit for bit, per scheduler,
on tiny parts and on the embedded default model; forks, trace files, reguide, hooks and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from diffexplain import SCHEDULER_NAMES, Explainer, Trace, load_default
from diffexplain.scheduler_state import scheduler_by_name
from diffexplain.settings import RunSettings, SettingsError
from tests.conftest import PROMPT
from tests.tiny_families import tiny_if_parts

STEPS = 10  # strength 0.3 runs 3 of them (Heun: its 2nd-order pairs), strength 1.0 all


def picture(seed: int = 0, size: int = 16, rows: int = 1) -> torch.Tensor:
    """A random picture in [0, 1]  [rows, 3, size, size]."""
    return torch.rand(rows, 3, size, size, generator=torch.Generator().manual_seed(seed))


def img2img_pipeline(parts: dict, scheduler: object) -> StableDiffusionImg2ImgPipeline:
    pipe = StableDiffusionImg2ImgPipeline(
        **{**parts, "scheduler": scheduler},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(
    pipe: StableDiffusionImg2ImgPipeline, image: object, seed: int, **kwargs
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(image=image, generator=generator, output_type="latent", **kwargs).images


# ---- parity -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_run_from_a_picture_equals_the_img2img_pipeline(parts, scheduler_name, guidance_scale, strength):
    explainer = Explainer(**parts, progress=False).set_scheduler(scheduler_name)
    image = picture()
    run = dict(num_inference_steps=STEPS, guidance_scale=guidance_scale, strength=strength)
    trace = explainer.run(PROMPT, image=image, seed=11, decode=False, **run)
    pipe = img2img_pipeline(parts, scheduler_by_name(scheduler_name, parts["scheduler"].config))
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, image, 11, prompt=PROMPT, **run))
    skipped = STEPS - int(STEPS * strength)
    assert trace.settings["strength"] == strength and trace.settings["entry_step"] == skipped
    scheduler = pipe.scheduler  # its timesteps as the pipeline set them: the loop ran those from t_start on
    assert len(trace) == len(scheduler.timesteps) - skipped * scheduler.order


def test_pil_pictures_batches_and_negative_prompts_equal_the_pipeline(parts):
    explainer = Explainer(**parts, progress=False).set_scheduler("euler_a")
    pixels = (picture(3, rows=2).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    prompts, negative = [PROMPT, "a blue circle"], ["blurry", "green"]
    run = dict(negative_prompt=negative, num_inference_steps=STEPS, strength=0.6)
    trace = explainer.run(prompts, image=images, seed=2, decode=False, **run)
    pipe = img2img_pipeline(parts, scheduler_by_name("euler_a", parts["scheduler"].config))
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, images, 2, prompt=prompts, **run))
    one = explainer.run(prompts, image=images[0], seed=2, decode=False, **run)  # one picture for both
    assert torch.equal(one.final_latents, pipeline_latents(pipe, images[0], 2, prompt=prompts, **run))
    assert one["image.input"].shape == (1, 3, 16, 16) and one["image.latents"].shape == (2, 4, 8, 8)


@pytest.fixture(scope="module")
def default_model() -> Explainer:
    return load_default(progress=False)


@pytest.mark.parametrize(("scheduler_name", "guidance_scale"), [("ddim", 7.5), ("euler", 1.0)])
def test_the_default_model_from_a_picture_equals_the_pipeline(default_model, scheduler_name, guidance_scale):
    # the pipeline's parts are the model's, as benchmarks/bench_model.py builds its text-to-image pipeline;
    # its constructor updates an old scheduler config (steps_offset = 1): the run takes the pipeline's
    scheduler = default_model.set_scheduler(scheduler_name).scheduler
    parts = {name: default_model.family.parts[name] for name in ("unet", "vae", "tokenizer", "text_encoder")}
    pipe = img2img_pipeline(parts, type(scheduler).from_config(scheduler.config))
    explainer = default_model.set_scheduler(pipe.scheduler)
    image, prompt = picture(5, size=64), "a red circle on the left"
    run = dict(num_inference_steps=8, guidance_scale=guidance_scale, strength=0.5)
    trace = explainer.run(prompt, image=image, seed=4, decode=False, **run)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, image, 4, prompt=prompt, **run))
    assert len(trace) == 4


# ---- what a trace from a picture records, forks, files, reguide ----------------------------------------
@pytest.fixture
def traced(explainer) -> Trace:
    return explainer.run(PROMPT, image=picture(1), strength=0.6, num_inference_steps=STEPS, seed=9)


def test_the_trace_records_the_picture_its_latents_the_noise_and_the_entry(explainer, traced):
    names = traced.hook_names
    assert names[names.index("latents.init") - 3 : names.index("latents.init")] == (
        "image.input",
        "image.latents",
        "image.noise",
    )
    assert torch.equal(traced["image.input"], picture(1) * 2 - 1)  # [0, 1] → [-1, 1], as the VAE reads it
    x0, noise, start = traced["image.latents"], traced["image.noise"], traced["latents.init"]
    scheduler = type(explainer.scheduler).from_config(explainer.scheduler.config)
    scheduler.set_timesteps(STEPS)
    t = traced.steps[0].timestep
    assert t == float(scheduler.timesteps[4])  # 10 steps, s = 0.6: t_start = 4
    alpha_bar = scheduler.alphas_cumprod[int(t)]
    torch.testing.assert_close(start, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    assert torch.equal(traced.steps[0].restart.latents, start) and len(traced) == 6
    plain = explainer.run(PROMPT, num_inference_steps=2, seed=9)
    assert "image.latents" not in plain.hook_names and "strength" not in plain.settings


@pytest.mark.parametrize("scheduler_name", list(SCHEDULER_NAMES))
def test_forks_of_a_run_from_a_picture_are_bit_exact(explainer, scheduler_name):
    explainer.set_scheduler(scheduler_name)
    trace = explainer.run(PROMPT, image=picture(2), strength=0.5, num_inference_steps=6, seed=7)
    for k in range(len(trace)):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, len(trace)):
            for name, x in trace.steps[i].tensors.items():
                assert torch.equal(forked[name, i], x), (k, name, i)
        assert torch.equal(forked.image, trace.image)
        assert torch.equal(forked["image.latents"], trace["image.latents"])


def test_a_trace_file_from_a_picture_round_trips_and_forks(explainer, traced, tmp_path):
    path = tmp_path / "img2img.safetensors"
    traced.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.run_settings == traced.run_settings and loaded.hook_names == traced.hook_names
    for name in ("image.input", "image.latents", "image.noise", "latents.init"):
        assert torch.equal(loaded[name], traced[name]), name
    assert torch.equal(explainer.fork(loaded, 3).final_latents, traced.final_latents)


def test_reguide_and_forks_with_changes_work_from_a_picture(explainer, traced):
    other = explainer.fork(traced, 2, guidance_scale=3.0)
    reguided = traced.reguide(2, 3.0)
    torch.testing.assert_close(reguided.eps_guided, other["step.guidance", 2], rtol=1e-5, atol=1e-6)
    assert not torch.equal(other.final_latents, traced.final_latents)
    assert other.run_settings.strength == 0.6 and other.run_settings.entry_step == 4


# ---- hooks ---------------------------------------------------------------------------------------------
def test_a_hook_on_the_encoded_picture_changes_the_result(explainer):
    run = dict(image=picture(4), strength=0.5, num_inference_steps=STEPS, seed=1)
    plain = explainer.run(PROMPT, **run)
    hooked = explainer.run(PROMPT, hooks={"image.latents": lambda x, *, ctx: -x}, **run)
    assert torch.equal(hooked["image.latents"], -plain["image.latents"])
    assert torch.equal(hooked["image.noise"], plain["image.noise"])  # the same draws
    assert not torch.equal(hooked["latents.init"], plain["latents.init"])
    assert not torch.equal(hooked.final_latents, plain.final_latents)
    assert [(r.name, r.step) for r in hooked.replacements] == [("image.latents", None)]


def test_a_hook_on_the_noised_start_replaces_it(explainer):
    zeros = lambda x, *, ctx: torch.zeros_like(x)  # noqa: E731
    hooked = explainer.run(
        PROMPT, image=picture(4), strength=0.5, num_inference_steps=4, seed=1, hooks={"latents.init": zeros}
    )
    assert torch.equal(hooked.steps[0].restart.latents, torch.zeros(1, 4, 8, 8))


def test_image_points_are_no_points_of_a_run_from_noise(explainer):
    with pytest.raises(ValueError, match="unknown hook point for this model 'image.latents'"):
        explainer.run(PROMPT, num_inference_steps=2, seed=0, hooks={"image.latents": lambda x, *, ctx: x})


# ---- bad inputs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(strength=0.0), ValueError, r"strength must be in \(0, 1\]"),
        (dict(strength=1.5), ValueError, r"strength must be a finite number from 0 to 1"),
        (dict(strength=float("nan")), ValueError, r"strength must be a finite number"),
        (dict(strength="high"), TypeError, r"strength must be a number"),
        (dict(strength=0.05), ValueError, r"strength=0.05 with num_inference_steps=10 runs no step"),
        (dict(image=picture(size=15)), ValueError, r"image is 15×15 pixels .* multiples of 2"),
        (dict(image=picture()[0, :1]), ValueError, r"image is a tensor of shape \[1, 16, 16\]"),
        (dict(image=picture()[None]), ValueError, r"image is a tensor of shape \[1, 1, 3, 16, 16\]"),
        (dict(image=picture() * 2 - 1), ValueError, r"image holds values from -.* expected .* in \[0, 1\]"),
        (dict(image=(picture() * 255).to(torch.uint8)), ValueError, r"dtype torch.uint8"),
        (dict(image=picture(rows=3)), ValueError, r"image holds 3 pictures for 1 prompts"),
        (dict(image=np.zeros((16, 16, 3))), TypeError, r"image must be a PIL image .* got ndarray"),
        (dict(image=Image.new("L", (16, 16))), ValueError, r"mode 'L'; expected mode 'RGB'"),
        (dict(image=picture(), height=32), ValueError, r"height=32 differs from the image's height \(16\)"),
        (dict(image=picture(), width=8), ValueError, r"width=8 differs from the image's width \(16\)"),
        (dict(image=picture(), latents=torch.zeros(1, 4, 8, 8)), ValueError, r"pass image= .* or latents="),
    ],
)
def test_bad_inputs_name_the_argument(explainer, kwargs, error, message):
    kwargs = {"image": picture(), **kwargs} if "strength" in kwargs else kwargs
    with pytest.raises(error, match=message):
        explainer.run(PROMPT, num_inference_steps=STEPS, seed=0, **kwargs)


def test_strength_without_a_picture_is_refused(explainer):
    with pytest.raises(ValueError, match=r"strength=0.5 needs image="):
        explainer.run(PROMPT, strength=0.5, num_inference_steps=2, seed=0)


def test_other_families_say_which_families_start_from_a_picture(pixel_parts):
    stage_1 = Explainer(**tiny_if_parts(), progress=False)
    with pytest.raises(
        ValueError, match=r"SDXL, SD3, Flux and Chroma families .* so far; .* holds a DeepFloyd IF"
    ):
        stage_1.run(PROMPT, image=picture(), num_inference_steps=2, seed=0)
    with pytest.raises(ValueError, match="needs a VAE"):
        Explainer(**pixel_parts, progress=False).run(PROMPT, image=picture(), num_inference_steps=2, seed=0)


def test_check_run_checks_a_picture_without_running(explainer):
    settings = explainer.check_run(PROMPT, image=picture(size=8), strength=0.5, num_inference_steps=4)
    assert (settings.height, settings.width, settings.strength, settings.entry_step) == (8, 8, 0.5, 2)
    assert settings.inference_steps_run == 2 and explainer.last_trace is None


def test_settings_of_a_run_from_a_picture_are_checked(traced):
    doc = traced.settings
    assert RunSettings.from_json(doc) == traced.run_settings
    without = {k: v for k, v in doc.items() if k not in ("strength", "entry_step")}  # a file from before
    assert RunSettings.from_json(without).strength is None
    for bad, message in [
        ({"strength": 1.5}, r"strength should be in \(0, 1\]"),
        ({"strength": None}, "strength and settings.entry_step go together"),
        ({"entry_step": 10}, "entry_step = 10 skips all 10 inference steps"),
    ]:
        with pytest.raises(SettingsError, match=message):
            RunSettings.from_json({**doc, **bad})
