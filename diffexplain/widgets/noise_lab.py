"""NoiseLab: choose the starting noise, then add noise at step k (optionally in a rectangle) and fork.

An anywidget (``LabView``): the step k slider shows x_k of the original from pictures sent once per run,
and the rectangle is drawn over it in the browser (``diffexplain/web/noise_lab.js``), so scrubbing k and
moving the rectangle need no kernel; Run and "Add noise at step k and fork" run the model in Python with
the busy state, Stop and errors. The ipywidgets version is ``ClassicNoiseLab``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw

from diffexplain import interventions
from diffexplain.checks import check_guidance_scale
from diffexplain.views import (
    DEFAULT_SIZE,
    blank,
    default_guidance,
    default_steps,
    is_pixel_space,
    png,
    vp_scale,
)
from diffexplain.widgets.base import Frames
from diffexplain.widgets.lab_view import FloatControl, LabView, RangeControl, SeedText, Upload, lab_bundle
from diffexplain.widgets.noise_work import NoiseWork
from diffexplain.widgets.stand_ins import Button, Checkbox, Chooser, IntControl, Shown, Text

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = (
    "Every picture starts as noise <b>x_T</b>. Choose it: Gaussian noise from a <b>seed</b>, a structured "
    "<b>pattern</b>, an <b>image</b> encoded to latents, or your own tensor (<code>set_initial_noise</code>). "
    "Then disturb the run: at step <b>k</b> add noise of a chosen <b>strength</b> to x_t (in latent units), "
    "everywhere or only inside a rectangle. The run is <b>forked</b> at k: steps before k are copied, only "
    "steps k… run again, and the two branches are shown side by side."
)
SOURCES = ("seed", *interventions.PATTERNS, "image", "my tensor")
PICTURES = ("init", "original", "branch", "diff")


class NoiseLab(NoiseWork, LabView):
    """Choose x_T (seed, pattern, image or tensor); add noise at step k, optionally in a rectangle, and fork.

    ``original`` is the run from the chosen start; ``branch`` the fork with the added noise. The controls
    are Python stand-ins mirrored in the browser: ``prompt``, ``steps``, ``source``, ``seed``,
    ``dataset_index``, ``upload``, ``preview``, ``step`` (k), ``strength``, ``noise_seed``, ``use_rect``,
    ``rows``, ``cols``; ``run_button`` / ``inject_button`` (``click()``); ``images[key].value`` (PNG).
    """

    css_class = "dx-noise-lab"
    _esm = lab_bundle("noise_lab.js")
    step = None  # type: ignore[assignment]  # the injection step k (an IntControl): this view shows no trace step

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
        self.original: Trace | None = None
        self.branch: Trace | None = None
        self._pics: dict[str, bytes | None] = {}
        self.prompt = self.bind("prompt", Text(prompt))
        self.steps = self.bind(
            "steps", IntControl(min=1, max=1000, value=num_inference_steps or default_steps(explainer))
        )
        self.source = self.bind("source", Chooser(options=list(SOURCES), value="seed"))
        self.seed = self.bind("seed", SeedText(seed))
        self.dataset_index = self.bind("dataset_index", IntControl(min=0, max=99_999, value=0))
        self.upload = Upload()
        self.preview = self.bind("preview", Checkbox(value=False, disabled=explainer.vae is None))
        self.step = self.bind("step", IntControl(min=0, max=1, value=0))
        self.strength = self.bind("strength", FloatControl(1.0, min=0.0, max=4.0, step=0.1))
        self.noise_seed = self.bind("noise_seed", SeedText(1, description="noise seed"))
        self.use_rect = self.bind("use_rect", Checkbox(value=False))
        self.rows = self.bind("rows", RangeControl((25, 75)))
        self.cols = self.bind("cols", RangeControl((0, 50)))
        self.run_button = Button("Run from this start")
        self.inject_button = Button("Add noise at step k and fork")
        self.name_buttons(run=self.run_button, inject=self.inject_button)
        self.branch_title = Text("<b>new branch</b>")
        self.images = {key: Shown(lambda key=key: self._picture(key)) for key in PICTURES}
        self.images["xk"] = Shown(self._region_picture)

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.inject_button.on_click(self.guard(lambda _: self.start(self._inject_work)))
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")
        self.upload.observe(lambda _: setattr(self.source, "value", "image"), names="value")
        self._send_lab()
        self.guard(self.run)()

    # ---- pictures --------------------------------------------------------------------------------
    def _latents_picture(self, key: tuple, latents: torch.Tensor) -> Image.Image:
        trace = self.original
        assert trace is not None
        pixel = is_pixel_space(trace, self.explainer)
        return self.frames.picture(trace, key, latents, preview=self.preview.value, pixel_space=pixel)

    def _redraw(self) -> None:
        """Every picture of the original (x_T, x_k at each k, final) and of the branch, sent once."""
        trace = self.original
        if trace is None:
            return
        preview = self.preview.value
        init = trace.steps[0].restart.latents if trace.steps[0].restart is not None else trace["latents.init"]
        pics: dict[str, bytes | None] = {
            "init": png(self._latents_picture(("init",), init * vp_scale(trace, 0))),
            "original": self.frames.final(trace, preview=preview),
        }
        if self.branch is not None:
            pics["branch"] = self.frames.final(self.branch, preview=preview)
            pics["diff"] = self.frames.difference(self.branch, trace, preview=preview)
        else:  # a new run: the last branch belonged to the previous one
            pics["branch"] = blank(self.frames.size, "add noise at\nstep k to fork")
            pics["diff"] = blank(self.frames.size)
            self.branch_title.value = "<b>new branch</b>"
        for k, record in enumerate(trace.steps):
            xk = record.restart.latents if record.restart is not None else trace["step.latents", k]
            pics[f"{k}/xk"] = png(self._latents_picture(("xk", k), xk * vp_scale(trace, k)))
        self._pics = pics
        self._send_lab()

    def _send_lab(self) -> None:
        data = {
            "help": HELP,
            "size": self.frames.size,
            "steps": 0 if self.original is None else len(self.original),
            "sources": list(SOURCES),
            "branch_title": self.branch_title.value,
            "preview_disabled": self.preview.disabled,
        }
        self.send_view(data, self._pics)

    def _picture(self, key: str) -> bytes:
        return self._pics.get(key) or blank(self.frames.size)

    def _region_picture(self) -> bytes:
        """x_k of the original at the step k chosen, the rectangle drawn where it is used (as the browser)."""
        if self.original is None:
            return blank(self.frames.size)
        k = max(0, min(self.step.value, len(self.original) - 1))
        data = self._pics.get(f"{k}/xk") or blank(self.frames.size)
        box = self.mask()
        if box is None:
            return data
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        top, bottom, left, right = box
        w, h = picture.size
        ImageDraw.Draw(picture).rectangle(
            (left * w, top * h, right * w - 1, bottom * h - 1), outline=(255, 0, 0), width=2
        )
        return png(picture)
