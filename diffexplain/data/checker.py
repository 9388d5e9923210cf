"""Read a picture's objects back: colour, shape and position of each coloured shape.

The procedural dataset draws saturated shapes on plain grey backgrounds, so an object is a connected
region of *chromatic* pixels (chroma = max(R, G, B) - min(R, G, B), in [0, 1]; grey has none). A pixel
that blends an object with the grey background keeps the object's hue and has chroma proportional to
how much of it the object covers, so the checker estimates a soft coverage per pixel and measures
each object with sub-pixel accuracy:

- **colour**: the chroma-weighted circular mean of the pixels' HSV hues, named by the nearest hue of
  :data:`~diffexplain.data.vocab.COLOURS`;
- **shape**: the fill ratio ``area / (widest row × tallest column)`` measured on coverage, which is
  1 for a square, π/4 ≈ 0.79 for a circle and about 0.5 for a triangle (0.52–0.59 at 64 px), helped
  by the skewness of the row profile, which only a triangle has (-0.57; it survives pixelation of
  small triangles, which raises their fill ratio to up to 0.78 at 24 px);
- **position**: the coverage-weighted centroid, named by the nearest of
  :data:`~diffexplain.data.vocab.POSITIONS`.

:func:`score` compares what it finds with a :class:`~diffexplain.data.scenes.Scene` or a caption
(see :func:`parse_caption`). It scores every image of the dataset right; on generated images it is a
stand-in for a person looking at the picture.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from diffexplain.data.scenes import Scene, SceneObject
from diffexplain.data.vocab import BACKGROUNDS, COLOURS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES

ImageLike = Image.Image | np.ndarray | torch.Tensor
"""What the checker reads: a PIL image; a uint8 array [H, W, 3]; a float array or tensor [3, H, W] in
[-1, 1] (the model's pixel convention, as in :class:`~diffexplain.data.dataset.Example`); or a float
array [H, W, 3] in [0, 1] (diffusers' ``output_type="np"``)."""

CHROMA_THRESHOLD = 0.25
"""A pixel is foreground when its chroma exceeds this (objects have 0.72–0.95; grey has 0)."""
MIN_AREA_FRACTION = 0.004
"""Connected regions smaller than this fraction of the image are specks, not objects."""
MIN_RELATIVE_AREA = 0.1
"""Regions smaller than this fraction of the largest region are specks too."""
FILL_TRIANGLE_CIRCLE = 0.67
"""Fill ratios below this are triangles (triangle ≈ 0.50–0.58, circle ≈ 0.79)."""
FILL_CIRCLE_SQUARE = 0.89
"""Fill ratios at or above this are squares (circle ≈ 0.79, square ≈ 1.0)."""
SKEW_TRIANGLE = 0.3
"""Below :data:`FILL_CIRCLE_SQUARE`, a row-profile skewness beyond ± this is a triangle (-0.57 ideal)."""


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image, with the measurements its attributes were read from."""

    colour: str  # nearest colour word by hue
    shape: str  # circle, square or triangle
    position: str  # nearest position word by centroid
    centroid: tuple[float, float]  # (x, y) as fractions of the image side, y grows downwards
    area: float  # covered fraction of the image
    hue: float  # degrees in [0, 360)
    measurements: dict[str, float] = field(default_factory=dict)
    """``fill_ratio``, ``skew`` (of the row profile), ``width``/``height`` (widest row, tallest column, in pixels), ``chroma``
    (typical object chroma), and margins: ``hue_margin`` (degrees between the nearest and the second
    nearest colour hue distance), ``fill_margin`` (distance of the fill ratio to the nearest shape
    threshold), ``position_margin`` (same for the centroid, as a fraction of the image side)."""


@dataclass(frozen=True)
class ObjectScore:
    """How one object of the scene was drawn: its matched detection and one boolean per attribute."""

    expected: SceneObject
    found: DetectedObject | None  # None: no detected object was left to match
    colour: bool
    shape: bool
    position: bool

    @property
    def all_right(self) -> bool:
        """Colour, shape and position all right."""
        return self.colour and self.shape and self.position


@dataclass(frozen=True)
class AttributeScore:
    """An image scored against a scene: per-object attribute booleans and the object count."""

    objects: tuple[ObjectScore, ...]
    detected: tuple[DetectedObject, ...]

    @property
    def count_right(self) -> bool:
        """As many objects found as the scene holds (a missing or extra object is wrong)."""
        return len(self.detected) == len(self.objects)

    @property
    def colour(self) -> bool:
        """Every object has the right colour."""
        return all(o.colour for o in self.objects)

    @property
    def shape(self) -> bool:
        """Every object has the right shape."""
        return all(o.shape for o in self.objects)

    @property
    def position(self) -> bool:
        """Every object is in the right place."""
        return all(o.position for o in self.objects)

    @property
    def all_right(self) -> bool:
        """The right number of objects, each with the right colour, shape and position."""
        return self.count_right and all(o.all_right for o in self.objects)


# ---------------------------------------------------------------------------------------------- images


def as_rgb(image: ImageLike) -> np.ndarray:
    """``image`` as a float32 array [H, W, 3] in [0, 1] (see :data:`ImageLike` for what is accepted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"expected an RGB image [H, W, 3] or [3, H, W], got shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        if image.shape[-1] != 3:
            raise ValueError(f"a uint8 image must be [H, W, 3], got shape {image.shape}")
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"expected uint8 or float pixels, got {image.dtype}")
    if image.shape[0] == 3 and image.shape[-1] != 3:  # [3, H, W] in [-1, 1]
        image = (image.transpose(1, 2, 0) + 1.0) / 2.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of each pixel of [..., 3] (0 where the pixel is grey)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.where(mx > mn, mx - mn, 1.0)
    hue = np.where(mx == r, ((g - b) / c) % 6.0, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return hue * 60.0


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _nearest(distances: dict[str, float]) -> tuple[str, float]:
    """The key with the smallest distance, and the gap to the second smallest."""
    ranked = sorted(distances.items(), key=lambda kv: kv[1])
    return ranked[0][0], ranked[1][1] - ranked[0][1]


def classify_shape(fill_ratio: float, skew: float = 0.0) -> str:
    """The shape word for a fill ratio (area over widest row × tallest column) and vertical skewness.

    A triangle has a low fill ratio or, when pixelation or blur raises its fill ratio, a strongly
    skewed row profile (its rows widen linearly from the apex: skewness -2√2/5 ≈ -0.57 for one
    pointing up; circles and squares are symmetric, skewness 0).
    """
    if fill_ratio < FILL_TRIANGLE_CIRCLE or (abs(skew) > SKEW_TRIANGLE and fill_ratio < FILL_CIRCLE_SQUARE):
        return "triangle"
    return "circle" if fill_ratio < FILL_CIRCLE_SQUARE else "square"


def _split_merged(mask: np.ndarray, labels: np.ndarray, n_objects: int, min_area: float) -> np.ndarray:
    """Erode the mask until ``n_objects`` seeds appear, grow them back within the mask, label by nearest seed."""
    structure = np.ones((3, 3), dtype=bool)
    for iterations in range(1, 4):
        eroded = ndimage.binary_erosion(mask, structure, iterations=iterations)
        seeds, n = ndimage.label(eroded)
        if n == 0:
            break
        sizes = ndimage.sum(eroded, seeds, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= min_area / (4 * iterations)) + 1
        if len(keep) >= n_objects:
            seeds = np.where(np.isin(seeds, keep), seeds, 0)
            # Grow the seeds back (a morphological opening), so thin bridges stay out of both objects.
            opened = ndimage.binary_dilation(seeds > 0, structure, iterations=iterations) & mask
            _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            return np.where(opened, seeds[iy, ix], 0)
    return labels


def _measure(rgb: np.ndarray, chroma: np.ndarray, region: np.ndarray, core: np.ndarray) -> DetectedObject:
    height, width = chroma.shape
    object_chroma = float(np.percentile(chroma[core], 90))
    cover = np.where(region, np.clip(chroma / max(object_chroma, 1e-6), 0.0, 1.0), 0.0)
    area = float(cover.sum())
    ys, xs = np.mgrid[0:height, 0:width]
    cx = float((cover * (xs + 0.5)).sum() / area) / width
    cy = float((cover * (ys + 0.5)).sum() / area) / height
    rows = cover.sum(1)
    widest, tallest = float(rows.max()), float(cover.sum(0).max())
    fill = area / max(widest * tallest, 1e-6)
    dy = ys[:, 0] + 0.5 - cy * height
    var_y = float((rows * dy**2).sum() / area)
    skew = float((rows * dy**3).sum() / area) / max(var_y, 1e-6) ** 1.5

    hues = np.deg2rad(_hue_degrees(rgb[core]))
    weights = chroma[core]
    hue = float(np.rad2deg(np.arctan2((weights * np.sin(hues)).sum(), (weights * np.cos(hues)).sum())) % 360)
    colour, hue_margin = _nearest({name: _hue_distance(hue, h) for name, h in COLOURS.items()})
    position, pos_margin = _nearest({p: math.dist((cx, cy), xy) for p, xy in POSITIONS.items()})
    shape = classify_shape(fill, skew)
    fill_margin = min(abs(fill - FILL_TRIANGLE_CIRCLE), abs(fill - FILL_CIRCLE_SQUARE))
    return DetectedObject(
        colour=colour,
        shape=shape,
        position=position,
        centroid=(cx, cy),
        area=area / (height * width),
        hue=hue,
        measurements={
            "fill_ratio": fill,
            "skew": skew,
            "width": widest,
            "height": tallest,
            "chroma": object_chroma,
            "hue_margin": hue_margin,
            "fill_margin": fill_margin,
            "position_margin": pos_margin,
        },
    )


def detect_objects(image: ImageLike, n_objects: int | None = None) -> list[DetectedObject]:
    """Find the coloured objects of ``image``, largest first.

    Foreground is every pixel with chroma above :data:`CHROMA_THRESHOLD`; its connected regions,
    minus specks (:data:`MIN_AREA_FRACTION`, :data:`MIN_RELATIVE_AREA`), are the objects. If
    ``n_objects`` is given and fewer regions are found (two blurry objects touching), the regions are
    eroded to find separate seeds and split between them; objects are never dropped to reach it.
    """
    rgb = as_rgb(image)
    chroma = rgb.max(-1) - rgb.min(-1)
    mask = chroma > CHROMA_THRESHOLD
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    min_area = MIN_AREA_FRACTION * mask.size
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = [i + 1 for i, s in enumerate(sizes) if s >= max(min_area, MIN_RELATIVE_AREA * sizes.max())]
    if n_objects is not None and 0 < len(keep) < n_objects:
        labels = _split_merged(np.isin(labels, keep), labels, n_objects, min_area)
        keep = [int(i) for i in np.unique(labels) if i and (labels == i).sum() >= min_area / 4]
    grown = ndimage.grey_dilation(labels, size=(3, 3))  # anti-aliased edge pixels around each object
    objects = []
    for index in keep:
        core = labels == index
        region = core | ((grown == index) & (labels == 0))
        objects.append(_measure(rgb, chroma, region, core))
    return sorted(objects, key=lambda o: -o.area)


# --------------------------------------------------------------------------------------------- captions

_POSITION_OF_PHRASE = {tuple(phrase.split()): pos for pos, phrase in POSITION_PHRASES.items()}
_GRAMMAR_WORDS = ("a", "an", "and", "on", "at", "in", "the", "background")
KNOWN_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys((*_GRAMMAR_WORDS, *COLOURS, *SHAPES, *POSITIONS, *SIZES, *BACKGROUNDS))
)
"""Every word :func:`parse_caption` understands."""


def _expect(word: str | None, allowed: Iterable[str], what: str, text: str) -> str:
    allowed = tuple(allowed)
    if word not in allowed:
        got = "the end of the caption" if word is None else repr(word)
        raise ValueError(f"caption {text!r}: expected {what} ({', '.join(allowed)}), got {got}")
    return word


def parse_caption(text: str) -> Scene:
    """The :class:`Scene` a caption of :func:`~diffexplain.data.scenes.caption` describes.

    Grammar: ``OBJECT [and OBJECT] [on a light|dark background]``, with ``OBJECT`` =
    ``a|an [small|large] COLOUR SHAPE POSITION-PHRASE`` (e.g. "at the top"). Unstated sizes are
    ``None`` and an unstated background is "light" (with ``say_background=False``), so
    ``caption(parse_caption(c)) == c`` for every dataset caption. Raises ``ValueError`` naming an
    unknown word and the known ones, or what was expected where the caption breaks the grammar.
    """
    words = text.strip().lower().split()
    if not words:
        raise ValueError("empty caption; expected e.g. 'a red circle on the left'")
    for word in words:
        if word not in KNOWN_WORDS:
            raise ValueError(
                f"unknown word {word!r} in caption {text!r}; known words: {', '.join(KNOWN_WORDS)}"
            )
    background, say_background = "light", False
    if len(words) >= 4 and words[-4:-2] == ["on", "a"] and words[-1] == "background":
        background = _expect(words[-2], BACKGROUNDS, "a background word", text)
        say_background, words = True, words[:-4]
    phrases: list[list[str]] = [[]]
    for word in words:
        if word == "and":
            phrases.append([])
        else:
            phrases[-1].append(word)
    if len(phrases) > 2:
        raise ValueError(f"caption {text!r}: a scene holds one or two objects, got {len(phrases)}")
    objects, say_size = [], []
    for phrase in phrases:
        rest = iter(phrase)
        _expect(next(rest, None), ("a", "an"), "an article", text)
        word = next(rest, None)
        size = None
        if word in SIZES:
            size, word = word, next(rest, None)
        colour = _expect(word, COLOURS, "a colour", text)
        shape = _expect(next(rest, None), SHAPES, "a shape", text)
        tail = tuple(rest)
        if tail not in _POSITION_OF_PHRASE:
            raise ValueError(
                f"caption {text!r}: expected a position ({', '.join(POSITION_PHRASES.values())}) "
                f"after {shape!r}, got {' '.join(tail) or 'nothing'!r}"
            )
        objects.append(SceneObject(colour, shape, _POSITION_OF_PHRASE[tail], size))
        say_size.append(size is not None)
    return Scene(tuple(objects), background, say_size=tuple(say_size), say_background=say_background)


# ------------------------------------------------------------------------------------------------ score


def _match(expected: Sequence[SceneObject], found: Sequence[DetectedObject]) -> list[DetectedObject | None]:
    """Give each expected object the detection nearest its position (one detection per object)."""
    if not found:
        return [None] * len(expected)
    targets = [POSITIONS[o.position] for o in expected]
    candidates = list(found[:8])
    k = min(len(expected), len(candidates))
    best, best_cost = None, math.inf
    for chosen in itertools.permutations(range(len(expected)), k):  # which scene objects get a match
        for picks in itertools.permutations(range(len(candidates)), k):
            cost = sum(
                math.dist(targets[e], candidates[d].centroid) for e, d in zip(chosen, picks, strict=True)
            )
            if cost < best_cost:
                best, best_cost = dict(zip(chosen, picks, strict=True)), cost
    assert best is not None
    return [candidates[best[i]] if i in best else None for i in range(len(expected))]


def score(
    image: ImageLike, scene: Scene | str, *, detected: Sequence[DetectedObject] | None = None
) -> AttributeScore:
    """Score ``image`` against ``scene`` (a :class:`Scene` or a caption string).

    Objects are matched to the scene by position (each scene object takes the detection nearest its
    stated place, so in a left/right or top/bottom pair each half is matched to its own object); an
    object with no match is wrong on every attribute, and a missing or extra object makes
    :attr:`AttributeScore.all_right` false. Pass ``detected`` to reuse a :func:`detect_objects` result.
    """
    if isinstance(scene, str):
        scene = parse_caption(scene)
    found = list(detected) if detected is not None else detect_objects(image, n_objects=len(scene.objects))
    scores = []
    for obj, hit in zip(scene.objects, _match(scene.objects, found), strict=True):
        if hit is None:
            scores.append(ObjectScore(obj, None, False, False, False))
        else:
            scores.append(
                ObjectScore(
                    obj, hit, hit.colour == obj.colour, hit.shape == obj.shape, hit.position == obj.position
                )
            )
    return AttributeScore(tuple(scores), tuple(found))


def summarise(scores: Iterable[AttributeScore]) -> dict[str, Any]:
    """Shares of images right on colour, shape, position, object count and everything (``all_right``).

    Per-attribute shares count an image right when every one of its objects is right on that attribute.
    """
    scores = list(scores)
    n = len(scores)
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "colour": sum(s.colour for s in scores) / n,
        "shape": sum(s.shape for s in scores) / n,
        "position": sum(s.position for s in scores) / n,
        "count": sum(s.count_right for s in scores) / n,
        "all_right": sum(s.all_right for s in scores) / n,
    }
