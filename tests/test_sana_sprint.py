"""SANA-Sprint through the same loop: parity with SanaSprintPipeline bit for bit at 1 to 4 steps (attention
maps on, w embedded, a batch of two), forks at every step, x̂0 of every step a picture and the last one the
final latents exactly, the TrigFlow conventions, maps from attn2 with norms across heads, trace files,
the pick against SANA, and the widgets."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers import SanaSprintPipeline

from diffexplain import Explainer, Trace
from diffexplain.attention import edits
from diffexplain.families import Sana, SanaSprint, family_for_pipeline
from diffexplain.widgets import AttentionMaps, NoiseLab, PromptSwap, StepExplorer, TracePlayer
from tests.tiny_sana import (
    SANA_MAX_SEQUENCE_LENGTH,
    tiny_sana_parts,
    tiny_sana_sprint_parts,
    tiny_sana_sprint_pipeline,
)

PROMPT = "A Red cube on the left"
SIZE = 32  # latents [B, 4, 8, 8]
SIGMA_DATA = 0.5  # SCMScheduler's σ_d: the trace holds the scheduler's latents, σ_d·x
OPTIONS = {"max_sequence_length": SANA_MAX_SEQUENCE_LENGTH}


@pytest.fixture(scope="module")
def pipe() -> SanaSprintPipeline:
    return tiny_sana_sprint_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def pipeline_latents(pipe: SanaSprintPipeline, prompt, seed: int, steps: int, **kwargs) -> torch.Tensor:
    """SanaSprintPipeline's final latents (denoised / σ_d); its intermediate timestep exists at 2 steps only."""
    return pipe(
        prompt,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        height=SIZE,
        width=SIZE,
        use_resolution_binning=False,
        intermediate_timesteps=1.3 if steps == 2 else None,
        **OPTIONS,
        **kwargs,
    ).images


@pytest.mark.parametrize(("steps", "w"), [(1, 4.5), (2, 4.5), (2, 1.0), (4, 7.0)])
def test_run_equals_the_pipeline_and_every_fork_replays_it(pipe, ex, steps, w):
    trace = ex.run(PROMPT, num_inference_steps=steps, guidance_scale=w, seed=3, decode=False, **OPTIONS)
    assert trace.steps[0].attention and len(trace) == steps
    # the trace holds the scheduler's latents: the pipeline's output times σ_d (a power of two: exact)
    assert torch.equal(
        trace.final_latents, pipeline_latents(pipe, PROMPT, 3, steps, guidance_scale=w) * SIGMA_DATA
    )
    assert trace.settings["do_cfg"] is False and "uncond" not in trace.conditioning  # w is an input
    # SCMScheduler's last step lands on its x̂0 (t' = 0): the last x̂0 is the final latents, bit for bit
    assert torch.equal(trace["step.pred_x0", steps - 1], trace.final_latents)
    for k in range(steps):
        assert torch.equal(ex.fork(trace, k).final_latents, trace.final_latents), k


def test_a_batch_the_schedule_and_w_as_an_input(pipe, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(prompts, num_inference_steps=2, seed=1, decode=False, **OPTIONS)
    assert torch.equal(trace.final_latents, pipeline_latents(pipe, prompts, 1, 2) * SIGMA_DATA)
    assert [round(s.timestep, 4) for s in trace.steps] == [1.5708, 1.3]  # the end point 0 is not run
    four = ex.run(PROMPT, num_inference_steps=4, seed=1, decode=False, **OPTIONS)
    assert [round(s.timestep, 4) for s in four.steps] == [1.5708, 1.1781, 0.7854, 0.3927]
    low = ex.run(PROMPT, num_inference_steps=2, seed=1, guidance_scale=1.0, decode=False, **OPTIONS)
    assert not torch.equal(
        low.final_latents,
        ex.run(PROMPT, num_inference_steps=2, seed=1, decode=False, **OPTIONS).final_latents,
    )
    # x̂0 = cos t·x_t − sin t·F at every step
    level = ex.family.noise_level(ex.scheduler, torch.tensor(1.3))
    x0 = level.a * trace["step.latents", 1] + level.b * trace["step.guidance", 1]
    torch.testing.assert_close(trace["step.pred_x0", 1], x0, rtol=0, atol=1e-6)
    # at t = 1.5708 ≈ π/2, cos t ≈ 0: the first x̂0 is −F alone, the model's picture from pure noise
    first = ex.family.noise_level(ex.scheduler, torch.tensor(1.5708))
    assert abs(first.a) < 1e-5 and first.b == pytest.approx(-1.0)
    torch.testing.assert_close(trace["step.pred_x0", 0], -trace["step.guidance", 0], rtol=0, atol=1e-4)


def test_conventions_files_maps_and_the_pick(pipe, ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    conventions = trace.conventions
    assert (
        conventions["prediction"] == "trigflow" and "cos t·x_t − sin t·F" in conventions["prediction_meaning"]
    )
    assert conventions["model_time"].startswith("s = sin t/(sin t + cos t)")
    assert (
        "guidance_embeds_scale" in conventions["guidance_formula"]
        and conventions["pipeline_guidance_scale"] == 4.5
    )
    assert trace["decode.image"].shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(
        trace["decode.image"], ex.family.vae_adapter().decode(trace.final_latents / SIGMA_DATA)
    )
    # maps from attn2 (SanaAttnProcessor2_0 with norms across heads), one per kept text position
    assert [layer.name for layer in ex.family.attention_layers()] == [
        "transformer_blocks.0.attn2",
        "transformer_blocks.1.attn2",
    ]
    maps = trace.attention_maps()
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **OPTIONS)
    assert not torch.equal(gone.final_latents, trace.final_latents) and gone.attention("red").abs().max() == 0
    path = tmp_path / "sprint.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert loaded.settings["scheduler"]["class"] == "SCMScheduler" and loaded.conventions == conventions
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)
    # SANA and SANA-Sprint have the same part names: the guidance embedding tells them apart
    assert family_for_pipeline(pipe) is SanaSprint
    parts = tiny_sana_sprint_parts()
    built = Explainer(scheduler=parts.pop("scheduler"), progress=False, **parts)
    assert isinstance(built.family, SanaSprint) and built.scheduler_names == ("scm",)
    sana = tiny_sana_parts()
    assert isinstance(Explainer(scheduler=sana.pop("scheduler"), progress=False, **sana).family, Sana)
    pipe.save_pretrained(tmp_path / "sprint")
    assert isinstance(Explainer.from_pretrained(tmp_path / "sprint", progress=False).family, SanaSprint)


def texts(widget: W.Widget) -> str:
    found = [widget.value] if isinstance(widget, W.HTML) else []
    for child in getattr(widget, "children", ()):
        found.append(texts(child))
    return " ".join(found)


def errors(widget) -> str:
    return "".join(o.get("text", "") for o in widget.output.outputs)


def test_widgets_open_a_sprint_trace(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    explorer = StepExplorer(trace)
    assert errors(explorer) == "" and "the transformer" in texts(explorer)
    path = tmp_path / "sprint.safetensors"
    trace.save(path)
    assert errors(TracePlayer(Trace.load(path))) == ""
    assert errors(AttentionMaps(trace)) == ""
    page = tmp_path / "page.html"
    trace.to_html(page)
    assert page.stat().st_size > 0
    assert errors(NoiseLab(ex, PROMPT, num_inference_steps=2)) == ""
    assert errors(PromptSwap(ex, PROMPT, "a blue square", num_inference_steps=2)) == ""
