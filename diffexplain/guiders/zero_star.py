"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models",
arXiv 2503.18886), as diffusers' ``ClassifierFreeZeroStarGuidance`` computes it.

Notation: α = ⟨ε_c, ε_u⟩ / ‖ε_u‖² per sample (the projection of ε_c on ε_u), ε̂ = α·ε_u + w·(ε_c − α·ε_u);
and the first ``zero_init_steps`` steps predict 0 ("zero init": the first steps of a flow model are the
least accurate, so they move nothing). Zero init is made for flow models, where a zero velocity leaves x_t
where it is; on an ε model a zero ε at the first step rescales pure noise instead of removing any of it
(on the embedded model: 0 % of pictures right, ``benchmarks/bench_guiders.py``), so use
``zero_init_steps=0`` there.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.guiders.cfg import RESCALE_POINT, rescale_factor, rescaled
from diffexplain.names import HookPoint

ALPHA_POINT = HookPoint(
    "step.guider.zero_star_scale",
    "α = ⟨ε_c, ε_u⟩ / ‖ε_u‖², the scale CFG-Zero* puts on ε_u",
    "[B, 1, 1, 1]",
    True,
    True,
)


def zero_star_scale(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """α per sample [B, 1, ..., 1] (in float32, back in the inputs' dtype), as diffusers' ``cfg_zero_star_scale``."""
    cond, uncond = eps_cond.flatten(1).float(), eps_uncond.flatten(1).float()
    dot_product = torch.sum(cond * uncond, dim=1, keepdim=True)
    squared_norm = torch.sum(uncond**2, dim=1, keepdim=True) + eps
    alpha = (dot_product / squared_norm).to(dtype=eps_cond.dtype)
    return alpha.view(-1, *(1,) * (eps_cond.dim() - 1))


class CFGZeroStar(Guider):
    """ε̂ = α·ε_u + w·(ε_c − α·ε_u) in [start, stop); 0 for the first ``zero_init_steps`` steps."""

    name: ClassVar[str] = "cfg_zero_star"
    label: ClassVar[str] = "CFG-Zero*"
    points: ClassVar[tuple[HookPoint, ...]] = (ALPHA_POINT, RESCALE_POINT)

    def __init__(
        self, *, zero_init_steps: int = 1, rescale: float = 0.0, start: float = 0.0, stop: float = 1.0
    ) -> None:
        super().__init__(start=start, stop=stop)
        if isinstance(zero_init_steps, bool) or not isinstance(zero_init_steps, int) or zero_init_steps < 0:
            raise ValueError(f"zero_init_steps must be a whole number ≥ 0; got {zero_init_steps!r}")
        if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale must be a number in [0, 1]; got {rescale!r}")
        self.zero_init_steps, self.rescale = zero_init_steps, float(rescale)

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        if step.index < self.zero_init_steps:  # before the interval test, as diffusers orders it
            eps_guided = torch.zeros_like(eps_cond)
        else:
            eps_guided = super().__call__(eps_cond, eps_uncond, guidance_scale, step)
        if self.rescale > 0.0:
            factor = step.site(RESCALE_POINT.name, rescale_factor(eps_guided, eps_cond))
            eps_guided = rescaled(eps_guided, factor, self.rescale)
        return eps_guided

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        alpha = step.site(ALPHA_POINT.name, zero_star_scale(eps_cond, eps_uncond))  # [B, 1, 1, 1]
        eps_uncond = eps_uncond * alpha
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def config(self) -> dict[str, Any]:
        return {
            "zero_init_steps": self.zero_init_steps,
            "rescale": self.rescale,
            "start": self.start,
            "stop": self.stop,
        }
