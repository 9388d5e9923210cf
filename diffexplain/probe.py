"""Single model calls that the widgets need and the loop does not make: encode, decode, one x̂0 guess.

Every function takes an :class:`~diffexplain.Explainer` and uses its own parts (VAE, scheduler,
U-Net, text encoder) and the noise-level helpers of ``diffexplain.noise_levels``.

Notation (``diffexplain.names``): x0 clean latents, x_t noisy latents, ε noise, x̂0 the model's guess.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from diffexplain.fingerprint import weight_fingerprint
from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep
from diffexplain.model_step import predict_branches
from diffexplain.noise_levels import NoiseLevel, pred_x0_from
from diffexplain.scheduler_state import fresh_scheduler

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

__all__ = [
    "X0Guess",
    "decode_latents",
    "encode_image",
    "image_size",
    "image_tensor",
    "model_fingerprint",
    "noise_latents_at",
    "predict_x0_at",
    "scheduler_at",
    "trace_fingerprint",
    "unet_fingerprint",
    "weight_fingerprint",
]


# ---- weights --------------------------------------------------------------------------------------
def model_fingerprint(explainer: Explainer, *, length: int = 10) -> str:
    """The weight fingerprint of the explainer's denoiser (see :func:`diffexplain.fingerprint.weight_fingerprint`)."""
    return weight_fingerprint(explainer.model, length=length)


unet_fingerprint = model_fingerprint  # the name it had while every model was a U-Net


def trace_fingerprint(trace: Trace, explainer: Explainer | None = None) -> str | None:
    """The fingerprint of the weights that made a trace (``Trace.fingerprint``), else the explainer's.

    None when neither is available (a trace file without one, and no model loaded).
    """
    value = trace.fingerprint()
    if value:
        return str(value)[:10]
    explainer = explainer or trace.explainer
    return None if explainer is None else model_fingerprint(explainer)


