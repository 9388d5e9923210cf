"""The per-step records of a trace: what one loop step computed, and what a fork needs to restart there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from diffexplain.noise_levels import NoiseLevel


@dataclass
class RestartPoint:
    """What a fork needs to restart the loop at one step; always kept, at full precision."""

    latents: torch.Tensor  # x_t entering the step, before any hook          [B, C, h, w]
    scheduler_state: dict[str, Any]  # the scheduler's mutable attributes (see scheduler_state.snapshot)
    generator_state: torch.Tensor | None  # generator.get_state() entering the step (uint8)
    guider_state: dict[str, torch.Tensor] | None = (
        None  # a stateful guider's state entering the step (APG's m)
    )


@dataclass
class StepRecord:
    """One loop step (one model evaluation): timestep, noise level, kept tensors and restart state."""

    index: int  # loop step index
    timestep: float  # the scheduler's t
    stage: str | None  # "first_order" / "second_order" for 2nd-order schedulers (Heun, KDPM2), else None
    level: NoiseLevel  # ᾱ_t, σ_t and x̂0 = a·x_t + b·ε
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # kept tensors, by hook point name
    restart: RestartPoint | None = None
    # cross-attention maps, "cond@16x16" → [B, T, 16, 16]: mean over heads and the layers at that resolution
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    # the declared per-step numbers (diffexplain.step_scalars), e.g. "scheduler_sigma" → 0.82
    scalars: dict[str, float] = field(default_factory=dict)
