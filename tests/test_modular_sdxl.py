"""SDXL from Modular Diffusers: ``Explainer.from_pipeline(StableDiffusionXLModularPipeline)`` picks the
SDXL family (which also has a classic pipeline) over the modular pipeline's components, takes its guider
as the default guidance method, and equals the modular pipeline's ``output="latents"`` bit for bit (maps
on, guidance on and off, negative prompt, batch of 2, another guider); forks at every step, trace files,
conventions and the widgets."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance

from diffexplain import Explainer, Trace
from diffexplain.families import StableDiffusionXL, family_for_pipeline
from diffexplain.widgets import StepExplorer, TracePlayer
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sdxl_parts

STEPS = 3

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")


def modular_sdxl(guider=None):
    from diffusers.modular_pipelines import StableDiffusionXLModularPipeline

    pipe = StableDiffusionXLModularPipeline()
    pipe.update_components(**tiny_sdxl_parts(), **({} if guider is None else {"guider": guider}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return modular_sdxl()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


def modular_latents(pipe, prompt, seed: int, guidance_scale: float | None = None, **kwargs) -> torch.Tensor:
    before = pipe.guider.guidance_scale
    if guidance_scale is not None:
        pipe.guider.guidance_scale = guidance_scale
    try:
        return pipe(
            prompt=prompt,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output="latents",
            **kwargs,
        )
    finally:
        pipe.guider.guidance_scale = before


def test_the_modular_pipeline_is_recognised_and_gives_its_guider(pipe, ex):
    assert family_for_pipeline(pipe) is StableDiffusionXL and isinstance(ex.family, StableDiffusionXL)
    assert ex.family.model is pipe.unet  # shared, not copied
    assert isinstance(ex.defaults["guider"], ClassifierFreeGuidance)
    assert ex.defaults["guidance_scale"] == pipe.guider.guidance_scale == 7.5


CASES = [
    ("the pipeline's guider", dict(), dict()),
    ("one branch", dict(guidance_scale=1.0), dict(guidance_scale=1.0)),
    ("a negative prompt", dict(negative_prompt="a blue circle"), dict(negative_prompt="a blue circle")),
]


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_run_equals_the_modular_pipeline_and_forks_replay_it(pipe, ex, ours, theirs):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=3, decode=False, **ours)
    assert torch.equal(trace.final_latents, modular_latents(pipe, PROMPT, 3, **theirs))
    assert trace.settings["do_cfg"] is (ours.get("guidance_scale", 7.5) > 1)
    assert trace.run_settings.guider["cls"] == "ClassifierFreeGuidance"
    assert trace.attention("red").shape[0] == 1  # maps on
    for k in range(STEPS):
        assert torch.equal(ex.fork(trace, k).final_latents, trace.final_latents), k


def test_a_batch_of_two_equals_the_modular_pipeline(pipe, ex):
    prompts = [PROMPT, "a blue circle"]
    trace = ex.run(prompts, num_inference_steps=STEPS, seed=1, decode=False)
    assert torch.equal(trace.final_latents, modular_latents(pipe, prompts, 1))


def test_another_guider_on_the_modular_pipeline_is_the_default():
    pipe = modular_sdxl(
        AdaptiveProjectedGuidance(guidance_scale=6.0, adaptive_projected_guidance_momentum=-0.5)
    )
    ex = Explainer.from_pipeline(pipe, progress=False)
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=2, decode=False)
    assert trace.settings["guidance_scale"] == 6.0
    assert trace.run_settings.guider["cls"] == "AdaptiveProjectedGuidance"
    assert torch.equal(trace.final_latents, modular_latents(pipe, PROMPT, 2))
    assert torch.equal(ex.fork(trace, 1).final_latents, trace.final_latents)  # APG's momentum restored


def test_files_conventions_and_widgets(ex, tmp_path):
    trace = ex.run(PROMPT, num_inference_steps=STEPS, seed=0)
    path = tmp_path / "sdxl.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=ex)
    assert torch.equal(ex.fork(loaded, 1).final_latents, trace.final_latents)
    assert loaded.conventions["prediction"] == "epsilon" and loaded.conventions["guidance_scale"] == 7.5
    for widget in (StepExplorer(trace), TracePlayer(Trace.load(path))):
        assert isinstance(widget, W.Widget)
        assert "".join(o.get("text", "") for o in widget.output.outputs) == ""


def test_from_pretrained_of_a_saved_modular_pipeline(pipe, ex, tmp_path):
    pipe.save_pretrained(str(tmp_path / "sdxl"))  # a str: the modular save_pretrained splits it
    loaded = Explainer.from_pretrained(tmp_path / "sdxl", progress=False)
    assert isinstance(loaded.family, StableDiffusionXL) and loaded.defaults["guidance_scale"] == 7.5
    a = ex.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    # the same weights; loaded tensors may sit at other alignments (see test_families): float precision
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)
