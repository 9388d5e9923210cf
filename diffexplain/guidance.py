"""Classifier-free guidance, written once: the loop, ``Trace.reguide``, the probes and the interventions use it.

Notation (``diffexplain.names``)::

    ε̂ = ε_u + w·(ε_c − ε_u)      eps_guided = guide(eps_cond, eps_uncond, w)

As in Modular Diffusers' ``ClassifierFreeGuidance``, guidance is a function of the two branch
outputs; the operations are the pipelines' own, in their order, so results match them bit for bit.
"""

from __future__ import annotations

import torch


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε̂ = ε_u + w·(ε_c − ε_u): the guided model output (ε, v or flow velocity alike)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guidance_on(guidance_scale: float, *, distilled: bool = False) -> bool:
    """Whether a run computes the unconditional branch: w > 1, and the model is not guidance-distilled.

    Decided once per run (``trace.settings["do_cfg"]``); a distilled model takes w as an input instead.
    """
    return guidance_scale > 1 and not distilled
