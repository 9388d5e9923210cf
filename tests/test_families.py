"""SDXL and SD3 through the same loop: parity with the diffusers pipelines per scheduler, CFG on and off,
bit-exact forks, their own hook points, hooks, re-guiding, interventions and trace files."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Explainer, Trace, interventions
from diffexplain.families import StableDiffusion3, StableDiffusionXL
from diffexplain.scheduler_state import FLOW_SCHEDULER_NAMES, SCHEDULER_NAMES, scheduler_by_name
from tests.conftest import PROMPT
from tests.tiny_families import SD3_MAX_SEQUENCE_LENGTH, tiny_sd3_pipeline, tiny_sdxl_pipeline

STEPS = 4
FAMILY_SCHEDULERS = [("sdxl", name) for name in SCHEDULER_NAMES] + [
    ("sd3", name) for name in FLOW_SCHEDULER_NAMES
]


@pytest.fixture(scope="module")
def pipes() -> dict:
    """The tiny SDXL and SD3 pipelines (shared: tests swap schedulers on their own Explainers only)."""
    return {"sdxl": tiny_sdxl_pipeline(), "sd3": tiny_sd3_pipeline()}


def options(family: str) -> dict:
    return {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH} if family == "sd3" else {}


def pipeline_latents(pipe, scheduler, guidance_scale: float, seed: int, **kwargs) -> torch.Tensor:
    template = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        return pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **kwargs,
        ).images
    finally:
        pipe.scheduler = template


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
@pytest.mark.parametrize(("family", "scheduler_name"), FAMILY_SCHEDULERS)
def test_run_equals_the_pipeline_and_a_fork_replays_it(pipes, family, scheduler_name, guidance_scale):
    pipe = pipes[family]
    explainer = Explainer.from_pipeline(pipe, progress=False).set_scheduler(scheduler_name)
    trace = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        seed=3,
        decode=False,
        **options(family),
    )
    scheduler = scheduler_by_name(scheduler_name, pipe.scheduler.config, explainer.family.scheduler_names)
    expected = pipeline_latents(pipe, scheduler, guidance_scale, 3, **options(family))
    assert torch.equal(trace.final_latents, expected)
    assert trace.settings["do_cfg"] is (guidance_scale > 1)
    for k in sorted({0, len(trace) // 2, len(trace) - 1}):
        forked = explainer.fork(trace, k)
        assert torch.equal(forked.final_latents, trace.final_latents), k
        for i in range(k, len(trace)):
            assert torch.equal(forked["step.guidance", i], trace["step.guidance", i])


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_negative_prompt_and_batch_equal_the_pipeline(pipes, family):
    pipe = pipes[family]
    explainer = Explainer.from_pipeline(pipe, progress=False)
    prompts = [PROMPT, "a blue circle"]
    trace = explainer.run(
        prompts,
        negative_prompt=["green", "red"],
        num_inference_steps=STEPS,
        seed=1,
        **options(family),
    )
    expected = pipe(
        prompts,
        negative_prompt=["green", "red"],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
        **options(family),
    ).images
    assert torch.equal(trace.final_latents, expected)
    assert trace["step.pred_x0"].shape[:2] == (STEPS, 2)


def test_sdxl_has_pooled_embeddings_and_time_ids_as_hook_points(pipes):
    explainer = Explainer.from_pipeline(pipes["sdxl"], progress=False)
    assert isinstance(explainer.family, StableDiffusionXL)
    names = [p.name for p in explainer.hook_points()]
    for name in (
        "prompt.pooled.cond",
        "prompt.pooled.uncond",
        "prompt.time_ids.cond",
        "prompt.time_ids.uncond",
    ):
        assert name in names
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, original_size=(32, 32))
    assert trace["prompt.time_ids.cond"].tolist() == [[32.0, 32.0, 0.0, 0.0, 16.0, 16.0]]
    assert trace["prompt.pooled.cond"].shape == (1, 48) and trace["prompt.cond"].shape == (1, 16, 80)
    # the micro-conditioning is a real input: another original size changes the picture
    plain = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    assert not torch.equal(plain.final_latents, trace.final_latents)
    # the pooled embedding is a hook point like any other: here the prompt's is zeroed
    swap = explainer.run(
        PROMPT,
        num_inference_steps=2,
        seed=0,
        hooks={"prompt.pooled.cond": lambda x, *, ctx: torch.zeros_like(x)},
    )
    assert [r.name for r in swap.replacements] == ["prompt.pooled.cond"]
    assert not torch.equal(swap.final_latents, plain.final_latents)
    with pytest.raises(ValueError, match="original_size must be two whole numbers"):
        explainer.run(PROMPT, num_inference_steps=1, seed=0, original_size=(32,))


def test_sd3_outputs_are_velocities_and_x0_follows_the_flow(pipes):
    explainer = Explainer.from_pipeline(pipes["sd3"], progress=False)
    assert isinstance(explainer.family, StableDiffusion3) and explainer.family.output_kind == "velocity"
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=2, **options("sd3"))
    for i, record in enumerate(trace.steps):
        sigma = float(explainer.family.pipeline.scheduler.sigmas[0]) if i == 0 else None
        if sigma is not None:
            assert record.level.b == -1.0  # σ = 1 at the first step: x̂0 = x_t − v
        expected = trace["step.latents", i] + record.level.b * trace["step.guidance", i]
        assert torch.allclose(trace["step.pred_x0", i], expected)
        assert record.level.a == 1.0 and -1.0 <= record.level.b <= 0.0
    assert trace.settings["prediction_type"] == "flow"
    assert "prompt.pooled.cond" in trace.hook_names and trace["prompt.cond"].shape == (1, 16 + 16, 96)
    with pytest.raises(ValueError, match="max_sequence_length must be between 1 and 512"):
        explainer.run(PROMPT, num_inference_steps=1, seed=0, max_sequence_length=0)
    with pytest.raises(AttributeError, match="no U-Net but a transformer"):
        explainer.unet  # noqa: B018


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_hooks_reguide_interventions_and_files(pipes, family, tmp_path):
    explainer = Explainer.from_pipeline(pipes[family], progress=False)
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, seed=5, guidance_scale=4.0, **options(family))
    # re-guiding from the cached branches needs no model call and matches the loop at the same w
    assert torch.equal(trace.reguide(1, 4.0).eps_guided, trace["step.guidance", 1])
    # an intervention changes the run from its step on; a fork with it equals a run with it
    hooked = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=5,
        guidance_scale=4.0,
        hooks=[interventions.cfg_off(steps=[2, 3])],
        **options(family),
    )
    assert torch.equal(hooked["step.guidance", 2], hooked["step.model.cond", 2])
    forked = explainer.fork(trace, 2, hooks=[interventions.cfg_off(steps=[2, 3])])
    assert torch.equal(forked.final_latents, hooked.final_latents)
    # a wrong replacement is refused with the hook, the point and both shapes
    with pytest.raises(
        ValueError, match=r"at 'step.latents' \(step 0\) returned a tensor with the wrong shape"
    ):
        explainer.run(
            PROMPT,
            num_inference_steps=1,
            seed=0,
            hooks={"step.latents": lambda x, *, ctx: x[0]},
            **options(family),
        )
    # a trace file keeps the family's names and conditioning, and forks bit for bit with its Explainer
    path = tmp_path / f"{family}.safetensors"
    trace.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.hook_names == trace.hook_names
    assert loaded.conditioning.keys() == trace.conditioning.keys()
    assert torch.equal(loaded["prompt.pooled.cond"], trace["prompt.pooled.cond"])
    assert torch.equal(explainer.fork(loaded, 1).final_latents, trace.final_latents)
    # a fork with a new prompt re-encodes every conditioning tensor of the cond branch
    changed = explainer.fork(trace, 1, prompt="a green triangle")
    assert not torch.equal(changed["prompt.pooled.cond"], trace["prompt.pooled.cond"])


def test_a_trace_forks_only_with_an_explainer_of_its_family(pipes, explainer):
    sd3 = Explainer.from_pipeline(pipes["sd3"], progress=False)
    trace = sd3.run(PROMPT, num_inference_steps=2, seed=0, **options("sd3"))
    with pytest.raises(
        ValueError, match="made by a Stable Diffusion 3 model.*holds a Stable Diffusion 1.x / 2.x"
    ):
        explainer.fork(trace, 1)


def test_from_pretrained_picks_the_family(pipes, tmp_path):
    pipes["sdxl"].save_pretrained(tmp_path / "sdxl")
    loaded = Explainer.from_pretrained(tmp_path / "sdxl", progress=False)
    assert loaded.family.name == "sdxl"
    a = Explainer.from_pipeline(pipes["sdxl"], progress=False).run(
        PROMPT, num_inference_steps=2, seed=0, decode=False
    )
    b = loaded.run(PROMPT, num_inference_steps=2, seed=0, decode=False)
    # the same weights, but loaded tensors may sit at other alignments, so CPU kernels may round
    # differently in the last bits (seen on the pooled text embedding): equal to float precision
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=1e-5, atol=1e-5)
