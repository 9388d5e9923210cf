"""Schedule curves come from diffusers; the closed-form forward process has the right mean and variance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from diffexplain.schedules import BETA_SCHEDULES, add_noise, noise_scheduler, schedule_curves


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_curves_are_diffusers_own(name):
    curves = schedule_curves(name)
    reference = DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012)
    assert torch.equal(curves.betas, reference.betas)
    assert torch.equal(curves.alphas_cumprod, reference.alphas_cumprod)
    assert torch.allclose(curves.snr, curves.alphas_cumprod / (1 - curves.alphas_cumprod))
    assert bool((curves.snr[1:] < curves.snr[:-1]).all())  # SNR falls with t
    assert torch.allclose(curves.log_snr.exp(), curves.snr, rtol=1e-5)


@pytest.mark.parametrize("name", ["scaled_linear", "squaredcos_cap_v2"])
def test_forward_process_mean_and_variance(name):
    curves = schedule_curves(name)
    generator = torch.Generator().manual_seed(0)
    for t in (10, 500, 990):
        x0 = torch.full((20000, 1), 0.8)
        xt = add_noise(x0, t, schedule=name, generator=generator)
        alpha_bar = float(curves.alphas_cumprod[t])
        assert float(xt.mean()) == pytest.approx(0.8 * alpha_bar**0.5, abs=0.02)
        assert float(xt.var()) == pytest.approx(1 - alpha_bar, abs=0.03)


def test_add_noise_with_given_noise_and_per_sample_t():
    scheduler = noise_scheduler("linear", beta_start=0.0001, beta_end=0.02)
    x0, noise = torch.ones(2, 3), torch.zeros(2, 3)
    xt = add_noise(x0, torch.tensor([0, 999]), schedule=scheduler, noise=noise)
    sqrt_ab = scheduler.alphas_cumprod[[0, 999]].sqrt()
    assert torch.allclose(xt[:, 0], sqrt_ab)
    with pytest.raises(ValueError, match="t must be in"):
        add_noise(x0, 1000)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        schedule_curves("cosine")
