"""ClassicAttentionMaps: the ipywidgets AttentionMaps (each choice redrawn by Python), kept for front ends
that host ipywidgets but not anywidget. ``AttentionMaps`` (``attention_maps.py``) is the anywidget view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from PIL import Image

from diffexplain import render
from diffexplain.attention import edits
from diffexplain.attention.maps import first_step as maps_first_step
from diffexplain.attention.tokens import find_token
from diffexplain.errors import TraceKeyError
from diffexplain.widgets.attention_maps import ALL, HELP, reader_clause, token_label
from diffexplain.widgets.base import (
    DEFAULT_SIZE,
    DxWidget,
    Frames,
    LiveFigure,
    Work,
    _escape,
    blank,
    button,
    figure_box,
    help_box,
    is_pixel_space,
    png,
    words,
)
from diffexplain.widgets.controls import panels, preview_checkbox

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace
    from diffexplain.widgets.step_explorer import StepExplorer


class ClassicAttentionMaps(DxWidget):
    """The ipywidgets AttentionMaps: cross-attention maps of one trace: a token, a step, a layer or resolution, cond or uncond.

    ``explainer`` (default: the trace's own) decodes x̂0 and runs the reweight fork; without one the
    maps are still shown (over the fast latent preview). ``link(explorer)`` ties the step slider to a
    ``StepExplorer``'s. ``forked`` is the latest reweighted trace.
    """

    css_class = "dx-attention-maps"

    def __init__(
        self,
        trace: Trace,
        explainer: Explainer | None = None,
        *,
        token: str | int | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer if explainer is not None else trace.explainer
        self.frames = Frames(self.explainer, size)
        self.trace: Trace = trace
        self.forked: Trace | None = None
        self.header = W.HTML()
        self.header.add_class("dx-header")
        self.token = W.Dropdown(description="token", layout=W.Layout(width="300px"))
        self.token.add_class("dx-token")
        self.step = W.IntSlider(value=0, min=0, max=1, description="step", continuous_update=True)
        self.step.add_class("dx-attention-step")
        self.all_steps = W.Checkbox(value=False, description="average over all steps", indent=False)
        self.all_steps.add_class("dx-all-steps")
        self.layer = W.Dropdown(description="layers", layout=W.Layout(width="300px"))
        self.layer.add_class("dx-layer")
        self.branch = W.ToggleButtons(options=[("cond: the prompt", "cond"), ("uncond: negative", "uncond")])
        self.branch.add_class("dx-branch")
        self.branch.style.button_width = "150px"
        self.preview = preview_checkbox()  # enabled per trace, in set_trace
        self.factor = W.FloatSlider(
            value=0.0, min=0.0, max=3.0, step=0.1, description="reweight", continuous_update=False
        )
        self.factor.add_class("dx-factor")
        self.fork_step = W.IntSlider(value=0, min=0, max=1, description="from step", continuous_update=False)
        self.fork_step.add_class("dx-fork-step")
        self.fork_button = button("Fork with the token reweighted", "dx-reweight-button", style="warning")
        self.info = W.HTML()
        self.info.add_class("dx-attention-info")

        boxes, self.images = panels(
            (
                ("overlay", "map over x̂0 at this step", "dx-overlay-image"),
                ("map", "the map alone", "dx-map-image"),
                ("before", "final picture", "dx-before-image"),
                ("after", "reweighted (fork)", "dx-after-image"),
            ),
            size,
        )
        self.after_title = boxes["after"].children[0]
        self.fig = LiveFigure()
        self.fig.add_bar(x=[], y=[], name="share of attention")
        self.fig.update_layout(
            height=240,
            margin={"l": 50, "r": 20, "t": 30, "b": 80},
            title={"text": "share of the picture's attention per token, at this step", "font": {"size": 13}},
            yaxis_title="mean over pixels",
            xaxis={"tickangle": -60, "type": "category"},
        )

        redraw = self.guard(lambda _: self._redraw())
        for control in (self.token, self.step, self.all_steps, self.layer, self.preview):
            control.observe(redraw, names="value")
        self.fork_button.on_click(self.guard(lambda _: self.start(self._reweight_work)))

        self.children = [
            help_box(
                HELP.format(
                    model=words(trace, self.explainer)["model"], reader=reader_clause(trace, self.explainer)
                )
            ),
            self.header,
            W.HBox([self.token, self.layer]),
            W.HBox([self.step, self.all_steps, self.preview]),
            self.branch,
            W.HBox([boxes["overlay"], boxes["map"], boxes["before"], boxes["after"]]),
            self.info,
            W.HBox([self.factor, self.fork_step, self.fork_button, self.stop_button]),
            self.progress,
            figure_box(self.fig, "dx-token-shares"),
            self.status,
            self.output,
        ]
        self._initial_token = token
        self._linked_slider: W.IntSlider | None = None  # a StepExplorer's slider, once linked
        self._given_explainer = explainer
        self._updating = False
        self.branch.observe(self.guard(self._on_branch), names="value")
        self.guard(self.set_trace)(trace)

    # ---- public --------------------------------------------------------------------------------------
    def set_trace(self, trace: Trace) -> None:
        """Show ``trace`` (its tokens, steps and layers); the reweighted picture is cleared.

        A trace without maps raises (and the widget keeps showing the trace it had).
        """
        tokens = trace.tokens  # raises a clear error for a trace without maps
        first_step = maps_first_step(trace, "cond")
        chosen = next((t.index for t in tokens if t.kind == "word"), 0)
        if self._initial_token is not None:  # the constructor's token=, for the first trace only
            try:
                chosen = find_token(tokens, self._initial_token, prompt=str(trace.run_settings.prompt))[0]
            finally:
                self._initial_token = None
        layers = [("all layers", ALL)]
        for resolution, names in trace.attention_resolutions.items():
            count = f"{len(names)} layer{'s' if len(names) > 1 else ''}"
            layers.append((f"{resolution.replace('x', '×')} ({count})", resolution))
        kept_layers = {k.removeprefix("attn.").split(".probs.")[0] for k in trace.kept if ".probs." in k}
        layers += [(name, name) for name in sorted(kept_layers)]  # single layers: their p is kept
        self.clear_errors()
        self.trace, self.forked = trace, None
        if self._given_explainer is None:  # follow the trace's own model
            self.explainer = trace.explainer
            self.frames.explainer = self.explainer
        n = len(trace)
        self._updating = True  # no redraw while the controls are set one by one
        try:
            self.branch.value = "cond"
            self._set_token_options("cond", chosen)
            self.layer.options = layers
            self.layer.value = ALL
            self.step.min = 0
            self.step.max = self.fork_step.max = max(n - 1, 0)
            self.step.min = min(first_step, self.step.max)  # a fork that changed the prompt: k..
            last = n - 1 if n else 0
            # linked to a StepExplorer (kernel-side, both ways): keep its step rather than move it
            linked = self._linked_slider.value if self._linked_slider is not None else last
            self.step.value = min(max(linked, self.step.min), last)
            self.fork_step.value = 0
            has_uncond = "uncond" in (trace.run_settings.attention or {}).get("tokens", {})
            self.branch.disabled = not has_uncond
        finally:
            self._updating = False
        self.frames.trace_latent_rgb = trace.run_settings.latent_rgb
        pixel = is_pixel_space(trace, self.explainer)
        can_decode = self.frames.can_decode() and not pixel
        self.preview.disabled = not can_decode
        self.preview.layout.display = "none" if pixel else None
        if not can_decode and not pixel:
            self.preview.value = True  # no VAE here: the fast latent preview is all there is
        self.fork_button.disabled = self.explainer is None
        self.fork_button.tooltip = (
            "needs the model: open the widget with an explainer" if self.explainer is None else "fork"
        )
        self.images["after"].value = blank(self.frames.size, "fork with a\nreweighted token")
        self.after_title.value = "<b>reweighted (fork)</b>"
        settings = trace.run_settings
        self.header.value = (
            f"<b>{_escape(str(settings.prompt))}</b> · {n} steps · guidance scale "
            f"{settings.guidance_scale} · seed {settings.seed}"
        )
        self._redraw()

    def link(self, explorer: StepExplorer) -> ClassicAttentionMaps:
        """Move this widget's step slider with a ``StepExplorer``'s (and the other way round)."""
        # A kernel-side link: jslink does nothing in Colab (googlecolab/colabtools#1612), link works everywhere.
        W.link((explorer.slider, "value"), (self.step, "value"))
        self._linked_slider = explorer.slider
        return self

    def map(self) -> torch.Tensor:
        """The map shown now: [H, W] for the first prompt of the batch."""
        steps = None if self.all_steps.value else self.step.value
        return self.trace.attention(
            self.token.value, steps=steps, layers=self.layers, branch=self.branch.value
        )[0]

    @property
    def layers(self) -> str | None:
        """The chosen layers as ``Trace.attention`` takes them: None (all), a resolution or a layer name."""
        return None if self.layer.value == ALL else self.layer.value

    def reweight(self) -> Trace:
        """Fork from the chosen step with the chosen token's attention times the factor (chosen layers)."""
        return self.finish(self._reweight_work())

    def _reweight_work(self) -> Work:
        if self.explainer is None:
            raise RuntimeError("reweighting runs the model: open the widget with an explainer")
        token, factor, k = self.token.value, float(self.factor.value), self.fork_step.value
        name = _escape(self.token.label.split(" · ", 1)[-1])
        self.say(f"forking at step {k} with “{name}” × {factor:g} …")
        hooks = edits.reweight(token, factor, layers=self.layers)
        self.forked = yield from self.fork_steps(self.explainer, self.trace, k, hooks=hooks)
        self.after_title.value = f"<b>“{name}” × {factor:g} from step {k}</b>"
        self.images["after"].value = self.frames.final(self.forked, preview=self.preview.value)
        self.say(f"forked at step {k}: “{name}” (token {token}) × {factor:g} in {self.layer.label}")
        return self.forked

    # ---- drawing -------------------------------------------------------------------------------------
    def _set_token_options(self, branch: str, index: int) -> None:
        """The chooser lists the tokens of the branch shown (the negative prompt's for uncond)."""
        tokens = self.trace.token_lists(branch)[0]
        self.token.options = [(token_label(t), t.index) for t in tokens]
        self.token.value = index if index < len(tokens) else 0

    def _on_branch(self, change: dict) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            self._set_token_options(change["new"], self.token.value)
        finally:
            self._updating = False
        self._redraw()

    def _redraw(self) -> None:
        trace = self.trace
        if self._updating or not len(trace) or self.token.value is None:
            return
        step = self.step.value
        values = self.map()
        size = self.frames.size
        base = self._x0_picture(step)
        limit = float(values.max().clamp_min(1e-8))
        self.images["overlay"].value = png(render.overlay(base, values, alpha=0.6, limit=limit))
        heat = render.heat(values, limit=limit)
        self.images["map"].value = png(Image.fromarray(heat).resize((size, size), Image.Resampling.BILINEAR))
        self.images["before"].value = self.frames.final(trace, preview=self.preview.value)
        if self.forked is not None:
            self.images["after"].value = self.frames.final(self.forked, preview=self.preview.value)
        where = "all steps" if self.all_steps.value else f"step {step} (t = {trace.steps[step].timestep:g})"
        self.info.value = (
            f"token <b>{_escape(self.token.label)}</b> · {where} · {_escape(self.layer.label)} · "
            f"{self.branch.value}: peak {limit:.3f}, mean {float(values.mean()):.3f} "
            f"(a token read evenly everywhere by every pixel would have 1/{len(self.token.options)})"
        )
        self._draw_shares()

    def _x0_picture(self, step: int) -> Any:
        trace, size = self.trace, self.frames.size
        try:
            x0 = trace["step.pred_x0", step]
        except TraceKeyError:  # not kept, or not computed (ε_u with guidance off)
            return render.to_pil(torch.zeros(1, 3, size, size), size=size)
        pixel = is_pixel_space(trace, self.explainer)
        return self.frames.picture(trace, ("x0", step), x0, preview=self.preview.value, pixel_space=pixel)

    def _draw_shares(self) -> None:
        steps = None if self.all_steps.value else self.step.value
        maps = self.trace.attention_maps(steps=steps, layers=self.layers, branch=self.branch.value)
        shares = maps[0].mean(dim=(-1, -2)).cpu().numpy()  # [T]
        labels = [label for label, _ in self.token.options]
        chosen = [i == self.token.index for i in range(len(labels))]
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = labels, np.round(shares, 4)
            self.fig.data[0].marker.color = ["#d62728" if c else "#1f77b4" for c in chosen]
