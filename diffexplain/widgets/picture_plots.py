"""PictureLab's plots as plotly figures (for Python code; the browser draws its own in
``diffexplain/web/picture_lab.js``): where the loop enters the schedule, and the reconstruction error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffexplain.widgets.figures import LiveFigure


def entry_text(n: int, k: int, levels: dict[str, Any]) -> str:
    """The line beside the strength slider (the browser writes the same)."""
    if n - k == 0:
        return "<span style='color:#b00'>⌊N·s⌋ = 0: no step runs; raise strength</span>"
    t, name, value = levels["timesteps"][k], levels["name"], levels["values"][k]
    return f"enters at step <b>{k}</b> of {n} (t = {t:g}, {name} = {value:.3f}); {n - k} steps run"


def schedule_figure(mode: str) -> LiveFigure:
    """The empty "where the loop enters" figure: skipped, runs, entry."""
    fig = LiveFigure(mode=mode)
    fig.add_scatter(x=[], y=[], mode="lines+markers", name="skipped", marker={"color": "#bbb"})
    fig.add_scatter(x=[], y=[], mode="lines+markers", name="runs", marker={"color": "#1f77b4"})
    fig.add_scatter(x=[], y=[], mode="markers", name="entry", marker={"color": "#d62728", "size": 12})
    fig.update_layout(
        title="where the loop enters", height=260, width=420, margin={"l": 50, "r": 10, "t": 40, "b": 40}
    )
    fig.update_xaxes(title_text="inference step")
    return fig


def fill_schedule(fig: LiveFigure, n: int, k: int, levels: dict[str, Any]) -> None:
    """The N steps' levels, split where the loop enters (step ``k``)."""
    values, steps = levels["values"], list(range(n))
    with fig.batch_update():
        fig.data[0].x, fig.data[0].y = steps[: k + 1], values[: k + 1]
        fig.data[1].x, fig.data[1].y = steps[k:], values[k:]
        fig.data[2].x, fig.data[2].y = ([k], [values[k]]) if k < n else ([], [])
        fig.update_yaxes(title_text=levels["name"])


def error_figure(mode: str) -> LiveFigure:
    """The empty "reconstruction error per step" figure."""
    fig = LiveFigure(mode=mode)
    fig.add_scatter(x=[], y=[], mode="lines+markers", name="e_i", marker={"color": "#2ca02c"})
    fig.update_layout(
        title="reconstruction error per step",
        height=260,
        width=420,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
    )
    fig.update_xaxes(title_text="reconstruction step")
    fig.update_yaxes(title_text="‖x − x_inv‖ / ‖x_inv‖")
    return fig


def fill_errors(fig: LiveFigure, errors: Sequence[float]) -> None:
    """One point per reconstruction step."""
    with fig.batch_update():
        fig.data[0].x = list(range(len(errors)))
        fig.data[0].y = list(errors)
