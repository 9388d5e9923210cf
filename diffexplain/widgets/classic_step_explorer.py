"""ClassicStepExplorer: the StepExplorer as it was before the anywidget views (ipywidgets controls, plotly
in an ``Output``; each step-slider move is a round trip to the kernel, which draws the panels).

Kept for front ends that host plain Jupyter widgets but no anywidget, and as the baseline of
``benchmarks/bench_scrub.py``. ``diffexplain.widgets.StepExplorer`` is the anywidget view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W

from diffexplain.errors import TraceKeyError
from diffexplain.explanations import (
    GUIDANCE_OFF,
    STEP_HELP,
    STEP_PANELS,
)
from diffexplain.probe import trace_fingerprint
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    LiveFigure,
    blank,
    cosine,
    figure_box,
    help_box,
    help_html,
    is_pixel_space,
    rms,
    vp_scale,
    words,
)
from diffexplain.widgets.controls import panels, preview_checkbox
from diffexplain.widgets.stages import chooser_width, embedding_caption, stage_chooser
from diffexplain.widgets.step_figure import fill_timeline, make_timeline, mark_step

if TYPE_CHECKING:
    import torch

    from diffexplain.cascade_trace import CascadeTrace
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = STEP_HELP  # the texts live in diffexplain.explanations, shared with the HTML page
PANEL_CSS = {
    "xt": "dx-xt-image",
    "x0": "dx-x0-image",
    "channels": "dx-channels-image",
    "eps_c": "dx-eps-cond-image",
    "eps_u": "dx-eps-uncond-image",
    "delta": "dx-delta-image",
    "guided": "dx-eps-guided-image",
}


def _is_cascade(trace: object) -> bool:
    from diffexplain.cascade_trace import CascadeTrace

    return isinstance(trace, CascadeTrace)


def _stage_name(trace: CascadeTrace, stage: str | None, *, keep: bool = False) -> str:
    """``stage`` if the trace has it (or the last stage where ``stage`` is None, or ``keep`` and gone)."""
    if stage is None or (keep and stage not in trace.stages):
        return trace.names[-1]
    trace.stage(stage)  # KeyError naming the stages
    return stage


def _get(trace: Trace, name: str, step: int) -> torch.Tensor | None:
    try:
        return trace[name, step]
    except TraceKeyError:  # not kept, or not computed (ε_u with guidance off)
        return None


class ClassicStepExplorer(DxWidget):
    """Explore one trace step by step: pictures of x_t, x̂0, ε_c, ε_u, Δ, ε̂, the latent channels, and a timeline.

    ``explainer`` (default: the trace's own) lets x_t and x̂0 be decoded with the VAE; without one,
    pictures use the fast latent preview. ``set_trace`` shows another trace in the same widget.
    A ``CascadeTrace`` (``diffexplain.Cascade``) gets a stage chooser: ``stage`` (default the last)
    picks which stage's trace is shown.
    """

    css_class = "dx-step-explorer"

    def __init__(
        self,
        trace: Trace | CascadeTrace,
        explainer: Explainer | None = None,
        *,
        size: int = DEFAULT_SIZE,
        stage: str | None = None,
    ) -> None:
        super().__init__()
        self.cascade_trace: CascadeTrace | None = None
        self.stage: str | None = None  # the stage shown, for a cascade trace
        self.stage_chooser = stage_chooser((), None, self.guard(self._on_stage))
        if _is_cascade(trace):
            self.cascade_trace, self.stage = trace, _stage_name(trace, stage)
            trace = trace.stage(self.stage)
        self.explainer = explainer if explainer is not None else trace.explainer
        self.frames = Frames(self.explainer, size)
        self.trace: Trace = trace
        self.slider = W.IntSlider(value=0, min=0, max=1, description="step", continuous_update=True)
        self.slider.add_class("dx-step-slider")
        self.play = W.Play(value=0, min=0, max=1, interval=600, description="play")
        self.play.add_class("dx-play")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.preview = preview_checkbox()  # enabled per trace, in _switch
        self.header = W.HTML()
        self.header.add_class("dx-header")
        self.info = W.HTML()
        self.info.add_class("dx-step-info")
        self.unet_row = W.HTML()
        self.unet_row.add_class("dx-unet-row")

        vocab = words(trace, self.explainer)  # "noise" and "U-Net", or "velocity" and "transformer"
        spec = ((key, title.format(**vocab), PANEL_CSS[key]) for key, title in STEP_PANELS.items())
        boxes, self.images = panels(spec, size)
        self.panel_titles = {key: box.children[0] for key, box in boxes.items()}  # relabelled per stage
        self.help = help_box(HELP.format(**vocab))
        self.channel_box = boxes["channels"]
        self.fig = self._make_figure()

        self._switching = False  # True while set_trace changes controls: their observers wait
        self.slider.observe(self.guard(self._on_control), names="value")
        self.preview.observe(self.guard(self._on_control), names="value")
        self.children = [
            self.help,
            self.header,
            W.HBox([self.stage_chooser, self.play, self.slider, self.preview]),  # the chooser: cascades
            W.HBox([boxes["xt"], boxes["x0"], boxes["channels"]]),
            W.HBox([boxes["eps_c"], boxes["eps_u"], boxes["delta"], boxes["guided"]]),
            self.info,
            self.unet_row,
            figure_box(self.fig, "dx-timeline"),
            self.status,
            self.output,
        ]
        self.guard(self.set_trace)(self.cascade_trace if self.cascade_trace is not None else trace)

    # ---- figure ----------------------------------------------------------------------------------
    def _make_figure(self) -> LiveFigure:
        return make_timeline()

    def _series(self) -> dict[str, list[Any]]:
        trace = self.trace
        out: dict[str, list[Any]] = {k: [] for k in ("c", "u", "d", "cos", "abar")}
        for i in range(len(trace)):
            ec, eu = _get(trace, "step.model.cond", i), _get(trace, "step.model.uncond", i)
            out["c"].append(None if ec is None else rms(ec))
            out["u"].append(None if eu is None else rms(eu))
            out["d"].append(None if ec is None or eu is None else rms(ec - eu))
            out["cos"].append(None if ec is None or eu is None else cosine(ec, eu))
            out["abar"].append(trace.steps[i].level.alpha_bar)
        return out

    # ---- switching traces ------------------------------------------------------------------------
    def set_trace(self, trace: Trace | CascadeTrace, explainer: Explainer | None = None) -> None:
        """Show ``trace`` (keeping the current step where it exists); a cascade trace: its chosen stage."""
        if _is_cascade(trace):
            self.cascade_trace, self.stage = trace, _stage_name(trace, self.stage, keep=True)
            self.stage_chooser.options = [(f"stage {n}", n) for n in trace.names]  # _on_stage: no change
            self.stage_chooser.style.button_width = chooser_width(trace.names)
            self.stage_chooser.value = self.stage
            self.stage_chooser.layout.display = None if len(trace.names) > 1 else "none"
            self.show_stage(self.stage, explainer)
            return
        if self.cascade_trace is not None and not any(trace is t for t in self.cascade_trace.stages.values()):
            self.cascade_trace = self.stage = None  # a single trace now: no stages to choose
            self.stage_chooser.layout.display = "none"
        if len(trace) == 0:
            raise ValueError("this trace has no finished steps to show")
        self._switching = True  # the controls change below; draw once, at the end
        try:
            self._switch(trace, explainer)
        finally:
            self._switching = False
        self._on_step()

    def _on_stage(self, name: str | None) -> None:
        if name is not None and name != self.stage:
            self.show_stage(name)

    def show_stage(self, name: str, explainer: Explainer | None = None) -> None:
        """Show stage ``name`` of the cascade trace (with its own explainer, where it has one)."""
        if self.cascade_trace is None:
            raise ValueError("this StepExplorer shows a single trace: there are no stages to choose")
        trace = self.cascade_trace.stage(name)
        self.stage = name  # first: the chooser's value below then calls back with no change
        self.explainer = explainer if explainer is not None else trace.explainer
        self.frames.explainer = self.explainer
        if hasattr(self.frames, "trace"):  # frames that follow the trace shown (TracePlayer's saved previews)
            self.frames.trace = trace
        if self.stage_chooser.value != name:
            self.stage_chooser.value = name
        self.set_trace(trace)

    def _relabel(self, trace: Trace) -> None:
        """Name the model, its output and x_t as the trace shown has them (a cascade's stages differ)."""
        vocab = words(trace, self.explainer)
        self.help.value = help_html(HELP.format(**vocab))
        for key, title in STEP_PANELS.items():
            self.panel_titles[key].value = f"<b>{title.format(**vocab)}</b>"

    def _switch(self, trace: Trace, explainer: Explainer | None) -> None:
        self.trace = trace
        if explainer is not None or self.explainer is None:
            self.explainer = explainer if explainer is not None else trace.explainer
            self.frames.explainer = self.explainer
        n = len(trace)
        self.frames.trace_latent_rgb = trace.run_settings.latent_rgb
        self.cfg = trace.run_settings.do_cfg and _get(trace, "step.model.uncond", 0) is not None
        can_decode = self.frames.can_decode() and not is_pixel_space(trace, self.explainer)
        self.preview.disabled = not can_decode
        self.preview.layout.display = (
            None if can_decode or not is_pixel_space(trace, self.explainer) else "none"
        )
        if not can_decode and not is_pixel_space(trace, self.explainer):
            self.preview.value = True
        self.channel_box.layout.display = "none" if is_pixel_space(trace, self.explainer) else None
        s = trace.settings
        fork = "" if trace.forked_from is None else f" · forked at step {trace.forked_from}"
        stage = "" if self.cascade_trace is None else f"<b>stage {self.stage}</b> · "
        self.header.value = (
            f"{stage}<b>prompt</b>: “{s.get('prompt')}” · <b>w</b> = {s.get('guidance_scale')} · "
            f"seed {s.get('seed')} · {(s.get('scheduler') or {}).get('class', '?')} · {n} steps{fork}"
        )
        self._relabel(trace)
        caption = embedding_caption(trace)  # the Kandinsky prior: x_t is a vector
        self.header.value += f"<br>{caption}" if caption else ""
        series = self._series()
        fill_timeline(self.fig, series, self.cfg)
        self._series_cache = series
        step = min(self.slider.value, n - 1)
        self.slider.max = self.play.max = n - 1
        self.slider.value = step

    # ---- one step --------------------------------------------------------------------------------
    def _latent_picture(self, name: str, step: int, latents: torch.Tensor | None) -> bytes:
        if latents is None:
            return blank(self.frames.size, f"{name}\nnot kept in this trace")
        return self.frames.latents(
            self.trace,
            (name, step),
            latents,
            preview=self.preview.value,
            pixel_space=is_pixel_space(self.trace, self.explainer),
        )

    def _on_control(self, change: dict) -> None:
        if not self._switching:
            self._on_step()

    def _on_step(self, change: dict | None = None) -> None:
        trace = self.trace
        k = min(self.slider.value, len(trace) - 1)
        record = trace.steps[k]
        xt = _get(trace, "step.latents", k)
        if xt is None and record.restart is not None:
            xt = record.restart.latents
        scale = vp_scale(trace, k)
        self.images["xt"].value = self._latent_picture("x_t", k, None if xt is None else xt * scale)
        self.images["x0"].value = self._latent_picture("x̂0", k, _get(trace, "step.pred_x0", k))
        if xt is not None and not is_pixel_space(trace, self.explainer):
            self.images["channels"].value = self.frames.channels(xt * scale)
        ec, eu, guided = (
            _get(trace, n, k) for n in ("step.model.cond", "step.model.uncond", "step.guidance")
        )
        size = self.frames.size
        self.images["eps_c"].value = blank(size, "ε_c not kept") if ec is None else self.frames.noise(ec)
        self.images["guided"].value = (
            blank(size, "ε̂ not kept") if guided is None else self.frames.noise(guided)
        )
        if not self.cfg:
            model = words(self.trace, self.explainer)["model"]
            off = GUIDANCE_OFF.format(model=model)
            self.images["eps_u"].value = blank(size, off)
            self.images["delta"].value = blank(size, off)
        elif ec is not None and eu is not None:
            self.images["eps_u"].value = self.frames.noise(eu)
            self.images["delta"].value = self.frames.channels(ec - eu)
        lv = record.level
        s = self._series_cache
        parts = [
            f"<b>step {k}</b> of {len(trace)} (0-based)",
            f"t = {record.timestep:g}",
            f"ᾱ_t = {lv.alpha_bar:.4f}",
            f"σ_t = {lv.sigma:.3f}",
        ]
        if s["c"][k] is not None:
            parts.append(f"‖ε_c‖ = {s['c'][k]:.3f}")
        if self.cfg and s["d"][k] is not None:
            parts += [f"‖Δ‖ = {s['d'][k]:.3f}", f"cos(ε_c, ε_u) = {s['cos'][k]:.3f}"]
        elif not self.cfg:
            parts.append("guidance off: no ε_u, no Δ")
        self.info.value = " · ".join(parts)
        self._draw_unet_row(k)
        mark_step(self.fig, k, s["c"][k])

    def _draw_unet_row(self, k: int) -> None:
        trace = self.trace
        n = len(trace)
        fp = trace_fingerprint(trace, self.explainer)
        model = words(self.trace, self.explainer)["model"]
        label = f"#{fp}" if fp else model
        chips = []
        for i, t in enumerate(trace.timesteps):
            on = i == k
            style = (
                "display:inline-block;margin:1px;padding:1px 3px;border-radius:3px;font-size:10px;"
                f"border:1px solid {'#d33' if on else '#99a'};background:{'#fdd' if on else '#eef'}"
            )
            chips.append(
                f"<span class='dx-unet-chip' title='step {i}, t = {t:g}' style='{style}'>{label}<br>t={t:g}</span>"
            )
        if fp:
            text = f"The same {model}, same weights (fingerprint <code>{fp}</code>): <b>same weights at all {n} steps</b>."
        else:
            text = f"The same {model} runs at all {n} steps (this trace records no weight fingerprint)."
        text += " Only its inputs change: x_t, the timestep t and the prompt."
        self.unet_row.value = f"<div>{text}</div><div style='line-height:1.1'>{''.join(chips)}</div>"
