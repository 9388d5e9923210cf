"""ClassicForwardProcess: the ipywidgets ForwardProcess (kept for ipywidgets-only front ends; ``ForwardProcess`` is the anywidget)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
import torch
from plotly.subplots import make_subplots

from diffexplain import probe, render, schedules
from diffexplain.checks import check_float
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    LiveFigure,
    button,
    figure_box,
    help_box,
    is_sigma_space,
    png,
    words,
)
from diffexplain.widgets.controls import panels, prompt_box
from diffexplain.widgets.forward_process import HELP, SCHEDULE_LABELS, T_MAX
from diffexplain.widgets.inputs import SeedBox
from diffexplain.widgets.noise_work import first_upload

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer


class ClassicForwardProcess(DxWidget):
    """Forward noising x0 → x_t for a chosen schedule and t; with an ``explainer``, the model's x̂0 from x_t.

    ``image`` (PIL image, bytes, uint8 array or tensor in [-1, 1]) replaces the dataset picture.
    """

    css_class = "dx-forward-process"

    def __init__(
        self,
        explainer: Explainer | None = None,
        image: Any = None,
        *,
        schedule: str = "scaled_linear",
        t: int = 500,
        dataset_index: int = 0,
        prompt: str | None = None,
        guidance_scale: float = 1.0,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer
        self.size = size
        self.pixels = 64 if explainer is None else probe.image_size(explainer)[0]
        self.image_override = image
        self.schedule = W.Dropdown(
            options=[(label, name) for name, label in SCHEDULE_LABELS.items()],
            value=schedule,
            description="schedule",
            layout=W.Layout(width="360px"),
        )
        self.schedule.add_class("dx-schedule")
        self.t = W.IntSlider(value=t, min=0, max=T_MAX, description="t", continuous_update=explainer is None)
        self.t.add_class("dx-t-slider")
        self.seed = SeedBox(0, description="noise seed", width="180px")
        self.dataset_index = W.BoundedIntText(value=dataset_index, min=0, max=99_999, description="dataset #")
        self.dataset_index.layout.width = "180px"
        self.dataset_index.add_class("dx-dataset-index")
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="image")
        self.upload.add_class("dx-image-upload")
        self.prompt = prompt_box(prompt or "", width="460px")
        guidance_scale = check_float(
            "guidance_scale", guidance_scale, 0.0, 30.0, meaning="w of the model's x̂0"
        )
        self.guidance = W.BoundedFloatText(value=guidance_scale, min=0.0, max=30.0, step=0.5, description="w")
        self.guidance.layout.width = "140px"
        self.ask_button = button("Ask the model again", "dx-ask-button")
        self._prompt_given = prompt is not None

        boxes, self.images = panels(
            (
                ("x0", "x0 (clean picture)", "dx-clean-image"),
                ("xt", "x_t (forward: noised to t)", "dx-forward-image"),
                ("model_xt", "x_t in the model's latents", "dx-model-xt-image"),
                ("model_x0", "the model's guess x̂0", "dx-model-x0-image"),
            ),
            size,
        )
        self.fig = self._make_figure()
        self.info = W.HTML()

        for control in (self.schedule, self.t, self.seed):
            control.observe(self.guard(lambda _: self.redraw()), names="value")
        for control in (self.dataset_index, self.upload):
            control.observe(self.guard(self._on_source), names="value")
        self.ask_button.on_click(self.guard(lambda _: self._draw_model()))

        model_row = [self.prompt, self.guidance, self.ask_button]
        self.children = [
            help_box(HELP),
            W.HBox([self.schedule, self.t, self.seed]),
            W.HBox([self.dataset_index, self.upload]),
            *([W.HBox(model_row)] if explainer is not None else []),
            W.HBox(
                [boxes["x0"], boxes["xt"]] + ([boxes["model_xt"], boxes["model_x0"]] if explainer else [])
            ),
            self.info,
            figure_box(self.fig, "dx-schedule-plot"),
            self.status,
            self.output,
        ]
        self.guard(self._on_source)()

    # ---- the picture -----------------------------------------------------------------------------
    def clean_image(self) -> torch.Tensor:
        """x0: the uploaded picture, the ``image`` argument, or the dataset picture, as [1, 3, H, W] in [-1, 1]."""
        content = first_upload(self.upload)
        if content is not None:
            return probe.image_tensor(content, self.pixels)
        if self.image_override is not None:
            return probe.image_tensor(self.image_override, self.pixels)
        from diffexplain.data import ShapesDataset

        example = ShapesDataset(size=self.pixels)[self.dataset_index.value]
        if not self._prompt_given:
            self.prompt.value = example.caption
        return torch.from_numpy(example.pixels).float()[None]

    def _on_source(self, change: dict | None = None) -> None:
        self.x0 = self.clean_image()
        self.images["x0"].value = png(render.to_pil(self.x0, size=self.size))
        self.redraw()

    # ---- figure ----------------------------------------------------------------------------------
    def _make_figure(self) -> LiveFigure:
        fig = LiveFigure(
            make_subplots(
                rows=1, cols=2, specs=[[{"secondary_y": True}, {}]], subplot_titles=("ᾱ_t and β_t", "SNR_t")
            )
        )
        fig.add_scatter(
            x=[], y=[], name="ᾱ_t (signal fraction)", mode="lines", row=1, col=1, secondary_y=False
        )
        fig.add_scatter(x=[], y=[], name="β_t (noise per step)", mode="lines", row=1, col=1, secondary_y=True)
        fig.add_scatter(x=[], y=[], name="SNR_t = ᾱ_t/(1−ᾱ_t)", mode="lines", row=1, col=2)
        fig.add_scatter(
            x=[], y=[], name="the model's own ᾱ_t", mode="lines", line={"dash": "dot"}, row=1, col=1
        )
        fig.add_scatter(
            x=[], y=[], name="t", mode="markers", marker={"size": 11, "color": "red"}, row=1, col=1
        )
        fig.add_scatter(
            x=[], y=[], name="t ", mode="markers", marker={"size": 11, "color": "red"}, row=1, col=2
        )
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_yaxes(title_text="β_t", tickmode="auto", showgrid=False, secondary_y=True, row=1, col=1)
        fig.update_xaxes(title_text="t")
        fig.update_layout(
            height=300, margin={"l": 50, "r": 50, "t": 40, "b": 40}, legend={"orientation": "h", "y": -0.3}
        )
        return fig

    # ---- redraw ----------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Recompute x_t for the schedule and t, the curves, and (with a model) the model's guess."""
        curves = schedules.schedule_curves(self.schedule.value)
        t = self.t.value
        generator = torch.Generator().manual_seed(self.seed.seed)
        xt = schedules.add_noise(self.x0, t, schedule=self.schedule.value, generator=generator)
        self.images["xt"].value = png(render.to_pil(xt.clamp(-1, 1), size=self.size))
        abar, snr = curves.alphas_cumprod, curves.snr
        steps = list(range(len(abar)))
        with self.fig.batch_update():
            data = self.fig.data
            data[0].x, data[0].y = steps, abar.tolist()
            data[1].x, data[1].y = steps, curves.betas.tolist()
            data[2].x, data[2].y = steps, snr.tolist()
            model_abar = getattr(self.explainer.scheduler, "alphas_cumprod", None) if self.explainer else None
            if model_abar is not None:
                data[3].x, data[3].y = list(range(len(model_abar))), model_abar.tolist()
            data[4].x, data[4].y = [t], [float(abar[t])]
            data[5].x, data[5].y = [t], [float(snr[t])]
        self.info.value = (
            f"t = {t}: ᾱ_t = {float(abar[t]):.4f} (√ᾱ_t = {float(abar[t]) ** 0.5:.3f} of the picture is left), "
            f"noise std √(1−ᾱ_t) = {float(1 - abar[t]) ** 0.5:.3f}, SNR = {float(snr[t]):.4g}"
        )
        if self.explainer is not None:
            self._draw_model()

    def _draw_model(self) -> None:
        """The model's side: encode x0, noise it to t with the model's scheduler, one model call, decode."""
        explainer = self.explainer
        if explainer is None:
            return
        if hasattr(explainer.family, "check_previous"):  # draws from a previous stage's image embeddings
            self.say(
                f"model: the {explainer.family.label} reads no prompt but a previous stage's image embeddings, "
                "so it has no x̂0 to show here: open ForwardProcess on a stage that reads the prompt"
            )
            return
        x0_latents = probe.encode_image(explainer, self.x0)
        generator = torch.Generator().manual_seed(self.seed.seed)
        noise = torch.randn(x0_latents.shape, generator=generator).to(x0_latents.device, x0_latents.dtype)
        total = int(explainer.scheduler.config.num_train_timesteps)
        t = min(self.t.value, total - 1)
        xt, used = probe.noise_latents_at(explainer, x0_latents, t, noise)
        guess = probe.predict_x0_at(explainer, xt, t, self.prompt.value, self.guidance.value)
        level = guess.level
        shown = xt / (1 + level.sigma**2) ** 0.5 if is_sigma_space(type(explainer.scheduler).__name__) else xt
        self.images["model_xt"].value = png(
            render.to_pil(probe.decode_latents(explainer, shown), size=self.size)
        )
        self.images["model_x0"].value = png(
            render.to_pil(probe.decode_latents(explainer, guess.pred_x0), size=self.size)
        )
        self.say(
            f"model: t = {float(used):g} with its own schedule (ᾱ_t = {level.alpha_bar:.4f}), "
            f"prompt “{self.prompt.value}”, w = {self.guidance.value:g}: one {words(None, explainer)['model']} call"
        )