# ---- images <-> latents ---------------------------------------------------------------------------
def image_tensor(image: Any, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """An image as a [1, 3, H, W] float tensor in [-1, 1], resized to ``size`` (square int or (H, W)).

    Accepts a PIL image, encoded bytes (PNG, JPEG ...), an HxWx3 uint8 array, or a tensor already in
    [-1, 1] ([3, H, W] or [1, 3, H, W]).
    """
    from PIL import Image

    if isinstance(image, torch.Tensor):
        t = image.detach().float()
        t = t[None] if t.ndim == 3 else t
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"expected an image tensor [3, H, W] or [1, 3, H, W], got {tuple(image.shape)}")
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            t = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False)
        return t.clamp(-1, 1)
    if isinstance(image, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 array, got dtype {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot read an image from {type(image).__name__}")
    image = image.convert("RGB")
    if size is not None:
        w, h = (size, size) if isinstance(size, int) else (size[1], size[0])
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # [H, W, 3] in 0..255
    return (arr.permute(2, 0, 1)[None] / 127.5 - 1.0).clamp(-1, 1)


def image_size(explainer: Explainer) -> tuple[int, int]:
    """(H, W) of the images the model makes by default: its sample size × VAE scale factor."""
    return explainer.family.default_size()


@torch.no_grad()
def encode_image(explainer: Explainer, image: Any) -> torch.Tensor:
    """An image → clean latents x0 [1, C, h, w] (the VAE's posterior mean, shifted and scaled as in SD).

    The image is resized to the model's size first. In pixel space (no VAE) x0 is the image itself.
    """
    pixels = image_tensor(image, image_size(explainer))
    return explainer.family.encode_image(pixels)


@torch.no_grad()
def decode_latents(explainer: Explainer, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, h, w] → image [B, 3, H, W] in [-1, 1] with the explainer's VAE (identity in pixel space)."""
    return explainer.family.decode(latents.to(explainer.device)).float().clamp(-1, 1).cpu()


# ---- one model evaluation on a user-made x_t ------------------------------------------------------
def scheduler_at(explainer: Explainer, timestep: float) -> tuple[Any, torch.Tensor]:
    """A fresh copy of the explainer's scheduler set up so that its timestep nearest ``timestep`` is current.

    Returns ``(scheduler, t)``; ``t`` is that scheduler timestep (it may differ slightly from ``timestep``
    for schedulers whose timesteps are not integers).
    """
    scheduler = fresh_scheduler(explainer.scheduler)
    total = int(scheduler.config.num_train_timesteps)
    if "original_inference_steps" in scheduler.config:  # LCM: its timesteps are a subset of this grid
        scheduler = type(scheduler).from_config(scheduler.config, original_inference_steps=total)
    # as the family's pipeline sets them (a dynamically shifted schedule needs the image size: the default)
    explainer.family.set_timesteps(scheduler, total, *explainer.family.default_size())
    timesteps = scheduler.timesteps
    index = int((timesteps.float() - float(timestep)).abs().argmin())
    t = timesteps[index]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(index)
    return scheduler, t


@torch.no_grad()
def noise_latents_at(
    explainer: Explainer, clean_latents: torch.Tensor, timestep: float, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t from x0 and ε with the model's own scheduler (its family's forward process); returns (x_t, t)."""
    scheduler, t = scheduler_at(explainer, timestep)
    x0 = clean_latents.to(explainer.device)
    noisy = explainer.family.add_noise(scheduler, x0, noise.to(x0.device, x0.dtype), t)
    return noisy, t


class X0Guess(NamedTuple):
    """One U-Net evaluation at a chosen x_t and t, and the x̂0 it implies."""

    pred_x0: torch.Tensor  # x̂0 = a·x_t + b·ε̂                       [B, C, h, w]
    eps_cond: torch.Tensor  # ε_c                                    [B, C, h, w]
    eps_uncond: torch.Tensor | None  # ε_u (None with guidance off)
    eps_guided: torch.Tensor  # ε̂ = ε_u + w·(ε_c − ε_u)
    timestep: float  # the scheduler timestep used
    level: NoiseLevel  # ᾱ_t, σ_t and (a, b)


@torch.no_grad()
def predict_x0_at(
    explainer: Explainer,
    noisy_latents: torch.Tensor,
    t: float,
    prompt: str = "",
    guidance_scale: float = 1.0,
    *,
    negative_prompt: str = "",
) -> X0Guess:
    """The model's guess x̂0 from ``noisy_latents`` (x_t as the scheduler holds it) at timestep ``t``.

    One model call (two branches batched when ``guidance_scale > 1``), scaled and converted exactly
    as the loop does it (the family's ``predict`` and ``noise_level``): x̂0 = a·x_t + b·ε̂.
    """
    scheduler, timestep = scheduler_at(explainer, t)
    family = explainer.family
    x_t = noisy_latents.to(explainer.device, explainer.dtype)
    negatives = [negative_prompt] * x_t.shape[0]  # a list: the empty prompt is a negative prompt here
    do_cfg = family.uses_guidance(guidance_scale, negatives)
    cond, uncond = explainer.encode([prompt] * x_t.shape[0], negatives, guidance=do_cfg)
    model_kwargs = family.model_kwargs(guidance_scale, x_t)
    eps_cond, eps_uncond, _ = predict_branches(family, scheduler, x_t, timestep, cond, uncond, model_kwargs)
    guider = family.default_guider()  # the family's own guidance (Qwen-Image's norm rescale), else ε_u + w·Δ
    if eps_uncond is None:
        eps_guided = eps_cond
    elif guider is None:
        eps_guided = guide(eps_cond, eps_uncond, guidance_scale)
    else:
        eps_guided = guider(
            eps_cond, eps_uncond, guidance_scale, GuidanceStep(0, 1, float(timestep), _unhooked)
        )
    level = family.noise_level(scheduler, timestep)
    return X0Guess(
        pred_x0_from(x_t, eps_guided, level), eps_cond, eps_uncond, eps_guided, float(timestep), level
    )


def _unhooked(name: str, x: torch.Tensor) -> torch.Tensor:
    """A guider's hook points in a probe: no hooks, the tensor as it is."""
    return x
