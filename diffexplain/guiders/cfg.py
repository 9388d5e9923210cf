"""Classifier-free guidance as a guider, with the classic pipelines' knobs: ``rescale`` (diffusers'
``guidance_rescale``) and a step interval.

Notation: ε̂ = ε_u + w·Δ, Δ = ε_c − ε_u. Rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", arXiv 2305.08891; diffusers' ``rescale_noise_cfg``): with s = std(ε_c) / std(ε̂)
per sample, ε̂ ← φ·(s·ε̂) + (1 − φ)·ε̂, which pulls ε̂'s spread back to ε_c's and so undoes the
over-saturation a large w brings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.names import HookPoint

RESCALE_POINT = HookPoint(
    "step.guider.rescale_factor",
    "s = std(ε_c) / std(ε̂), the factor rescale multiplies ε̂ by (guidance_rescale > 0)",
    "[B, 1, 1, 1]",
    True,
    True,
)


def rescale_factor(eps_guided: torch.Tensor, eps_cond: torch.Tensor) -> torch.Tensor:
    """s = std(ε_c) / std(ε̂) per sample [B, 1, 1, 1], as diffusers' ``rescale_noise_cfg`` computes it."""
    std_text = eps_cond.std(dim=list(range(1, eps_cond.ndim)), keepdim=True)
    std_cfg = eps_guided.std(dim=list(range(1, eps_guided.ndim)), keepdim=True)
    return std_text / std_cfg


def rescaled(eps_guided: torch.Tensor, factor: torch.Tensor, rescale: float) -> torch.Tensor:
    """φ·(s·ε̂) + (1 − φ)·ε̂, in diffusers' order of operations (the same bits as ``rescale_noise_cfg``)."""
    return rescale * (eps_guided * factor) + (1 - rescale) * eps_guided


class CFG(Guider):
    """ε̂ = ε_u + w·(ε_c − ε_u) in the steps [start, stop), then rescaled where ``rescale`` > 0."""

    name: ClassVar[str] = "cfg"
    label: ClassVar[str] = "classifier-free guidance"
    points: ClassVar[tuple[HookPoint, ...]] = (RESCALE_POINT,)

    def __init__(self, *, rescale: float = 0.0, start: float = 0.0, stop: float = 1.0) -> None:
        super().__init__(start=start, stop=stop)
        if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (guidance_rescale) must be a number in [0, 1]; got {rescale!r}")
        self.rescale = float(rescale)

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        eps_guided = guide(eps_cond, eps_uncond, guidance_scale)  # [B, C, h, w]
        if self.rescale > 0.0:
            factor = step.site(RESCALE_POINT.name, rescale_factor(eps_guided, eps_cond))  # [B, 1, 1, 1]
            eps_guided = rescaled(eps_guided, factor, self.rescale)
        return eps_guided

    def config(self) -> dict[str, Any]:
        return {"rescale": self.rescale, "start": self.start, "stop": self.stop}
