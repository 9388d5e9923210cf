"""Small decoded pictures of x_t and x̂0 at every step, made once when a trace is saved.

A trace file holds latents; turning them into pictures needs the model's VAE. ``trace.save`` therefore
decodes each step's x_t and x̂0 while the model is still at hand and stores them as PNG bytes (uint8
tensors in the file). A trace opened without the model (TracePlayer, ``trace.to_html``) shows these
instead of the blocky fast latent preview.

What the pictures are: x_t is the noisy latents entering the step (shown at unit variance for
σ-space schedulers, as the StepExplorer does), decoded with the VAE; x̂0 is the model's guess of the
clean latents at that step, decoded. Pixel-space models (no VAE) store their x_t and x̂0 directly; the Kandinsky prior's x_t and x̂0 are
image embeddings [B, D], stored as grids of their numbers (``render.embedding_picture``).
Only the first picture of a batch is kept, at most ``MAX_PREVIEW_SIZE`` pixels on its longer side.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from diffexplain import render
from diffexplain.checks import check_optional_float
from diffexplain.errors import user_stacklevel
from diffexplain.views import shown_latents

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

MAX_PREVIEW_SIZE = 256  # longer side, pixels: the image size, capped
MAX_FILE_PREVIEW_SIZE = 1024  # a file's previews larger than this are refused as hostile
KINDS = ("latents", "pred_x0")  # x_t (the step's input) and x̂0 (the model's guess)
SOURCES = ("vae", "pixels", "embedding")  # decoded latents, a pixel model's own x_t, an embedding's numbers
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DECODE_BATCH = 8  # latents decoded per VAE call
# Default time limit for making previews when they were not asked for (``trace.save(path)``): a big VAE
# on a CPU can take a minute per picture (Stable Diffusion's, 512 px, one busy core: 60 s), and a save
# should not turn into an hour. The first picture is timed; if all would take longer, none are made.
DEFAULT_BUDGET_S = 60.0


class PreviewsTooSlow(RuntimeError):
    """Making the previews would take longer than the time allowed (``budget_s``)."""


@dataclass
class Previews:
    """PNG bytes of x_t ("latents") and x̂0 ("pred_x0") per loop step (None where a step has none)."""

    size: tuple[int, int]  # (height, width) of every picture
    source: (
        str  # "vae" (decoded), "pixels" (a pixel model's own x_t and x̂0) or "embedding" (grids of numbers)
    )
    pictures: dict[str, list[bytes | None]] = field(default_factory=dict)

    def png(self, kind: str, step: int) -> bytes | None:
        """The PNG bytes of ``kind`` ("latents" or "pred_x0") at loop ``step``, or None."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
        found = self.pictures.get(kind, [])
        return found[step] if -len(found) <= step < len(found) else None

    def image(self, kind: str, step: int) -> Image.Image | None:
        """The picture of ``kind`` at ``step`` as a PIL image, or None."""
        data = self.png(kind, step)
        return None if data is None else Image.open(io.BytesIO(data)).convert("RGB")

    def __len__(self) -> int:
        return max((len(v) for v in self.pictures.values()), default=0)

    def nbytes(self) -> int:
        """Bytes of PNG data held."""
        return sum(len(p) for v in self.pictures.values() for p in v if p is not None)


def can_make(trace: Trace, explainer: Explainer | None = None) -> bool:
    """Whether previews can be made for ``trace``: a model with a VAE, or a pixel-space model."""
    explainer = explainer if explainer is not None else trace.explainer
    if explainer is not None:
        return True  # its VAE decodes, or (vae=None) the latents are pixels
    return trace.run_settings.model.get("vae") is None and bool(trace.run_settings.model)


def _fit(image: Image.Image, max_size: int) -> Image.Image:
    if max(image.size) <= max_size:
        return image
    scale = max_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@torch.no_grad()
