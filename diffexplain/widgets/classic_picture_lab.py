"""ClassicPictureLab: start from a picture (img2img), repaint a rectangle of it (inpainting), or invert it
(DDIM), in ipywidgets (the anywidget view is ``diffexplain.widgets.picture_lab.PictureLab``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
from PIL import Image

from diffexplain.checks import check_guidance_scale
from diffexplain.inversion import reconstruct
from diffexplain.probe import image_size
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    LiveFigure,
    Work,
    blank,
    button,
    default_guidance,
    default_steps,
    figure_box,
    help_box,
    png,
    vp_scale,
)
from diffexplain.widgets.controls import panels, preview_checkbox, prompt_box
from diffexplain.widgets.inputs import InputError, SeedBox, steps_box
from diffexplain.widgets.noise_work import first_upload
from diffexplain.widgets.picture_parts import (
    Box,
    box_mask,
    check_box,
    entry_step,
    last_picture,
    scene_picture,
    schedule_levels,
    uploaded_picture,
    with_box,
)

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.inversion import Reconstruction
    from diffexplain.trace import Trace

HELP = (
    "Start from a <b>picture</b> instead of noise. The picture is encoded, noised part of the way up the "
    "schedule and the loop runs only the rest: <b>strength</b> s is the share that runs (the plot marks "
    "where the loop enters), so a small s keeps most of the picture. Tick <b>inpaint</b> to repaint only "
    "the red rectangle. <b>Invert</b> runs DDIM backwards from the picture to the x_T that draws it again, "
    "then draws it from there (guidance off) and plots how far each step is from the inversion's path."
)
SOURCES = ("dataset scene", "upload", "last trace")


class ClassicPictureLab(DxWidget):
    """Run ``prompt`` from a picture (``explainer.run(prompt, image=, strength=, mask_image=)``), and
    invert the picture (``explainer.invert`` then ``inversion.reconstruct``).

    ``trace`` is the last run from the picture, ``inversion`` and ``reconstruction`` the last inversion.
    """

    css_class = "dx-picture-lab"

    def __init__(
        self,
        explainer: Explainer,
        prompt: str = "a blue circle on the left",
        *,
        picture_caption: str = "a red circle on the left",
        seed: int = 0,
        strength: float = 0.6,
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
        self.height, self.width = image_size(explainer)
        self.source = W.Dropdown(options=SOURCES, value="dataset scene", description="picture")
        self.source.add_class("dx-picture-source")
        self.caption = prompt_box(
            picture_caption, description="scene", css="dx-picture-caption", width="360px"
        )
        self.caption.continuous_update = False
        self.seed = SeedBox(seed, description="scene seed", width="180px")
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload")
        self.upload.add_class("dx-picture-upload")
        self.strength = W.FloatSlider(
            value=strength, min=0.05, max=1.0, step=0.05, description="strength", continuous_update=False
        )
        self.strength.add_class("dx-strength")
        self.steps = steps_box(num_inference_steps or default_steps(explainer))
        self.entry_label = W.HTML("")
        self.entry_label.add_class("dx-entry")
        self.use_mask = W.Checkbox(value=False, description="inpaint inside the rectangle", indent=False)
        self.use_mask.add_class("dx-use-mask")
        self.box = {
            name: W.IntSlider(value=value, min=0, max=side, description=name, continuous_update=False)
            for name, value, side in (
                ("x0", self.width // 2, self.width),
                ("y0", self.height // 4, self.height),
                ("x1", self.width, self.width),
                ("y1", 3 * self.height // 4, self.height),
            )
        }
        for name, slider in self.box.items():
            slider.layout.width = "210px"
            slider.add_class(f"dx-mask-{name}")
        self.prompt = prompt_box(prompt)
        self.preview = preview_checkbox(disabled=explainer.vae is None)
        self.run_button = button("Run from the picture", "dx-run", style="primary")
        self.invert_button = button("Invert", "dx-invert", tooltip="DDIM inversion, then reconstruction")
        self.step = W.IntSlider(value=0, min=0, max=0, description="x̂0 step", continuous_update=False)
        self.step.add_class("dx-picture-step")
        boxes, self.images = panels(
            (
                ("input", "the picture", "dx-input-image"),
                ("start", "noised start", "dx-start-image"),
                ("x0", "x̂0 at the step", "dx-x0-image"),
                ("result", "result", "dx-result-image"),
                ("rebuilt", "reconstruction", "dx-reconstruction-image"),
            ),
            size,
        )
        self.x0_title = boxes["x0"].children[0]
        self.schedule_fig = self._schedule_figure()
        self.error_fig = self._error_figure()

        self.picture: Image.Image | None = None
        self.picture_caption = picture_caption
        self.trace: Trace | None = None
        self.inversion: Trace | None = None
        self.reconstruction: Reconstruction | None = None

        for control in (self.source, self.caption, self.seed, self.upload):
            control.observe(self.guard(lambda _: self.load_picture()), names="value")
        for control in (self.strength, self.steps):
            control.observe(self.guard(lambda _: self._draw_schedule()), names="value")
        for control in (self.use_mask, *self.box.values()):
            control.observe(self.guard(lambda _: self._draw_input()), names="value")
        self.step.observe(self.guard(lambda _: self._draw_step()), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")
        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.invert_button.on_click(self.guard(lambda _: self.start(self._invert_work)))

        self.children = [
            help_box(HELP),
            W.HBox([self.source, self.caption, self.seed, self.upload]),
            W.HBox([self.strength, self.steps, self.entry_label]),
            W.HBox([self.use_mask, *self.box.values()]),
            W.HBox([self.prompt, self.preview]),
            W.HBox([self.run_button, self.invert_button, self.stop_button, self.progress]),
            W.HBox([boxes["input"], boxes["start"], boxes["x0"], boxes["result"], boxes["rebuilt"]]),
            self.step,
            W.HBox(
                [
                    figure_box(self.schedule_fig, "dx-schedule-plot"),
                    figure_box(self.error_fig, "dx-inversion-plot"),
                ]
            ),
            self.status,
            self.output,
        ]
        self.guard(self.load_picture)()
        self.guard(self._draw_schedule)()

    # ---- the picture, the mask, the entry point -------------------------------------------------
    def load_picture(self) -> Image.Image:
        """Read the chosen source into ``picture`` (a PIL image at the model's size) and show it."""
        size = (self.height, self.width)
        if self.source.value == "dataset scene":
            self.picture, self.picture_caption = scene_picture(
                self.caption.value, self.seed.seed, self.height
            )
        elif self.source.value == "upload":
            self.picture = uploaded_picture(first_upload(self.upload), size)
        else:
            self.picture = last_picture(self.explainer, size)
        self.say(f"picture: {self.source.value}" + (f" ({self.picture_caption})" if self._is_scene else ""))
        self._draw_input()
        return self.picture

    @property
    def _is_scene(self) -> bool:
        return self.source.value == "dataset scene"

    def mask_box(self) -> Box | None:
        """The inpainting rectangle (x0, y0, x1, y1) in pixels, or None when inpainting is off."""
        if not self.use_mask.value:
            return None
        box = tuple(self.box[name].value for name in ("x0", "y0", "x1", "y1"))
        return check_box(box, self.height, self.width)  # type: ignore[arg-type]

    @property
    def entry_step(self) -> int:
        """t_start = N − ⌊N·s⌋ for the strength and steps set now: the steps the loop skips."""
        return entry_step(self.steps.value, self.strength.value)

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> Trace:
        """Run the prompt from the picture (with the mask when inpainting is on)."""
        self.finish(self._run_work())
        assert self.trace is not None
        return self.trace

    def _run_work(self) -> Work:
        if self.picture is None:
            self.load_picture()
        if self.entry_step == self.steps.value:
            raise InputError(
                f"strength {self.strength.value:g} with {self.steps.value} steps runs no step (⌊N·s⌋ = 0): "
                f"raise the strength slider to at least {1 / self.steps.value:g} or take more steps"
            )
        box = self.mask_box()
        mask = None if box is None else box_mask(box, self.height, self.width)
        what = "inpainting" if mask is not None else "running"
        self.say(f"{what} from the picture at strength {self.strength.value:g} …")
        self.trace = yield from self.run_steps(
            self.explainer,
            self.prompt.value,
            image=self.picture,
            mask_image=mask,
            strength=self.strength.value,
            seed=self.seed.seed,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.steps.value,
        )
        n, skipped = self.trace.run_settings.num_inference_steps, self.trace.settings["entry_step"]
        self.say(f"{what}: entered at step {skipped} of {n}, ran {len(self.trace)} steps")
        self.step.max = len(self.trace) - 1
        self.step.value = self.step.max
        self._redraw()

    def invert(self) -> Reconstruction:
        """DDIM-invert the picture with its caption (the prompt for a picture not drawn from a scene),
        guidance off, then reconstruct it from the x_T found."""
        self.finish(self._invert_work())
        assert self.reconstruction is not None
        return self.reconstruction

    def _invert_work(self) -> Work:
        if self.picture is None:
            self.load_picture()
        prompt = self.picture_caption if self._is_scene else self.prompt.value
        n = self.steps.value
        self.say(f"inverting the picture with “{prompt}”, {n} steps …")
        yield 0  # Stop is heard here and between the two runs (each runs to its end)
        self.inversion = self.explainer.invert(
            self.picture, prompt, num_inference_steps=n, hooks=self.progress.with_hooks(), progress=False
        )
        yield 1
        self.say("reconstructing from the inversion's x_T …")
        self.reconstruction = reconstruct(
            self.explainer, self.inversion, hooks=self.progress.with_hooks(), progress=False
        )
        errors = self.reconstruction.errors
        self.images["rebuilt"].value = self.frames.final(
            self.reconstruction.trace, preview=self.preview.value
        )
        with self.error_fig.batch_update():
            self.error_fig.data[0].x = list(range(len(errors)))
            self.error_fig.data[0].y = list(errors)
        self.say(
            f"inverted with “{prompt}” and rebuilt: final error ‖x0_rec − x0‖/‖x0‖ = {errors[-1]:.3f}, "
            f"largest {max(errors):.3f}"
        )

    # ---- drawing ---------------------------------------------------------------------------------
    def _schedule_figure(self) -> LiveFigure:
        fig = LiveFigure()
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="skipped", marker={"color": "#bbb"})
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="runs", marker={"color": "#1f77b4"})
        fig.add_scatter(x=[], y=[], mode="markers", name="entry", marker={"color": "#d62728", "size": 12})
        fig.update_layout(
            title="where the loop enters", height=260, width=420, margin={"l": 50, "r": 10, "t": 40, "b": 40}
        )
        fig.update_xaxes(title_text="inference step")
        return fig

    def _error_figure(self) -> LiveFigure:
        fig = LiveFigure()
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

    def _draw_schedule(self) -> None:
        n, k = self.steps.value, self.entry_step
        levels = schedule_levels(self.explainer, n)
        values, steps = levels["values"], list(range(n))
        with self.schedule_fig.batch_update():
            self.schedule_fig.data[0].x, self.schedule_fig.data[0].y = steps[: k + 1], values[: k + 1]
            self.schedule_fig.data[1].x, self.schedule_fig.data[1].y = steps[k:], values[k:]
            self.schedule_fig.data[2].x, self.schedule_fig.data[2].y = (
                ([k], [values[k]]) if k < n else ([], [])
            )
            self.schedule_fig.update_yaxes(title_text=levels["name"])
        runs = n - k
        if runs == 0:
            self.entry_label.value = "<span style='color:#b00'>⌊N·s⌋ = 0: no step runs; raise strength</span>"
            return
        t = levels["timesteps"][k]
        self.entry_label.value = f"enters at step <b>{k}</b> of {n} (t = {t:g}, {levels['name']} = {values[k]:.3f}); {runs} steps run"

    def _draw_input(self) -> None:
        if self.picture is None:
            return
        box = self.mask_box() if self.use_mask.value else None
        picture = with_box(self.picture, box).resize(
            (self.frames.size, self.frames.size), Image.Resampling.NEAREST
        )
        self.images["input"].value = png(picture)

    def _redraw(self) -> None:
        trace = self.trace
        if trace is not None:
            start = trace["latents.init"] * vp_scale(trace, 0)
            self.images["start"].value = self.frames.latents(
                trace, ("start",), start, preview=self.preview.value
            )
            self.images["result"].value = self.frames.final(trace, preview=self.preview.value)
            self._draw_step()
        else:
            self.images["x0"].value = blank(self.frames.size, "run first")
        if self.reconstruction is not None:
            self.images["rebuilt"].value = self.frames.final(
                self.reconstruction.trace, preview=self.preview.value
            )

    def _draw_step(self) -> None:
        trace = self.trace
        if trace is None:
            return
        k = min(self.step.value, len(trace) - 1)
        x0 = trace["step.pred_x0", k]
        self.images["x0"].value = self.frames.latents(trace, ("x0", k), x0, preview=self.preview.value)
        total = trace.run_settings.num_inference_steps
        self.x0_title.value = f"<b>x̂0 at step {trace.settings['entry_step'] + k} of {total}</b>"
