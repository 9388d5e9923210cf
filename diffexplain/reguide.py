"""Re-guiding a recorded step: ε̂ and x̂0 at another guidance scale, from the cached ε_c and ε_u (no model call).

Notation (``diffexplain.names``): ε̂ = ε_u + w·(ε_c − ε_u) (``guidance.guide``, the loop's own formula),
x̂0 = a·x_t + b·ε̂ at the step's noise level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from diffexplain.checks import check_guidance_scale
from diffexplain.guidance import guide
from diffexplain.noise_levels import pred_x0_from

if TYPE_CHECKING:
    from diffexplain.trace import Trace


class Reguided(NamedTuple):
    """The result of re-guiding one step from cached ε_c and ε_u."""

    eps_guided: torch.Tensor  # ε̂ = ε_u + w·(ε_c − ε_u)      [B, C, h, w]
    pred_x0: torch.Tensor  # x̂0 = a·x_t + b·ε̂               [B, C, h, w]


def reguide(trace: Trace, step: int, guidance_scale: float) -> Reguided:
    """``trace.reguide``: step ``step``'s ε̂ and x̂0 at ``guidance_scale`` (a finite w ≥ 0)."""
    guidance_scale = check_guidance_scale(guidance_scale)
    record = trace.steps[trace._index(step)]  # noqa: SLF001 - the trace's own step lookup
    for name in ("step.model.cond", "step.model.uncond"):
        if name not in record.tensors:
            raise trace._not_kept(name, record.index)  # noqa: SLF001 - its "why" message
    eps_cond, eps_uncond = record.tensors["step.model.cond"], record.tensors["step.model.uncond"]
    eps_guided = guide(eps_cond, eps_uncond, guidance_scale)
    latents = record.tensors.get("step.latents")
    if latents is None:
        latents = record.restart.latents.to(eps_guided.device, eps_guided.dtype)
    return Reguided(eps_guided, pred_x0_from(latents, eps_guided, record.level))
