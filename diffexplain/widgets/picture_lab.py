"""PictureLab: start from a picture (img2img), repaint a rectangle of it (inpainting), or invert it (DDIM),
drawn in the browser: an anywidget (``ActionView``) running ``diffexplain/web/picture_lab.js``.

The browser gets the picture, the run's pictures (x̂0 at every step) and the reconstruction once; the
strength slider (where the loop enters, on the schedule plot), the mask rectangle (drawn over the
picture) and the x̂0 step slider then move with no kernel round trip, and reach Python once they settle.
What needs the model is a message to Python with the busy state, Stop and errors: Run, Invert, a new
picture (scene, seed, source, an upload's bytes as a binary buffer), the steps (the schedule), the
preview. The ipywidgets version is ``ClassicPictureLab``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as T
from PIL import Image

from diffexplain.checks import check_guidance_scale
from diffexplain.inversion import reconstruct
from diffexplain.probe import image_size
from diffexplain.widgets.action_view import ActionView, view_bundle
from diffexplain.widgets.actions import Work
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    Frames,
    blank,
    default_guidance,
    default_steps,
    png,
    vp_scale,
)
from diffexplain.widgets.classic_picture_lab import HELP, SOURCES
from diffexplain.widgets.figures import plot_mode
from diffexplain.widgets.inputs import InputError
from diffexplain.widgets.noise_work import first_upload
from diffexplain.widgets.picture_messages import BOX, PictureMessages
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
from diffexplain.widgets.picture_plots import (
    entry_text,
    error_figure,
    fill_errors,
    fill_schedule,
    schedule_figure,
)
from diffexplain.widgets.stand_ins import Button, Checkbox, Chooser, IntControl, Shown, Text
from diffexplain.widgets.typed_inputs import Number, PictureUpload, SeedText

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.inversion import Reconstruction
    from diffexplain.trace import Trace
    from diffexplain.widgets.figures import LiveFigure

PANELS = {  # key: (title, the picture's CSS class)
    "input": ("the picture", "dx-input-image"),
    "start": ("noised start", "dx-start-image"),
    "x0": ("x̂0 at the step", "dx-x0-image"),
    "result": ("result", "dx-result-image"),
    "rebuilt": ("reconstruction", "dx-reconstruction-image"),
}


class PictureLab(PictureMessages, ActionView):
    """Run ``prompt`` from a picture (``explainer.run(prompt, image=, strength=, mask_image=)``), and
    invert the picture (``explainer.invert`` then ``inversion.reconstruct``).

    ``trace`` is the last run from the picture, ``inversion`` and ``reconstruction`` the last inversion.
    Python attributes as before: ``source``, ``caption``, ``seed``, ``upload``, ``strength``, ``steps``,
    ``use_mask``, ``box[name]``, ``prompt``, ``preview`` (``.value``), ``step`` (``.value``, ``.max``),
    ``run_button`` / ``invert_button`` (``.click()``), ``images[key].value``, ``entry_label``,
    ``x0_title``, ``schedule_fig`` and ``error_fig`` (plotly figures, built when read).
    """

    css_class = "dx-picture-lab"
    _esm = view_bundle("picture_lab.js")
    shown_step = T.Int(0).tag(sync=True)  # the x̂0 step shown (the browser sets it once it settles)
    _inputs = T.Dict().tag(sync=True)  # the boxes' values as Python has them (the browser's controls follow)
    _schedule = T.Dict().tag(sync=True)  # the levels the N steps start from (schedule_levels) and N

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
        self._plot_mode = plot_mode()  # the figures, built when read, use the mode of the widget's birth
        self.source = Chooser(options=list(SOURCES), value="dataset scene")
        self.caption = Text(picture_caption)
        self.seed = SeedText(seed, description="scene seed")
        self.upload = PictureUpload()
        self.strength = Number(strength, min=0.05, max=1.0)
        self.steps = Number(num_inference_steps or default_steps(explainer), min=1, max=1000, integer=True)
        self.entry_label = Text()
        self.use_mask = Checkbox()
        self.box = {
            name: IntControl(min=0, max=side, value=value)
            for name, value, side in (
                ("x0", self.width // 2, self.width),
                ("y0", self.height // 4, self.height),
                ("x1", self.width, self.width),
                ("y1", 3 * self.height // 4, self.height),
            )
        }
        self.prompt = Text(prompt)
        self.preview = Checkbox(disabled=explainer.vae is None)
        self.run_button = Button("Run from the picture")
        self.invert_button = Button("Invert")
        self.view_buttons = [self.run_button, self.invert_button]
        self._step = IntControl()
        T.link((self._step, "value"), (self, "shown_step"))
        self.images = {key: Shown(lambda key=key: self._picture(key)) for key in PANELS}
        self.x0_title = Shown(self._x0_title)
        self._schedule_fig: LiveFigure | None = None
        self._error_fig: LiveFigure | None = None
        self._pics: dict[str, bytes | None] = {}

        self.picture: Image.Image | None = None
        self.picture_caption = picture_caption
        self.trace: Trace | None = None
        self.inversion: Trace | None = None
        self.reconstruction: Reconstruction | None = None

        self._quiet = False  # True while a browser message sets several boxes: one redraw after
        for control in (self.source, self.caption, self.seed, self.upload):
            control.observe(self._when_loud(self.load_picture), names="value")
        for control in (self.strength, self.steps):
            control.observe(self._when_loud(self._draw_schedule), names="value")
        for control in (self.use_mask, *self.box.values()):
            control.observe(self._when_loud(self._draw_input), names="value")
        for control in (self.prompt, self.preview):
            control.observe(lambda _: self._sync_inputs(), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")
        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.invert_button.on_click(self.guard(lambda _: self.start(self._invert_work)))
        self.guard(self.load_picture)()
        self.guard(self._draw_schedule)()
        self._send_view()

    def _when_loud(self, fn: Any) -> Any:
        guarded = self.guard(lambda _: fn())
        return lambda change: None if self._quiet else guarded(change)

    @property
    def step(self) -> IntControl:  # type: ignore[override]
        """The x̂0 step slider (``.value``, ``.max``), over the steps the run ran."""
        return self._step

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
        self._pics["input"] = png(self._shown(self.picture))
        self._send_view()
        self._draw_input()  # after: an empty mask rectangle is told, the picture is shown anyway
        return self.picture

    @property
    def _is_scene(self) -> bool:
        return self.source.value == "dataset scene"

    def mask_box(self) -> Box | None:
        """The inpainting rectangle (x0, y0, x1, y1) in pixels, or None when inpainting is off."""
        if not self.use_mask.value:
            return None
        box = tuple(self.box[name].value for name in BOX)
        return check_box(box, self.height, self.width)  # type: ignore[arg-type]

    @property
    def entry_step(self) -> int:
        """t_start = N − ⌊N·s⌋ for the strength and steps set now: the steps the loop skips."""
        return entry_step(int(self.steps.value), self.strength.value)

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> Trace:
        """Run the prompt from the picture (with the mask when inpainting is on)."""
        self.finish(self._run_work())
        assert self.trace is not None
        return self.trace

    def _run_work(self) -> Work:
        if self.picture is None:
            self.load_picture()
        n = int(self.steps.value)
        if self.entry_step == n:
            raise InputError(
                f"strength {self.strength.value:g} with {n} steps runs no step (⌊N·s⌋ = 0): "
                f"raise the strength slider to at least {1 / n:g} or take more steps"
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
            num_inference_steps=n,
        )
        total, skipped = self.trace.run_settings.num_inference_steps, self.trace.settings["entry_step"]
        self.say(f"{what}: entered at step {skipped} of {total}, ran {len(self.trace)} steps")
        self._step.max = len(self.trace) - 1
        self._step.value = self._step.max
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
        n = int(self.steps.value)
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
        self._redraw()
        self.say(
            f"inverted with “{prompt}” and rebuilt: final error ‖x0_rec − x0‖/‖x0‖ = {errors[-1]:.3f}, "
            f"largest {max(errors):.3f}"
        )

    # ---- what the browser gets ---------------------------------------------------------------------
    def _shown(self, picture: Image.Image) -> Image.Image:
        return picture.resize((self.frames.size, self.frames.size), Image.Resampling.NEAREST)

    def _send_view(self) -> None:
        """Send the pictures (the input, the run's, the reconstruction) and what goes with them."""
        trace, rec = self.trace, self.reconstruction
        data = {
            "help": HELP,
            "panels": {key: title for key, (title, _) in PANELS.items()},
            "css": {key: css for key, (_, css) in PANELS.items()},
            "display_size": self.frames.size,
            "picture_size": [self.height, self.width],
            "n": 0 if trace is None else len(trace),
            "entry": 0 if trace is None else trace.settings["entry_step"],
            "total": 0 if trace is None else trace.run_settings.num_inference_steps,
            "errors": [] if rec is None else [float(e) for e in rec.errors],
            "sources": list(SOURCES),
        }
        self._sync_inputs()
        self.send_view(data, self._pics)

    def _sync_inputs(self) -> None:
        self._inputs = {
            "source": self.source.value,
            "caption": self.caption.value,
            "seed": self.seed.value,
            "strength": self.strength.value,
            "steps": int(self.steps.value),
            "use_mask": self.use_mask.value,
            "box": {name: self.box[name].value for name in BOX},
            "prompt": self.prompt.value,
            "preview": self.preview.value,
            "preview_disabled": self.preview.disabled,
        }

    def _draw_schedule(self) -> None:
        n, k = int(self.steps.value), self.entry_step
        levels = schedule_levels(self.explainer, n)
        self._schedule = {"steps": n, **levels}
        self.entry_label.value = entry_text(n, k, levels)
        if self._schedule_fig is not None:
            fill_schedule(self._schedule_fig, n, k, levels)
        self._sync_inputs()

    def _draw_input(self) -> None:
        self.mask_box()  # an empty rectangle is told now (InputError on the status line)
        self._sync_inputs()

    def _redraw(self) -> None:
        """The run's and the reconstruction's pictures (decoded, or the fast preview), sent once."""
        preview = self.preview.value
        self._pics = {"input": self._pics.get("input")}
        trace = self.trace
        if trace is not None:
            start = trace["latents.init"] * vp_scale(trace, 0)
            self._pics["start"] = self.frames.latents(trace, ("start",), start, preview=preview)
            self._pics["result"] = self.frames.final(trace, preview=preview)
            for k in range(len(trace)):
                x0 = trace["step.pred_x0", k]
                self._pics[f"x0/{k}"] = self.frames.latents(trace, ("x0", k), x0, preview=preview)
        if self.reconstruction is not None:
            self._pics["rebuilt"] = self.frames.final(self.reconstruction.trace, preview=preview)
            if self._error_fig is not None:
                fill_errors(self._error_fig, self.reconstruction.errors)
        self._send_view()

    # ---- Python's view of what is shown ------------------------------------------------------------
    def _picture(self, key: str) -> bytes:
        if key == "input":
            if self.picture is None:
                return blank(self.frames.size)
            box = self.mask_box() if self.use_mask.value else None
            return png(self._shown(with_box(self.picture, box)))
        if key == "x0":
            if self.trace is None:
                return blank(self.frames.size, "run first")
            key = f"x0/{min(self._step.value, len(self.trace) - 1)}"
        found = self._pics.get(key)
        return found if found is not None else blank(self.frames.size)

    def _x0_title(self) -> str:
        trace = self.trace
        if trace is None:
            return "<b>x̂0 at the step</b>"
        k = min(self._step.value, len(trace) - 1)
        total = trace.run_settings.num_inference_steps
        return f"<b>x̂0 at step {trace.settings['entry_step'] + k} of {total}</b>"

    @property
    def schedule_fig(self) -> LiveFigure:
        """Where the loop enters, as a plotly figure (built on first read; the browser draws its own)."""
        if self._schedule_fig is None:
            self._schedule_fig = schedule_figure(self._plot_mode)
            n = int(self.steps.value)
            fill_schedule(self._schedule_fig, n, self.entry_step, schedule_levels(self.explainer, n))
        return self._schedule_fig

    @property
    def error_fig(self) -> LiveFigure:
        """The reconstruction error per step, as a plotly figure (built on first read)."""
        if self._error_fig is None:
            self._error_fig = error_figure(self._plot_mode)
            if self.reconstruction is not None:
                fill_errors(self._error_fig, self.reconstruction.errors)
        return self._error_fig
