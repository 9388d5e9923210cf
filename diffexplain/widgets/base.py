"""Shared pieces of the widgets: a decoded-frame cache, a progress bar fed by a hook, and ``DxWidget``
(the ipywidgets-drawn base; its actions, errors and Stop are ``diffexplain.widgets.actions.Actions``).

Widgets never call the U-Net: they ask the Explainer for traces (``start_run``, ``start_fork``) and
read them. A button's action is a generator that yields between loop steps (``Actions.start``).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from PIL import Image

from diffexplain import render
from diffexplain.hooks import Hook, HookContext, HookSpec, as_hooks
from diffexplain.views import (  # noqa: F401 (the widgets' names for the view helpers)
    DEFAULT_SIZE,
    blank,
    cosine,
    default_guidance,
    default_steps,
    difference_image,
    is_pixel_space,
    is_sigma_space,
    png,
    rms,
    vp_scale,
    words,
)
from diffexplain.widgets.actions import (  # noqa: F401 (re-exported: the widgets import them from here)
    ERROR_STATUS,
    Actions,
    Work,
    _escape,
    kernel_scheduler,
)
from diffexplain.widgets.controls import button, image_panel  # noqa: F401 (re-exported)
from diffexplain.widgets.figures import PLOTLY_MIME, LiveFigure, figure_box  # noqa: F401 (shared by every widget)

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


def help_html(html: str) -> str:
    """The markup of :func:`help_box` (to change a box's text in place)."""
    return f"<div style='font-size:0.9em;color:#444;max-width:900px'>{html}</div>"


def help_box(html: str) -> W.HTML:
    """The short help text shown at the top of a widget."""
    box = W.HTML(help_html(html))
    box.add_class("dx-help")
    return box


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
        """Latents [B, C, h, w] as a picture: VAE-decoded unless ``preview`` (cached under ``(owner, key)``).

        An embedding [B, D] (the Kandinsky prior's x_t) is drawn as its grid of numbers."""
        size = size or self.size
        if latents.dim() == 2:
            return render.embedding_picture(latents, size=size)
        decode = not preview and not pixel_space and self.can_decode()
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
        if latents.dim() == 2:  # an embedding-valued output (the Kandinsky prior's x̂0)
            return png(render.embedding_picture(latents, size=self.size))
        return png(render.latent_preview(latents[:, :3] if latents.shape[1] > 3 else latents, size=self.size))

    def channels(self, t: torch.Tensor, *, limit: float | None = None) -> bytes:
        """PNG of every channel side by side on one diverging scale (blue −, white 0, red +)."""
        if t.dim() == 2:  # an embedding: its grid of numbers on the same scale
            return png(render.embedding_picture(t, size=self.size, limit=limit))
        return png(render.channel_grid(t, size=self.size * 2, limit=limit))

    def final_picture(self, trace: Trace, *, preview: bool = False, size: int | None = None) -> Image.Image:
        """The trace's final picture: its decoded image, else (or with ``preview``) its final latents."""
        if trace.image is not None and trace.image.dim() == 2:  # image embeddings (the Kandinsky prior)
            return render.embedding_picture(trace.image, size=size or self.size)
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


class DxWidget(Actions, W.VBox):
    """Base of the ipywidgets-drawn diffexplain widgets: an output area for errors, a status line, a
    progress bar and a Stop button (``stop_button``, shown by the widgets that run the model). The
    actions (``guard``, ``start``, ``stop``...) are :class:`~diffexplain.widgets.actions.Actions`'."""

    css_class = "dx-widget"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        self.output.add_class("dx-output")
        self.status = W.HTML("")
        self.status.add_class("dx-status")
        self.progress = ProgressBar()
        self.stop_button = button("■ Stop", "dx-stop", style="danger", tooltip="stop after the current step")
        self.stop_button.disabled = True
        self.stop_button.on_click(lambda _: self.stop())
        self.add_class("dx-widget")
        self.add_class(self.css_class)
        self._init_actions()

    def buttons(self) -> list[W.Button]:
        """Every button inside this widget but Stop."""
        found, todo = [], list(self.children)
        while todo:
            item = todo.pop()
            if isinstance(item, W.Button) and item is not self.stop_button:
                found.append(item)
            todo.extend(getattr(item, "children", ()))
        return found
