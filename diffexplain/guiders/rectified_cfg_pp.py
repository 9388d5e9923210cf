"""Rectified-CFG++ (Saini, Gupta, Bovik, NeurIPS 2025, arXiv 2510.07631), for flow models: guidance as a
predictor-corrector inside each step. Not a diffusers guider: it needs a second model evaluation at a
predicted point, which diffusers' guiders (one evaluation, recombined) cannot express
(huggingface/diffusers#14744).

Notation: v_c, v_u the velocities at (x_t, t); Δσ = σ_{i+1} − σ_i (< 0). Predictor: x̃ = x_t + Δσ·v_c,
a whole Euler step along the conditional velocity. Corrector: ṽ_c, ṽ_u at (x̃, t_{i+1}); the step then
uses v̂ = v_c + w·(ṽ_c − ṽ_u): the conditional velocity where the sample is, plus the text's push where it
is going, which keeps the path near the conditional flow instead of extrapolating off it.

The reference pipeline (github.com/shreshthsaini/Rectified-CFGpp, ``rect-cfg-SD3-pipeline``) passes the
corrector ``t + Δσ``, a timestep (σ·1000) plus a σ difference, i.e. about t; this class evaluates it at the
predicted point's own time, t_{i+1} (0 at the last step), as the method describes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.names import HookPoint

POINTS = (
    HookPoint("step.guider.predicted_latents", "x̃ = x_t + Δσ·v_c, the predictor's point", "[B, C, h, w]", True, True),
    HookPoint("step.guider.corrector_cond", "ṽ_c, the velocity with the prompt at x̃", "[B, C, h, w]", True, True),
    HookPoint("step.guider.corrector_uncond", "ṽ_u, the velocity without it at x̃", "[B, C, h, w]", True, True),
)  # fmt: skip


class RectifiedCFGPlusPlus(Guider):
    """v̂ = v_c + w·(ṽ_c − ṽ_u), ṽ at the predictor's point x̃ = x_t + Δσ·v_c (flow models; two model
    calls per step, both branches each)."""

    name: ClassVar[str] = "rectified_cfg_pp"
    checks_scheduler: ClassVar[bool] = True
    label: ClassVar[str] = "Rectified-CFG++ (flow models; a predictor-corrector, not a diffusers guider)"
    points: ClassVar[tuple[HookPoint, ...]] = POINTS

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        if step.predict is None or step.latents is None or step.scheduler is None:
            raise ValueError(
                "Rectified-CFG++ evaluates the model at a predicted point: it runs in a run or a fork, and "
                "cannot be replayed from a trace without the model"
            )
        sigmas, timesteps = step.scheduler.sigmas, step.scheduler.timesteps
        i = step.index
        delta_sigma = sigmas[i + 1] - sigmas[i]  # Δσ < 0: towards the picture
        predicted = step.site(POINTS[0].name, step.latents + delta_sigma * eps_cond)  # [B, C, h, w]
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else torch.zeros_like(timesteps[i])
        corrector_cond, corrector_uncond = step.predict(predicted, t_next)
        corrector_cond = step.site(POINTS[1].name, corrector_cond)
        corrector_uncond = step.site(POINTS[2].name, corrector_uncond)
        return eps_cond + guidance_scale * (corrector_cond - corrector_uncond)

    def check_scheduler(self, scheduler: Any, eta: float) -> None:
        """``ValueError`` unless the run is a flow model on ``FlowMatchEulerDiscreteScheduler``."""
        if type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(
                f"Rectified-CFG++ is written for flow models on FlowMatchEulerDiscreteScheduler (SD3, Flux); this "
                f"run uses {type(scheduler).__name__}"
            )

    def config(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop}
