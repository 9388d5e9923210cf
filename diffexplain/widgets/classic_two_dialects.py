"""ClassicTwoDialects: the ε model and the flow model side by side, one step slider, in ipywidgets
(the anywidget view, scrubbed in the browser, is ``diffexplain.widgets.two_dialects.TwoDialects``).

Both models share their VAE, text encoder and U-Net architecture, and start from the same noise x_T (same
seed), so what differs is only the dialect: one predicts the noise ε, the other a velocity v = ε − x0.

Notation (``diffexplain.names``)::

    ε model:    x_t = √ᾱ·x0 + √(1−ᾱ)·ε     x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ     (DDIM)
    flow model: x_t = (1 − σ)·x0 + σ·ε      x̂0 = x_t − σ·v̂               (Euler along v̂)
    settle_k = RMS(x̂0_k − x_final)          how far step k's guess still is from the final latents
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W

from diffexplain import render
from diffexplain.checks import check_guidance_scale
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
    rms,
)
from diffexplain.widgets.controls import panels, preview_checkbox, prompt_box
from diffexplain.widgets.inputs import SeedBox, steps_box

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = (
    "Two models with the same parts and the same training pictures, in the two dialects of diffusion. "
    "The <b>ε model</b> predicts the <b>noise</b> in x_t; the <b>flow model</b> predicts a <b>velocity</b> "
    "v = ε − x0 that points along a straight line from the picture to the noise. Both start from the same "
    "noise (same seed) and both turn their prediction into a guess of the clean picture <b>x̂0</b>. "
    "Drag <b>step</b> to walk both loops at once; the plot shows how far each step's x̂0 still is from "
    "where the run ends, and the strips show x̂0 as the loop goes."
)
DIALECTS = ("epsilon", "flow")
TITLES = {
    "epsilon": "ε model: predicts the noise ε",
    "flow": "flow model: predicts the velocity v = ε − x0",
}
OUTPUT_TITLES = {"epsilon": "ε̂: the predicted noise", "flow": "v̂: the predicted velocity"}
FORMULAS = {
    "epsilon": "x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ, then DDIM adds back most of ε̂",
    "flow": "x̂0 = x_t − σ·v̂, then Euler moves x_t along v̂: x_next = x_t + (σ_next − σ)·v̂",
}
COLOURS = {"epsilon": "#1f77b4", "flow": "#d62728"}
STRIP_FRAMES = 6


def settle_curve(trace: Trace) -> list[float]:
    """RMS(x̂0_k − final latents) for each step k: how far each step's guess is from where the run ends."""
    final = trace.final_latents.float()
    return [rms(trace["step.pred_x0", k].float() - final) for k in range(len(trace))]


