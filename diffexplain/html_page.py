"""One trace as one self-contained HTML page: open it in any browser, with no Python, no server, no network.

``write_page(trace, path)`` (``trace.to_html``) renders every step's pictures to PNG data URIs, puts
them with the per-step numbers (``diffexplain.web.view_data``) into a JSON block, and fills the template
``html_page.html`` with it and the shared module ``diffexplain/web/trace_view.js`` (the step slider, play,
keyboard scrubbing, the StepExplorer's panels and a hand-drawn SVG timeline: the same code the anywidget
StepExplorer runs, so a trace looks the same live, saved and exported). Nothing is inlined from any library; the page's Content-Security-Policy forbids loading
anything (``default-src 'none'``, images from ``data:`` only), so it cannot fetch even by mistake.

The texts are the StepExplorer's (``diffexplain.explanations``). x_t and x̂0 are the trace's saved
previews (made now if the model is known); ε panels are drawn from the stored tensors, as the widget does.
"""

from __future__ import annotations

import base64
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from diffexplain import render
from diffexplain.errors import TraceKeyError
from diffexplain.version import __version__
from diffexplain.views import difference_image, is_pixel_space, shown_latents
from diffexplain.web import trace_view_js
from diffexplain.web.view_data import view_data

if TYPE_CHECKING:
    from diffexplain.trace import Trace

TEMPLATE = "html_page.html"
DISPLAY_SIZE = 160  # displayed width of a picture panel in CSS pixels (the widgets' default)


def data_uri(image: Image.Image | bytes) -> str:
    """A PNG as a ``data:image/png;base64,...`` URI (PIL images are PNG-encoded first)."""
    data = image if isinstance(image, bytes) else render.png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _get(trace: Trace, name: str, step: int) -> torch.Tensor | None:
    try:
        return trace[name, step]
    except TraceKeyError:  # not kept, or not computed (ε_u with guidance off)
        return None


class _Pictures:
    """x_t and x̂0 of one trace: its saved previews, else the fast latent preview (pixel space: the pixels)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.previews = trace.ensure_previews()  # made now when the model is known; kept on the trace
        self.pixel_space = is_pixel_space(trace, trace.explainer)
        self.rgb = getattr(trace.explainer, "latent_rgb", None) or trace.run_settings.latent_rgb

    @property
    def kind(self) -> str:
        if self.previews is not None or self.pixel_space:
            return "decoded pictures saved with the trace"
        return "fast latent preview (this trace was saved without pictures)"

    def get(self, kind: str, step: int) -> str | None:
        if self.previews is not None and (saved := self.previews.png(kind, step)) is not None:
            return data_uri(saved)
        latents = (
            shown_latents(self.trace, step) if kind == "latents" else _get(self.trace, "step.pred_x0", step)
        )
        if latents is None:
            return None
        if latents.dim() == 2:  # an image embedding (the Kandinsky prior): its grid of numbers
            return data_uri(render.embedding_picture(latents))
        if self.pixel_space:
            return data_uri(render.to_pil(latents.float().clamp(-1, 1)))
        return data_uri(render.latent_preview(latents, self.rgb))


def _noise(t: torch.Tensor) -> str:
    """ε as the StepExplorer draws it: the first three channels, each stretched to its range."""
    if t.dim() == 2:  # an embedding-valued output (the Kandinsky prior's x̂0)
        return data_uri(render.embedding_picture(t))
    return data_uri(render.latent_preview(t[:1, :3] if t.shape[1] > 3 else t[:1]))


def _channels(t: torch.Tensor) -> str:
    """Every channel side by side on one diverging scale (blue −, white 0, red +)."""
    if t.dim() == 2:
        return data_uri(render.embedding_picture(t))
    return data_uri(render.channel_grid(t[:1]))


def _final(trace: Trace, pictures: _Pictures) -> str | None:
    if trace.image is not None and trace.image.dim() == 2:  # image embeddings (the Kandinsky prior)
        return data_uri(render.embedding_picture(trace.image))
    if trace.image is not None:
        return data_uri(render.to_pil(trace.image.float()))
    return pictures.get("pred_x0", len(trace) - 1) if len(trace) else None


def _pictures(trace: Trace, pictures: _Pictures, cfg: bool) -> list[dict[str, str | None]]:
    """Every step's pictures as data URIs (None: not kept, or no ε_u with guidance off)."""
    out = []
    for k in range(len(trace)):
        xt = shown_latents(trace, k)
        ec, eu, guided = (
            _get(trace, n, k) for n in ("step.model.cond", "step.model.uncond", "step.guidance")
        )
        eu = eu if cfg else None
        img = {"xt": pictures.get("latents", k), "x0": pictures.get("pred_x0", k)}
        if xt is not None and not pictures.pixel_space:
            img["channels"] = _channels(xt)
        img["eps_c"] = None if ec is None else _noise(ec)
        img["eps_u"] = None if eu is None else _noise(eu)
        img["delta"] = None if ec is None or eu is None else _channels(ec - eu)
        img["guided"] = None if guided is None else _noise(guided)
        out.append(img)
    return out


