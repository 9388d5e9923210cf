"""Qwen-Image's "true CFG" as a guider (diffusers' ``QwenImagePipeline``, pipeline_qwenimage.py, its CFG
block): ε̂ = ε_u + w·Δ, then each *token* rescaled to the norm of its conditional prediction:
ε̂ ← ε̂·‖ε_c‖/‖ε̂‖, where a token is a 2×2 patch of latents with all its channels, as the pipeline packs
them (``_pack_latents``). The guider packs the loop's [B, C, h, w] the same way, so the norms are taken
over the same numbers in the same order, and unpacks the result.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.names import HookPoint

RESCALE_POINT = HookPoint(
    "step.guider.token_rescale", "‖ε_c‖ / ‖ε̂‖ per packed 2×2 token, what Qwen-Image scales ε̂ by",
    "[B, h·w/4, 1]", True, True,
)  # fmt: skip


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → [B, h/2·w/2, 4C], as ``QwenImagePipeline._pack_latents``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack``: [B, h/2·w/2, 4C] → [B, C, h, w] (``_unpack_latents`` without the frame axis)."""
    b, _, channels = x.shape
    x = x.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


class QwenImageGuidance(Guider):
    """ε̂ = ε_u + w·Δ, each packed token rescaled to ‖ε_c‖ (latents of even height and width)."""

    name: ClassVar[str] = "qwen_image"
    label: ClassVar[str] = "Qwen-Image's true CFG (norm rescale per token)"
    points: ClassVar[tuple[HookPoint, ...]] = (RESCALE_POINT,)

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        height, width = eps_cond.shape[-2:]
        if eps_cond.dim() != 4 or height % 2 or width % 2:
            raise ValueError(
                f"Qwen-Image's guidance packs 2×2 tokens: expected [B, C, h, w] with even h, w; got {tuple(eps_cond.shape)}"
            )
        noise_pred, neg_noise_pred = pack(eps_cond), pack(eps_uncond)  # [B, T, 4C]
        comb_pred = guide(noise_pred, neg_noise_pred, guidance_scale)
        cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
        noise_norm = torch.norm(comb_pred, dim=-1, keepdim=True)
        factor = step.site(RESCALE_POINT.name, cond_norm / noise_norm)  # [B, T, 1]
        return unpack(comb_pred * factor, height, width)

    def config(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop}
