"""A stage chooser for widgets that show one trace of a multi-stage run (``diffexplain.Cascade``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as W


def chooser_width(names: Sequence[str]) -> str:
    """The chooser's button width: 90 px, wider for long stage names ("stage decoder")."""
    longest = max((len(f"stage {name}") for name in names), default=0)
    return f"{max(90, 8 * longest + 20)}px"


def stage_chooser(
    names: Sequence[str], value: str | None, on_change: Callable[[str | None], None]
) -> W.ToggleButtons:
    """Toggle buttons, one per stage ("stage I", "stage II"), calling ``on_change(name)`` on a new value.

    Hidden for fewer than two stages (a single trace: nothing to choose)."""
    chooser = W.ToggleButtons(
        options=[(f"stage {name}", name) for name in names],
        value=value,
        tooltips=[f"show stage {name}'s trace" for name in names],
    )
    chooser.add_class("dx-stage-chooser")
    chooser.style.button_width = chooser_width(names)
    chooser.layout.display = None if len(names) > 1 else "none"
    chooser.observe(lambda change: on_change(change["new"]), names="value")
    return chooser


def embedding_caption(trace: object) -> str:
    """HTML saying that a trace's x_t is an image embedding [B, D], not a picture (the Kandinsky prior's
    stage, known from its settings), else ""."""
    from diffexplain.render import embedding_grid_shape

    settings = getattr(trace, "run_settings", None)
    dim = settings.model.get("embedding_dim") if settings is not None else None
    if not isinstance(dim, int) or dim <= 0:
        return ""
    rows, cols = embedding_grid_shape(dim)
    return (
        f"<i class='dx-embedding-caption'>This stage's x_t is a CLIP image embedding of {dim} numbers, not a "
        f"picture: each panel draws them as a {rows} × {cols} grid, row by row (red +, blue −, white 0, "
        "grey past the end). The prior predicts the clean embedding, not noise: ε_c, ε_u and ε̂ are its "
        "predicted embeddings x̂0_c, x̂0_u and the guided x̂0. The decoder stage draws the picture from it.</i>"
    )
