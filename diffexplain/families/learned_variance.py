"""Models that predict a variance beside ε (DeepFloyd IF, the Kandinsky 2.2 decoder): only ε is guided.

The U-Net's output is [ε ; v] along the channels (2C for a C-channel x_t). As the pipelines do, the loop
guides the ε half, and the scheduler reads [ε̂ ; v_c] (the cond branch's variance, unguided) where it
learns its variance (DDPM with ``variance_type`` "learned" or "learned_range"), ε̂ alone otherwise.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

LEARNED_VARIANCE = ("learned", "learned_range")


def learns_variance(scheduler: Any) -> bool:
    """Whether the scheduler reads a learned variance beside ε (DDPM with ``variance_type`` "learned_range").

    A config carried over from DDPM to another scheduler (``set_scheduler("ddim")``) keeps the key,
    so the scheduler's own constructor must take it too."""
    return _takes_variance_type(type(scheduler)) and scheduler.config.get("variance_type") in LEARNED_VARIANCE


@functools.cache
def _takes_variance_type(scheduler_class: type) -> bool:
    """Whether the class's constructor has ``variance_type`` (inspected once per class, not every step)."""
    return "variance_type" in inspect.signature(scheduler_class.__init__).parameters


def check_output_channels(label: str, out_channels: int, image_channels: int) -> None:
    """A model's output must be ε (C channels) or ε and a learned variance (2C); else a clear error."""
    if int(out_channels) not in (image_channels, 2 * image_channels):
        raise ValueError(
            f"{label}: unet.config.out_channels is {out_channels}; expected "
            f"{image_channels} (ε) or {2 * image_channels} (ε and a learned variance)"
        )


class LearnedVariance:
    """``split_output`` and ``scheduler_input`` of a family whose model outputs [ε ; v] (a ``Family`` mixin)."""

    def split_output(
        self, model_output: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[.., 2C, ...] → ε [.., C, ...] (guided) and the learned variance [.., C, ...]; C channels alone
        (a model without a variance) pass through."""
        channels = latents.shape[1]
        if model_output.shape[1] != 2 * channels:
            return model_output, None
        eps, variance = model_output.split(channels, dim=1)
        return eps, variance

    def scheduler_input(
        self, scheduler: Any, eps_guided: torch.Tensor, extra: torch.Tensor | None
    ) -> torch.Tensor:
        """[ε̂ ; v_c] for a scheduler that learns its variance (DDPM "learned_range"); ε̂ alone for any other."""
        if extra is None or not learns_variance(scheduler):
            return eps_guided
        return torch.cat([eps_guided, extra], dim=1)
