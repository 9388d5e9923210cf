"""ClassicToyPaths: the ipywidgets ToyPaths (each step redrawn by Python into plotly figures), kept for front
ends that host ipywidgets but not anywidget. ``ToyPaths`` (``toy_paths.py``) is the anywidget view."""

from __future__ import annotations

import ipywidgets as W

from diffexplain import toy2d
from diffexplain.widgets.base import DxWidget, LiveFigure, figure_box, help_box
from diffexplain.widgets.toy_paths import DIALECTS, HELP, HUES, torch_full


class ClassicToyPaths(DxWidget):
    """The ε and the flow toy models side by side: sample paths from the same noise, one step slider.

    ``models``: trained ``toy2d.ToyModel`` by objective (default: both trained now, ``train_steps`` each,
    a few seconds). ``paths`` holds the current paths and x̂0 guesses by objective.
    """

    css_class = "dx-toy-paths"

    def __init__(
        self,
        *,
        colour: str = "blue",
        samples: int = 24,
        num_steps: int = 8,
        guidance_scale: float = 1.0,
        seed: int = 0,
        train_steps: int = 1500,
        models: dict[str, toy2d.ToyModel] | None = None,
    ) -> None:
        super().__init__()
        if colour not in toy2d.COLOURS:
            raise ValueError(f"colour={colour!r}: expected one of {', '.join(toy2d.COLOURS)}")
        self.models = models or {o: toy2d.train(o, steps=train_steps, seed=seed) for o in toy2d.OBJECTIVES}
        self.samples, self.seed = samples, seed
        self.colour = W.Dropdown(options=list(toy2d.COLOURS), value=colour, description="colour")
        self.colour.add_class("dx-toy-colour")
        self.num_steps = W.IntSlider(
            value=num_steps, min=1, max=50, description="steps", continuous_update=False
        )
        self.num_steps.add_class("dx-toy-steps")
        self.guidance = W.FloatSlider(value=guidance_scale, min=0.0, max=6.0, step=0.5, description="w")
        self.guidance.add_class("dx-toy-guidance")
        self.step = W.IntSlider(value=num_steps, min=0, max=num_steps, description="show step")
        self.step.add_class("dx-toy-step")
        self.figures = {objective: self._figure(objective) for objective in toy2d.OBJECTIVES}
        self.summary = W.HTML()
        self.summary.add_class("dx-toy-summary")
        self.paths: dict[str, tuple] = {}
        for control in (self.colour, self.num_steps, self.guidance):
            control.observe(self.guard(lambda _: self._sample()), names="value")
        self.step.observe(self.guard(lambda _: self._redraw()), names="value")
        self.children = [
            help_box(HELP),
            W.HBox([self.colour, self.num_steps, self.guidance]),
            self.step,
            W.HBox([figure_box(self.figures[o], f"dx-toy-{o}") for o in toy2d.OBJECTIVES]),
            self.summary,
            self.status,
            self.output,
        ]
        self.guard(self._sample)()

    def _figure(self, objective: str) -> LiveFigure:
        centres = toy2d.cluster_centres()
        fig = LiveFigure()
        fig.add_scatter(
            x=centres[:, 0].tolist(), y=centres[:, 1].tolist(), mode="markers+text", name="clusters",
            text=list(toy2d.COLOURS), textposition="top center",
            marker={"size": 18, "color": [HUES[c] for c in toy2d.COLOURS], "opacity": 0.35},
        )  # fmt: skip
        fig.add_scatter(x=[], y=[], mode="lines", name="paths", line={"width": 1, "color": "#888"})
        fig.add_scatter(x=[], y=[], mode="markers", name="x_t", marker={"size": 6, "color": "#222"})
        fig.add_scatter(x=[], y=[], mode="markers", name="x̂0", marker={"size": 8, "symbol": "circle-open"})
        fig.update_layout(
            title={"text": f"{objective}: {DIALECTS[objective]}", "font": {"size": 13}},
            width=430, height=430, margin={"l": 30, "r": 10, "t": 40, "b": 30}, showlegend=False,
            xaxis={"range": [-3.5, 3.5], "zeroline": False}, yaxis={"range": [-3.5, 3.5], "scaleanchor": "x"},
        )  # fmt: skip
        return fig

    def _sample(self) -> None:
        """Sample both models from the same noise with the current colour, steps and w."""
        steps = int(self.num_steps.value)
        labels = torch_full(self.samples, toy2d.COLOURS.index(self.colour.value))
        self.paths = {
            objective: toy2d.sample_paths(
                model, labels, num_steps=steps, guidance_scale=float(self.guidance.value), seed=self.seed
            )
            for objective, model in self.models.items()
        }
        for objective, (path, _) in self.paths.items():  # every point in view: guidance can overshoot far
            lo, hi = min(-3.5, float(path.min()) - 0.3), max(3.5, float(path.max()) + 0.3)
            layout = self.figures[objective].layout
            layout.xaxis.range, layout.yaxis.range = [lo, hi], [lo, hi]
            self.figures[objective].data[3].marker.color = HUES[self.colour.value]
        self.step.max = steps
        self.step.value = steps
        bends = {o: float(toy2d.straightness(path).median()) for o, (path, _) in self.paths.items()}
        right = {
            o: float(toy2d.in_cluster(path[-1], labels).float().mean()) for o, (path, _) in self.paths.items()
        }
        self.summary.value = " · ".join(
            f"<b>{o}</b>: straightness {bends[o]:.3f}, {100 * right[o]:.0f} % land in the {self.colour.value} cluster"
            for o in self.paths
        )
        self._redraw()

    def _redraw(self) -> None:
        k = int(self.step.value)
        for objective, (path, guesses) in self.paths.items():
            xs, ys = [], []
            for j in range(path.shape[1]):  # each sample's path up to step k, then a gap
                xs += path[: k + 1, j, 0].tolist() + [None]
                ys += path[: k + 1, j, 1].tolist() + [None]
            fig = self.figures[objective]
            with fig.batch_update():
                fig.data[1].x, fig.data[1].y = xs, ys
                fig.data[2].x, fig.data[2].y = path[k, :, 0].tolist(), path[k, :, 1].tolist()
                shown = guesses[k - 1] if k > 0 else guesses[:0].reshape(0, 2)
                fig.data[3].x, fig.data[3].y = shown[:, 0].tolist(), shown[:, 1].tolist()
        self.say(f"step {k} of {self.num_steps.value}: x_t after {k} step(s), and the x̂0 it came from")