def _label(trace: Trace) -> str:
    """Guidance on or off as the run decided it (``do_cfg``: a distilled model takes w without CFG)."""
    w = trace.run_settings.guidance_scale
    return f"guidance on (w = {w:g})" if trace.run_settings.do_cfg else f"guidance off (w = {w:g})"


def _comparison(trace: Trace, compare: Trace) -> dict[str, Any]:
    """The two runs side by side, the one with the smaller w first: x̂0 per step and the final pictures."""

    pair = sorted([trace, compare], key=lambda t: t.run_settings.guidance_scale)
    pictures = [_Pictures(t) for t in pair]
    finals = [_final(t, p) for t, p in zip(pair, pictures, strict=True)]
    diff = None
    if pair[0].image is not None and pair[1].image is not None:
        a, b = (np.asarray(render.to_pil(t.image.float()), dtype=np.float32) for t in pair)
        if a.shape == b.shape:
            diff = data_uri(difference_image(a, b))
    same_steps = len(pair[0]) == len(pair[1])
    x0 = [[p.get("pred_x0", k) for p in pictures] for k in range(len(trace))] if same_steps else None
    prompts = {str(t.run_settings.prompt) for t in pair}
    seeds = {str(t.run_settings.seed) for t in pair}
    same = "the same prompt and seed" if len(prompts) == 1 and len(seeds) == 1 else "two runs"
    return {
        "labels": [_label(t) for t in pair],
        "caption": (
            f"{same.capitalize()}, {_label(pair[0])} and {_label(pair[1])}. Guidance pushes each step along "
            "Δ = ε_c − ε_u, the part the prompt adds. The top row follows the step slider: each run's "
            "x̂0 at that step. Below: the final pictures and where they differ (dark: a large change)."
        ),
        "x0": x0,
        "final": finals,
        "difference": diff,
        "this": pair.index(trace),
    }


def _is_trace(value: Any) -> bool:
    """A ``Trace`` (told by what it holds: this module imports no trace code, so the trace may import it)."""
    return isinstance(getattr(value, "steps", None), list) and hasattr(value, "run_settings")


def page_data(trace: Trace, compare: Trace | None = None, title: str | None = None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready (pictures as data URIs)."""
    if not _is_trace(trace) or len(trace) == 0:
        raise ValueError(f"trace={trace!r}: expected a Trace with at least one finished step")
    if compare is not None and not (_is_trace(compare) and len(compare) > 0):
        raise TypeError(
            f"compare={compare!r}: expected a Trace with finished steps (e.g. the same run, w = 1)"
        )
    pictures = _Pictures(trace)
    data = view_data(trace, trace.explainer, pixel_space=pictures.pixel_space, size=DISPLAY_SIZE)
    for step, img in zip(data["steps"], _pictures(trace, pictures, data["cfg"]), strict=True):
        step["img"] = img
    data["header"].pop("stage")
    data["header"].pop("caption")
    return {
        "title": title or f"diffexplain: {trace.settings.get('prompt')}",
        **data,
        "pictures": pictures.kind,
        "final": _final(trace, pictures),
        "final_label": "the final picture"
        if trace.image is not None
        else "x̂0 at the last step (no decoded image)",
        "compare": None if compare is None else _comparison(trace, compare),
        "version": __version__,
        "note": f"x_t and x̂0: {pictures.kind}. Written by diffexplain {__version__} (trace.to_html); "
        "this page needs no server and no network.",
    }


def render_page(data: dict[str, Any]) -> str:
    """The page's HTML for ``page_data``'s result."""
    template = resources.files("diffexplain").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # JSON inside <script>: "<" escaped, so no text in it (a prompt) can close the element
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    fills = {"TITLE": html.escape(data["title"]), "DATA": payload, "TRACE_VIEW_JS": trace_view_js()}
    # one pass: a prompt that reads "{{DATA}}" stays text
    return re.sub(r"\{\{(TITLE|DATA|TRACE_VIEW_JS)\}\}", lambda m: fills[m.group(1)], template)


def write_page(
    trace: Trace, path: str | Path, *, compare: Trace | None = None, title: str | None = None
) -> Path:
    """Write ``trace`` (and ``compare`` beside it) as one self-contained HTML file at ``path``."""
    return write_text(Path(path), render_page(page_data(trace, compare, title)))


def write_text(path: Path, text: str) -> Path:
    """Write a page's ``text`` at ``path`` (a file name, not a folder) atomically; returns ``path``."""
    if path.is_dir():
        raise IsADirectoryError(f"path={str(path)!r} is a folder: expected a file name such as page.html")
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # written next to the target, then moved: never a half-written page
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
