"""StepExplorer: walk through a trace step by step (x_t, x̂0, ε_c, ε_u, Δ, ε̂, the channels, a timeline),
drawn and scrubbed in the browser: an anywidget (``TraceView``) running ``diffexplain/web/trace_view.js``.

Each trace's pictures go to the browser once; the step slider, play, the arrow keys and the timeline
then move through the steps with no kernel round trip. Python computes the pictures (VAE-decoded, or
the fast latent preview: a tick box, a message to Python) and keeps today's attributes: ``slider``
(``.value``, ``.max``), ``images[key].value`` (the PNG at the step shown), ``info``, ``header``, ``help``,
``panel_titles``, ``unet_row``, ``preview``, ``stage_chooser``, ``fig`` (the plotly timeline, built when
read) and ``children`` (ipywidgets copies of the texts, built when read). The ipywidgets version is
``ClassicStepExplorer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as T

from diffexplain.explanations import GUIDANCE_OFF, STEP_HELP, STEP_PANELS
from diffexplain.probe import trace_fingerprint
from diffexplain.views import DEFAULT_SIZE, blank, is_pixel_space, vp_scale, words
from diffexplain.web.view_data import get, step_info, view_data
from diffexplain.widgets.base import Frames, help_html
from diffexplain.widgets.stages import embedding_caption
from diffexplain.widgets.stand_ins import Checkbox, Chooser, IntControl, Shown, Text
from diffexplain.widgets.step_figure import fill_timeline, make_timeline, mark_step
from diffexplain.widgets.trace_view import TraceView

if TYPE_CHECKING:
    from diffexplain.cascade_trace import CascadeTrace
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace
    from diffexplain.widgets.figures import LiveFigure

HELP = STEP_HELP  # the texts live in diffexplain.explanations, shared with the HTML page
PANEL_CSS = {  # the pictures' CSS classes in the browser (trace_view.js gives them; the tests select by them)
    "xt": "dx-xt-image",
    "x0": "dx-x0-image",
    "channels": "dx-channels-image",
    "eps_c": "dx-eps-cond-image",
    "eps_u": "dx-eps-uncond-image",
    "delta": "dx-delta-image",
    "guided": "dx-eps-guided-image",
}
EMPTY = {"xt": "x_t\nnot kept in this trace", "x0": "x̂0\nnot kept in this trace", "channels": "not kept"}
EMPTY |= {"eps_c": "ε_c not kept", "eps_u": "ε_u not kept", "delta": "Δ not kept", "guided": "ε̂ not kept"}


def _is_cascade(trace: object) -> bool:
    from diffexplain.cascade_trace import CascadeTrace

    return isinstance(trace, CascadeTrace)


def _stage_name(trace: CascadeTrace, stage: str | None, *, keep: bool = False) -> str:
    """``stage`` if the trace has it (or the last stage where ``stage`` is None, or ``keep`` and gone)."""
    if stage is None or (keep and stage not in trace.stages):
        return trace.names[-1]
    trace.stage(stage)  # KeyError naming the stages
    return stage


class StepExplorer(TraceView):
    """Explore one trace step by step: pictures of x_t, x̂0, ε_c, ε_u, Δ, ε̂, the latent channels, and a timeline.

    ``explainer`` (default: the trace's own) lets x_t and x̂0 be decoded with the VAE; without one,
    pictures use the fast latent preview. ``set_trace`` shows another trace in the same widget.
    A ``CascadeTrace`` (``diffexplain.Cascade``) gets a stage chooser: ``stage`` (default the last)
    picks which stage's trace is shown. Scrubbing runs in the browser (see the module's docstring).
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
        self._setup()
        if _is_cascade(trace):
            self.cascade_trace, self.stage = trace, _stage_name(trace, stage)
            trace = trace.stage(self.stage)
        self.explainer = explainer if explainer is not None else trace.explainer
        self.frames = Frames(self.explainer, size)
        self.trace: Trace = trace
        self.guard(self.set_trace)(self.cascade_trace if self.cascade_trace is not None else trace)

    def _setup(self) -> None:
        """The stand-ins of the controls and texts (a subclass with its own constructor calls it too)."""
        self._data: dict[str, Any] = {}  # the view data of the trace shown (diffexplain.web.view_data)
        self.cascade_trace: CascadeTrace | None = None
        self.stage: str | None = None  # the stage shown, for a cascade trace
        self.stage_chooser = Chooser()
        self.stage_chooser.layout.display = "none"
        self.cfg = False
        self.slider = IntControl()  # the step slider: linked to ``step``, which the browser sets
        self.play = IntControl()
        T.link((self, "step"), (self.slider, "value"))
        T.link((self, "step"), (self.play, "value"))
        self.preview = Checkbox()  # "fast latent preview (no VAE)": enabled per trace, in _switch
        self.header, self.help = Text(), Text()
        self.panel_titles = {key: Text() for key in STEP_PANELS}
        self.channel_box = Text()  # its layout.display: hidden for pixel-space traces
        self.images = {key: Shown(lambda key=key: self._picture(key)) for key in STEP_PANELS}
        self.info = Shown(lambda: step_info(self._data, self._k()))
        self.unet_row = Shown(lambda: unet_row_html(self.trace, self.explainer, self._k()))
        self._pictures: dict[str, bytes | None] = {}
        self._fig: LiveFigure | None = None
        self._children: tuple | None = None
        self._switching = False  # True while set_trace changes controls: their observers wait
        self.stage_chooser.observe(self.guard(lambda c: self._on_stage(c["new"])), names="value")
        self.preview.observe(self.guard(self._on_preview), names="value")
        self.observe(self.guard(self._on_step), names="step")

    # ---- the browser's messages ------------------------------------------------------------------
    def action_stage(self, name: str) -> None:
        """The browser's stage button: show stage ``name`` of the cascade."""
        self.stage_chooser.value = name

    def action_preview(self, value: bool) -> None:
        """The browser's "fast latent preview" box."""
        if not self.preview.disabled:
            self.preview.value = bool(value)
        else:
            self._send_trace()  # the box was not to be changed: redraw it as it is

    # ---- switching traces ------------------------------------------------------------------------
    def set_trace(self, trace: Trace | CascadeTrace, explainer: Explainer | None = None) -> None:
        """Show ``trace`` (keeping the current step where it exists); a cascade trace: its chosen stage."""
        if _is_cascade(trace):
            self.cascade_trace, self.stage = trace, _stage_name(trace, self.stage, keep=True)
            self.stage_chooser.options = [(f"stage {n}", n) for n in trace.names]
            self.stage_chooser.value = self.stage
            self.stage_chooser.layout.display = None if len(trace.names) > 1 else "none"
            self.show_stage(self.stage, explainer)
            return
        if self.cascade_trace is not None and not any(trace is t for t in self.cascade_trace.stages.values()):
            self.cascade_trace = self.stage = None  # a single trace now: no stages to choose
            self.stage_chooser.layout.display = "none"
        if len(trace) == 0:
            raise ValueError("this trace has no finished steps to show")
        self._switching = True
        try:
            self._switch(trace, explainer)
        finally:
            self._switching = False
        self._send_trace()
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

    def _switch(self, trace: Trace, explainer: Explainer | None) -> None:
        self.trace = trace
        if explainer is not None or self.explainer is None:
            self.explainer = explainer if explainer is not None else trace.explainer
            self.frames.explainer = self.explainer
        self.frames.trace_latent_rgb = trace.run_settings.latent_rgb
        pixel = is_pixel_space(trace, self.explainer)
        can_decode = self.frames.can_decode() and not pixel
        self.preview.disabled = not can_decode
        self.preview.layout.display = None if can_decode or not pixel else "none"
        if not can_decode and not pixel:
            self.preview.value = True
        self.channel_box.layout.display = "none" if pixel else None
        vocab = words(trace, self.explainer)
        self.help.value = help_html(HELP.format(**vocab))
        for key, title in STEP_PANELS.items():
            self.panel_titles[key].value = f"<b>{title.format(**vocab)}</b>"
        s = trace.settings
        fork = "" if trace.forked_from is None else f" · forked at step {trace.forked_from}"
        stage = "" if self.cascade_trace is None else f"<b>stage {self.stage}</b> · "
        caption = embedding_caption(trace)  # the Kandinsky prior: x_t is a vector
        self.header.value = (
            f"{stage}<b>prompt</b>: “{s.get('prompt')}” · <b>w</b> = {s.get('guidance_scale')} · "
            f"seed {s.get('seed')} · {(s.get('scheduler') or {}).get('class', '?')} · {len(trace)} steps{fork}"
        ) + (f"<br>{caption}" if caption else "")
        data = view_data(
            trace, self.explainer, pixel_space=pixel, size=self.frames.size, stage=self.stage, caption=caption
        )
        self.cfg = data["cfg"]
        self._data = data
        if self._fig is not None:
            fill_timeline(self._fig, data["series"], self.cfg)
        step = min(self.slider.value, len(trace) - 1)
        self.slider.max = self.play.max = len(trace) - 1
        self.step = step

    def _send_trace(self) -> None:
        """Draw every step's pictures (cached per trace) and send them to the browser with the view data."""
        data = {**self._data, **self._extra_view()}
        data["stages"] = list(self.cascade_trace.names) if self.cascade_trace is not None else []
        shown = self.preview.layout.display is None and not data["pixel_space"]
        data["preview"] = {"value": self.preview.value, "disabled": self.preview.disabled, "shown": shown}
        self._pictures = self._draw_all()
        self.send_view(data, self._pictures)

    def _extra_view(self) -> dict[str, Any]:
        """More view data a subclass sends (TracePlayer: its loader)."""
        return {}

    # ---- pictures ---------------------------------------------------------------------------------
    def _draw_all(self) -> dict[str, bytes | None]:
        pictures: dict[str, bytes | None] = {}
        trace, pixel = self.trace, is_pixel_space(self.trace, self.explainer)
        for k, record in enumerate(trace.steps):
            xt = get(trace, "step.latents", k)
            if xt is None and record.restart is not None:
                xt = record.restart.latents
            xt = None if xt is None else xt * vp_scale(trace, k)
            x0 = get(trace, "step.pred_x0", k)
            pictures[f"{k}/xt"] = None if xt is None else self._latents("x_t", k, xt, pixel)
            pictures[f"{k}/x0"] = None if x0 is None else self._latents("x̂0", k, x0, pixel)
            pictures[f"{k}/channels"] = None if xt is None or pixel else self.frames.channels(xt)
            ec, eu, guided = (
                get(trace, n, k) for n in ("step.model.cond", "step.model.uncond", "step.guidance")
            )
            pictures[f"{k}/eps_c"] = None if ec is None else self.frames.noise(ec)
            pictures[f"{k}/guided"] = None if guided is None else self.frames.noise(guided)
            both = self.cfg and ec is not None and eu is not None
            pictures[f"{k}/eps_u"] = self.frames.noise(eu) if both else None
            pictures[f"{k}/delta"] = self.frames.channels(ec - eu) if both else None
        return pictures

    def _latents(self, name: str, k: int, latents: Any, pixel: bool) -> bytes:
        return self.frames.latents(
            self.trace, (name, k), latents, preview=self.preview.value, pixel_space=pixel
        )

    def _k(self) -> int:
        return max(0, min(self.step, len(self.trace) - 1))

    def _picture(self, key: str) -> bytes:
        """The PNG of panel ``key`` at the step shown (a grey placeholder saying why where there is none)."""
        found = self._pictures.get(f"{self._k()}/{key}")
        if found is not None:
            return found
        if key in ("eps_u", "delta") and not self.cfg:
            return blank(
                self.frames.size, GUIDANCE_OFF.format(model=words(self.trace, self.explainer)["model"])
            )
        return blank(self.frames.size, EMPTY[key])

    # ---- the step ----------------------------------------------------------------------------------
    def _on_preview(self, change: dict) -> None:
        if not self._switching:
            self._send_trace()

    def _on_step(self, change: dict | None = None) -> None:
        if self._fig is not None:
            mark_step(self._fig, self._k(), self._data["series"]["c"][self._k()])

    @property
    def fig(self) -> LiveFigure:
        """The timeline as a plotly figure (built on first read; the browser draws its own)."""
        if self._fig is None:
            self._fig = make_timeline()
            fill_timeline(self._fig, self._data["series"], self.cfg)
            self._on_step()
        return self._fig

    @property
    def children(self) -> tuple:
        """ipywidgets copies of what the view shows, in the classic layout (help, header, controls, the two
        picture rows, info, the same-model row): for code that reads texts the way it did."""
        import ipywidgets as W

        if self._children is None:
            rows = [["xt", "x0", "channels"], ["eps_c", "eps_u", "delta", "guided"]]
            titles = {key: W.HTML() for key in STEP_PANELS}
            boxes = [W.HBox([W.VBox([titles[key]]) for key in row]) for row in rows]
            self._children = (W.HTML(), W.HTML(), W.HBox(), *boxes, W.HTML(), W.HTML(), titles)
        help_, header, controls, row1, row2, info, unet, titles = self._children
        help_.value, header.value = self.help.value, self.header.value
        info.value, unet.value = self.info.value, self.unet_row.value
        for key, text in self.panel_titles.items():
            titles[key].value = text.value
        return help_, header, controls, row1, row2, info, unet


def unet_row_html(trace: Trace, explainer: Explainer | None, k: int) -> str:
    """The same-model row as HTML (the chip of step ``k`` marked): what the browser draws, for Python."""
    n = len(trace)
    fp = trace_fingerprint(trace, explainer)
    model = words(trace, explainer)["model"]
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
    return f"<div>{text}</div><div style='line-height:1.1'>{''.join(chips)}</div>"
