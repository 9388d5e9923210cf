"""DeepFloyd IF's stage I through the ordinary loop: parity with IFPipeline (CFG on and off, a batch with
negative prompts), bit-exact forks, the learned variance kept out of guidance, hook points in pixel
space, and clear errors for parts that do not fit. The cascade (stage II) is tests/test_cascade.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffexplain import Explainer, Trace
from diffexplain.families import FAMILIES, IF, IFSuperResolution, family_for_pipeline
from tests.tiny_families import IF_STAGE_1_SIZE, tiny_if_parts, tiny_if_pipelines

PROMPT = "a red circle on the left"
STEPS = 5  # DDPM's first step is t = 800: noisy enough to start from pure noise


@pytest.fixture(scope="module")
def pipes():
    return tiny_if_pipelines()


@pytest.fixture(scope="module")
def explainer(pipes) -> Explainer:
    return Explainer.from_pipeline(pipes[0], progress=False)


def pipeline_images(pipe, prompt, seed: int, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        generator=generator,
        output_type="pt",
        clean_caption=False,
        **kwargs,
    ).images


@pytest.mark.parametrize("guidance_scale", [7.0, 1.0])
def test_stage_one_equals_the_pipeline_and_forks_replay_it(pipes, explainer, guidance_scale):
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance_scale, seed=2)
    expected = pipeline_images(pipes[0], PROMPT, 2, guidance_scale=guidance_scale)
    assert torch.equal(trace.final_latents, expected)
    assert torch.equal(trace["decode.image"], expected)  # pixel space: the picture is x_0 itself
    for k in (0, STEPS - 1):
        assert torch.equal(explainer.fork(trace, k).final_latents, trace.final_latents), k


def test_a_batch_with_negative_prompts_equals_the_pipeline(pipes, explainer):
    prompts, negatives = [PROMPT, "a blue square"], ["green", "Red Triangle  "]
    trace = explainer.run(prompts, negative_prompt=negatives, num_inference_steps=STEPS, seed=1)
    expected = pipeline_images(pipes[0], prompts, 1, negative_prompt=negatives, guidance_scale=7.0)
    assert torch.equal(trace.final_latents, expected)


def test_hook_points_are_pictures_and_only_eps_is_guided(explainer):
    """ε_c, ε_u and ε̂ are the 3 ε channels; the learned variance reaches the scheduler from the cond branch."""
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, guidance_scale=7.0, seed=0)
    picture = (1, 3, IF_STAGE_1_SIZE, IF_STAGE_1_SIZE)
    for name in ("step.latents", "step.model.cond", "step.model.uncond", "step.guidance", "step.pred_x0"):
        assert tuple(trace[name, 2].shape) == picture, name
    assert tuple(trace["prompt.cond"].shape) == (1, 77, 96)  # T5 at IF's 77 tokens
    # rebuild step 2 by hand from the U-Net's two branches: [ε ; v] each, guide ε, keep v of the text branch
    scheduler = type(explainer.scheduler).from_config(explainer.scheduler.config)
    scheduler.set_timesteps(STEPS)
    t = scheduler.timesteps[2]
    x = trace["step.latents", 2]
    embeds = torch.cat([trace["prompt.uncond"], trace["prompt.cond"]])
    with torch.no_grad():
        out = explainer.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample
    (eps_u, _), (eps_c, var_c) = (half.split(3, dim=1) for half in out.chunk(2))
    eps_guided = eps_u + 7.0 * (eps_c - eps_u)
    assert torch.equal(trace["step.guidance", 2], eps_guided)
    generator = torch.Generator()
    generator.set_state(trace.steps[2].restart.generator_state)
    stepped = scheduler.step(torch.cat([eps_guided, var_c], dim=1), t, x, generator=generator).prev_sample
    assert torch.equal(trace["step.next", 2], stepped)


def test_a_hook_on_guided_eps_changes_the_picture_and_ddim_drops_the_variance(explainer):
    base = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0)
    hooked = explainer.run(
        PROMPT, num_inference_steps=STEPS, seed=0, hooks={"step.guidance": lambda x, ctx: -x}
    )
    assert not torch.equal(hooked.final_latents, base.final_latents)
    ddim = Explainer(family=IF(**explainer.family.parts), scheduler=explainer.scheduler, progress=False)
    ddim.set_scheduler("ddim")  # no learned variance: the scheduler reads ε̂ alone, as IFPipeline with DDIM
    assert tuple(ddim.run(PROMPT, num_inference_steps=STEPS, seed=0).final_latents.shape) == tuple(
        base.final_latents.shape
    )


def test_a_saved_trace_loads_and_forks(explainer, tmp_path):
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=4)
    trace.save(tmp_path / "if.safetensors")
    loaded = Trace.load(tmp_path / "if.safetensors", explainer=explainer)
    assert loaded.settings["model"]["family"] == "if" and loaded.previews is not None
    assert torch.equal(explainer.fork(loaded, 2).final_latents, trace.final_latents)


def test_families_are_registered_and_picked_from_their_pipelines(pipes):
    assert FAMILIES["if"] is IF and FAMILIES["if_sr"] is IFSuperResolution
    assert family_for_pipeline(pipes[0]) is IF and family_for_pipeline(pipes[1]) is IFSuperResolution
    names = [p.name for p in IFSuperResolution.hook_points()]
    assert {"prompt.image.cond", "prompt.noise_level.uncond"} <= set(names)


def test_parts_that_do_not_fit_are_named():
    parts = tiny_if_parts()
    parts.pop("scheduler")
    with pytest.raises(TypeError, match="missing: \\['text_encoder'\\]"):
        IF(unet=parts["unet"], tokenizer=parts["tokenizer"])
    unet = UNet2DConditionModel.from_config({**parts["unet"].config, "out_channels": 4})
    with pytest.raises(ValueError, match="out_channels is 4; expected 3 \\(ε\\) or 6"):
        IF(unet=unet, tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"])
    sr = tiny_if_parts(super_resolution=True)
    sr.pop("scheduler")
    family = IFSuperResolution(**sr)
    with pytest.raises(TypeError, match="conditioned on a stage-I image: run it with diffexplain.Cascade"):
        family.run_options(32, 32, image=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="noise_level must be an int in 0..999; got 1000"):
        family.run_options(32, 32, noise_level=1000)


def test_the_docs_page_lists_stage_twos_hook_points():
    from tests.test_docs import DOCS, _docs_hooks

    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    markdown = (DOCS / "families" / "if.md").read_text(encoding="utf-8")
    assert IF.extra_points == ()  # stage I adds none: the page's one table is stage II's
    assert _docs_hooks().hook_table_problems(markdown, ()) == []  # what the docs build checks: stage I's
    stage_two = markdown.replace("| `II.", "| `")  # the table names them as a cascade does: II.prompt...
    assert _docs_hooks().hook_table_problems(stage_two, IFSuperResolution.extra_points) == []
    index = (DOCS / "families" / "index.md").read_text(encoding="utf-8")
    assert "`IFPipeline`" in index and "`IFSuperResolutionPipeline`" in index and "](if.md)" in index


def test_a_small_pixel_model_of_its_own_runs_as_stage_one():
    """IF's format is general: a plain cross-attention U-Net with 6 output channels (ε and a variance)
    over another text encoder (CLIP-style, 16 positions) runs, hooks, forks and keeps attention maps."""
    from tests.tiny_parts import tiny_parts

    parts = tiny_parts(pixel_space=True)
    unet = UNet2DConditionModel.from_config({**parts["unet"].config, "out_channels": 6})
    family = IF(unet=unet, tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"])
    explainer = Explainer(family=family, scheduler=tiny_if_parts()["scheduler"], progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=0, guidance_scale=4.0, height=16, width=16)
    assert tuple(trace["step.guidance", 1].shape) == (1, 3, 16, 16)
    assert trace.attention("red").shape[0] == 1  # its cross-attention layers are captured
    assert torch.equal(explainer.fork(trace, 2).final_latents, trace.final_latents)
