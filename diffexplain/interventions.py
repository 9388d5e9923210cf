"""Ready-made interventions: plain hook factories returning ``Hook`` objects.

Pass them as ``hooks=[...]`` to ``run``/``fork`` or to ``with explainer.hooks([...])``.
Notation: ε_c ``eps_cond``, ε_u ``eps_uncond``, w ``guidance_scale``, ε̂ = ε_u + w·(ε_c − ε_u).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.checks import check_float, check_guidance_scale
from diffexplain.guidance import guide
from diffexplain.hooks import Hook, HookContext, StepFilter

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.explainer import Explainer

__all__ = [
    "PATTERNS",
    "Mask",
    "add_noise",
    "cfg_off",
    "initial_noise_from_image",
    "latent_mask",
    "noise_pattern",
    "pattern",
    "replace_initial_noise",
    "scale_delta",
    "set_guidance",
    "swap_prompt",
]

Mask = torch.Tensor | tuple[float, float, float, float]
"""Where to act: a 2-D [h, w] tensor (1 = inside; resized to the latents), or a rectangle
``(top, bottom, left, right)`` as fractions in [0, 1] of the image's height and width."""
PATTERNS = ("stripes", "checkerboard", "blob")
"""Names :func:`pattern` and :func:`noise_pattern` accept."""


def _branches(ctx: HookContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε_c, ε_u) of the current step; a clear error when guidance is off."""
    if "step.model.uncond" not in ctx.current:
        raise ValueError(
            f"{ctx.name!r} at step {ctx.step}: this run has guidance off (guidance_scale ≤ 1), so there is no ε_u; "
            "run with guidance_scale > 1 to change guidance"
        )
    return ctx.current["step.model.cond"], ctx.current["step.model.uncond"]


def cfg_off(steps: StepFilter = None) -> Hook:
    """Turn classifier-free guidance off at ``steps``: ε̂ = ε_c."""

    def cfg_off_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        eps_cond, _ = _branches(ctx)
        return eps_cond.clone()

    return Hook("step.guidance", cfg_off_hook, steps=steps)


def set_guidance(scale: float, steps: StepFilter = None) -> Hook:
    """Use guidance scale ``scale`` (a finite number ≥ 0) at ``steps``: ε̂ = ε_u + scale·(ε_c − ε_u)."""
    scale = check_guidance_scale(scale, "scale")

    def set_guidance_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        eps_cond, eps_uncond = _branches(ctx)
        return guide(eps_cond, eps_uncond, scale)

    return Hook("step.guidance", set_guidance_hook, steps=steps)


def scale_delta(factor: float, steps: StepFilter = None) -> Hook:
    """Scale what the text adds, Δ = ε_c − ε_u, by ``factor`` at ``steps``: ε̂ = ε_u + w·factor·Δ."""
    factor = check_float("factor", factor, meaning="what Δ = ε_c − ε_u is multiplied by")

    def scale_delta_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        eps_cond, eps_uncond = _branches(ctx)
        return guide(eps_cond, eps_uncond, ctx.guidance_scale * factor)

    return Hook("step.guidance", scale_delta_hook, steps=steps)


def swap_prompt(explainer: Explainer, prompt: str | list[str], from_step: int) -> Hook:
    """Condition on ``prompt`` from loop step ``from_step`` on (embeddings encoded once, here)."""
    embeds, _ = explainer.encode_prompt(prompt, guidance=False)  # [B or 1, T, D]

    def swap_prompt_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        new = embeds.to(device=x.device, dtype=x.dtype)
        return new.expand(x.shape[0], *new.shape[1:]).clone() if new.shape[0] == 1 else new

    return Hook("step.prompt.cond", swap_prompt_hook, steps=lambda step: step >= from_step)


def _mask_box(box: Any) -> tuple[float, float, float, float]:
    """A mask rectangle (top, bottom, left, right): four fractions in [0, 1], top ≤ bottom and left ≤ right."""
    if isinstance(box, str) or not isinstance(box, tuple | list) or len(box) != 4:
        raise ValueError(f"mask must be a 2-D tensor or 4 fractions (top, bottom, left, right), got {box!r}")
    top, bottom, left, right = (
        check_float(f"mask {side}", value, 0.0, 1.0, meaning="a fraction of the image side")
        for side, value in zip(("top", "bottom", "left", "right"), box, strict=True)
    )
    if top > bottom or left > right:
        raise ValueError(
            f"mask box (top, bottom, left, right) must be fractions in [0, 1] with top ≤ bottom and "
            f"left ≤ right, got {box}"
        )
    return top, bottom, left, right


def latent_mask(
    mask: Mask, height: int, width: int, *, device: Any = None, dtype: Any = None
) -> torch.Tensor:
    """A [height, width] mask from a [h, w] / [H, W] tensor (resized) or a (top, bottom, left, right) fraction box."""
    if isinstance(mask, torch.Tensor):
        if mask.dim() != 2:
            raise ValueError(f"mask tensor must be 2-D [h, w], got shape {tuple(mask.shape)}")
        resized = F.interpolate(
            mask[None, None].float(), size=(height, width), mode="bilinear", align_corners=False
        )
        out = resized[0, 0]
    else:
        top, bottom, left, right = _mask_box(mask)
        out = torch.zeros(height, width)
        out[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] = 1.0
    return out.to(device=device, dtype=dtype)


def add_noise(
    step: int,
    strength: float,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    mask: Mask | None = None,
) -> Hook:
    """At loop ``step``, add ``strength``·ε (ε ~ N(0, I), in latent units) to x_t, optionally only inside ``mask``."""
    if generator is not None and seed is not None:
        raise ValueError("pass generator= or seed=, not both")
    strength = check_float("strength", strength, meaning="how many ε, in latent units, are added to x_t")
    if mask is not None and not isinstance(mask, torch.Tensor):
        _mask_box(mask)  # checked now, not when the hook runs

    def add_noise_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        noise = randn_tensor(tuple(x.shape), generator=gen, device=x.device, dtype=x.dtype)
        if mask is not None:
            noise = noise * latent_mask(mask, x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        return x + strength * noise

    return Hook("step.latents", add_noise_hook, steps=step)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per sample."""
    dims = tuple(range(1, x.dim()))
    return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-8)


