"""The autoencoder behind a latent-space family, behind one small adapter: scale factor, encode, decode.

A ``Family`` never reads its VAE's config or outputs itself: it asks ``Family.vae_adapter()`` (None in
pixel space) for a ``VaeAdapter``, which owns what differs between autoencoders::

    scale_factor            image side / latent side
    encode(pixels)          picture [B, 3, H, W] in [-1, 1] → clean latents x0, as the loop sees them
    decode(latents)         x0 → picture [B, 3, H, W] in [-1, 1]

``VaeAdapter`` is diffusers' ``AutoencoderKL`` (SD 1.x / 2.x, SDXL, SD3, Flux.1): 2^(levels − 1) from
``block_out_channels``, the posterior mean (``latent_dist.mean``), and the config's ``scaling_factor`` and
``shift_factor``. A family with another autoencoder (DC-AE with ``encoder_block_out_channels`` and no
``latent_dist``, Flux 2's batch-normalised VAE, Qwen-Image's 3-D VAE) subclasses it, overrides what
differs and returns it from its ``vae_adapter``; ``SdxlVaeAdapter`` and ``MovqAdapter`` are two such.
"""

from __future__ import annotations

from typing import Any

import torch


class VaeAdapter:
    """diffusers' ``AutoencoderKL``-style VAE: the default adapter of every family with a ``vae`` part."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae  # the module itself (shared with the pipeline, not copied)

    @property
    def dtype(self) -> torch.dtype:
        """The autoencoder's dtype: pictures and latents are cast to it before it reads them."""
        return self.vae.dtype

    @property
    def scale_factor(self) -> int:
        """Image size / latent size: 2^(VAE levels − 1), from ``config.block_out_channels``."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → (mean − shift_factor) · scaling_factor, in the VAE's dtype."""
        vae = self.vae
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * vae.config.scaling_factor

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → (a draw from the posterior − shift_factor) · scaling_factor (one
        draw from ``generator``), as the img2img pipelines encode (``retrieve_latents``, "sample"): SD's
        has no shift factor, SD3's and Flux's subtract theirs."""
        vae = self.vae
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator)
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → picture [B, 3, H, W] in [-1, 1]: decode(latents / scaling_factor + shift_factor)."""
        vae = self.vae
        z = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]


class SdxlVaeAdapter(VaeAdapter):
    """SDXL's ``AutoencoderKL`` as ``StableDiffusionXLPipeline`` decodes with it: in float32 when an fp16
    VAE asks for it (``force_upcast``), and with per-channel ``latents_mean`` / ``latents_std`` if set."""

    def __init__(self, vae: Any, *, normalise: bool = True) -> None:
        super().__init__(vae)
        self.normalise = normalise  # encode_sample: with latents_mean / latents_std where set (img2img)

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A posterior draw as ``StableDiffusionXLImg2ImgPipeline.prepare_latents`` makes it: in float32
        where the config says ``force_upcast``, then (z − mean) · scaling_factor / std, or z · scaling_factor
        (always the latter with ``normalise=False``, as the inpainting pipeline's ``_encode_vae_image``)."""
        vae, dtype = self.vae, pixels.dtype
        upcast = bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            pixels = pixels.float()
            vae.to(dtype=torch.float32)
        try:
            latents = vae.encode(pixels).latent_dist.sample(generator)
        finally:
            if upcast:
                vae.to(dtype)
        latents = latents.to(dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if self.normalise and mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, dtype)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, dtype)
            return (latents - mean_t) * vae.config.scaling_factor / std_t
        return vae.config.scaling_factor * latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z = latents · std / scaling_factor + mean (or latents / scaling_factor), decoded as the pipeline."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            z = latents.to(vae.dtype)
            if mean is not None and std is not None:
                mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(z.device, z.dtype)
                std_t = torch.tensor(std).view(1, -1, 1, 1).to(z.device, z.dtype)
                z = z * std_t / vae.config.scaling_factor + mean_t
            else:
                z = z / vae.config.scaling_factor
            return vae.decode(z, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)


class MovqAdapter(VaeAdapter):
    """Kandinsky 2.2's MoVQ (a ``VQModel``): no scaling; it encodes to ``.latents`` and decodes without
    quantising (``force_not_quantize=True``), as ``KandinskyV22Pipeline`` and its img2img pipeline."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → ``movq.encode(pixels).latents``, in the MoVQ's dtype."""
        movq = self.vae
        return movq.encode(pixels.to(dtype=movq.dtype)).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → picture [B, 3, H, W] in [-1, 1]: ``movq.decode(latents, force_not_quantize=True)``."""
        movq = self.vae
        return movq.decode(latents.to(movq.dtype), force_not_quantize=True)["sample"]
