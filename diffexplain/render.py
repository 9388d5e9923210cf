"""Tensors → pictures: PIL images, PNG bytes, cheap latent previews and channel grids.

Conventions: images are [3, H, W] (or [B, 3, H, W], first item used) in [-1, 1]; latents and
noise predictions are [C, h, w]; an embedding (the Kandinsky prior's x_t) is [D] or [B, D]. Nothing here
calls a model.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from diffexplain.checks import check_float, check_optional_float

# Approximate linear maps from Stable Diffusion 1.x/2.x latents (4 channels) to RGB, widely used for
# previews (rows: latent channels; columns: R, G, B).
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def _first(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.ndim == 4:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a [C, H, W] or [B, C, H, W] tensor, got shape {tuple(t.shape)}")
    return t.float().cpu()


def to_pil(image: torch.Tensor, *, size: int | None = None) -> Image.Image:
    """An image tensor in [-1, 1] ([3, H, W] or [B, 3, H, W]; first item) as a PIL image, upscaled to ``size``."""
    t = _first(image)
    if t.shape[0] != 3:
        raise ValueError(f"expected 3 colour channels, got {t.shape[0]} (shape {tuple(t.shape)})")
    arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return _resize(Image.fromarray(arr), size)


def _resize(img: Image.Image, size: int | None) -> Image.Image:
    if size is None or img.width == size:
        return img
    return img.resize((size, round(size * img.height / img.width)), Image.Resampling.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encode a PIL image (what ``ipywidgets.Image`` displays)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def latent_preview(
    latents: torch.Tensor,
    projection: Sequence[Sequence[float]] | torch.Tensor | None = None,
    *,
    size: int | None = None,
) -> Image.Image:
    """A fast RGB picture of latents [C, h, w] through a linear map C → 3 (no VAE call).

    ``projection`` is [C, 3]; without one, 4-channel latents use Stable Diffusion's usual factors and
    other latents show their first three channels, each stretched to its own range.
    """
    t = _first(latents)
    if projection is None and t.shape[0] == 4:
        projection = SD_LATENT_RGB
    if projection is not None:
        proj = torch.as_tensor(projection, dtype=torch.float32)
        if proj.shape != (t.shape[0], 3):
            raise ValueError(
                f"projection must be [{t.shape[0]}, 3] for {t.shape[0]}-channel latents, got {tuple(proj.shape)}"
            )
        rgb = torch.einsum("chw,cd->dhw", t, proj)
        rgb = rgb.clamp(-1, 1)
    else:
        rgb = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
        lo = rgb.amin(dim=(1, 2), keepdim=True)
        hi = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1
    return to_pil(rgb, size=size)


def diverging(t: torch.Tensor, *, limit: float | None = None) -> np.ndarray:
    """A 2-D tensor as an RGB array: blue for negative, white for 0, red for positive (symmetric scale)."""
    limit = check_optional_float("limit", limit, low=0.0, meaning="the value drawn at full colour")
    x = t.detach().float().cpu()
    lim = float(limit) if limit else float(x.abs().max().clamp_min(1e-8))
    v = (x / lim).clamp(-1, 1).numpy()
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def channel_grid(
    t: torch.Tensor, *, size: int | None = None, limit: float | None = None, gap: int = 1
) -> Image.Image:
    """Each channel of [C, h, w] side by side on one diverging colour scale (shared unless ``limit`` is set)."""
    x = _first(t)
    lim = limit if limit else float(x.abs().max().clamp_min(1e-8))
    tiles = [diverging(ch, limit=lim) for ch in x]
    h, w = tiles[0].shape[:2]
    canvas = np.full((h, len(tiles) * (w + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        canvas[:, i * (w + gap) : i * (w + gap) + w] = tile
    return _resize(Image.fromarray(canvas), size)


EMBEDDING_PAD = (225, 225, 225)  # the grid cells past the last number of an embedding


def embedding_grid_shape(length: int) -> tuple[int, int]:
    """(rows, columns) of the near-square grid that holds ``length`` numbers row by row (1280 → 36 × 36)."""
    cols = max(1, int(np.ceil(np.sqrt(length))))
    return int(np.ceil(length / cols)), cols


def embedding_picture(
    values: torch.Tensor, *, size: int | None = None, limit: float | None = None
) -> Image.Image:
    """A vector ([D], or [B, D]: the first row), e.g. a CLIP image embedding, as a near-square grid of D cells
    read row by row on the diverging scale (blue −, white 0, red +); cells past D are light grey.
    It is a picture of numbers, not an image: neighbouring cells are unrelated dimensions."""
    x = values.detach().float().cpu()
    if x.ndim == 2:
        x = x[0]
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"expected a vector [D] or [B, D], got shape {tuple(values.shape)}")
    rows, cols = embedding_grid_shape(x.numel())
    padded = torch.zeros(rows * cols)
    padded[: x.numel()] = x
    rgb = diverging(padded.reshape(rows, cols), limit=limit or float(x.abs().max().clamp_min(1e-8)))
    rgb.reshape(-1, 3)[x.numel() :] = EMBEDDING_PAD
    return _resize(Image.fromarray(rgb), size)


# A subset of DejaVu Sans shipped with the package (fonts/LICENSE-DejaVu.txt): ASCII, Latin-1, combining
# marks (x̂), Greek (ε, σ, α, ᾱ, Δ), punctuation (‖, …, “ ”), sub- and superscripts, arrows and maths (≤, −).
# Pillow's own default font has no Greek: it draws ε as a box. Made with fontTools:
#   pyftsubset DejaVuSans.ttf --no-hinting --name-IDs='*' --name-legacy --name-languages='*' --unicodes=
#   U+0020-007E,U+00A0-00FF,U+0300-036F,U+0370-03FF,U+1FB0-1FB1,U+1FD0-1FD1,U+2010-2027,U+2030-203A,
#   U+2070-209F,U+2190-2199,U+21D0-21D4,U+2200-2212,U+2215,U+2218-221A,U+221D-221E,U+2225,U+2227-222B,
#   U+2248,U+2260-2265,U+226A-226B,U+22C5,U+2300-2303,U+25A0-25A1,U+25B2,U+25B6,U+25BC,U+25C0,U+25CF,
#   U+2713,U+2717
FONT_FILE = "fonts/DejaVuSans-subset.ttf"


@functools.cache
def font(size: int = 11) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font for text drawn in pictures, ``size`` pixels high: the DejaVu Sans subset shipped with the
    package (Greek letters, x̂, ≤ …), or Pillow's bitmap font where Pillow has no FreeType."""
    from importlib.resources import files

    data = (files("diffexplain") / FONT_FILE).read_bytes()
    try:
        return ImageFont.truetype(io.BytesIO(data), size)
    except ImportError:  # Pillow built without FreeType: the fixed bitmap font (no Greek)
        return ImageFont.load_default()