def replace_initial_noise(noise: torch.Tensor) -> Hook:
    """Start from ``noise`` ([C, h, w] or [B, C, h, w], unit scale) times the scheduler's init_noise_sigma."""

    def replace_initial_noise_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        new = noise if noise.dim() == x.dim() else noise[None]
        new = new.to(device=x.device, dtype=x.dtype).expand_as(x)
        return new * ctx.init_noise_sigma

    return Hook("latents.init", replace_initial_noise_hook)


def pattern(kind: str, shape: tuple[int, ...], *, period: int = 4) -> torch.Tensor:
    """A standardised structured pattern of ``shape`` [B, C, h, w]: "stripes", "checkerboard" or "blob"."""
    b, c, h, w = shape
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    if kind == "stripes":
        image = torch.sin(2 * math.pi * cols / period)
    elif kind == "checkerboard":
        half = max(period // 2, 1)
        image = (
            (torch.div(rows, half, rounding_mode="floor") + torch.div(cols, half, rounding_mode="floor")) % 2
        ) * 2 - 1
    elif kind == "blob":
        radius = max(min(h, w) / 6, 1.0)
        image = torch.exp(-((rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2) / (2 * radius**2))
    else:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {', '.join(PATTERNS)}")
    return _standardise(image.expand(b, c, h, w).clone())


def noise_pattern(kind: str, *, period: int = 4, mix: float = 1.0) -> Hook:
    """Start from a structured pattern instead of noise: mix·pattern + (1 − mix)·noise, standardised, × init σ.

    ``mix`` is the pattern's share, from 0 (noise alone) to 1 (the pattern alone).
    """
    if kind not in PATTERNS:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {', '.join(PATTERNS)}")
    share = check_float("mix", mix, 0.0, 1.0, meaning="the pattern's share: 0 is noise alone, 1 the pattern")

    def noise_pattern_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        structured = pattern(kind, tuple(x.shape), period=period).to(device=x.device, dtype=torch.float32)
        mixed = share * structured + (1 - share) * x.float() / ctx.init_noise_sigma
        return (_standardise(mixed) * ctx.init_noise_sigma).to(x.dtype)

    return Hook("latents.init", noise_pattern_hook)


def _image_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A [B, 3, H, W] tensor in [-1, 1] from a PIL image or a [3, H, W] / [B, 3, H, W] tensor in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        return image[None] if image.dim() == 3 else image
    import numpy as np

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)[None]


def initial_noise_from_image(explainer: Explainer, image: Image.Image | torch.Tensor) -> Hook:
    """Start from an image's latents (VAE-encoded, standardised, × init σ) instead of noise."""
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def encode(shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in cache:
            scale = explainer.vae_scale_factor
            pixels = F.interpolate(
                _image_tensor(image).float(), size=(shape[-2] * scale, shape[-1] * scale), mode="bilinear"
            )
            with torch.no_grad():
                latents = explainer.family.encode_image(pixels)
            cache[shape] = _standardise(latents.float())
        return cache[shape]

    def initial_noise_from_image_hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:
        latents = encode(tuple(x.shape)).to(device=x.device)
        return (latents * ctx.init_noise_sigma).to(x.dtype).expand_as(x).clone()

    return Hook("latents.init", initial_noise_from_image_hook)
