"""The hook-point table and the notation used everywhere in diffexplain.

Notation (one scheme in code, docs and widgets)::

    x_t        latents            the noisy sample entering step t          [B, C, h, w]
    x_T        latents.init       the starting Gaussian noise (times the scheduler's init_noise_sigma)
    ε_c        eps_cond           U-Net output with the prompt              [B, C, h, w]
    ε_u        eps_uncond         U-Net output with the negative/empty prompt
    Δ          delta              ε_c − ε_u, what the text adds
    w          guidance_scale     classifier-free guidance scale (w ≤ 1: guidance off, one U-Net call)
    ε̂          eps_guided         ε_u + w·(ε_c − ε_u)
    x̂0         pred_x0            the model's current guess of the clean sample
    ᾱ_t        alpha_bar          cumulative signal fraction; x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
    σ_t        sigma              noise level in the "variance exploding" view, σ² = (1−ᾱ)/ᾱ
    x_{t−1}    next_latents       the scheduler's output, the latents of the next step

For v-prediction models "ε" names the model output, which is v; x̂0 is derived accordingly.

Step numbers are never part of a name: filter hooks by step with ``steps=``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HookPoint:
    """One named place in the loop where a hook may read or replace a tensor."""

    name: str
    tensor: str  # what the tensor is, in words
    shape: str  # its shape, in the notation above
    per_step: bool  # True: called once per model evaluation; False: once per run


HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint("prompt.cond", "text token embeddings of the prompt", "[B, T, D]", False),
    HookPoint("prompt.uncond", "text token embeddings of the negative (or empty) prompt", "[B, T, D]", False),
    HookPoint("latents.init", "x_T, the starting noise, scaled by init_noise_sigma", "[B, C, h, w]", False),
    HookPoint("step.latents", "x_t, the latents entering the step", "[B, C, h, w]", True),
    HookPoint("step.prompt.cond", "prompt embeddings fed to the U-Net at this step", "[B, T, D]", True),
    HookPoint(
        "step.prompt.uncond", "negative-prompt embeddings fed to the U-Net at this step", "[B, T, D]", True
    ),
    HookPoint("step.unet.cond", "ε_c, the U-Net output with the prompt", "[B, C, h, w]", True),
    HookPoint(
        "step.unet.uncond", "ε_u, the U-Net output without the prompt (CFG on only)", "[B, C, h, w]", True
    ),
    HookPoint("step.guidance", "ε̂ = ε_u + w·(ε_c − ε_u), the guided model output", "[B, C, h, w]", True),
    HookPoint("step.pred_x0", "x̂0, the current guess of the clean sample", "[B, C, h, w]", True),
    HookPoint("step.next", "x_{t−1}, the scheduler's output for the next step", "[B, C, h, w]", True),
    HookPoint(
        "decode.image",
        "the decoded image in [-1, 1] (the VAE's output, or x_0 in pixel space)",
        "[B, 3, H, W]",
        False,
    ),
)
"""Every hook point of the loop, in the order the loop reaches them."""

HOOK_NAMES: tuple[str, ...] = tuple(p.name for p in HOOK_POINTS)
"""The names of all hook points."""
STEP_HOOK_NAMES: tuple[str, ...] = tuple(p.name for p in HOOK_POINTS if p.per_step)
RUN_HOOK_NAMES: tuple[str, ...] = tuple(p.name for p in HOOK_POINTS if not p.per_step)


def hook_point(name: str) -> HookPoint:
    """Return the hook point called ``name``; raise ``KeyError`` listing close names if unknown."""
    for point in HOOK_POINTS:
        if point.name == name:
            return point
    import difflib

    close = difflib.get_close_matches(name, HOOK_NAMES, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown hook point {name!r}.{hint} Valid names: {', '.join(HOOK_NAMES)}.")
