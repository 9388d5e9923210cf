"""Per-step numbers, declared once: the loop records each for every step, trace files save and load them.

A ``StepScalar`` names one number per loop step and says how to read it from the finished step (its
index, timestep, noise level, the scheduler, the step's tensors). Declaring it is all it takes: the loop
reads every declared scalar when a step finishes (``StepRecord.scalars``), ``trace.scalars(name)`` lists
them, and trace files hold them in each step's record ("scalars": {name: number}), an additive field
that older readers ignore and that needs no new format version. The loop declares ``STEP_SCALARS``; a
family adds its own in its ``step_scalars`` (a guider's intermediates will come the same way).

A reader returns None where the number does not exist at that step (a scheduler without σ's): it is
then left out of that step's record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from diffexplain.noise_levels import NoiseLevel


class FinishedStep(NamedTuple):
    """What a step-scalar reader sees: one loop step, after its scheduler step."""

    index: int  # loop step i
    timestep: float  # the scheduler's t
    level: NoiseLevel  # ᾱ_t, σ_t and x̂0 = a·x_t + b·ε
    scheduler: Any  # the scheduler, after its step (its tables: sigmas, timesteps)
    tensors: Mapping[str, torch.Tensor]  # this step's tensors by hook point (ctx.current)


@dataclass(frozen=True)
class StepScalar:
    """One number per loop step: its name, what it means, and how to read it."""

    name: str
    meaning: str
    read: Callable[[FinishedStep], float | None]


def scheduler_sigma(step: FinishedStep) -> float | None:
    """The scheduler's own σ at this step (``scheduler.sigmas[i]``, i counted from the scheduler's begin
    index: a run from a picture enters its table part way): flow models' share of noise in x_t
    (x_t = (1 − σ)·x0 + σ·ε), the Karras/Euler schedulers' σ; None for schedulers without a σ table."""
    sigmas = getattr(step.scheduler, "sigmas", None)
    index = (getattr(step.scheduler, "begin_index", None) or 0) + step.index
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or index >= len(sigmas):
        return None
    return float(sigmas[index])


STEP_SCALARS: tuple[StepScalar, ...] = (
    StepScalar(
        "scheduler_sigma",
        "the scheduler's own σ at this step (sigmas[i]; flow models: the share of noise in x_t)",
        scheduler_sigma,
    ),
)
"""The loop's own per-step scalars (a family adds its ``step_scalars``)."""


def read_scalars(scalars: tuple[StepScalar, ...], step: FinishedStep) -> dict[str, float]:
    """Every declared scalar of a finished step, by name; a reader's None (or a non-finite value) is left out."""
    values = {}
    for scalar in scalars:
        value = scalar.read(step)
        if value is not None and math.isfinite(float(value)):
            values[scalar.name] = float(value)
    return values


def scalars_table(scalars: tuple[StepScalar, ...]) -> str:
    """The per-step scalar table of docs/hook-points.md, made from the declarations."""
    rows = ["| name | meaning |", "|---|---|"]
    rows += [f"| `{s.name}` | {s.meaning} |" for s in scalars]
    return "\n".join(rows)
