"""LCM (LatentConsistencyModelPipeline) through the Stable Diffusion family: picked from the pipeline and
from its saved folder, bit for bit at 1, 2 and 4 steps, forks bit-exact at every step (LCMScheduler draws
fresh noise each step from the run's generator), w embedded (one branch; a negative prompt ignored with a
notice), the scheduler's ``denoised`` at ``step.denoised`` beside x̂0, trace files, widgets, conventions."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler

from diffexplain import Explainer, Trace
from diffexplain.families import (
    StableDiffusion,
    family_for_class_name,
    family_for_pipeline,
    supported_pipelines,
)
from diffexplain.hooks import Hook
from diffexplain.widgets import (
    AttentionMaps,
    ForwardProcess,
    GuidanceLab,
    NoiseLab,
    PromptSwap,
    StepExplorer,
    TracePlayer,
)
from tests.conftest import PROMPT
from tests.tiny_parts import SD_SCHEDULER_CONFIG, tiny_parts, tiny_unet


@pytest.fixture(scope="module")
def pipe() -> LatentConsistencyModelPipeline:
    parts = tiny_parts()
    parts["unet"] = tiny_unet(time_cond_proj_dim=8)
    parts["scheduler"] = LCMScheduler.from_config(SD_SCHEDULER_CONFIG)
    pipe = LatentConsistencyModelPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def pipeline_latents(pipe, prompt, steps: int, seed: int, w: float = 8.5) -> torch.Tensor:
    return pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=w,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


def test_the_pipeline_and_its_folder_are_picked(pipe, ex, tmp_path):
    assert family_for_pipeline(pipe) is StableDiffusion and isinstance(ex.family, StableDiffusion)
    assert StableDiffusion.pipeline_classes() == ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")
    assert family_for_class_name("LatentConsistencyModelPipeline") is StableDiffusion
    assert family_for_class_name("NoSuchPipeline") is None
    assert (
        "StableDiffusionPipeline or LatentConsistencyModelPipeline (Stable Diffusion" in supported_pipelines()
    )
    # LatentConsistencyModelPipeline's own defaults: 4 steps, w = 8.5
    assert (ex.family.default_steps, ex.family.default_guidance_scale) == (4, 8.5)
    pipe.save_pretrained(tmp_path / "lcm")
    loaded = Explainer.from_pretrained(tmp_path / "lcm", progress=False)
    assert isinstance(loaded.family, StableDiffusion) and isinstance(loaded.scheduler, LCMScheduler)
    assert loaded.family.guidance_distilled()
    trace = loaded.run(PROMPT, seed=1, decode=False)
    assert len(trace) == 4 and trace.settings["guidance_scale"] == 8.5
    torch.testing.assert_close(
        trace.final_latents, pipeline_latents(pipe, PROMPT, 4, 1), rtol=1e-5, atol=1e-5
    )  # the same weights, loaded (other alignments): float precision


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_run_equals_the_pipeline_and_forks_replay_it_at_every_step(pipe, ex, steps):
    trace = ex.run(PROMPT, num_inference_steps=steps, seed=3, decode=False)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, PROMPT, steps, 3))
    assert trace.settings["do_cfg"] is False and "step.model.uncond" not in trace.steps[0].tensors
    # the last step's x_{t−1} is LCM's denoised itself (the pipeline's latent output)
    assert torch.equal(trace["step.denoised", steps - 1], trace.final_latents)
    for k in range(steps):
        forked = ex.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        assert torch.equal(forked["step.denoised", steps - 1], trace["step.denoised", steps - 1])
    # each step but the last draws fresh noise from the run's generator: another seed, another picture
    other = ex.run(PROMPT, num_inference_steps=steps, seed=4, decode=False)
    assert not torch.equal(other.final_latents, trace.final_latents)


def test_batch_of_two_equals_the_pipeline(pipe, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(prompts, num_inference_steps=2, seed=5, decode=False)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, prompts, 2, 5))
    assert trace["step.denoised"].shape == (2, 2, 4, 8, 8)


def test_denoised_is_the_boundary_condition_on_x0(ex):
    trace = ex.run(PROMPT, num_inference_steps=4, seed=0, decode=False)
    scheduler = LCMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    for i in range(4):
        t = int(trace.steps[i].timestep)
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        expected = c_out * trace["step.pred_x0", i] + c_skip * trace["step.latents", i]
        torch.testing.assert_close(trace["step.denoised", i], expected, rtol=1e-5, atol=1e-6)
    # at LCM's timesteps c_skip ≈ 0 and c_out ≈ 1: denoised ≈ x̂0, but not the same tensor
    assert not torch.equal(trace["step.denoised", 0], trace["step.pred_x0", 0])
    names = [p.name for p in trace.hook_points]
    assert names.index("step.pred_x0") < names.index("step.denoised") < names.index("step.next")


def test_replacing_denoised_moves_the_next_latents(ex):
    plain = ex.run(PROMPT, num_inference_steps=4, seed=2, decode=False)
    same = ex.run(
        PROMPT,
        num_inference_steps=4,
        seed=2,
        decode=False,
        hooks={"step.denoised": lambda x, *, ctx: x.clone()},
    )
    assert torch.equal(same.final_latents, plain.final_latents) and len(same.replacements) == 4
    zero = ex.run(
        PROMPT,
        num_inference_steps=4,
        seed=2,
        decode=False,
        hooks=[Hook("step.denoised", lambda x, *, ctx: torch.zeros_like(x), steps=[3])],
    )
    assert float(zero.final_latents.abs().max()) == 0.0  # at the last step x_{t−1} = denoised
    assert torch.equal(zero["step.latents", 3], plain["step.latents", 3])
    with pytest.raises(ValueError, match=r"step\.denoised"):
        ex.run(PROMPT, num_inference_steps=2, seed=2, hooks={"step.denoised": lambda x, *, ctx: x[:, :2]})
    # a fork with the hook from step 1 equals the hooked run
    hook = [Hook("step.denoised", lambda x, *, ctx: x * 0.5, steps=[1])]
    hooked = ex.run(PROMPT, num_inference_steps=4, seed=2, decode=False, hooks=hook)
    assert torch.equal(ex.fork(plain, 1, hooks=hook).final_latents, hooked.final_latents)


def test_w_is_an_input_and_a_negative_prompt_is_ignored_with_a_notice(pipe):
    ex = Explainer.from_pipeline(pipe, progress=False)
    low = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, decode=False)
    high = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=8.5, decode=False)
    assert low.settings["do_cfg"] is False and high.settings["do_cfg"] is False  # one branch either way
    with pytest.raises(KeyError, match="guidance-distilled .* no unconditional branch"):
        high["step.model.uncond", 0]
    assert not torch.equal(low.final_latents, high.final_latents)
    assert torch.equal(low.final_latents, pipeline_latents(pipe, PROMPT, 2, 0, w=1.0))
    with pytest.warns(UserWarning, match="guidance-distilled .* negative_prompt is ignored"):
        negative = ex.run(PROMPT, negative_prompt="blue", num_inference_steps=2, seed=0, decode=False)
    assert torch.equal(negative.final_latents, high.final_latents)
    conventions = high.conventions
    assert conventions["guidance_formula"] == "one branch; w enters as timestep_cond = embedding(w − 1)"
    assert "guidance is embedded" in conventions["notes"] and conventions["guidance_scale"] == 8.5
    assert conventions["prediction"] == "epsilon"
    # x̂0 of the last step is the picture LCM returns, to float precision (c_skip ≈ 0 there)
    torch.testing.assert_close(high["step.pred_x0", 1], high.final_latents, rtol=1e-3, atol=1e-3)


def test_trace_files_keep_denoised(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=3, seed=6)
    path = tmp_path / "lcm.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.hook_names == trace.hook_names and "step.denoised" in loaded.hook_names
    assert loaded.settings["scheduler"]["class"] == "LCMScheduler"
    assert torch.equal(loaded["step.denoised"], trace["step.denoised"])
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_open_an_lcm_trace(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=4, seed=0)
    explorer = StepExplorer(trace)
    assert errors(explorer) == ""
    explorer.slider.value = 3
    assert errors(explorer) == ""
    path = tmp_path / "lcm.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    assert errors(AttentionMaps(trace)) == "" and trace.steps[0].attention
    page = trace.to_html(tmp_path / "page.html")
    assert "noise" in page.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="GuidanceLab .* this model is guidance-distilled"):
        GuidanceLab(ex, PROMPT, num_inference_steps=2)
    for widget in (
        NoiseLab(ex, PROMPT, num_inference_steps=2),
        PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=2),
        ForwardProcess(ex),
    ):
        assert isinstance(widget, W.Widget) and errors(widget) == "", type(widget).__name__


def test_only_the_sd_family_serves_the_lcm_pipeline():
    from diffexplain.families import FAMILIES, supported_pipelines

    serving = [
        name for name, f in FAMILIES.items() if "LatentConsistencyModelPipeline" in f.pipeline_classes()
    ]
    assert serving == ["sd"]
    assert supported_pipelines().count("LatentConsistencyModelPipeline") == 1
