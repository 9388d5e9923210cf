"""Re-guiding a recorded step: ε̂ and x̂0 at another guidance scale, from the cached ε_c and ε_u (no model call).

Notation (``diffexplain.names``): ε̂ = ε_u + w·(ε_c − ε_u) (``guidance.guide``, the loop's own formula),
x̂0 = a·x_t + b·ε̂ at the step's noise level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from diffexplain.checks import check_guidance_scale
from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep, Guider, guider_from_json
from diffexplain.noise_levels import pred_x0_from

if TYPE_CHECKING:
    from diffexplain.trace import Trace


class Reguided(NamedTuple):
    """The result of re-guiding one step from cached ε_c and ε_u."""

    eps_guided: torch.Tensor  # ε̂ = ε_u + w·(ε_c − ε_u)      [B, C, h, w]
    pred_x0: torch.Tensor  # x̂0 = a·x_t + b·ε̂               [B, C, h, w]


def reguide(trace: Trace, step: int, guidance_scale: float, guider: Guider | None = None) -> Reguided:
    """``trace.reguide``: step ``step``'s ε̂ and x̂0 at ``guidance_scale`` (a finite w ≥ 0), with the loop's
    ε_u + w·Δ or ``guider`` (None: the family's own guidance where it has one, Qwen-Image's true CFG). A
    stateful guider (APG) starts from the state the run's own guider had entering that step where the run
    used the same method, else from none: exact for that one step, since a change there would change the
    state every later step sees."""
    guidance_scale = check_guidance_scale(guidance_scale)
    record = trace.steps[trace._index(step)]  # noqa: SLF001 - the trace's own step lookup
    for name in ("step.model.cond", "step.model.uncond"):
        if name not in record.tensors:
            raise trace._not_kept(name, record.index)  # noqa: SLF001 - its "why" message
    eps_cond, eps_uncond = record.tensors["step.model.cond"], record.tensors["step.model.uncond"]
    if guider is None:
        guider = family_guider(trace)  # the family's own guidance (Qwen-Image's), else None
    if guider is None:
        eps_guided = guide(eps_cond, eps_uncond, guidance_scale)
    else:
        if not isinstance(guider, Guider):
            raise TypeError(f"guider={guider!r}: expected a diffexplain guider (diffexplain.guiders)")
        fresh = guider_from_json(guider.describe())  # the caller's object keeps its own state
        same_method = (trace.run_settings.guider or {}).get("name") == guider.name
        if fresh.stateful and same_method and record.restart is not None:
            fresh.load_state(record.restart.guider_state or {})
        where = GuidanceStep(record.index, trace.run_settings.inference_steps_run, record.timestep, _unhooked)
        eps_guided = fresh(eps_cond, eps_uncond, guidance_scale, where)
    latents = record.tensors.get("step.latents")
    if latents is None:
        latents = record.restart.latents.to(eps_guided.device, eps_guided.dtype)
    return Reguided(eps_guided, pred_x0_from(latents, eps_guided, record.level))


def family_guider(trace: Trace) -> Guider | None:
    """The default guidance method of the family that made ``trace`` (``Family.default_guider``), None for
    the loop's ε_u + w·Δ."""
    from diffexplain.families import FAMILIES

    family = FAMILIES.get(trace.run_settings.family)
    return None if family is None else family.default_guider()


def _unhooked(name: str, x: torch.Tensor) -> torch.Tensor:
    """A guider's hook points when re-guiding: no hooks, the tensor as it is."""
    return x
