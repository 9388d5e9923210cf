"""ClassicNoiseLab: the ipywidgets NoiseLab (kept for ipywidgets-only front ends; ``NoiseLab`` is the anywidget)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
import torch
from PIL import ImageDraw

from diffexplain.checks import check_guidance_scale
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    blank,
    button,
    default_guidance,
    default_steps,
    help_box,
    is_pixel_space,
    png,
    vp_scale,
)
from diffexplain.widgets.controls import panels, preview_checkbox, prompt_box
from diffexplain.widgets.inputs import SeedBox, steps_box
from diffexplain.widgets.noise_lab import HELP, SOURCES
from diffexplain.widgets.noise_work import NoiseWork

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace


class ClassicNoiseLab(NoiseWork, DxWidget):
    """Choose x_T (seed, pattern, image or tensor); add noise at step k, optionally in a rectangle, and fork.

    ``original`` is the run from the chosen start; ``branch`` the fork with the added noise.
    """

    css_class = "dx-noise-lab"

    def __init__(
        self,
        explainer: Explainer,
        prompt: str,
        *,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer
        self.frames = Frames(explainer, size)
        self.guidance_scale = (
            default_guidance(explainer) if guidance_scale is None else check_guidance_scale(guidance_scale)
        )
        self.custom_noise: torch.Tensor | None = None
        self.prompt = prompt_box(prompt)
        self.steps = steps_box(num_inference_steps or default_steps(explainer))
        self.source = W.Dropdown(options=SOURCES, value="seed", description="start from")
        self.source.add_class("dx-noise-source")
        self.seed = SeedBox(seed)
        self.dataset_index = W.BoundedIntText(value=0, min=0, max=99_999, description="dataset #")
        self.dataset_index.layout.width = "180px"
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="image")
        self.upload.add_class("dx-noise-upload")
        self.run_button = button("Run from this start", "dx-run", style="primary")
        self.preview = preview_checkbox(disabled=explainer.vae is None)

        self.step = W.IntSlider(value=0, min=0, max=1, description="step k", continuous_update=False)
        self.step.add_class("dx-inject-step")
        self.strength = W.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.1, description="strength")
        self.strength.add_class("dx-noise-strength")
        self.noise_seed = SeedBox(1, description="noise seed", width="180px")
        self.noise_seed.add_class("dx-noise-seed")
        self.use_rect = W.Checkbox(value=False, description="only inside the rectangle", indent=False)
        self.use_rect.add_class("dx-use-rect")
        self.rows = W.IntRangeSlider(value=(25, 75), min=0, max=100, description="rows %")
        self.rows.add_class("dx-rect-rows")
        self.cols = W.IntRangeSlider(value=(0, 50), min=0, max=100, description="columns %")
        self.cols.add_class("dx-rect-cols")
        self.inject_button = button("Add noise at step k and fork", "dx-inject-button", style="warning")

        boxes, self.images = panels(
            (
                ("init", "starting noise x_T", "dx-init-image"),
                ("xk", "x_k of the original, and the region", "dx-xk-image"),
                ("original", "original", "dx-original-image"),
                ("branch", "new branch", "dx-branch-image"),
                ("diff", "difference", "dx-diff-image"),
            ),
            size,
        )
        self.branch_title = boxes["branch"].children[0]

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.inject_button.on_click(self.guard(lambda _: self.start(self._inject_work)))
        for control in (self.step, self.rows, self.cols, self.use_rect, self.preview):
            control.observe(self.guard(lambda _: self._draw_region()), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")

        self.children = [
            help_box(HELP),
            W.HBox([self.prompt, self.steps, self.preview]),
            W.HBox(
                [self.source, self.seed, self.dataset_index, self.upload, self.run_button, self.stop_button]
            ),
            W.HBox([self.step, self.strength, self.noise_seed]),
            W.HBox([self.use_rect, self.rows, self.cols, self.inject_button]),
            self.progress,
            W.HBox([boxes["init"], boxes["xk"], boxes["original"], boxes["branch"], boxes["diff"]]),
            self.status,
            self.output,
        ]
        self.original: Trace | None = None
        self.branch: Trace | None = None
        self.guard(self.run)()

    # ---- drawing ---------------------------------------------------------------------------------
    def _redraw(self) -> None:
        trace = self.original
        if trace is None:
            return
        preview, pixel = self.preview.value, is_pixel_space(trace, self.explainer)
        init = trace.steps[0].restart.latents if trace.steps[0].restart is not None else trace["latents.init"]
        scale = vp_scale(trace, 0)
        self.images["init"].value = png(
            self.frames.picture(trace, ("init",), init * scale, preview=preview, pixel_space=pixel)
        )
        self.images["original"].value = self.frames.final(trace, preview=preview)
        if self.branch is not None:
            self.images["branch"].value = self.frames.final(self.branch, preview=preview)
            self.images["diff"].value = self.frames.difference(self.branch, trace, preview=preview)
        else:  # a new run: the last branch belonged to the previous one
            self.images["branch"].value = blank(self.frames.size, "add noise at\nstep k to fork")
            self.images["diff"].value = blank(self.frames.size)
            self.branch_title.value = "<b>new branch</b>"
        self._draw_region()

    def _draw_region(self) -> None:
        trace = self.original
        if trace is None:
            return
        k = self.step.value
        record = trace.steps[k]
        xk = record.restart.latents if record.restart is not None else trace["step.latents", k]
        picture = self.frames.picture(
            trace,
            ("xk", k),
            xk * vp_scale(trace, k),
            preview=self.preview.value,
            pixel_space=is_pixel_space(trace, self.explainer),
        ).copy()
        box = self.mask()
        if box is not None:
            top, bottom, left, right = box
            w, h = picture.size
            ImageDraw.Draw(picture).rectangle(
                (left * w, top * h, right * w - 1, bottom * h - 1), outline=(255, 0, 0), width=2
            )
        self.images["xk"].value = png(picture)
