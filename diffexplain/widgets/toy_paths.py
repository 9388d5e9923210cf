"""ToyPaths: the 2-D toy of both dialects (``diffexplain.toy2d``) side by side. The same noise, sampled by
a network that predicts the noise (ε) and one that predicts a velocity (flow): the paths each sample takes
from noise to its colour's cluster, with one step slider for both, their straightness, and what guidance
does to them.

An anywidget (``TraceView``) running ``diffexplain/web/toy_paths.js``: each sampling's paths and x̂0
guesses (every step, both models) go to the browser once; the step slider redraws both plots there with
no kernel round trip (Python hears the step once it settles). The colour, the number of steps and w
sample again: messages to Python. ``colour``, ``num_steps``, ``guidance``, ``step``, ``summary``,
``figures`` (plotly, built when read) stay for Python code. The ipywidgets version is ``ClassicToyPaths``.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch
import traitlets as T

from diffexplain import toy2d
from diffexplain.web import bundle
from diffexplain.widgets.base import help_html
from diffexplain.widgets.stand_ins import Chooser, IntControl, Text
from diffexplain.widgets.trace_view import TraceView

HELP = (
    "Each dot is a “picture”: a point of a 2-D mixture with one cluster per colour. Two tiny networks learned "
    "it in seconds: one predicts the noise <b>ε</b> (sampled with DDIM), one a <b>velocity v</b> along a "
    "straight line from noise to data (flow matching, sampled with Euler steps). Both start from the same "
    "noise. The lines are the paths the samples took up to the chosen step; the hollow rings are each "
    "step's guess <b>x̂0</b>. Straightness is the length travelled over the distance covered (1: a straight "
    "line): the flow model's paths are straighter, which is why it needs fewer steps. Guidance <b>w</b> "
    "pushes the samples along ε_c − ε_u as in the image models."
)
DIALECTS = {"epsilon": "predicts the noise ε (DDIM)", "flow": "predicts a velocity v (flow matching, Euler)"}
HUES = {"red": "#d62728", "yellow": "#d4b000", "green": "#2ca02c", "cyan": "#17becf", "blue": "#1f77b4", "magenta": "#c51b8a"}  # fmt: skip


class FloatControl(T.HasTraits):
    """A float slider: ``value``."""

    value = T.Float(0.0)


class ToyPaths(TraceView):
    """The ε and the flow toy models side by side: sample paths from the same noise, one step slider.

    ``models``: trained ``toy2d.ToyModel`` by objective (default: both trained now, ``train_steps`` each,
    a few seconds). ``paths`` holds the current paths and x̂0 guesses by objective.
    """

    _esm = bundle("toy_paths.js")
    css_class = "dx-toy-paths"
    shown_step = T.Int(0).tag(sync=True)  # the step shown (the browser sets it once scrubbing settles)

    @property
    def step(self) -> IntControl:  # type: ignore[override]  # the stand-in slider, as the ipywidgets view had
        """The step slider's stand-in (``value``, ``max``); ``shown_step`` is what the browser syncs."""
        return self._step

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
        if colour not in toy2d.COLOURS:
            raise ValueError(f"colour={colour!r}: expected one of {', '.join(toy2d.COLOURS)}")
        self._step = IntControl(max=num_steps)
        super().__init__()
        self.models = models or {o: toy2d.train(o, steps=train_steps, seed=seed) for o in toy2d.OBJECTIVES}
        self.samples, self.seed = samples, seed
        self.colour = Chooser(options=[(c, c) for c in toy2d.COLOURS], value=colour)
        self.num_steps = IntControl(max=50, min=1, value=num_steps)
        self.guidance = FloatControl(value=guidance_scale)
        self.summary = Text()
        self.paths: dict[str, tuple] = {}
        self._figures: dict[str, go.Figure] = {}
        self._sampling = False
        T.link((self, "shown_step"), (self._step, "value"))
        for control in (self.colour, self.num_steps, self.guidance):
            control.observe(self.guard(lambda _: self._sampling or self._sample()), names="value")
        self._step.observe(self.guard(lambda _: self._say_step()), names="value")
        self.guard(self._sample)()

    # ---- the browser's messages ------------------------------------------------------------------
    def action_settings(self, colour: str, num_steps: int, guidance: float) -> None:
        """The browser's colour, steps and w: sample again (once, whichever changed)."""
        if colour not in toy2d.COLOURS:
            raise ValueError(f"colour={colour!r}: expected one of {', '.join(toy2d.COLOURS)}")
        self._sampling = True
        try:
            self.colour.value, self.num_steps.value = colour, int(num_steps)
            self.guidance.value = float(guidance)
        finally:
            self._sampling = False
        self._sample()

    # ---- sampling --------------------------------------------------------------------------------
    def _sample(self) -> None:
        """Sample both models from the same noise with the current colour, steps and w; send the paths."""
        steps = int(self.num_steps.value)
        labels = torch.full((self.samples,), toy2d.COLOURS.index(self.colour.value), dtype=torch.long)
        self.paths = {
            objective: toy2d.sample_paths(
                model, labels, num_steps=steps, guidance_scale=float(self.guidance.value), seed=self.seed
            )
            for objective, model in self.models.items()
        }
        bends = {o: float(toy2d.straightness(path).median()) for o, (path, _) in self.paths.items()}
        right = {
            o: float(toy2d.in_cluster(path[-1], labels).float().mean()) for o, (path, _) in self.paths.items()
        }
        self.summary.value = " · ".join(
            f"<b>{o}</b>: straightness {bends[o]:.3f}, {100 * right[o]:.0f} % land in the {self.colour.value} cluster"
            for o in self.paths
        )
        centres = toy2d.cluster_centres()
        plots = {}
        for objective, (path, guesses) in self.paths.items():
            lo, hi = (
                min(-3.5, float(path.min()) - 0.3),
                max(3.5, float(path.max()) + 0.3),
            )  # guidance overshoots
            plots[objective] = {
                "title": f"{objective}: {DIALECTS[objective]}",
                "range": [round(lo, 3), round(hi, 3)],
                "path": _rounded(path),  # [S+1, n, 2]
                "x0": _rounded(guesses),  # [S, n, 2]
            }
        data = {
            "help": help_html(HELP),
            "colours": list(toy2d.COLOURS),
            "hues": HUES,
            "centres": _rounded(centres),
            "colour": self.colour.value,
            "num_steps": steps,
            "guidance": float(self.guidance.value),
            "summary": self.summary.value,
            "plots": plots,
        }
        self._step.max = steps
        self._step.value = steps
        self._say_step()
        self.send_view(data, {})

    def _say_step(self) -> None:
        k = int(self._step.value)
        self.say(f"step {k} of {self.num_steps.value}: x_t after {k} step(s), and the x̂0 it came from")

    # ---- what Python reads (the browser draws its own) ---------------------------------------------
    @property
    def figures(self) -> dict[str, go.Figure]:
        """Both plots as plotly figures at the step shown (built when read)."""
        k = int(self._step.value)
        centres = toy2d.cluster_centres()
        for objective, (path, guesses) in self.paths.items():
            fig = self._figures.get(objective) or go.Figure()
            if not fig.data:
                fig.add_scatter(
                    x=centres[:, 0].tolist(), y=centres[:, 1].tolist(), mode="markers+text", name="clusters",
                    text=list(toy2d.COLOURS), textposition="top center",
                    marker={"size": 18, "color": [HUES[c] for c in toy2d.COLOURS], "opacity": 0.35},
                )  # fmt: skip
                fig.add_scatter(x=[], y=[], mode="lines", name="paths", line={"width": 1, "color": "#888"})
                fig.add_scatter(x=[], y=[], mode="markers", name="x_t", marker={"size": 6, "color": "#222"})
                fig.add_scatter(
                    x=[], y=[], mode="markers", name="x̂0", marker={"size": 8, "symbol": "circle-open"}
                )
            self._figures[objective] = fig
            xs: list[Any] = []
            ys: list[Any] = []
            for j in range(path.shape[1]):  # each sample's path up to step k, then a gap
                xs += path[: k + 1, j, 0].tolist() + [None]
                ys += path[: k + 1, j, 1].tolist() + [None]
            lo, hi = min(-3.5, float(path.min()) - 0.3), max(3.5, float(path.max()) + 0.3)
            shown = guesses[k - 1] if k > 0 else guesses[:0].reshape(0, 2)
            with fig.batch_update():
                fig.update_layout(
                    title={"text": f"{objective}: {DIALECTS[objective]}", "font": {"size": 13}},
                    width=430, height=430, margin={"l": 30, "r": 10, "t": 40, "b": 30}, showlegend=False,
                    xaxis={"range": [lo, hi], "zeroline": False}, yaxis={"range": [lo, hi], "scaleanchor": "x"},
                )  # fmt: skip
                fig.data[1].x, fig.data[1].y = xs, ys
                fig.data[2].x, fig.data[2].y = path[k, :, 0].tolist(), path[k, :, 1].tolist()
                fig.data[3].x, fig.data[3].y = shown[:, 0].tolist(), shown[:, 1].tolist()
                fig.data[3].marker.color = HUES[self.colour.value]
        return dict(self._figures)


def _rounded(t: torch.Tensor) -> list:
    """A tensor as nested lists, 4 decimals (what the browser draws)."""
    return torch.round(t.float(), decimals=4).tolist()


def torch_full(n: int, value: int) -> torch.Tensor:
    """``n`` labels, all ``value``."""
    return torch.full((n,), value, dtype=torch.long)
