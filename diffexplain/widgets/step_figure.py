"""The StepExplorer's timeline as a plotly figure (``LiveFigure``): the per-step sizes of the predictions,
cos(ε_c, ε_u), ᾱ_t and the current step's marker. The ipywidgets ``ClassicStepExplorer`` shows it; the
anywidget ``StepExplorer`` draws its timeline in the browser (``trace_view.js``) and builds this figure
only when Python code asks for ``explorer.fig``.
"""

from __future__ import annotations

from typing import Any

from plotly.subplots import make_subplots

from diffexplain.explanations import TIMELINE_AXES, TIMELINE_SERIES, TIMELINE_TITLE
from diffexplain.widgets.figures import LiveFigure

MARKER = 5  # the index of the current-step trace in ``fig.data``


def make_timeline() -> LiveFigure:
    """The empty timeline: ‖ε_c‖, ‖ε_u‖, ‖Δ‖ (left axis), cos and ᾱ_t (right axis), the marker."""
    fig = LiveFigure(make_subplots(specs=[[{"secondary_y": True}]]))
    for key in ("c", "u", "d"):
        fig.add_scatter(x=[], y=[], name=TIMELINE_SERIES[key], mode="lines+markers", secondary_y=False)
    for key, dash in (("cos", "dot"), ("abar", "dash")):
        fig.add_scatter(
            x=[], y=[], name=TIMELINE_SERIES[key], mode="lines", line={"dash": dash}, secondary_y=True
        )
    fig.add_scatter(
        x=[],
        y=[],
        name="current step",
        mode="markers",
        marker={"size": 14, "symbol": "diamond"},
        secondary_y=False,
    )
    fig.update_layout(
        height=300,
        margin={"l": 50, "r": 50, "t": 30, "b": 40},
        legend={"orientation": "h", "y": -0.25},
        title={"text": TIMELINE_TITLE, "font": {"size": 13}},
    )
    fig.update_xaxes(title_text=TIMELINE_AXES["x"])
    fig.update_yaxes(title_text=TIMELINE_AXES["left"], secondary_y=False)
    fig.update_yaxes(  # its own round ticks (plotly would otherwise line them up with the left axis's)
        title_text=TIMELINE_AXES["right"],
        range=[-0.05, 1.05],
        tickmode="array",
        tickvals=[0, 0.25, 0.5, 0.75, 1],
        showgrid=False,
        secondary_y=True,
    )
    return fig


def fill_timeline(fig: LiveFigure, series: dict[str, list[Any]], cfg: bool) -> None:
    """Draw a trace's ``series`` (no ε_u, Δ or cos where ``cfg`` is off)."""
    steps = list(range(len(series["abar"])))
    with fig.batch_update():
        data = fig.data
        data[0].x, data[0].y = steps, series["c"]
        data[1].x, data[1].y = (steps, series["u"]) if cfg else ([], [])
        data[2].x, data[2].y = (steps, series["d"]) if cfg else ([], [])
        data[3].x, data[3].y = (steps, series["cos"]) if cfg else ([], [])
        data[4].x, data[4].y = steps, series["abar"]
        fig.layout.xaxis.range = [-0.5, len(steps) - 0.5]


def mark_step(fig: LiveFigure, k: int, y: float | None) -> None:
    """Move the current-step marker (at height ``y``, 0 where unknown) and the vertical line to step ``k``."""
    line = {"color": "#888", "width": 1}
    with fig.batch_update():
        fig.data[MARKER].x, fig.data[MARKER].y = [k], [0.0 if y is None else y]
        fig.layout.shapes = [
            {"type": "line", "x0": k, "x1": k, "yref": "paper", "y0": 0, "y1": 1, "line": line}
        ]
