"""FLUX.2's latent layout: a patchified, batch-normalised VAE space, packed into tokens with 4-D positions.

Notation: z the VAE's latents [B, c, 2h, 2w] (c = ``latent_channels``, 32 for the real VAE); x the latents
the transformer denoises, [B, C, h, w] with C = 4c (128), one 2×2 patch of z per position::

    x = (patchify(z) − μ_bn) / σ_bn        μ_bn, σ_bn = the VAE's ``bn.running_mean``, √(running_var + ε)
    z = unpatchify(x · σ_bn + μ_bn)        what the VAE decodes
    tokens = x as [B, h·w, C]              (``pack``: row-major positions, no reshuffling of channels)
    position of token (i, j) = (0, i, j, 0)    (time, row, column, layer); text token l: (0, 0, 0, l)

Everything hooks and the trace see is x itself, image-shaped [B, C, h, w]: FLUX.2's VAE space is already
patchified, so unlike Flux.1 no 2×2 unpacking is needed for an image-shaped view; only the model call
flattens it to tokens and back (pure reshapes: exact). The image side is 2·(VAE scale) × the latent side.
"""

from __future__ import annotations

from typing import Any

import torch

from diffexplain.families.vae import VaeAdapter


def patchify(z: torch.Tensor) -> torch.Tensor:
    """[B, c, 2h, 2w] → [B, 4c, h, w], as ``Flux2Pipeline._patchify_latents``."""
    b, c, height, width = z.shape
    z = z.view(b, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * 4, height // 2, width // 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """[B, 4c, h, w] → [B, c, 2h, 2w], as ``Flux2Pipeline._unpatchify_latents``."""
    b, channels, height, width = x.shape
    x = x.reshape(b, channels // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, channels // 4, height * 2, width * 2)


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → tokens [B, h·w, C], as ``Flux2Pipeline._pack_latents``."""
    b, c, height, width = x.shape
    return x.reshape(b, c, height * width).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens [B, h·w, C] in row-major order → [B, C, h, w] (what ``_unpack_latents_with_ids`` scatters to)."""
    b, _, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, height, width)


def latent_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Positions of the h·w image tokens [h·w, 4]: (0, row, column, 0), as ``_prepare_latent_ids``."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, torch.arange(height), torch.arange(width), zero).to(device)


def text_ids(tokens: int, device: torch.device) -> torch.Tensor:
    """Positions of the T text tokens [T, 4]: (0, 0, 0, l), as ``_prepare_text_ids``."""
    zero = torch.arange(1)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(tokens)).to(device)


class Flux2VaeAdapter(VaeAdapter):
    """``AutoencoderKLFlux2`` as the FLUX.2 pipelines use it: patchified and batch-normalised (module docstring)."""

    @property
    def scale_factor(self) -> int:
        """Image side / the side of x: 2^(levels − 1) of the VAE, × 2 for the 2×2 patches (16 for FLUX.2)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * 2

    def statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_bn, σ_bn) [1, 4c, 1, 1] on ``like``'s device and dtype, as the pipelines compute them."""
        vae = self.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents [B, c, 2h, 2w] → x [B, 4c, h, w] = (patchify(z) − μ_bn) / σ_bn (``_encode_vae_image``)."""
        x = patchify(z)
        mean, std = self.statistics(x)
        return (x - mean) / std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → x from the posterior's mode, as the pipelines encode references."""
        vae = self.vae
        return self.normalise(vae.encode(pixels.to(vae.dtype)).latent_dist.mode())

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Picture → x from one draw of the posterior (``generator``)."""
        vae = self.vae
        return self.normalise(vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x [B, 4c, h, w] → picture [B, 3, H, W] in [-1, 1]: unpatchify(x·σ_bn + μ_bn), decoded."""
        mean, std = self.statistics(latents)
        z = unpatchify(latents * std + mean)
        vae: Any = self.vae
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]
