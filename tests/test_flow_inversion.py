"""Flow reversal (SD3, Flux): the flow ODE run backwards with Euler through the loop, as a trace; one
reversal step undone exactly by its own velocity; reconstruction by flow-matching Euler within measured
bounds on tiny parts, first order in the step; forks and trace files."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffexplain import Explainer, Trace
from diffexplain.flow_inversion import FlowMatchEulerInverseScheduler
from diffexplain.inversion import ERROR_SCALAR, reconstruct
from tests.conftest import PROMPT
from tests.tiny_families import (
    FLUX_MAX_SEQUENCE_LENGTH,
    SD3_MAX_SEQUENCE_LENGTH,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
)

SD3 = {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}
FLUX = {"max_sequence_length": FLUX_MAX_SEQUENCE_LENGTH}


def picture(seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd3() -> Explainer:
    return Explainer.from_pipeline(tiny_sd3_pipeline(), progress=False)


def test_the_reversal_runs_euler_up_the_reversed_schedule(sd3):
    before = sd3.scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "starts from pure noise" warning: it starts from x0
        inversion = sd3.invert(picture(), PROMPT, num_inference_steps=8, **SD3)
    assert sd3.scheduler is before
    assert inversion.settings["scheduler"]["class"] == "FlowMatchEulerInverseScheduler"
    with torch.no_grad():  # x0 = (posterior mean − shift_factor) · scaling_factor
        x0 = sd3.family.vae_adapter().encode(picture() * 2 - 1)
    assert torch.equal(inversion["latents.init"], x0)

    # σ' is the forward schedule reversed: 0 = σ_N, σ_{N−1}, ..., σ_0 = 1
    forward = type(sd3.scheduler).from_config(sd3.scheduler.config)
    sd3.family.set_timesteps(forward, 8, 16, 16)
    sigmas = forward.sigmas.flip(0)
    assert [r.timestep for r in inversion.steps] == [float(t) for t in sigmas[:-1] * 1000]
    assert [-r.level.b for r in inversion.steps] == pytest.approx(sigmas[:-1].tolist())  # x̂0 = x − σ·v

    # each step by hand, x_{σ'_{j+1}} = x_{σ'_j} + (σ'_{j+1} − σ'_j)·v̂, and undone exactly by the same v̂
    for j in range(8):
        x, v = inversion["step.latents", j], inversion["step.guidance", j]
        step = sigmas[j + 1] - sigmas[j]
        assert torch.equal(inversion["step.next", j], x + step * v), j
        torch.testing.assert_close(inversion["step.next", j] - step * v, x, rtol=0, atol=1e-6)
    assert torch.equal(inversion.final_latents, inversion["step.next", 7])


def test_the_reconstruction_is_a_flow_euler_run_from_x1(sd3):
    inversion = sd3.invert(picture(), PROMPT, num_inference_steps=6, **SD3)
    rebuilt = reconstruct(sd3, inversion)
    trace = rebuilt.trace
    assert trace.settings["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    assert [r.timestep for r in trace.steps][1:] == [r.timestep for r in inversion.steps][:0:-1]
    assert [r.scalars[ERROR_SCALAR] for r in trace.steps] == list(rebuilt.errors)
    plain = sd3.set_scheduler("flow_euler").run(
        PROMPT, latents=inversion.final_latents, num_inference_steps=6, guidance_scale=1.0, height=16,
        width=16, **SD3,
    )  # fmt: skip
    assert torch.equal(plain.final_latents, trace.final_latents)


# Measured on tiny SD3 (random weights, seeded), picture(0), w = 1: ‖x0_rec − x0‖ / ‖x0‖ = 0.0358 at 28 steps,
# 0.0199 at 50, 0.0099 at 100: e·N ≈ 1, first order in the step, as Euler's O(Δσ) mismatch per step. Tiny
# Flux: 0.303 at 28, 0.172 at 50, 0.087 at 100 (e·N ≈ 8.6: a less smooth velocity field). Bounds a little above.
@pytest.mark.parametrize(
    ("family", "steps", "bound"), [("sd3", 28, 0.04), ("sd3", 56, 0.022), ("flux", 50, 0.19)]
)
def test_reconstruction_error_is_within_the_measured_bound_and_first_order(family, steps, bound):
    pipe, options = (tiny_sd3_pipeline(), SD3) if family == "sd3" else (tiny_flux_pipeline(), FLUX)
    explainer = Explainer.from_pipeline(pipe, progress=False)
    rebuilt = reconstruct(
        explainer, explainer.invert(picture(), PROMPT, num_inference_steps=steps, **options)
    )
    assert rebuilt.final_error < bound
    assert max(rebuilt.errors) == rebuilt.final_error  # it grows towards x0
    if family == "sd3":  # first order: N · e stays near 1
        assert 0.9 < steps * rebuilt.final_error < 1.1


def test_a_flow_reversal_forks_and_round_trips(sd3, tmp_path):
    inversion = sd3.invert(picture(1), PROMPT, num_inference_steps=6, **SD3)
    for k in (0, 3, 5):
        assert torch.equal(sd3.fork(inversion, k).final_latents, inversion.final_latents)
    path = tmp_path / "reversal.safetensors"
    inversion.save(path)
    loaded = Trace.load(path, explainer=sd3)
    assert loaded.run_settings == inversion.run_settings
    assert torch.equal(sd3.fork(loaded, 2).final_latents, inversion.final_latents)
    assert torch.equal(
        reconstruct(sd3, loaded).trace.final_latents, reconstruct(sd3, inversion).trace.final_latents
    )


def test_the_inverse_scheduler_reverses_flux_s_own_schedule():
    explainer = Explainer.from_pipeline(tiny_flux_pipeline(), progress=False)
    inversion = explainer.invert(picture(), PROMPT, num_inference_steps=5, **FLUX)
    assert inversion.settings["options"]["embedded_guidance"] == 3.5
    forward = type(explainer.scheduler).from_config(explainer.scheduler.config)
    explainer.family.set_timesteps(forward, 5, 16, 16)
    inverse = FlowMatchEulerInverseScheduler.from_config(explainer.scheduler.config)
    explainer.family.set_timesteps(inverse, 5, 16, 16)
    assert torch.equal(inverse.sigmas, forward.sigmas.flip(0))
    assert [r.timestep for r in inversion.steps] == [float(t) for t in inverse.timesteps]
