"""A run's guider settings from ``run``'s arguments (``guider=``, ``guidance_rescale=``)."""

from __future__ import annotations

from typing import Any

from diffexplain.guiders.base import GUIDERS, Guider, guider_from_json
from diffexplain.guiders.cfg import CFG
from diffexplain.guiders.from_diffusers import DiffusersGuider


def run_guider(guider: Any, guidance_rescale: float = 0.0) -> dict[str, Any] | None:
    """The ``guider`` settings of a run from ``run``'s ``guider=`` and ``guidance_rescale=`` (diffusers'
    knob: CFG rescaled by φ); None: the loop's own ε_u + w·Δ. ``TypeError``/``ValueError`` naming what
    was wrong."""
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, int | float):
        raise TypeError(f"guidance_rescale must be a number in [0, 1]; got {guidance_rescale!r}")
    if guider is None:
        if guidance_rescale == 0:
            return None
        return CFG(rescale=guidance_rescale).describe()
    if is_diffusers_guider(guider):
        guider = DiffusersGuider(guider)
    if not isinstance(guider, Guider):
        raise TypeError(
            f"guider={guider!r}: expected a diffexplain guider ({', '.join(sorted(GUIDERS))}: "
            "from diffexplain.guiders import CFG, APG) or a diffusers one (diffusers.guiders)"
        )
    if guidance_rescale:
        raise ValueError(
            f"pass guidance_rescale={guidance_rescale!r} or guider=, not both: give the guider its own "
            "rescale (CFG(rescale=...), APG(rescale=...))"
        )
    return guider.describe()


def is_diffusers_guider(value: Any) -> bool:
    """Whether ``value`` is one of diffusers' guiders (by its class's ancestry, without importing them)."""
    return any(
        c.__name__ == "BaseGuidance" and c.__module__.startswith("diffusers.") for c in type(value).__mro__
    )


def check_fits(guider: dict[str, Any] | None, scheduler: Any, eta: float) -> None:
    """Before a run starts: ``ValueError`` where its guider cannot run with this scheduler (CFG++: DDIM)."""
    built = guider_from_json(guider)
    if built is not None and built.checks_scheduler:
        built.check_scheduler(scheduler, eta)
