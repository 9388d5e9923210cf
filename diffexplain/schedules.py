"""Noise schedules and the forward process q(x_t | x_0) in closed form.

Notation::

    β_t         betas            per-step noise variance
    ᾱ_t         alphas_cumprod   ∏ (1 − β_s), the signal fraction left at step t
    SNR_t       snr              ᾱ_t / (1 − ᾱ_t)
    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,   ε ~ N(0, I)      ("jump straight to step t")

The curves come from diffusers' own ``DDPMScheduler`` (never re-derived here), so they are exactly
what a model trained with that scheduler saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.checks import check_float

__all__ = [
    "BETA_SCHEDULES",
    "BetaSchedule",
    "ScheduleCurves",
    "add_noise",
    "noise_scheduler",
    "schedule_curves",
]

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
"""A diffusers ``beta_schedule`` name (``squaredcos_cap_v2`` is the cosine schedule)."""
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
"""Every :data:`BetaSchedule`, in the order the widgets list them."""


@dataclass(frozen=True)
class ScheduleCurves:
    """β_t and ᾱ_t of one training schedule, t = 0..T−1, with derived curves."""

    name: str  # the diffusers beta_schedule name ("squaredcos_cap_v2" is the cosine schedule)
    betas: torch.Tensor  # β_t                                    [T]
    alphas_cumprod: torch.Tensor  # ᾱ_t                          [T]

    @property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        """√ᾱ_t, the scale of x_0 in x_t."""
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alpha_bar(self) -> torch.Tensor:
        """√(1 − ᾱ_t), the standard deviation of the noise in x_t."""
        return (1 - self.alphas_cumprod).sqrt()

    @property
    def snr(self) -> torch.Tensor:
        """SNR_t = ᾱ_t / (1 − ᾱ_t)."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:
        """log SNR_t."""
        return self.snr.log()


def noise_scheduler(
    schedule: BetaSchedule = "scaled_linear",
    *,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> DDPMScheduler:
    """A diffusers ``DDPMScheduler`` with this beta schedule (defaults: Stable Diffusion's betas)."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    beta_start = check_float("beta_start", beta_start, 0.0, 1.0, meaning="β at the first training step")
    beta_end = check_float("beta_end", beta_end, 0.0, 1.0, meaning="β at the last training step")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=schedule,
        clip_sample=False,
    )


def schedule_curves(
    name: BetaSchedule = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> ScheduleCurves:
    """β_t, ᾱ_t (and SNR_t via properties) for a beta schedule, read from diffusers' ``DDPMScheduler``."""
    scheduler = noise_scheduler(
        name, num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end
    )
    return ScheduleCurves(name, scheduler.betas.clone(), scheduler.alphas_cumprod.clone())


def add_noise(
    x0: torch.Tensor,
    t: int | torch.Tensor,
    *,
    schedule: BetaSchedule | DDPMScheduler = "scaled_linear",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one jump: √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, via the scheduler's ``add_noise``.

    ``x0`` is [B, ...]; ``t`` an int or a [B] tensor of training timesteps; ``noise`` defaults to fresh ε.
    """
    scheduler = noise_scheduler(schedule) if isinstance(schedule, str) else schedule
    if noise is None:
        noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    timesteps = torch.as_tensor(t, dtype=torch.long, device=x0.device).reshape(-1).expand(x0.shape[0])
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= len(scheduler.alphas_cumprod):
        raise ValueError(f"t must be in 0..{len(scheduler.alphas_cumprod) - 1}, got {t}")
    return scheduler.add_noise(x0, noise, timesteps)
