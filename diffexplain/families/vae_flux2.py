"""FLUX.2's autoencoder (``AutoencoderKLFlux2``), which FLUX.3 uses: latents patchified 2×2 (4·C channels,
sides H/16 for the real VAE's scale factor 8) and normalised by the VAE's batch-norm running statistics,
as Modular Diffusers' FLUX.3 VAE-encoder and decode steps do (their own patchify functions are called)."""

from __future__ import annotations

import torch

from diffexplain.families.vae import VaeAdapter


class Flux2VaeAdapter(VaeAdapter):
    """FLUX.2's autoencoder as FLUX.3 reads it: latents patchified 2×2 (4·C channels, H/16 sides) and
    normalised by the VAE's batch-norm statistics, as the pipeline's VAE encoder and decode steps."""

    @property
    def scale_factor(self) -> int:
        """Image side / latent side: the VAE's 2^(levels − 1) × 2 (the patchify)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * 2

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            like.device, like.dtype
        )
        return mean, std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → the posterior's mode, patchified and normalised [B, 4C, H/16, W/16]."""
        from diffusers.modular_pipelines.flux3.encoders import Flux3VaeEncoderStep

        vae = self.vae
        latents = Flux3VaeEncoderStep._patchify_latents(vae.encode(pixels.to(vae.dtype)).latent_dist.mode())
        mean, std = self._statistics(latents)
        return (latents - mean) / std

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The pipeline encodes references with the posterior's mode (no draw): ``encode``."""
        return self.encode(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4C, h, w] → picture [B, 3, H, W] in [-1, 1]: de-normalise, unpatchify, decode."""
        from diffusers.modular_pipelines.flux3.decoders import Flux3DecodeStep

        mean, std = self._statistics(latents)
        z = Flux3DecodeStep._unpatchify_latents(latents * std + mean)
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
