"""ForwardProcess: noise an image straight to step t under a chosen schedule; with a model, its x̂0 guess.

An anywidget (``LabView``): the browser gets x0 and the noise ε once (float32, ``_arrays``) and the four
schedules' ᾱ_t and β_t, so it draws x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, the curves and the t marker for every t
and schedule with no kernel (``diffexplain/web/forward_process.js``). The model's side (x_t in its
latents, its guess x̂0: one model call) is Python's, redrawn once the t slider settles and by "Ask the
model again". The ipywidgets version is ``ClassicForwardProcess``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import traitlets as T
from diffusers.utils.torch_utils import randn_tensor
from plotly.subplots import make_subplots

from diffexplain import probe, render, schedules
from diffexplain.checks import check_float
from diffexplain.views import DEFAULT_SIZE, blank, is_sigma_space, png, words
from diffexplain.widgets.lab_view import FloatControl, LabView, SeedText, Upload, lab_bundle
from diffexplain.widgets.noise_work import first_upload
from diffexplain.widgets.stand_ins import Button, Chooser, IntControl, Shown, Text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from diffexplain.explainer import Explainer

HELP = (
    "The <b>forward process</b> turns a clean picture <b>x0</b> into noise: "
    "<b>x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε</b>, and it can jump straight to any step t. The <b>schedule</b> decides "
    "how fast the signal fraction <b>ᾱ_t</b> falls (β_t is the noise added per step, SNR = ᾱ_t/(1−ᾱ_t)). "
    "With a model loaded, the right-hand pictures show the <b>reverse</b> direction: the same picture noised "
    "to t in the model's latent space with the model's own schedule, and the model's one-shot guess "
    "<b>x̂0</b> of the clean picture."
)
SCHEDULE_LABELS = {
    "linear": "linear",
    "scaled_linear": "scaled linear (Stable Diffusion)",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid",
}
T_MAX = 999  # training timesteps 0..999 for the forward-process schedules


def _sig(values: torch.Tensor, digits: int = 6) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


class ForwardProcess(LabView):
    """Forward noising x0 → x_t for a chosen schedule and t; with an ``explainer``, the model's x̂0 from x_t.

    ``image`` (PIL image, bytes, uint8 array or tensor in [-1, 1]) replaces the dataset picture. Stand-ins:
    ``schedule``, ``t``, ``seed``, ``dataset_index``, ``upload``, ``prompt``, ``guidance``, ``ask_button``;
    ``images[key].value`` (PNG), ``info``, ``fig`` (plotly, built when read; the browser draws its own).
    """

    css_class = "dx-forward-process"
    _esm = lab_bundle("forward_process.js")
    _arrays = T.Bytes(b"").tag(sync=True)  # x0 then ε, float32 [3, h, w] each: the browser noises x0 itself
    _schedules = T.List().tag(sync=True)  # each schedule's name, label, ᾱ_t and β_t: sent once

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
        guidance_scale = check_float(
            "guidance_scale", guidance_scale, 0.0, 30.0, meaning="w of the model's x̂0"
        )
        self._prompt_given = prompt is not None
        self._pics: dict[str, bytes | None] = {}
        self._curves = {name: schedules.schedule_curves(name) for name in SCHEDULE_LABELS}
        self._schedules = [
            {"name": name, "label": label, "abar": _sig(c.alphas_cumprod), "beta": _sig(c.betas)}
            for (name, label), c in zip(SCHEDULE_LABELS.items(), self._curves.values(), strict=True)
        ]
        self._arrays_version = 0
        options = [(label, name) for name, label in SCHEDULE_LABELS.items()]
        self.schedule = self.bind("schedule", Chooser(options=options, value=schedule))
        self.t = self.bind("t", IntControl(min=0, max=T_MAX, value=t))
        self.seed = self.bind("seed", SeedText(0, description="noise seed"))
        self.dataset_index = self.bind("dataset_index", IntControl(min=0, max=99_999, value=dataset_index))
        self.upload = Upload()
        self.prompt = self.bind("prompt", Text(prompt or ""))
        self.guidance = self.bind("guidance", FloatControl(guidance_scale, min=0.0, max=30.0, step=0.5))
        self.ask_button = Button("Ask the model again")
        self.name_buttons(ask=self.ask_button)
        self.can_stop = False  # one model call at a time: nothing to stop
        self.info = Text()
        keys = ("x0", "xt", "model_xt", "model_x0")
        self.images = {key: Shown(lambda key=key: self._pics.get(key) or blank(self.size)) for key in keys}

        self.seed.observe(self.guard(lambda _: self._send_arrays()), names="value")  # before the redraw
        for name in ("schedule", "t", "seed"):
            self.bound[name].observe(self.guard(lambda _: self.redraw()), names="value")
        for control in (self.dataset_index, self.upload):
            control.observe(self.guard(self._on_source), names="value")
        self.ask_button.on_click(self.guard(lambda _: self._draw_model()))
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
        self._pics["x0"] = png(render.to_pil(self.x0, size=self.size))
        self._send_arrays(draw=False)
        self.redraw()
        if self.explainer is None:
            self._send_lab()  # the new x0 (with a model, _draw_model sent it)

    def _noise(self) -> torch.Tensor:
        """ε for x0, from the noise seed (what ``schedules.add_noise`` draws with that generator)."""
        generator = torch.Generator().manual_seed(self.seed.seed)
        return randn_tensor(tuple(self.x0.shape), generator=generator, dtype=self.x0.dtype)

    def _send_arrays(self, draw: bool = True) -> None:
        """x0 and ε for the browser, at most ``size`` pixels wide (nearest pixels, as the pictures)."""
        x0, eps = self.x0[0], self._noise()[0]
        h, w = x0.shape[-2:]
        if w > self.size:
            rows = ((np.arange(self.size) + 0.5) * h / self.size).astype(int)
            cols = ((np.arange(self.size) + 0.5) * w / self.size).astype(int)
            x0, eps = x0[:, rows][:, :, cols], eps[:, rows][:, :, cols]
        self._shape = list(x0.shape)
        self._arrays = x0.float().contiguous().numpy().tobytes() + eps.float().contiguous().numpy().tobytes()
        self._arrays_version += 1
        if draw:
            self._send_lab()

    # ---- figure ----------------------------------------------------------------------------------
    def _model_abar(self) -> torch.Tensor | None:
        return getattr(self.explainer.scheduler, "alphas_cumprod", None) if self.explainer else None

    @property
    def fig(self) -> go.Figure:
        """The schedule's curves and the t marker as a plotly figure (built when read)."""
        fig = make_subplots(
            rows=1, cols=2, specs=[[{"secondary_y": True}, {}]], subplot_titles=("ᾱ_t and β_t", "SNR_t")
        )
        curves, t = self._curves[self.schedule.value], self.t.value
        abar, snr, steps = curves.alphas_cumprod, curves.snr, list(range(len(curves.alphas_cumprod)))
        fig.add_scatter(x=steps, y=abar.tolist(), name="ᾱ_t (signal fraction)", mode="lines", row=1, col=1)
        fig.add_scatter(
            x=steps,
            y=curves.betas.tolist(),
            name="β_t (noise per step)",
            mode="lines",
            row=1,
            col=1,
            secondary_y=True,
        )
        fig.add_scatter(x=steps, y=snr.tolist(), name="SNR_t = ᾱ_t/(1−ᾱ_t)", mode="lines", row=1, col=2)
        model_abar = self._model_abar()
        mx, my = ([], []) if model_abar is None else (list(range(len(model_abar))), model_abar.tolist())
        fig.add_scatter(
            x=mx, y=my, name="the model's own ᾱ_t", mode="lines", line={"dash": "dot"}, row=1, col=1
        )
        fig.add_scatter(x=[t], y=[float(abar[t])], name="t", mode="markers", row=1, col=1)
        fig.add_scatter(x=[t], y=[float(snr[t])], name="t ", mode="markers", row=1, col=2)
        fig.update_yaxes(type="log", row=1, col=2)
        return fig

    # ---- redraw ----------------------------------------------------------------------------------
    def redraw(self) -> None:
        """x_t for the schedule and t (what the browser draws too), the info line, and the model's guess."""
        curves = self._curves[self.schedule.value]
        t = self.t.value
        xt = schedules.add_noise(self.x0, t, schedule=self.schedule.value, noise=self._noise())
        self._pics["xt"] = png(render.to_pil(xt.clamp(-1, 1), size=self.size))
        abar, snr = float(curves.alphas_cumprod[t]), float(curves.snr[t])
        self.info.value = (
            f"t = {t}: ᾱ_t = {abar:.4f} (√ᾱ_t = {abar**0.5:.3f} of the picture is left), "
            f"noise std √(1−ᾱ_t) = {(1 - abar) ** 0.5:.3f}, SNR = {snr:.4g}"
        )
        if self.explainer is not None:
            self._draw_model()  # (without a model the browser has all it needs: nothing is sent)

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
            self._send_lab()
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
        self._pics["model_xt"] = png(render.to_pil(probe.decode_latents(explainer, shown), size=self.size))
        self._pics["model_x0"] = png(
            render.to_pil(probe.decode_latents(explainer, guess.pred_x0), size=self.size)
        )
        self._model_t = t
        self.say(
            f"model: t = {float(used):g} with its own schedule (ᾱ_t = {level.alpha_bar:.4f}), "
            f"prompt “{self.prompt.value}”, w = {self.guidance.value:g}: one {words(None, explainer)['model']} call"
        )
        self._send_lab()

    def _send_lab(self) -> None:
        model_abar = self._model_abar()
        data = {
            "help": HELP,
            "size": self.size,
            "shape": self._shape,  # [3, h, w] of x0 and ε in _arrays
            "arrays": self._arrays_version,  # a new pair of arrays: the browser builds the view again
            "model": self.explainer is not None,
            "model_abar": None if model_abar is None else _sig(model_abar.float(), 5),
            "model_t": getattr(self, "_model_t", None),
        }
        self.send_view(data, self._pics)