def make_previews(
    trace: Trace,
    explainer: Explainer | None = None,
    *,
    max_size: int = MAX_PREVIEW_SIZE,
    progress: bool | None = None,
    budget_s: float | None = None,
) -> Previews:
    """Decode x_t and x̂0 of every step of ``trace`` into small PNG pictures (one VAE pass per batch).

    ``explainer`` defaults to the trace's own; ``ValueError`` when there is none and the model is not
    pixel-space (decoding needs the VAE). ``max_size`` caps the longer side in pixels. ``budget_s``:
    the first picture is decoded alone and timed; ``PreviewsTooSlow`` if all of them would take longer.
    """
    import time

    from tqdm.auto import tqdm

    from diffexplain.probe import decode_latents

    if not isinstance(max_size, int) or isinstance(max_size, bool) or not 8 <= max_size <= 1024:
        raise ValueError(f"max_size={max_size!r}: expected a whole number of pixels from 8 to 1024")
    budget_s = check_optional_float("budget_s", budget_s, low=0.0, meaning="seconds allowed for all previews")
    explainer = explainer if explainer is not None else trace.explainer
    pixel_space = (
        explainer.vae is None if explainer is not None else trace.run_settings.model.get("vae") is None
    )
    if explainer is None and not pixel_space:
        raise ValueError(
            "previews need the model's VAE: this trace has no explainer (load it with "
            "Trace.load(path, explainer=...)), or save with previews=False"
        )
    jobs: list[tuple[str, int, torch.Tensor]] = []
    for step, record in enumerate(trace.steps):
        latents = shown_latents(trace, step)
        if latents is not None:
            jobs.append(("latents", step, latents))
        pred_x0 = record.tensors.get("step.pred_x0")
        if pred_x0 is not None:
            jobs.append(("pred_x0", step, pred_x0[:1].float()))
    pictures: dict[str, list[bytes | None]] = {kind: [None] * len(trace) for kind in KINDS}
    size = (0, 0)
    show = (explainer.progress if explainer is not None else False) if progress is None else progress
    # the first picture alone (timed for the budget), then batches
    chunks = [jobs[:1]] + [jobs[i : i + DECODE_BATCH] for i in range(1, len(jobs), DECODE_BATCH)]
    with tqdm(total=len(jobs), disable=not show or pixel_space, desc="previews", unit="picture") as bar:
        for chunk in chunks:
            if not chunk:
                continue
            start = time.perf_counter()
            latents = torch.cat([x for _, _, x in chunk])
            if latents.dim() == 2:  # image embeddings (the Kandinsky prior): grids of numbers
                images = latents
            else:
                images = latents.clamp(-1, 1) if pixel_space else decode_latents(explainer, latents)
            for (kind, step, _), image in zip(chunk, images, strict=True):
                if image.dim() == 1:
                    picture = render.embedding_picture(image, size=min(max_size, MAX_PREVIEW_SIZE // 2))
                else:
                    picture = _fit(render.to_pil(image), max_size)
                size = (picture.height, picture.width)
                pictures[kind][step] = _encode(picture)
            bar.update(len(chunk))
            if chunk is chunks[0] and budget_s is not None and not pixel_space:
                took = time.perf_counter() - start
                if took * len(jobs) > budget_s:
                    device = getattr(explainer, "device", "cpu")
                    raise PreviewsTooSlow(
                        f"decoding {len(jobs)} previews would take about {took * len(jobs) / 60:.1f} min on "
                        f"{device} (the first took {took:.1f} s; the limit is {budget_s:g} s)"
                    )
    embedding = bool(jobs) and jobs[0][2].dim() == 2
    source = "embedding" if embedding else "pixels" if pixel_space else "vae"
    return Previews(size=size, source=source, pictures=pictures)


def ensure_previews(trace: Trace, *, required: bool = False) -> Previews | None:
    """``trace.previews``, made now (once, then kept on the trace) when the model is known; else None.

    Not ``required``, they are left out with a warning when decoding them all would take longer than
    ``DEFAULT_BUDGET_S`` (a big VAE on a CPU; not timed again for that trace). ``required``: made
    whatever it costs, ``ValueError`` when the model is not known.
    """
    import warnings

    if trace.previews is not None and len(trace.previews) == len(trace):
        return trace.previews
    if required:
        trace.previews = make_previews(trace)  # ValueError (naming what is missing) when it cannot
    elif can_make(trace) and trace._previews_too_slow is None:
        try:
            trace.previews = make_previews(trace, budget_s=DEFAULT_BUDGET_S)
        except PreviewsTooSlow as slow:
            trace._previews_too_slow = str(slow)
    if trace.previews is None and trace._previews_too_slow is not None and not required:
        warnings.warn(
            f"previews left out: {trace._previews_too_slow}. trace.save(path, previews=True) makes them "
            "anyway; without them a trace opened without the model shows the fast latent preview",
            stacklevel=user_stacklevel(),
        )
    return trace.previews if trace.previews is not None and len(trace.previews) == len(trace) else None


def check_png(data: bytes, max_size: int = MAX_FILE_PREVIEW_SIZE) -> tuple[int, int]:
    """(height, width) of PNG ``data``; ``ValueError`` when it is not a PNG or larger than ``max_size``."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG picture")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            kind = image.format
    except Exception as exc:  # PIL raises many kinds on bad bytes
        raise ValueError(f"not a readable PNG picture: {exc}") from None
    if kind != "PNG" or not (0 < width <= max_size and 0 < height <= max_size):
        raise ValueError(f"a {width}×{height} {kind} picture (expected a PNG of at most {max_size} px)")
    return height, width


# ---- in a trace file (``trace_io``): {"size": [h, w], "source": ..., "latents": [ref | null, ...], ...} ----
def to_doc(previews: Previews, ref: Callable[[torch.Tensor], str]) -> dict[str, Any]:
    """The JSON record of ``previews``; ``ref`` stores a tensor in the file and returns its name."""
    doc: dict[str, Any] = {"size": list(previews.size), "source": previews.source}
    for kind in KINDS:
        doc[kind] = [
            None if data is None else ref(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            for data in previews.pictures.get(kind, [])
        ]
    return doc


def from_doc(doc: Any, steps: int, tensor: Callable[[Any, str], torch.Tensor]) -> Previews:
    """Read and check a file's previews record (``tensor(ref, where)`` reads one tensor); ``ValueError``
    names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("previews should be a JSON object")
    unknown = set(doc) - {"size", "source", *KINDS}
    if unknown:
        raise ValueError(f"previews holds unknown keys {sorted(unknown)}")
    size = doc.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
        raise ValueError("previews.size should be [height, width]")
    if doc.get("source") not in SOURCES:
        raise ValueError(
            f"previews.source {doc.get('source')!r} is not 'vae' or 'pixels' (or 'embedding': an image "
            "embedding's grids of numbers)"
        )
    pictures: dict[str, list[bytes | None]] = {}
    for kind in KINDS:
        refs = doc.get(kind, [])
        if not isinstance(refs, list) or len(refs) != steps:
            raise ValueError(f"previews.{kind} should list one picture (or null) per step ({steps})")
        found: list[bytes | None] = []
        for i, name in enumerate(refs):
            if name is None:
                found.append(None)
                continue
            where = f"previews.{kind}[{i}]"
            data = tensor(name, where)
            if data.dtype != torch.uint8 or data.dim() != 1:
                raise ValueError(f"{where} should be a 1-D uint8 tensor of PNG bytes")
            raw = data.numpy().tobytes()
            try:
                shape = check_png(raw)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if list(shape) != size:
                raise ValueError(f"{where} is {shape[0]}×{shape[1]}, previews.size says {size[0]}×{size[1]}")
            found.append(raw)
        pictures[kind] = found
    return Previews(size=(size[0], size[1]), source=doc["source"], pictures=pictures)