def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The small font for labels under pictures (:func:`font` at 11 pixels)."""
    return font(11)


def strip(images: Sequence[Image.Image], labels: Sequence[str] | None = None, *, gap: int = 4) -> Image.Image:
    """Images in a row on white, each with an optional label underneath."""
    if not images:
        raise ValueError("strip needs at least one image")
    label_h = 14 if labels else 0
    w, h = images[0].size
    canvas = Image.new("RGB", (len(images) * (w + gap) - gap, h + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images):
        canvas.paste(img.resize((w, h)), (i * (w + gap), 0))
        if labels:
            draw.text((i * (w + gap) + 2, h + 1), labels[i], fill="black", font=label_font())
    return canvas


HEAT_STOPS = np.array(  # an "inferno"-like ramp: dark (not read) → purple → orange → pale yellow (read most)
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def heat(values: torch.Tensor, *, limit: float | None = None) -> np.ndarray:
    """A 2-D map as an RGB array (H, W, 3) on the heat ramp: 0 dark, ``limit`` (default its max) brightest."""
    limit = check_optional_float("limit", limit, low=0.0, meaning="the value drawn brightest")
    x = values.detach().float().cpu().numpy()
    top = float(limit) if limit else max(float(x.max()), 1e-8)
    pos = np.clip(x / top, 0, 1) * (len(HEAT_STOPS) - 1)
    low = np.floor(pos).astype(int).clip(0, len(HEAT_STOPS) - 2)
    frac = (pos - low)[..., None]
    rgb = HEAT_STOPS[low] * (1 - frac) + HEAT_STOPS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(
    image: Image.Image, values: torch.Tensor, *, alpha: float = 0.6, limit: float | None = None
) -> Image.Image:
    """``values`` [H, W] on the heat ramp laid over ``image`` (resized to it), ``alpha`` the map's weight."""
    alpha = check_float("alpha", alpha, 0.0, 1.0, meaning="the map's weight over the image")
    colours = Image.fromarray(heat(values, limit=limit)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), colours, alpha)
