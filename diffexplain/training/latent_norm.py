"""Per-channel latent standardisation, folded exactly into the VAE's 1×1 convolutions.

Notation: z = posterior mean of the trained encoder, [B, C, h, w]; μ_c, σ_c = per-channel mean and
standard deviation of z over the training pool. The U-Net should see z' = (z − μ) / σ: zero mean and unit
variance in every channel, like the N(0, I) noise sampling starts from. (With one global
``scaling_factor`` only, a channel whose data mean is far from 0 is never pulled there by an
ε-prediction model: the offset is a tiny share of the loss at high noise, so samples keep the noise's
mean and come out as textured junk.)

Stable Diffusion's pipeline knows one scalar, ``scaling_factor``. So the standardisation is folded into
the VAE itself, exactly:

- ``quant_conv`` (moments = [mean, logvar]): mean' = (mean − μ)/σ, logvar' = logvar − 2·log σ;
- ``post_quant_conv`` (input z = σ·z' + μ): W' = W·diag(σ), b' = b + W·μ;

and ``scaling_factor`` becomes 1. The VAE's reconstructions do not change (up to float rounding).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation [C] of latents [N, C, h, w]."""
    return latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))


def standardise(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(z − μ)/σ per channel: [N, C, h, w] → [N, C, h, w]."""
    return (latents - mean[None, :, None, None]) / std[None, :, None, None]


@torch.no_grad()
def fold_into_vae(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> AutoencoderKL:
    """Rewrite ``vae`` in place so that it encodes to standardised latents and decodes from them."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("folding needs a VAE with quant_conv and post_quant_conv (use_quant_conv=True)")
    channels = vae.config.latent_channels
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"mean and std must have shape ({channels},), got {tuple(mean.shape)}, {tuple(std.shape)}"
        )
    if not bool((std > 0).all()):
        raise ValueError(f"every channel's std must be positive, got {std.tolist()}")
    q = vae.quant_conv  # Conv2d(2C, 2C, 1): output channels [0, C) are the mean, [C, 2C) the log-variance
    m, s = mean.to(q.weight), std.to(q.weight)
    q.weight[:channels] /= s[:, None, None, None]
    q.bias[:channels] = (q.bias[:channels] - m) / s
    q.bias[channels:] -= 2 * torch.log(s)
    p = vae.post_quant_conv  # Conv2d(C, C, 1): z = σ·z' + μ goes in
    w = p.weight[:, :, 0, 0].clone()  # [C_out, C_in]
    p.bias += w @ m
    p.weight *= s[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)
    return vae
