"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
arXiv 2406.08070), DDIM form: guidance in the *sampler update*, not only in the combined prediction.
Not a diffusers guider: diffusers' guiders recombine one evaluation's predictions and hand one ε to the
scheduler, which cannot express it (huggingface/diffusers#14744; A1111 ships it as the "DDIM CFG++"
sampler).

Notation: ε̂_λ = ε_u + λ·Δ with λ ∈ [0, 1] (CFG++'s own scale, in place of w); ᾱ_t, ᾱ_prev the DDIM
step's signal shares. x̂0 = (x_t − √(1−ᾱ_t)·ε̂_λ) / √ᾱ_t as in DDIM, but the step re-noises with the
*unconditional* prediction: x_{t−1} = √ᾱ_prev·x̂0 + √(1−ᾱ_prev)·ε_u, where DDIM (and CFG) use ε̂.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch

from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep, Guider


class SamplerOutput(NamedTuple):
    """What a sampler-stage method's step returns, as a scheduler's ``step`` does."""

    prev_sample: torch.Tensor  # x_{t−1}                               [B, C, h, w]
    pred_original_sample: torch.Tensor  # x̂0                           [B, C, h, w]


class CFGPlusPlus(Guider):
    """DDIM CFG++: ε̂_λ = ε_u + λ·Δ for x̂0, ε_u for the direction back to x_{t−1} (DDIM, η = 0, only)."""

    name: ClassVar[str] = "cfg_pp"
    checks_scheduler: ClassVar[bool] = True
    label: ClassVar[str] = "CFG++ (DDIM; a sampler-stage method, not a diffusers guider)"
    sampler_stage: ClassVar[bool] = True

    def __init__(self, *, lam: float = 0.6, start: float = 0.0, stop: float = 1.0) -> None:
        super().__init__(start=start, stop=stop)
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (CFG++'s λ, in place of w) must be a number in [0, 1]; got {lam!r}")
        self.lam = float(lam)

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        """ε̂_λ where the guider acts (the run's w only turned both branches on), else ε_c."""
        if not self.active(step.index, step.num_steps):
            return eps_cond
        return self.combine(eps_cond, eps_uncond, guidance_scale, step)

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        return guide(eps_cond, eps_uncond, self.lam)

    def check_scheduler(self, scheduler: Any, eta: float) -> None:
        """``ValueError`` unless the run uses DDIM with η = 0, ε- or v-prediction, no clipping."""
        config = scheduler.config
        if type(scheduler).__name__ != "DDIMScheduler" or eta != 0.0:
            raise ValueError(
                f"CFG++ is written for DDIM with eta=0; this run uses {type(scheduler).__name__} with eta={eta}: "
                "explainer.set_scheduler('ddim') and eta=0"
            )
        if (
            config.get("prediction_type") not in ("epsilon", "v_prediction")
            or config.get("thresholding")
            or (config.get("clip_sample"))
        ):
            raise ValueError(
                "CFG++ needs a DDIM scheduler predicting epsilon or v, without clipping or thresholding"
            )

    def sampler_step(
        self,
        scheduler: Any,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        eps_guided: torch.Tensor,
        eps_uncond: torch.Tensor | None,
        active: bool,
    ) -> SamplerOutput:
        """x_{t−1} from x_t: DDIM's own lines (diffusers' ``DDIMScheduler.step``, η = 0), with ε_u in the
        direction where CFG++ acts (and ε̂, as DDIM, where it does not)."""
        t = int(timestep)
        prev_timestep = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha_prod_t = scheduler.alphas_cumprod[t]
        alpha_prod_t_prev = (
            scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        direction = eps_uncond if active and eps_uncond is not None else eps_guided
        if scheduler.config.prediction_type == "epsilon":
            pred_original_sample = (latents - beta_prod_t ** (0.5) * eps_guided) / alpha_prod_t ** (0.5)
            pred_epsilon = direction
        else:  # v_prediction: the model's outputs are v's; the direction is the noise a v implies
            pred_original_sample = (alpha_prod_t**0.5) * latents - (beta_prod_t**0.5) * eps_guided
            pred_epsilon = (alpha_prod_t**0.5) * direction + (beta_prod_t**0.5) * latents
        pred_sample_direction = (1 - alpha_prod_t_prev) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
        return SamplerOutput(prev_sample, pred_original_sample)

    def config(self) -> dict[str, Any]:
        return {"lam": self.lam, "start": self.start, "stop": self.stop}
