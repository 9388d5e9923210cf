"""ClassicGuidanceLab: the ipywidgets GuidanceLab (its plots through plotly in ``Output``), kept beside the
anywidget ``GuidanceLab`` for front ends and code that want ipywidgets controls. What it does is
``GuidanceWork``'s (``guidance_work.py``); below, a seed grid (``widgets.seed_grid.SeedGridPanel``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W

from diffexplain.checks import check_guidance_scale
from diffexplain.guiders.menu import PLAIN, method_menu
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    button,
    default_guidance,
    default_steps,
    figure_box,
    help_box,
    words,
)
from diffexplain.widgets.controls import panels, preview_checkbox, prompt_box
from diffexplain.widgets.guidance_work import HELP, GuidanceWork, guidance_figures
from diffexplain.widgets.inputs import SeedBox, steps_box
from diffexplain.widgets.seed_grid import SeedGridPanel
from diffexplain.widgets.stages import stage_chooser

if TYPE_CHECKING:
    from diffexplain.cascade import Cascade
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


class ClassicGuidanceLab(GuidanceWork, DxWidget):
    """Guidance off vs on for one prompt and seed; re-guide cached steps at any w; guidance off in a step
    range; and, counted over ``seeds`` seeds, w = 0 / w = 1 / the chosen w with the checker's verdicts
    (``count_seeds``) and a w sweep (``sweep``).

    The constructor runs the loop twice (w = 1 and w = ``guidance_scale``); ``traces`` holds the results.
    The seed grid runs when its button is pressed (or ``count_seeds()``); ``lab.grid.columns`` holds it.

    ``explainer`` may be a ``Cascade``: a stage chooser picks the stage whose w changes (``stage``,
    default the first); each run is the whole cascade, the other stages at their own default w, and
    the lab shows the chosen stage's trace. The seed grid is for single models and is hidden then.
    """

    css_class = "dx-guidance-lab"

    def __init__(
        self,
        explainer: Explainer | Cascade,
        prompt: str,
        seed: int = 0,
        *,
        stage: str | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        negative_prompt: str = "",
        size: int = DEFAULT_SIZE,
        seeds: int = 12,
    ) -> None:
        super().__init__()
        from diffexplain.cascade import Cascade

        self.cascade = explainer if isinstance(explainer, Cascade) else None
        self.stage: str | None = None  # the stage whose w changes, for a cascade
        if self.cascade is not None:
            self.stage = self.cascade.names[0] if stage is None else stage
            if self.stage not in self.cascade.stages:
                raise ValueError(f"stage={stage!r}: expected one of {', '.join(self.cascade.names)}")
            explainer = self.cascade.stages[self.stage]
        self.stage_chooser = stage_chooser(
            self.cascade.names if self.cascade else (), self.stage, self._on_stage
        )
        self.explainer = explainer
        self.frames = Frames(explainer, size)
        w0 = default_guidance(explainer) if guidance_scale is None else check_guidance_scale(guidance_scale)
        w0 = w0 if w0 > 1 else explainer.family.compare_guidance_scale  # the guided run needs w > 1
        self.negative_prompt = negative_prompt
        self.prompt = prompt_box(prompt)
        self.seed = SeedBox(seed)
        self.steps = steps_box(num_inference_steps or default_steps(explainer))
        self.run_button = button("Run guidance off and on", "dx-run", style="primary")
        self.preview = preview_checkbox(disabled=explainer.vae is None)

        self.scale = W.FloatSlider(
            value=w0, min=1.0, max=20.0, step=0.5, description="w", continuous_update=True
        )
        self.scale.add_class("dx-guidance-slider")
        self.methods = method_menu(explainer.scheduler, explainer.model)  # label -> guider (None: ε_u + w·Δ)
        self.method = W.Dropdown(options=list(self.methods), value=PLAIN, description="method")
        self.method.layout.width = "260px"
        self.method.add_class("dx-guidance-method")
        self.run_scale_button = button("Run at this scale", "dx-run-scale")
        self.range = W.IntRangeSlider(
            value=(0, 1), min=0, max=1, description="step range", continuous_update=False
        )
        self.range.add_class("dx-cfg-range")
        self.range_button = button("Guidance off for these steps", "dx-cfg-off-button")

        boxes, self.images = panels(
            (
                ("off", "guidance off (w = 1)", "dx-off-image"),
                ("on", "guidance on", "dx-on-image"),
                ("diff", "difference |on − off|", "dx-diff-image"),
                ("range", "guidance off in a step range", "dx-range-image"),
            ),
            size,
        )
        self.caption = W.HTML()  # what the pictures are, where they are no pictures (the Kandinsky prior)
        self.on_title = boxes["on"].children[0]
        self.range_title = boxes["range"].children[0]
        self.strip = W.Image(format="png", layout=W.Layout(align_self="flex-start"))  # not stretched
        self.strip.add_class("dx-reguide-strip")
        self.strip_label = W.HTML()
        self.strip_label.add_class("dx-reguide-label")
        self.fig, self.effective = guidance_figures()  # Δ per step; the effective w per step

        self.grid = SeedGridPanel(self, seeds)

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.run_scale_button.on_click(self.guard(lambda _: self.start(self._at_scale_work)))
        self.range_button.on_click(self.guard(lambda _: self.start(self._range_work)))
        self.scale.observe(self.guard(self._on_scale), names="value")
        self.method.observe(self.guard(self._on_method), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")

        self.children = [
            help_box(HELP.format(**words(None, explainer))),
            W.HBox([self.prompt, self.seed, self.steps, self.run_button, self.stop_button]),
            W.HBox([boxes["off"], boxes["on"], boxes["diff"], boxes["range"]]),
            self.caption,
            W.HBox(
                [self.stage_chooser, self.method, self.scale, self.run_scale_button, self.preview]
            ),  # chooser: cascades
            self.strip_label,
            self.strip,
            W.HBox([self.range, self.range_button]),
            self.progress,
            figure_box(self.fig, "dx-guidance-plot"),
            figure_box(self.effective, "dx-effective-plot"),
            self.grid,
            self.status,
            self.output,
        ]
        if self.cascade is not None:
            self.grid.layout.display = "none"  # it counts runs of one model
        self.off: Trace | None = None
        self.on: Trace | None = None
        self.ranged: Trace | None = None
        self._w_on = w0
        self.guard(self.run)()
