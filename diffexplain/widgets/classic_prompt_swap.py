"""ClassicPromptSwap: the ipywidgets PromptSwap (kept for ipywidgets-only front ends; ``PromptSwap`` is the anywidget)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
import numpy as np

from diffexplain import render
from diffexplain.checks import check_guidance_scale
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    LiveFigure,
    blank,
    button,
    default_guidance,
    default_steps,
    figure_box,
    help_box,
    png,
)
from diffexplain.widgets.controls import panels, preview_checkbox, prompt_box
from diffexplain.widgets.inputs import SeedBox, steps_box
from diffexplain.widgets.prompt_swap import HELP
from diffexplain.widgets.prompt_swap_work import PromptSwapWork

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


class ClassicPromptSwap(PromptSwapWork, DxWidget):
    """Prompt A, switched to prompt B from step k (``fork(prompt=...)``), and a sweep over k.

    ``original`` is the prompt-A trace, ``swapped`` the latest fork, ``sweep`` the forks by k.
    """

    css_class = "dx-prompt-swap"

    def __init__(
        self,
        explainer: Explainer,
        prompt_a: str,
        prompt_b: str,
        *,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        sweep_points: int = 6,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer
        self.frames = Frames(explainer, size)
        self.guidance_scale = (
            default_guidance(explainer) if guidance_scale is None else check_guidance_scale(guidance_scale)
        )
        self.prompt_a = prompt_box(prompt_a, description="prompt A", css="dx-prompt-a", width="460px")
        self.prompt_b = prompt_box(prompt_b, description="prompt B", css="dx-prompt-b", width="460px")
        self.seed = SeedBox(seed)
        self.steps = steps_box(num_inference_steps or default_steps(explainer))
        self.run_button = button("Run prompt A", "dx-run", style="primary")
        self.preview = preview_checkbox(disabled=explainer.vae is None)
        self.step = W.IntSlider(value=0, min=0, max=1, description="swap at k", continuous_update=False)
        self.step.add_class("dx-swap-step")
        self.swap_button = button("Switch to B from step k", "dx-swap-button", style="warning")
        self.points = W.BoundedIntText(
            value=sweep_points,
            min=2,
            max=50,
            description="sweep points",
            style={"description_width": "initial"},
            layout=W.Layout(width="170px"),
        )
        self.sweep_button = button("Sweep k", "dx-sweep-button")

        boxes, self.images = panels(
            (
                ("a", "prompt A all the way", "dx-a-image"),
                ("swap", "A, then B from step k", "dx-swap-image"),
                ("diff", "difference", "dx-diff-image"),
            ),
            size,
        )
        self.swap_title = boxes["swap"].children[0]
        self.strip = W.Image(format="png", layout=W.Layout(align_self="flex-start"))  # not stretched
        self.strip.add_class("dx-sweep-strip")
        self.strip_label = W.HTML()
        self.fig = LiveFigure()
        self.fig.add_scatter(x=[], y=[], name="change from A (mean |Δpixel|)", mode="lines+markers")
        self.fig.add_scatter(x=[], y=[], name="change from B-from-step-0", mode="lines+markers")
        self.fig.update_layout(
            height=260,
            margin={"l": 50, "r": 20, "t": 30, "b": 40},
            title={"text": "how much the final picture differs, by swap step k", "font": {"size": 13}},
            xaxis_title="swap step k",
            yaxis_title="mean |difference| (0–1)",
            legend={"orientation": "h", "y": -0.35},
        )

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.swap_button.on_click(self.guard(lambda _: self.start(self._swap_work)))
        self.sweep_button.on_click(self.guard(lambda _: self.start(self._sweep_work)))
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")

        self.children = [
            help_box(HELP),
            W.HBox([self.prompt_a, self.seed, self.steps]),
            W.HBox([self.prompt_b, self.run_button, self.stop_button, self.preview]),
            W.HBox([self.step, self.swap_button, self.points, self.sweep_button]),
            self.progress,
            W.HBox([boxes["a"], boxes["swap"], boxes["diff"]]),
            self.strip_label,
            self.strip,
            figure_box(self.fig, "dx-sweep-plot"),
            self.status,
            self.output,
        ]
        self.original: Trace | None = None
        self.swapped: Trace | None = None
        self.sweep: dict[int, Trace] = {}
        self.guard(self.run)()

    # ---- the sweep's drawing (PromptSwapWork calls them) -------------------------------------------
    def _sweep_started(self) -> None:
        self._clear_sweep()

    def _sweep_grew(self) -> None:
        self._draw_sweep()

    # ---- drawing ---------------------------------------------------------------------------------
    def _redraw(self) -> None:
        if self.original is None:
            return
        preview = self.preview.value
        self.images["a"].value = self.frames.final(self.original, preview=preview)
        if self.swapped is not None:
            self.images["swap"].value = self.frames.final(self.swapped, preview=preview)
            self.images["diff"].value = self.frames.difference(self.swapped, self.original, preview=preview)
        else:  # a new run: the last swap belonged to the previous prompt A
            self.images["swap"].value = blank(self.frames.size, "switch to B\nfrom step k")
            self.images["diff"].value = blank(self.frames.size)
            self.swap_title.value = "<b>A, then B from step k</b>"
        if self.sweep:
            self._draw_sweep()
        else:
            self._clear_sweep()

    def _clear_sweep(self) -> None:
        """No sweep for this run yet: an empty strip and plot, not the previous run's."""
        self.strip.value = blank(96, "press “Sweep k”")
        self.strip_label.value = "<b>final pictures when prompt B takes over at step k</b> (press “Sweep k”)"
        with self.fig.batch_update():
            for series in self.fig.data:
                series.x, series.y = [], []

    def _draw_sweep(self) -> None:
        assert self.original is not None
        preview = self.preview.value
        ks = sorted(self.sweep)
        tiles = [self.frames.final_picture(self.sweep[k], preview=preview, size=96) for k in ks]
        tiles.append(self.frames.final_picture(self.original, preview=preview, size=96))
        self.strip.value = png(render.strip(tiles, [f"k={k}" for k in ks] + ["A only"]))
        self.strip_label.value = (
            "<b>final pictures when prompt B takes over at step k</b> (last: prompt A throughout)"
        )
        arrays = [np.asarray(t, dtype=np.float32) / 255 for t in tiles]
        ref_a, ref_b = arrays[-1], arrays[0]
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = (
                ks,
                [float(np.abs(a - ref_a).mean()) for a in arrays[:-1]],
            )
            self.fig.data[1].x, self.fig.data[1].y = (
                ks,
                [float(np.abs(a - ref_b).mean()) for a in arrays[:-1]],
            )
