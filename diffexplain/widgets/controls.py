"""The controls the widgets share, built once here: buttons, titled image panels, the prompt box and
the "fast latent preview" checkbox. Their labels and CSS classes are what the browser tests select by.
"""

from __future__ import annotations

from collections.abc import Iterable

import ipywidgets as W

from diffexplain.views import DEFAULT_SIZE, blank

PanelSpec = Iterable[tuple[str, str, str]]
"""Image panels to build: (key, title, CSS class of the image) each, in the order shown."""


def button(description: str, css: str, *, style: str = "", tooltip: str = "") -> W.Button:
    """A button with a CSS class."""
    b = W.Button(description=description, button_style=style, tooltip=tooltip or description)
    b.layout.width = "auto"
    b.layout.flex = "0 0 auto"  # never squeezed below its label (classic Notebook's flex rows shrink it)
    b.add_class(css)
    return b


def image_panel(title: str, css: str, size: int = DEFAULT_SIZE) -> tuple[W.VBox, W.Image]:
    """A titled picture: returns (box, image widget); both get CSS classes (``css`` on the image)."""
    image = W.Image(value=blank(size), format="png", width=size)
    image.add_class(css)
    label = W.HTML(f"<b>{title}</b>")
    box = W.VBox([label, image], layout=W.Layout(align_items="center", margin="2px 6px"))
    box.add_class("dx-panel")
    return box, image


def panels(spec: PanelSpec, size: int = DEFAULT_SIZE) -> tuple[dict[str, W.VBox], dict[str, W.Image]]:
    """One :func:`image_panel` per (key, title, css) of ``spec``: (boxes by key, image widgets by key)."""
    boxes: dict[str, W.VBox] = {}
    images: dict[str, W.Image] = {}
    for key, title, css in spec:
        boxes[key], images[key] = image_panel(title, css, size)
    return boxes, images


def prompt_box(
    value: str, *, description: str = "prompt", css: str = "dx-prompt", width: str = "480px"
) -> W.Text:
    """A text box for a prompt, with a CSS class."""
    box = W.Text(value=value, description=description, layout=W.Layout(width=width))
    box.add_class(css)
    return box


def preview_checkbox(*, disabled: bool = False) -> W.Checkbox:
    """The "fast latent preview (no VAE)" box: ticked, pictures of latents skip the VAE decode."""
    box = W.Checkbox(value=False, description="fast latent preview (no VAE)", indent=False, disabled=disabled)
    box.add_class("dx-preview-toggle")
    return box
