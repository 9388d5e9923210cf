"""Trace indexing, stacking, keep/store_dtype, memory figures, re-guiding, images, repr and devices."""

from __future__ import annotations

import pytest
import torch

from diffexplain import HOOK_NAMES, TraceKeyError
from tests.conftest import PROMPT

STEPS = 3


@pytest.fixture(scope="module")
def trace(parts):
    from diffexplain import Explainer

    return (
        Explainer(**parts, progress=False)
        .set_scheduler("ddim")
        .run(PROMPT, num_inference_steps=STEPS, seed=9)
    )


def test_indexing_and_stacking(trace):
    assert len(trace) == STEPS
    assert trace["step.pred_x0", 1].shape == (1, 4, 8, 8)
    assert trace["step.pred_x0", -1] is trace["step.pred_x0", STEPS - 1]
    stack = trace.stack("step.pred_x0")
    assert stack.shape == (STEPS, 1, 4, 8, 8)
    assert torch.equal(trace["step.pred_x0"], stack)
    assert trace["prompt.cond"].shape == (1, 16, 32)
    assert trace["decode.image"].shape == (1, 3, 16, 16)
    assert trace["step.latents", 1] is trace["step.next", 0]  # x_{t−1} of one step is x_t of the next
    assert torch.equal(trace["step.next", -1], trace.final_latents)
    assert len(trace.timesteps) == STEPS and trace.timesteps[0] > trace.timesteps[-1]
    assert all(0 < lvl.alpha_bar < 1 for lvl in trace.noise_levels)
    with pytest.raises(IndexError, match="out of range"):
        trace["step.pred_x0", STEPS]


def test_unknown_and_run_level_names(trace):
    with pytest.raises(TraceKeyError, match="Did you mean 'step.pred_x0'"):
        trace["step.predx0"]
    with pytest.raises(TraceKeyError, match="run-level"):
        trace["prompt.cond", 0]


def test_keep_and_store_dtype(explainer):
    small = explainer.run(
        PROMPT,
        num_inference_steps=STEPS,
        seed=9,
        keep=["step.pred_x0", "prompt.*"],
        store_dtype=torch.float16,
    )
    full = explainer.run(PROMPT, num_inference_steps=STEPS, seed=9)
    assert torch.equal(small.final_latents, full.final_latents)  # storage never changes the run
    assert small["step.pred_x0", 0].dtype == torch.float16
    assert set(small.steps[0].tensors) == {"step.pred_x0"}
    assert small.steps[0].restart.latents.dtype == torch.float32  # restart state stays full precision
    with pytest.raises(TraceKeyError, match="was not kept.*keep=None") as info:
        small["step.model.cond", 0]
    assert "'step.model.cond'" in str(info.value)
    assert small.memory_bytes() < full.memory_bytes()
    assert 0 < small.memory_per_step() < full.memory_per_step()
    with pytest.raises(ValueError, match="unknown hook point"):
        explainer.run(PROMPT, num_inference_steps=1, keep=["step.nope"])


def test_guidance_off_explains_missing_uncond(explainer):
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, decode=False)
    with pytest.raises(TraceKeyError, match="guidance was off"):
        trace["step.model.uncond", 0]
    with pytest.raises(TraceKeyError, match="guidance was off"):
        trace.reguide(0, 3.0)
    with pytest.raises(TraceKeyError, match="decode=False"):
        trace["decode.image"]
    with pytest.raises(ValueError, match="no decoded image"):
        _ = trace.images


def test_reguide_matches_a_real_run_without_the_unet(explainer, trace):
    ref = trace.reguide(1, 7.5)
    assert torch.allclose(ref.eps_guided, trace["step.guidance", 1])
    assert torch.allclose(ref.pred_x0, trace["step.pred_x0", 1], atol=1e-5)
    # at another scale, the step-0 re-guide equals the real run's step 0 (same x_t at step 0)
    other = explainer.run(PROMPT, num_inference_steps=STEPS, seed=9, guidance_scale=3.0)
    calls = []
    handle = explainer.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        reguided = trace.reguide(0, 3.0)
    finally:
        handle.remove()
    assert calls == []
    assert torch.allclose(reguided.eps_guided, other["step.guidance", 0], atol=1e-6)
    assert torch.allclose(reguided.pred_x0, other["step.pred_x0", 0], atol=1e-5)


def test_images_repr_and_to(trace):
    images = trace.images
    assert len(images) == 1 and images[0].size == (16, 16) and images[0].mode == "RGB"
    text = repr(trace)
    assert text.startswith("Trace(prompt='a red square on the left', steps=3, scheduler=DDIMScheduler")
    assert "complete" in text and len(text) < 300
    moved = trace.to("meta")
    assert moved["step.pred_x0", 0].device.type == "meta" and trace["step.pred_x0", 0].device.type == "cpu"
    assert len(trace.kept) == len(HOOK_NAMES)
