"""DDIM inversion: the backward run (DDIMInverseScheduler) as a trace, for ε and v models; a DDIM run from
its x_T reconstructs the picture, with a measured bound on the embedded default model at 50 steps."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffexplain import Explainer, Trace, load_default
from diffexplain.inversion import ERROR_SCALAR, reconstruct
from tests.conftest import PROMPT
from tests.tiny_families import tiny_sdxl_parts


def picture(seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_inversion_runs_ddim_backwards_and_the_reconstruction_forwards(parts, parts_v, prediction):
    explainer = Explainer(**(parts if prediction == "epsilon" else parts_v), progress=False)
    before = explainer.scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "starts from pure noise" warning: it starts from x0
        inversion = explainer.invert(picture(), PROMPT, num_inference_steps=10)
    assert explainer.scheduler is before  # the explainer keeps its scheduler
    assert inversion.settings["scheduler"]["class"] == "DDIMInverseScheduler"
    timesteps = [r.timestep for r in inversion.steps]
    assert timesteps == sorted(timesteps) and len(timesteps) == 10  # t rises: x0 → x_T
    with torch.no_grad():  # the posterior's mean · scaling_factor
        x0 = explainer.family.vae_adapter().encode(picture() * 2 - 1)
    assert torch.equal(inversion["latents.init"], x0)

    # one backward DDIM step, by hand: x_{t_j} = √ᾱ_{t_j}·x̂0 + √(1 − ᾱ_{t_j})·ε̂, from the level t_j − r
    scheduler = type(explainer.scheduler).from_config(explainer.scheduler.config)
    alphas = scheduler.alphas_cumprod
    j = 3
    x, out = inversion["step.latents", j], inversion["step.guidance", j]
    t, r = int(inversion.steps[j].timestep), 1000 // 10
    a_from, a_to = alphas[t - r], alphas[t]
    if prediction == "epsilon":
        pred_x0, eps = (x - (1 - a_from).sqrt() * out) / a_from.sqrt(), out
    else:
        pred_x0 = a_from.sqrt() * x - (1 - a_from).sqrt() * out
        eps = a_from.sqrt() * out + (1 - a_from).sqrt() * x
    torch.testing.assert_close(inversion["step.pred_x0", j], pred_x0)
    torch.testing.assert_close(inversion["step.next", j], a_to.sqrt() * pred_x0 + (1 - a_to).sqrt() * eps)

    rebuilt = reconstruct(explainer, inversion)
    trace = rebuilt.trace
    assert trace.settings["scheduler"]["class"] == "DDIMScheduler"
    assert [r.timestep for r in trace.steps] == timesteps[::-1]  # the same levels, downwards
    assert torch.equal(trace.steps[0].restart.latents, inversion.final_latents)
    assert len(rebuilt.errors) == 10 and all(e >= 0 for e in rebuilt.errors)
    assert [r.scalars[ERROR_SCALAR] for r in trace.steps] == list(rebuilt.errors)
    final = float((trace.final_latents - x0).norm() / x0.norm())
    assert rebuilt.final_error == pytest.approx(final)
    plain = explainer.set_scheduler("ddim").run(  # the same run as a plain DDIM run from x_T
        PROMPT,
        latents=inversion.final_latents,
        num_inference_steps=10,
        guidance_scale=1.0,
        height=16,
        width=16,
    )
    assert torch.equal(plain.final_latents, trace.final_latents)


def test_an_inversion_trace_forks_and_round_trips(explainer, tmp_path):
    inversion = explainer.invert(picture(1), PROMPT, num_inference_steps=6)
    for k in (0, 3, 5):
        assert torch.equal(explainer.fork(inversion, k).final_latents, inversion.final_latents)
    path = tmp_path / "inversion.safetensors"
    inversion.save(path)
    loaded = Trace.load(path, explainer=explainer)
    assert loaded.run_settings == inversion.run_settings
    assert torch.equal(
        reconstruct(explainer, loaded).trace.final_latents,
        reconstruct(explainer, inversion).trace.final_latents,
    )


def test_inversion_refuses_other_families_and_other_traces(explainer):
    sdxl = Explainer(**tiny_sdxl_parts(), progress=False)
    with pytest.raises(ValueError, match=r"invert: inversion is for the Stable Diffusion 1.x / 2.x .* SD3"):
        sdxl.invert(picture(), PROMPT, num_inference_steps=2)
    plain = explainer.run(PROMPT, num_inference_steps=2, seed=0)
    with pytest.raises(ValueError, match=r"reconstruct: pass the finished trace of explainer.invert"):
        reconstruct(explainer, plain)


# ---- the embedded default model: a measured bound --------------------------------------------------------
# DDIM at 50 steps, w = 1, on a picture the model drew (64×64): measured ‖x0_rec − x0‖ / ‖x0‖ = 0.0891, the
# largest per-step error 0.126 (mid-way; it shrinks towards x0). The bounds sit a little above.
FINAL_BOUND, STEP_BOUND = 0.10, 0.14


@pytest.fixture(scope="module")
def default_model() -> Explainer:
    return load_default(progress=False)


def test_the_default_model_reconstructs_a_picture_within_the_measured_bound(default_model):
    prompt = "a red circle on the left"
    image = default_model.run(prompt, seed=0, num_inference_steps=25).images[0]
    inversion = default_model.invert(image, prompt, num_inference_steps=50)
    rebuilt = reconstruct(default_model, inversion)
    assert rebuilt.final_error < FINAL_BOUND
    assert max(rebuilt.errors) < STEP_BOUND
    guided = reconstruct(
        default_model, default_model.invert(image, prompt, num_inference_steps=50, guidance_scale=3.0)
    )
    assert guided.final_error > 3 * rebuilt.final_error  # guidance breaks the symmetry (null-text's problem)
