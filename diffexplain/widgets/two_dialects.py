"""TwoDialects: the embedded ε model and the embedded flow model side by side, one step slider, drawn
and scrubbed in the browser: an anywidget (``ActionView``, a ``TraceView``) running ``diffexplain/web/two_dialects.js``.

Both models share their VAE, text encoder and U-Net architecture, and start from the same noise x_T (same
seed), so what differs is only the dialect: one predicts the noise ε, the other a velocity v = ε − x0.
After each run (and when the fast preview is ticked) every step's pictures of both rows go to the
browser once; the step slider then moves both rows, their labels and the plot's marker with no kernel
round trip. "Run both" and the preview box are messages to Python (busy state, Stop, errors).
The ipywidgets version is ``ClassicTwoDialects``.

Notation (``diffexplain.names``)::

    ε model:    x_t = √ᾱ·x0 + √(1−ᾱ)·ε     x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ     (DDIM)
    flow model: x_t = (1 − σ)·x0 + σ·ε      x̂0 = x_t − σ·v̂               (Euler along v̂)
    settle_k = RMS(x̂0_k − x_final)          how far step k's guess still is from the final latents
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as T

from diffexplain import render
from diffexplain.checks import check_guidance_scale
from diffexplain.widgets.action_view import ActionView, view_bundle
from diffexplain.widgets.actions import Work
from diffexplain.widgets.base import DEFAULT_SIZE, Frames, blank, default_guidance, default_steps, png
from diffexplain.widgets.classic_two_dialects import (
    COLOURS,
    DIALECTS,
    FORMULAS,
    HELP,
    OUTPUT_TITLES,
    STRIP_FRAMES,
    TITLES,
    settle_curve,
)
from diffexplain.widgets.stand_ins import Button, Checkbox, IntControl, Shown, Text
from diffexplain.widgets.typed_inputs import Number, SeedText, parse_number

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace
    from diffexplain.widgets.figures import LiveFigure

__all__ = ["TwoDialects", "settle_curve"]

PANELS = {  # key: (title, the picture's CSS class suffix: dx-<dialect>-<suffix>)
    "latents": ("x_t", "latents"),
    "output": (None, "output"),  # OUTPUT_TITLES[dialect]
    "pred_x0": ("x̂0, its guess", "pred-x0"),
    "final": ("final picture", "final"),
}
PLOT = {
    "title": "how far each step's x̂0 is from the final latents",
    "x": "step",
    "y": "RMS(x̂0 − final)",
    "marker": "this step",
}


class TwoDialects(ActionView):
    """The ε model and the flow model on one prompt and seed, walked by one step slider.

    ``explainers``: the two models by dialect (default: :func:`~diffexplain.load_default` and
    :func:`~diffexplain.load_flow_default`). ``traces`` holds the latest run of each, ``curves`` their
    settle curves. Python attributes as before: ``prompt``, ``seed``, ``steps``, ``guidance``,
    ``preview`` (``.value``), ``step`` (``.value``, ``.max``), ``run_button.click()``,
    ``images[dialect][key].value`` (PNG at the step shown), ``labels[dialect].value``,
    ``strips[dialect].value``, ``fig`` (the plotly plot, built when read).
    """

    css_class = "dx-two-dialects"
    _esm = view_bundle("two_dialects.js")
    shown_step = T.Int(0).tag(sync=True)  # the step both rows show (the browser sets it once it settles)

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
        self.size = size
        self.frames = {d: Frames(e, size) for d, e in self.explainers.items()}
        self.prompt = Text(prompt)
        self.seed = SeedText(seed)
        self.steps = Number(num_inference_steps or default_steps(eps), min=1, max=1000, integer=True)
        w = default_guidance(eps) if guidance_scale is None else check_guidance_scale(guidance_scale)
        self.guidance = Number(w, min=0.0, max=30.0)
        self.run_button = Button("Run both")
        self.view_buttons = [self.run_button]
        self.preview = Checkbox(disabled=eps.vae is None)
        self._step = IntControl()
        T.link((self._step, "value"), (self, "shown_step"))
        self.images = {
            d: {key: Shown(lambda d=d, key=key: self._picture(f"{d}/{{k}}/{key}")) for key in PANELS}
            for d in DIALECTS
        }
        for d in DIALECTS:
            self.images[d]["final"] = Shown(lambda d=d: self._picture(f"{d}/final"))
        self.labels = {d: Shown(lambda d=d: self._label_now(d)) for d in DIALECTS}
        self.strips = {d: Shown(lambda d=d: self._picture(f"{d}/strip", 72)) for d in DIALECTS}
        self.traces: dict[str, Trace] = {}
        self.curves: dict[str, list[float]] = {}
        self._pictures: dict[str, bytes | None] = {}
        self._fig: LiveFigure | None = None
        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.preview.observe(self.guard(lambda _: self._send_view()), names="value")
        self.observe(self.guard(lambda _: self._mark_step()), names="shown_step")
        self._send_view()
        if run:
            self.guard(self.run)()

    @property
    def step(self) -> IntControl:  # type: ignore[override]
        """The step slider (``.value``, ``.max``): both rows show this step."""
        return self._step

    # ---- the browser's messages ------------------------------------------------------------------
    def action_run(self, prompt: str, seed: str, steps: str, w: str) -> None:
        """The browser's "Run both", with the boxes as typed there."""
        self.prompt.value, self.seed.value = str(prompt), str(seed)
        self.steps.value, self.guidance.value = parse_number(steps, "steps"), parse_number(w, "w")
        self.run_button.click()

    def action_preview(self, value: bool) -> None:
        """The browser's "fast latent preview" box."""
        if self.preview.disabled:
            self._send_view()  # the box was not to be changed: drawn again as it is
        else:
            self.preview.value = bool(value)

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the prompt through both models (same seed, steps and w)."""
        self.finish(self._run_work())

    def _run_work(self) -> Work:
        settings: dict[str, Any] = {
            "seed": self.seed.seed,
            "num_inference_steps": int(self.steps.value),
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
        self.curves = curves = {d: settle_curve(t) for d, t in traces.items()}
        self._step.max = n - 1
        self._step.value = min(self._step.value, n - 1)
        half = n // 2
        self.say(
            f"ran both: {n} steps each. Halfway (step {half}) x̂0 is "
            + ", ".join(f"{curves[d][half]:.2f}" for d in DIALECTS)
            + " (ε, flow) from the final latents"
        )
        self._send_view()
        self._fill_fig()

    # ---- what the browser gets ---------------------------------------------------------------------
    def _send_view(self) -> None:
        """Draw every step's pictures of both rows and send them, with the view data, once."""
        self._pictures = self._draw_all()
        self.send_view(self._view_data(), self._pictures)

    def _view_data(self) -> dict[str, Any]:
        n = len(self.traces["epsilon"]) if self.traces else 0
        rows = []
        for d in DIALECTS:
            trace = self.traces.get(d)
            rows.append(
                {
                    "key": d,
                    "title": TITLES[d],
                    "colour": COLOURS[d],
                    "panels": {k: OUTPUT_TITLES[d] if t is None else t for k, (t, _) in PANELS.items()},
                    "css": {k: f"dx-{d}-{suffix}" for k, (_, suffix) in PANELS.items()},
                    "labels": [self._label(d, trace, k) for k in range(n)] if trace is not None else [],
                    "curve": self.curves.get(d, []),
                }
            )
        return {
            "help": HELP,
            "n": n,
            "rows": rows,
            "plot": PLOT,
            "display_size": self.size,
            "inputs": {
                "prompt": self.prompt.value,
                "seed": self.seed.value,
                "steps": self.steps.value,
                "w": self.guidance.value,
                "preview": self.preview.value,
                "preview_disabled": self.preview.disabled,
            },
        }

    def _draw_all(self) -> dict[str, bytes | None]:
        pictures: dict[str, bytes | None] = {}
        preview = self.preview.value
        for d, trace in self.traces.items():
            frames = self.frames[d]
            for k in range(len(trace)):
                pictures[f"{d}/{k}/latents"] = frames.latents(
                    trace, ("latents", k), trace["step.latents", k], preview=preview
                )
                pictures[f"{d}/{k}/output"] = frames.noise(trace["step.guidance", k][:1].float())
                pictures[f"{d}/{k}/pred_x0"] = frames.latents(
                    trace, ("pred_x0", k), trace["step.pred_x0", k], preview=preview
                )
            pictures[f"{d}/final"] = frames.final(trace, preview=preview)
            pictures[f"{d}/strip"] = self._strip(d, trace, preview)
        return pictures

    def _label(self, dialect: str, trace: Trace, k: int) -> str:
        record = trace.steps[k]
        noise = (
            f"σ = {record.scalars['scheduler_sigma']:.3f}"
            if dialect == "flow"
            else f"ᾱ = {record.level.alpha_bar:.3f}"
        )
        return f"step {k}: t = {float(record.timestep):g}, {noise}; {FORMULAS[dialect]}"

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

    # ---- Python's view of the step shown -----------------------------------------------------------
    def _k(self) -> int:
        n = len(self.traces["epsilon"]) if self.traces else 1
        return max(0, min(self._step.value, n - 1))

    def _picture(self, key: str, size: int | None = None) -> bytes:
        found = self._pictures.get(key.replace("{k}", str(self._k())))
        return found if found is not None else blank(size or self.size)

    def _label_now(self, dialect: str) -> str:
        trace = self.traces.get(dialect)
        if trace is None:
            return ""
        return f"<span style='font-size:0.9em'>{self._label(dialect, trace, self._k())}</span>"

    @property
    def fig(self) -> LiveFigure:
        """The settle plot as a plotly figure (built on first read; the browser draws its own)."""
        if self._fig is None:
            from diffexplain.widgets.figures import LiveFigure

            fig = LiveFigure()
            for dialect in DIALECTS:
                fig.add_scatter(
                    x=[], y=[], name=TITLES[dialect], mode="lines+markers", line={"color": COLOURS[dialect]}
                )
            fig.add_scatter(
                x=[],
                y=[],
                name=PLOT["marker"],
                mode="markers",
                marker={"size": 11, "color": "black", "symbol": "circle-open"},
            )
            fig.update_layout(
                height=260,
                margin={"l": 50, "r": 20, "t": 30, "b": 40},
                title={"text": PLOT["title"], "font": {"size": 13}},
                xaxis_title=PLOT["x"],
                yaxis_title=PLOT["y"],
                legend={"orientation": "h", "y": -0.35},
            )
            self._fig = fig
            self._fill_fig()
        return self._fig

    def _fill_fig(self) -> None:
        if self._fig is None or not self.curves:
            return
        with self._fig.batch_update():
            for series, dialect in zip(self._fig.data[:2], DIALECTS, strict=True):
                series.x, series.y = list(range(len(self.curves[dialect]))), self.curves[dialect]
        self._mark_step()

    def _mark_step(self) -> None:
        if self._fig is None or not self.curves:
            return
        k = self._k()
        with self._fig.batch_update():
            self._fig.data[2].x, self._fig.data[2].y = [k, k], [self.curves[d][k] for d in DIALECTS]
