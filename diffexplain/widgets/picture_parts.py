"""PictureLab's pieces that are not widgets: the picture it starts from, the mask rectangle, and where on
the noise schedule a run from a picture enters."""

from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

from diffexplain import render
from diffexplain.probe import image_tensor
from diffexplain.widgets.inputs import InputError

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer

Box = tuple[int, int, int, int]
"""A rectangle in pixels: (x0, y0, x1, y1), x1 and y1 excluded."""


def scene_picture(caption_text: str, seed: int, size: int) -> tuple[Image.Image, str]:
    """A dataset picture and its caption: the scene ``caption_text`` says (drawn with ``seed``'s jitter), or,
    with an empty caption, a scene drawn at random from ``seed``."""
    from diffexplain.data import caption, render_scene, sample_scene
    from diffexplain.data.checker import parse_caption

    if caption_text.strip():
        try:
            scene = parse_caption(caption_text)
        except ValueError as exc:
            raise InputError(f"the caption box: {exc}") from None
    else:
        scene = sample_scene(random.Random(seed))
    return render_scene(scene, size=size, seed=seed), caption(scene)


def uploaded_picture(content: bytes | None, size: tuple[int, int]) -> Image.Image:
    """An uploaded file's picture, resized to ``size`` (H, W)."""
    if content is None:
        raise InputError("no file uploaded: choose a picture with the upload button first")
    try:
        pixels = image_tensor(content, size)
    except Exception as exc:  # PIL's UnidentifiedImageError, a bad array ...
        raise InputError(f"the uploaded file is not a picture PIL can read ({exc})") from None
    return render.to_pil(pixels[0])


def last_picture(explainer: Explainer, size: tuple[int, int]) -> Image.Image:
    """The first picture of the explainer's last trace, resized to ``size`` (H, W)."""
    trace = explainer.last_trace
    if trace is None or trace.image is None:
        raise InputError("there is no last trace with a picture: run something first, or pick another source")
    picture = render.to_pil(trace.image[:1].float())
    return picture.resize((size[1], size[0]), Image.Resampling.BICUBIC)


def check_box(box: Box, height: int, width: int) -> Box:
    """``box`` if it holds pixels of a ``height`` × ``width`` picture, else an ``InputError`` naming the sliders."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width):
        raise InputError(
            f"the mask rectangle is empty: x1 ({x1}) must be greater than x0 ({x0}), at most {width}"
        )
    if not (0 <= y0 < y1 <= height):
        raise InputError(
            f"the mask rectangle is empty: y1 ({y1}) must be greater than y0 ({y0}), at most {height}"
        )
    return box


def box_mask(box: Box, height: int, width: int) -> torch.Tensor:
    """The mask [1, 1, H, W]: 1 inside ``box`` (repaint), 0 outside (keep)."""
    x0, y0, x1, y1 = check_box(box, height, width)
    mask = torch.zeros(1, 1, height, width)
    mask[..., y0:y1, x0:x1] = 1.0
    return mask


def with_box(picture: Image.Image, box: Box | None) -> Image.Image:
    """``picture`` with ``box`` outlined in red (a copy), or ``picture`` itself without one."""
    if box is None:
        return picture
    out = picture.convert("RGB").copy()
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0), width=1)
    return out


def entry_step(num_inference_steps: int, strength: float) -> int:
    """t_start = N − ⌊N·s⌋: the inference steps a run from a picture skips (the pipeline's ``get_timesteps``)."""
    return num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)


def schedule_levels(explainer: Explainer, num_inference_steps: int) -> dict[str, Any]:
    """The level each of the N inference steps starts from: its timestep and ᾱ_t (DDPM's schedule), or σ
    where the scheduler has no ᾱ. ``{"timesteps": [...], "values": [...], "name": "ᾱ_t" or "σ"}``."""
    scheduler = copy.deepcopy(explainer.scheduler)
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [float(t) for t in scheduler.timesteps[:num_inference_steps]]
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None:
        values = [float(alphas[int(round(t))]) for t in timesteps]
        return {"timesteps": timesteps, "values": values, "name": "ᾱ_t"}
    sigmas = [float(s) for s in scheduler.sigmas[:num_inference_steps]]
    return {"timesteps": timesteps, "values": sigmas, "name": "σ"}
