"""Shared pieces of the widgets: image panels, a decoded-frame cache, a progress bar fed by a hook,
and callbacks whose errors land in the widget's own output area.

Widgets never call the U-Net: they ask the Explainer for traces (``run``, ``fork``) and read them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from diffexplain import render
from diffexplain.families import FAMILIES
from diffexplain.hooks import Hook, HookContext, HookSpec, as_hooks

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

DEFAULT_SIZE = 160  # displayed picture width in pixels
ERROR_STATUS = "<span style='color:#b00'>"  # how the status line starts when it shows an error


def png(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (what ``ipywidgets.Image`` shows)."""
    return render.png_bytes(image)


def blank(size: int = DEFAULT_SIZE, text: str = "") -> bytes:
    """A light grey placeholder picture with an optional short text."""
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (235, 235, 235))
    if text:
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(text.split("\n")):
            draw.text((6, 6 + 14 * i), line, fill=(90, 90, 90))
    return png(img)


def image_panel(title: str, css: str, size: int = DEFAULT_SIZE) -> tuple[W.VBox, W.Image]:
    """A titled picture: returns (box, image widget); both get CSS classes (``css`` on the image)."""
    image = W.Image(value=blank(size), format="png", width=size)
    image.add_class(css)
    label = W.HTML(f"<b>{title}</b>")
    box = W.VBox([label, image], layout=W.Layout(align_items="center", margin="2px 6px"))
    box.add_class("dx-panel")
    return box, image


PLOTLY_MIME = "application/vnd.plotly.v1+json"


class LiveFigure(go.Figure):
    """A plotly figure shown in an ``ipywidgets.Output`` (``.output``) and drawn again after each ``batch_update``.

    Not a ``go.FigureWidget``: that is an anywidget whose 5 MB JavaScript module must load within
    anywidget's 2 s limit, else the page never hears of its traces or of any later change (an empty plot
    on a busy or slow machine). This figure is sent whole, as plotly's own mimetype, which JupyterLab,
    Notebook 7 and VS Code render with the plotly.js they already have. Change it inside
    ``with fig.batch_update():`` (or call ``redraw()``) and the page shows the new figure.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._output = W.Output(layout=W.Layout(width="100%"))
        self._output.add_class("dx-figure")

    @property
    def output(self) -> W.Output:
        """The widget that shows the figure."""
        return self._output

    @contextlib.contextmanager
    def batch_update(self) -> Iterator[None]:
        """Apply the changes made in the block together, then draw the figure again."""
        with super().batch_update():
            yield
        self.redraw()

    def redraw(self) -> None:
        """Send the current figure to the page (replaces what ``output`` showed)."""
        spec = json.loads(self.to_json())  # plain JSON: numpy arrays become lists
        spec["config"] = {"displaylogo": False}  # not "responsive": it sizes the plot from its 0-high box
        text = f"<plotly figure: {len(self.data)} traces>"
        bundle = {
            "output_type": "display_data",
            "data": {PLOTLY_MIME: spec, "text/plain": text},
            "metadata": {},
        }
        self._output.outputs = (bundle,)


def figure_box(fig: LiveFigure, css: str) -> W.Box:
    """A box with CSS class ``css`` around a figure's output, showing the figure as it is now."""
    fig.redraw()
    box = W.Box([fig.output], layout=W.Layout(width="100%"))
    box.add_class(css)
    return box


def help_box(html: str) -> W.HTML:
    """The short help text shown at the top of a widget."""
    box = W.HTML(f"<div style='font-size:0.9em;color:#444;max-width:900px'>{html}</div>")
    box.add_class("dx-help")
    return box


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor (‖x‖ / √numel): comparable across model sizes."""
    return float(t.detach().float().pow(2).mean().sqrt())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened."""
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def default_steps(explainer: Explainer, fallback: int | None = None) -> int:
    """The model's default number of steps (``explainer.defaults``), else ``fallback``, else its family's."""
    fallback = explainer.family.default_steps if fallback is None else fallback
    return int(getattr(explainer, "defaults", {}).get("num_inference_steps", fallback))


def default_guidance(explainer: Explainer, fallback: float | None = None) -> float:
    """The model's default guidance scale (``explainer.defaults``), else ``fallback``, else its family's."""
    fallback = explainer.family.default_guidance_scale if fallback is None else fallback
    return float(getattr(explainer, "defaults", {}).get("guidance_scale", fallback))


