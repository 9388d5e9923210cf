"""What a scheduler's step returns beside x_{t−1}, as per-step hook points: declared per scheduler class.

Most schedulers return ``prev_sample`` (x_{t−1}) and perhaps ``pred_original_sample`` (their own x̂0, which
the loop already records at ``step.pred_x0``). Some return more; each such output is declared here once
(a ``SchedulerOutput``) and becomes a hook point of every run with that scheduler: the loop calls it
right after the scheduler step, before ``step.next``, and trace files record it like any point.

LCM (``LCMScheduler``, the consistency-model sampler) returns ``denoised``, the consistency function's
boundary condition applied to the model's x̂0::

    x̂0        = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t          diffexplain's step.pred_x0 (ε prediction)
    denoised  = c_skip(t)·x_t + c_out(t)·x̂0         step.denoised
    x_{t−1}   = √ᾱ_{t−1}·denoised + √(1−ᾱ_{t−1})·z   z fresh Gaussian noise (the run's generator);
                                                    at the last step x_{t−1} = denoised

A hook that replaces ``denoised`` by d′ moves x_{t−1} by the same coefficient, x′_{t−1} = x_{t−1} +
√ᾱ_{t−1}·(d′ − denoised) (the noise z unchanged); handing it back unchanged changes nothing, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diffexplain.names import HookPoint, declare_points


def lcm_next_weight(scheduler: Any) -> float:
    """√ᾱ_{t−1}, the weight of ``denoised`` in LCM's x_{t−1}, read after its step (``step_index`` has moved
    on): 1 at the last step, where x_{t−1} = denoised."""
    index = int(scheduler.step_index)
    if index >= int(scheduler.num_inference_steps):
        return 1.0
    prev_t = scheduler.timesteps[index]
    alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    return float(alpha_prev.sqrt())


@dataclass(frozen=True)
class SchedulerOutput:
    """One field of a scheduler's step output, as a hook point."""

    field: str  # the attribute of the step's output (LCMSchedulerOutput.denoised)
    point: HookPoint  # its hook point (per step)
    next_weight: Callable[
        [Any], float
    ]  # ∂x_{t−1}/∂field, read after the step: how a replacement moves x_{t−1}


SCHEDULER_OUTPUTS: Mapping[str, tuple[SchedulerOutput, ...]] = {
    "LCMScheduler": (
        SchedulerOutput(
            "denoised",
            HookPoint(
                "step.denoised",
                "LCM's denoised = c_skip·x_t + c_out·x̂0, the consistency boundary condition on x̂0 "
                "(the step's picture; x_{t−1} re-noises it)",
                "[B, C, h, w]",
                True,
            ),
            lcm_next_weight,
        ),
    ),
}
"""The extra step outputs, by scheduler class name."""

declare_points(p.point for outputs in SCHEDULER_OUTPUTS.values() for p in outputs)


def scheduler_outputs(scheduler_class: str | None) -> tuple[SchedulerOutput, ...]:
    """The extra outputs a scheduler class's step returns (none for most)."""
    return SCHEDULER_OUTPUTS.get(scheduler_class or "", ())


def with_scheduler_points(
    points: tuple[HookPoint, ...], scheduler_class: str | None
) -> tuple[HookPoint, ...]:
    """``points`` with the scheduler's output points just before ``step.next``, where the loop calls them."""
    own = tuple(output.point for output in scheduler_outputs(scheduler_class))
    if not own:
        return points
    names = [p.name for p in points]
    at = names.index("step.next") if "step.next" in names else len(points)
    return (*points[:at], *own, *points[at:])


def through_sites(
    sites: Callable[[str, torch.Tensor], torch.Tensor], scheduler: Any, out: Any, next_latents: torch.Tensor
) -> torch.Tensor:
    """Each extra output of this step through its hook point; x_{t−1}, moved where a hook replaced one."""
    for output in scheduler_outputs(type(scheduler).__name__):
        value = getattr(out, output.field, None)
        if value is None:
            continue
        hooked = sites(output.point.name, value)
        if hooked is not value:
            next_latents = next_latents + output.next_weight(scheduler) * (hooked - value).to(
                next_latents.dtype
            )
    return next_latents
