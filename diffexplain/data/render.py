"""Draw a scene as an RGB image (anti-aliased by drawing large and shrinking)."""

from __future__ import annotations

import colorsys
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from diffexplain.data.scenes import Scene, SceneObject
from diffexplain.data.vocab import (
    BACKGROUNDS,
    COLOURS,
    HUE_JITTER_DEG,
    PAIR_SIZE,
    POSITION_JITTER,
    POSITIONS,
    SIZE_JITTER,
    SIZES,
)

SUPERSAMPLE = 4
TRIANGLE_CIRCUMRADIUS = 1.3  # times the object's half-size, so a triangle looks as big as a circle


def object_rgb(colour: str, rng: random.Random | None = None) -> tuple[int, int, int]:
    """The saturated RGB of a colour word, with a little hue/value jitter if ``rng`` is given."""
    hue = COLOURS[colour]
    sat, val = 0.92, 0.95
    if rng is not None:
        hue += rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)
        sat = rng.uniform(0.85, 1.0)
        val = rng.uniform(0.85, 1.0)
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, rng: random.Random) -> None:
    cx, cy = POSITIONS[obj.position]
    cx = (cx + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * side
    cy = (cy + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * side
    half = (SIZES[obj.size] if obj.size else PAIR_SIZE) * side * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    fill = object_rgb(obj.colour, rng)
    if obj.shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:  # triangle, pointing up, centred on its centroid
        r = half * TRIANGLE_CIRCUMRADIUS
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        draw.polygon(pts, fill=fill)


def render_scene(scene: Scene, *, size: int = 64, seed: int = 0) -> Image.Image:
    """Render ``scene`` as a ``size`` × ``size`` RGB PIL image; the jitter is fixed by ``seed``."""
    rng = random.Random(seed)
    side = size * SUPERSAMPLE
    lo, hi = BACKGROUNDS[scene.background]
    grey = round(rng.uniform(lo, hi) * 255)
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_object(draw, obj, side, rng)
    return img.resize((size, size), Image.Resampling.BOX)


def to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as a float32 array in [-1, 1], shape [3, H, W] (the model's pixel convention)."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()
