"""Per-channel latent standardisation folded into a real diffusers AutoencoderKL."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from diffexplain.models.config import vae_config
from diffexplain.training.latent_norm import fold_into_vae, latent_stats, standardise


@pytest.fixture
def vae_and_pixels() -> tuple[AutoencoderKL, torch.Tensor]:
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config((8, 16)) | {"sample_size": 32}).eval()
    with torch.no_grad():  # make the channels' statistics clearly different, as a trained VAE's are
        vae.quant_conv.bias[:4] += torch.tensor([2.0, -1.0, 0.5, 0.0])
        vae.quant_conv.weight[:4] *= torch.tensor([3.0, 0.5, 1.0, 0.2])[:, None, None, None]
    return vae, torch.rand(12, 3, 32, 32) * 2 - 1


def test_folded_vae_encodes_standardised_latents_and_decodes_the_same(vae_and_pixels):
    vae, x = vae_and_pixels
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample
        mean, std = latent_stats(z)
        assert (mean.abs() > 0.2).any() and (std.max() / std.min() > 2)  # the fixture did its job
        fold_into_vae(vae, mean, std)
        z_std = vae.encode(x).latent_dist.mean
        assert torch.allclose(z_std, standardise(z, mean, std), atol=1e-4)
        assert torch.allclose(z_std.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
        assert torch.allclose(z_std.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
        assert torch.allclose(vae.decode(z_std).sample, recon, atol=1e-4)
    assert vae.config.scaling_factor == 1.0


def test_posterior_std_is_rescaled_too(vae_and_pixels):
    vae, x = vae_and_pixels
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        mean, std = latent_stats(before.mean)
        fold_into_vae(vae, mean, std)
        after = vae.encode(x).latent_dist
    assert torch.allclose(after.std, before.std / std[None, :, None, None], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        (torch.zeros(3), torch.ones(4), "shape"),
        (torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]), "positive"),
    ],
)
def test_bad_statistics_are_refused(vae_and_pixels, mean, std, message):
    vae, _ = vae_and_pixels
    with pytest.raises(ValueError, match=message):
        fold_into_vae(vae, mean, std)