def words(trace: Trace | None, explainer: Explainer | None = None) -> dict[str, str]:
    """How to name the model and its output in labels: ``{"model": "U-Net", "output": "noise"}`` for
    Stable Diffusion, ``{"model": "transformer", "output": "velocity"}`` for a flow model (SD3)."""
    family = explainer.family if explainer is not None else None
    if family is None and trace is not None:
        family = FAMILIES.get((trace.settings.get("model") or {}).get("family", "sd"))
    if family is None:
        return {"model": "U-Net", "output": "noise"}
    return {
        "model": "U-Net" if family.model_attr == "unet" else family.model_attr,
        "output": family.output_kind,
    }


def is_pixel_space(trace: Trace, explainer: Explainer | None = None) -> bool:
    """True when the trace's model has no VAE (the U-Net denoises pixels)."""
    if explainer is not None:
        return explainer.vae is None
    return (trace.settings.get("model") or {}).get("vae") is None


def is_sigma_space(scheduler_class: str) -> bool:
    """Whether a scheduler holds x_t = x0 + σ·ε (Euler, Heun, LMS, KDPM2) rather than √ᾱ·x0 + √(1−ᾱ)·ε."""
    if "FlowMatch" in scheduler_class:  # x_t = (1 − σ)·x0 + σ·ε: already about unit variance
        return False
    return any(key in scheduler_class for key in ("Euler", "Heun", "LMS", "KDPM2"))


def vp_scale(trace: Trace, step: int) -> float:
    """Factor that shows x_t at unit variance: 1/√(1+σ²) for σ-space schedulers (Euler, Heun ...), else 1."""
    name = (trace.settings.get("scheduler") or {}).get("class", "")
    return 1.0 / math.sqrt(1.0 + trace.steps[step].level.sigma ** 2) if is_sigma_space(name) else 1.0


class Frames:
    """Pictures of latents for one widget: VAE-decoded (cached per trace, name and step) or fast previews."""

    def __init__(self, explainer: Explainer | None, size: int = DEFAULT_SIZE) -> None:
        self.explainer = explainer
        self.size = size
        self.trace_latent_rgb: list[list[float]] | None = None  # from the trace, when no explainer knows it
        self._cache: weakref.WeakKeyDictionary[Any, dict[tuple, bytes]] = weakref.WeakKeyDictionary()

    def can_decode(self, trace: Trace | None = None) -> bool:
        """Whether a VAE is available (an explainer with a VAE)."""
        return self.explainer is not None and self.explainer.vae is not None

    def picture(
        self,
        owner: Any,
        key: tuple,
        latents: torch.Tensor,
        *,
        preview: bool,
        pixel_space: bool = False,
        size: int | None = None,
    ) -> Image.Image:
        """Latents [B, C, h, w] as a picture: VAE-decoded unless ``preview`` (cached under ``(owner, key)``)."""
        decode = not preview and not pixel_space and self.can_decode()
        size = size or self.size
        cache = self._cache.setdefault(owner, {})
        full_key = (*key, size, "vae" if decode else "preview")
        if full_key not in cache:
            if pixel_space:
                image = render.to_pil(latents.float().clamp(-1, 1), size=size)
            elif decode:
                from diffexplain.probe import decode_latents

                image = render.to_pil(decode_latents(self.explainer, latents[:1]), size=size)
            else:
                rgb = getattr(self.explainer, "latent_rgb", None) or self.trace_latent_rgb
                image = render.latent_preview(latents, rgb, size=size)
            cache[full_key] = image
        return cache[full_key]

    def latents(
        self, owner: Any, key: tuple, latents: torch.Tensor, *, preview: bool, pixel_space: bool = False
    ) -> bytes:
        """PNG of latents [B, C, h, w]: decoded with the VAE unless ``preview`` (cached under ``(owner, key)``)."""
        return png(self.picture(owner, key, latents, preview=preview, pixel_space=pixel_space))

    def noise(self, latents: torch.Tensor) -> bytes:
        """PNG of a noise-like tensor (ε): each of the first three channels stretched to its range."""
        return png(render.latent_preview(latents[:, :3] if latents.shape[1] > 3 else latents, size=self.size))

    def channels(self, t: torch.Tensor, *, limit: float | None = None) -> bytes:
        """PNG of every channel side by side on one diverging scale (blue −, white 0, red +)."""
        return png(render.channel_grid(t, size=self.size * 2, limit=limit))

    def final_picture(self, trace: Trace, *, preview: bool = False, size: int | None = None) -> Image.Image:
        """The trace's final picture: its decoded image, else (or with ``preview``) its final latents."""
        if trace.image is not None and (not preview or is_pixel_space(trace, self.explainer)):
            return render.to_pil(trace.image.float(), size=size or self.size)
        latents = trace.final_latents if trace.final_latents is not None else trace["step.next", -1]
        pixel = is_pixel_space(trace, self.explainer)
        return self.picture(trace, ("final",), latents, preview=preview, pixel_space=pixel, size=size)

    def final(self, trace: Trace, *, preview: bool = False) -> bytes:
        """PNG of the trace's final picture (see ``final_picture``)."""
        return png(self.final_picture(trace, preview=preview))

    def difference(self, a: Trace, b: Trace, *, preview: bool = False) -> bytes:
        """PNG of |a − b| between two traces' final pictures: white where equal, dark where they differ."""
        pa = np.asarray(self.final_picture(a, preview=preview), dtype=np.float32)
        pb = np.asarray(self.final_picture(b, preview=preview), dtype=np.float32)
        return png(difference_image(pa, pb))