class ClassicTwoDialects(DxWidget):
    """The ε model and the flow model on one prompt and seed, walked by one step slider.

    ``explainers``: the two models by dialect (default: :func:`~diffexplain.load_default` and
    :func:`~diffexplain.load_flow_default`). ``traces`` holds the latest run of each.
    """

    css_class = "dx-two-dialects"

    def __init__(
        self,
        eps_explainer: Explainer | None = None,
        flow_explainer: Explainer | None = None,
        prompt: str = "a red circle on the left and a blue square on the right",
        *,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        size: int = DEFAULT_SIZE,
        run: bool = True,
    ) -> None:
        super().__init__()
        from diffexplain.models.default import load_default, load_flow_default

        self.explainers = {
            "epsilon": eps_explainer or load_default(progress=False),
            "flow": flow_explainer or load_flow_default(progress=False),
        }
        eps = self.explainers["epsilon"]
        self.frames = {d: Frames(e, size) for d, e in self.explainers.items()}
        self.prompt = prompt_box(prompt, width="520px")
        self.seed = SeedBox(seed)
        self.steps = steps_box(num_inference_steps or default_steps(eps))
        self.guidance = W.BoundedFloatText(
            value=default_guidance(eps) if guidance_scale is None else check_guidance_scale(guidance_scale),
            min=0.0,
            max=30.0,
            step=0.5,
            description="w",
            layout=W.Layout(width="130px"),
        )
        self.guidance.add_class("dx-guidance-scale")
        self.run_button = button("Run both", "dx-run", style="primary")
        self.preview = preview_checkbox(disabled=eps.vae is None)
        self.step = W.IntSlider(value=0, min=0, max=1, description="step", continuous_update=True)
        self.step.add_class("dx-dialect-step")
        self.rows: dict[str, W.VBox] = {}
        self.images: dict[str, dict[str, W.Image]] = {}
        self.labels: dict[str, W.HTML] = {}
        self.strips: dict[str, W.Image] = {}
        for dialect in DIALECTS:
            boxes, self.images[dialect] = panels(
                (
                    ("latents", "x_t", f"dx-{dialect}-latents"),
                    ("output", OUTPUT_TITLES[dialect], f"dx-{dialect}-output"),
                    ("pred_x0", "x̂0, its guess", f"dx-{dialect}-pred-x0"),
                    ("final", "final picture", f"dx-{dialect}-final"),
                ),
                size,
            )
            self.labels[dialect] = W.HTML()
            self.labels[dialect].add_class(f"dx-{dialect}-label")
            self.strips[dialect] = W.Image(
                format="png", value=blank(72), layout=W.Layout(align_self="flex-start")
            )
            self.strips[dialect].add_class(f"dx-{dialect}-strip")
            self.rows[dialect] = W.VBox(
                [
                    W.HTML(f"<b style='color:{COLOURS[dialect]}'>{TITLES[dialect]}</b>"),
                    W.HBox(list(boxes.values())),
                    self.labels[dialect],
                    self.strips[dialect],
                ]
            )
            self.rows[dialect].add_class(f"dx-{dialect}-row")
        self.fig = LiveFigure()
        for dialect in DIALECTS:
            self.fig.add_scatter(
                x=[], y=[], name=TITLES[dialect], mode="lines+markers", line={"color": COLOURS[dialect]}
            )
        self.fig.add_scatter(
            x=[],
            y=[],
            name="this step",
            mode="markers",
            marker={"size": 11, "color": "black", "symbol": "circle-open"},
        )
        self.fig.update_layout(
            height=260,
            margin={"l": 50, "r": 20, "t": 30, "b": 40},
            title={"text": "how far each step's x̂0 is from the final latents", "font": {"size": 13}},
            xaxis_title="step",
            yaxis_title="RMS(x̂0 − final)",
            legend={"orientation": "h", "y": -0.35},
        )
        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.step.observe(self.guard(lambda _: self._redraw()), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw(strips=True)), names="value")
        self.children = [
            help_box(HELP),
            W.HBox([self.prompt, self.seed]),
            W.HBox([self.steps, self.guidance, self.run_button, self.stop_button, self.preview]),
            self.progress,
            self.step,
            W.HBox([self.rows["epsilon"], self.rows["flow"]], layout=W.Layout(flex_flow="row wrap")),
            figure_box(self.fig, "dx-dialect-plot"),
            self.status,
            self.output,
        ]
        self.traces: dict[str, Trace] = {}
        self.curves: dict[str, list[float]] = {}
        if run:
            self.guard(self.run)()

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the prompt through both models (same seed, steps and w)."""
        self.finish(self._run_work())

    def _run_work(self) -> Work:
        settings: dict[str, Any] = {
            "seed": self.seed.seed,
            "num_inference_steps": self.steps.value,
            "guidance_scale": check_guidance_scale(self.guidance.value),
        }
        traces = {}
        for dialect in DIALECTS:
            self.say(f"running the {dialect} model …")
            traces[dialect] = yield from self.run_steps(
                self.explainers[dialect], self.prompt.value, **settings
            )
        self.traces = traces
        n = len(traces["epsilon"])
        self.step.max = n - 1
        self.step.value = min(self.step.value, n - 1)
        self.curves = curves = {d: settle_curve(t) for d, t in traces.items()}
        with self.fig.batch_update():
            for series, dialect in zip(self.fig.data[:2], DIALECTS, strict=True):
                series.x, series.y = list(range(n)), curves[dialect]
        half = n // 2
        self.say(
            f"ran both: {n} steps each. Halfway (step {half}) x̂0 is "
            + ", ".join(f"{curves[d][half]:.2f}" for d in DIALECTS)
            + " (ε, flow) from the final latents"
        )
        self._redraw(strips=True)

    # ---- drawing ---------------------------------------------------------------------------------
    def _redraw(self, *, strips: bool = False) -> None:
        if not self.traces:
            return
        k = self.step.value
        preview = self.preview.value
        for dialect, trace in self.traces.items():
            frames, images = self.frames[dialect], self.images[dialect]
            images["latents"].value = frames.latents(
                trace, ("latents", k), trace["step.latents", k], preview=preview
            )
            images["output"].value = frames.noise(trace["step.guidance", k][:1].float())
            images["pred_x0"].value = frames.latents(
                trace, ("pred_x0", k), trace["step.pred_x0", k], preview=preview
            )
            images["final"].value = frames.final(trace, preview=preview)
            record = trace.steps[k]
            noise = (
                f"σ = {record.scalars['scheduler_sigma']:.3f}"
                if dialect == "flow"
                else (f"ᾱ = {record.level.alpha_bar:.3f}")
            )
            self.labels[dialect].value = (
                f"<span style='font-size:0.9em'>step {k}: t = {float(record.timestep):g}, {noise}; "
                f"{FORMULAS[dialect]}</span>"
            )
            if strips:
                self.strips[dialect].value = self._strip(dialect, trace, preview)
        with self.fig.batch_update():  # the step on both curves
            self.fig.data[2].x, self.fig.data[2].y = [k, k], [self.curves[d][k] for d in DIALECTS]

    def _strip(self, dialect: str, trace: Trace, preview: bool) -> bytes:
        """x̂0 at a few evenly spaced steps, decoded, labelled by step."""
        n = len(trace)
        ks = sorted({round(i * (n - 1) / (STRIP_FRAMES - 1)) for i in range(STRIP_FRAMES)})
        frames = self.frames[dialect]
        tiles = [
            frames.picture(trace, ("pred_x0", k), trace["step.pred_x0", k], preview=preview, size=72)
            for k in ks
        ]
        return png(render.strip(tiles, [f"x̂0 @ {k}" for k in ks]))