def difference_image(a: np.ndarray, b: np.ndarray) -> Image.Image:
    """|a − b| of two HxWx3 arrays (0..255), summed over colours: white = equal, black = the largest change."""
    diff = np.abs(a - b).sum(axis=-1)
    scale = max(float(diff.max()), 1e-6)
    return Image.fromarray((255 - diff / scale * 255).round().astype(np.uint8)).convert("RGB")


class ProgressBar(W.IntProgress):
    """A progress bar fed by a hook on ``step.next``: shows loop step k+1 of N (forks start at k)."""

    def __init__(self) -> None:
        super().__init__(value=0, min=0, max=1, description="progress", layout=W.Layout(width="320px"))
        self.add_class("dx-progress")

    def _tick(self, x: torch.Tensor, *, ctx: HookContext) -> None:
        self.max = max(ctx.num_steps, 1)
        self.value = (ctx.step or 0) + 1

    def with_hooks(self, hooks: HookSpec = None) -> list[Hook]:
        """``hooks`` plus the progress hook (it only reads, so traces are unchanged)."""
        self.value = 0
        return [*as_hooks(hooks), Hook("step.next", self._tick)]


class DxWidget(W.VBox):
    """Base of the diffexplain widgets: an output area for errors, a status line and a progress bar."""

    css_class = "dx-widget"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        self.output.add_class("dx-output")
        self.status = W.HTML("")
        self.status.add_class("dx-status")
        self.progress = ProgressBar()
        self.add_class("dx-widget")
        self.add_class(self.css_class)

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a callback: any exception is shown in this widget's output area (and the status line).

        When the callback succeeds, the errors shown before it are cleared: the area shows only what
        went wrong since the last action that worked.
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = len(self.output.outputs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.show_error(exc)
                return None
            if before:  # it worked: the errors shown before it are old news (new ones stay)
                self.output.outputs = self.output.outputs[before:]
                if self.status.value.startswith(ERROR_STATUS) and not self.output.outputs:
                    self.status.value = ""
            return result

        return wrapper

    def show_error(self, exc: BaseException) -> None:
        """Print ``exc`` with its traceback into the output area; a one-line summary goes to the status line."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.output.append_stderr(text)
        self.status.value = f"{ERROR_STATUS}Error: {type(exc).__name__}: {_escape(str(exc))}</span>"

    def say(self, html: str) -> None:
        """Show a short message on the status line."""
        self.status.value = html

    def run_trace(self, explainer: Explainer, prompt: str, **kwargs: Any) -> Trace:
        """``explainer.run`` with this widget's progress bar (extra ``hooks=`` are kept), buttons off meanwhile."""
        hooks = self.progress.with_hooks(kwargs.pop("hooks", None))
        with self.busy():
            return explainer.run(prompt, hooks=hooks, progress=False, **kwargs)

    def fork_trace(self, explainer: Explainer, trace: Trace, step: int, **kwargs: Any) -> Trace:
        """``explainer.fork`` with this widget's progress bar (extra ``hooks=`` are kept), buttons off meanwhile."""
        hooks = self.progress.with_hooks(kwargs.pop("hooks", None))
        with self.busy():
            return explainer.fork(trace, step, hooks=hooks, progress=False, **kwargs)

    def buttons(self) -> list[W.Button]:
        """Every button inside this widget."""
        found, todo = [], list(self.children)
        while todo:
            item = todo.pop()
            if isinstance(item, W.Button):
                found.append(item)
            todo.extend(getattr(item, "children", ()))
        return found

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Disable the widget's buttons while it runs the model (a click then cannot queue another run);
        each button gets its own state back afterwards, also after an error."""
        states = [(b, b.disabled) for b in self.buttons()]
        for b, _ in states:
            b.disabled = True
        try:
            yield
        finally:
            for b, state in states:
                b.disabled = state

    def clear_errors(self) -> None:
        """Empty the output area."""
        self.output.outputs = ()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:500]


def button(description: str, css: str, *, style: str = "", tooltip: str = "") -> W.Button:
    """A button with a CSS class."""
    b = W.Button(description=description, button_style=style, tooltip=tooltip or description)
    b.layout.width = "auto"
    b.add_class(css)
    return b
