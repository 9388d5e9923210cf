"""AttentionMaps: which pixels read which token, at every step, and what a reweighted token does; drawn and
chosen in the browser: an anywidget (``TraceView``) running ``diffexplain/web/attention_maps.js``.

Each trace's maps go to the browser ONCE, as one binary buffer (``_maps``: every token's map at every step,
every layer choice and branch, small and 8 bits each: ``diffexplain.web.attention_data``), with the x̂0
pictures (``_frames``). Choosing the token, step, layer, "all steps" or the branch then redraws
the overlay, the map, the info line and the per-token bars in the browser with no kernel round trip; the
choices reach Python once they settle. The reweight fork runs the model: a message to Python, with the
busy state, Stop and errors. Python keeps today's attributes as stand-ins (``token``, ``step``, ``layer``,
``all_steps``, ``branch``, ``factor``, ``fork_step``, ``fork_button``, ``images[key].value``, ``info``,
``fig``, ``children``). The ipywidgets version is ``ClassicAttentionMaps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import traitlets as T
from PIL import Image

from diffexplain import render
from diffexplain.attention import edits
from diffexplain.attention.maps import first_step as maps_first_step
from diffexplain.attention.tokens import find_token
from diffexplain.errors import TraceKeyError
from diffexplain.views import DEFAULT_SIZE, blank, is_pixel_space, png, text_reader, words
from diffexplain.web import bundle
from diffexplain.web.attention_data import pack_maps
from diffexplain.widgets.actions import Work, _escape
from diffexplain.widgets.base import Frames, help_html
from diffexplain.widgets.stand_ins import Button, Checkbox, Chooser, IntControl, Shown, Text
from diffexplain.widgets.trace_view import TraceView

if TYPE_CHECKING:
    from diffexplain.attention.tokens import Token
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace
    from diffexplain.widgets.figures import LiveFigure
    from diffexplain.widgets.step_explorer import StepExplorer

ALL = "all"  # the layer chooser's "every layer" (a Dropdown's None would mean "nothing chosen")

HELP = (
    "At every step each pixel of the {model} <b>reads</b> the prompt's tokens{reader} through attention: "
    "its attention over the tokens sums to 1. Pick a <b>token</b> and a <b>step</b>: the map shows where "
    "the picture reads that token (bright: read most), laid over <b>x̂0</b>, the model's guess at that "
    "step. Special and padding tokens are listed too: they often take most of the attention. "
    "<b>Reweight</b> scales the chosen token's attention by a factor from a step on (a fork): at 0 the "
    "token is no longer read, and the new picture appears beside the old one."
)


def reader_clause(trace: Trace, explainer: Explainer | None) -> str:
    """ " (as Qwen3 (an LLM) wrote them)": who turned the words into the token states the maps are over."""
    reader = text_reader(trace, explainer)
    return f" (as {reader} wrote them)" if reader else ""


def token_label(token: Token) -> str:
    """ "2 · red", "0 · [CLS] (start)", "15 · [PAD] (padding)": how the chooser lists a token."""
    if token.kind == "word":
        same = token.text.lstrip("#").removesuffix("</w>")
        return f"{token.index} · {token.text}" + ("" if same == token.word else f" ({token.word})")
    kind = {"pad": "padding", "start": "start", "end": "end"}.get(token.kind, token.kind)
    return f"{token.index} · {token.text} ({kind})"


class Choice(Chooser):
    """A chooser with the parts of ``ipywidgets.Dropdown`` code reads: ``label``, ``index``, ``disabled``."""

    disabled = T.Bool(False)

    @property
    def label(self) -> str:
        """The label of the value chosen ("" for none)."""
        return next((label for label, value in self.options if value == self.value), "")

    @property
    def index(self) -> int:
        """The position of the value chosen among the options."""
        return next((i for i, (_, value) in enumerate(self.options) if value == self.value), 0)


class FloatControl(T.HasTraits):
    """A float slider: ``value``."""

    value = T.Float(0.0)


class AttentionMaps(TraceView):
    """Cross-attention maps of one trace: a token, a step, a layer or resolution, cond or uncond.

    ``explainer`` (default: the trace's own) decodes x̂0 and runs the reweight fork; without one the
    maps are still shown (over the fast latent preview). ``link(explorer)`` ties the step to a
    ``StepExplorer``'s (through the kernel). ``forked`` is the latest reweighted trace. The choices are
    made in the browser (see the module's docstring).
    """

    _esm = bundle("attention_maps.js")
    css_class = "dx-attention-maps"

    # what the browser chooses (sent to Python once the choice settles) and Python may set
    token_index = T.Int(0).tag(sync=True)
    map_step = T.Int(0).tag(sync=True)
    layer_key = T.Unicode(ALL).tag(sync=True)
    all_steps_on = T.Bool(False).tag(sync=True)
    branch_name = T.Unicode("cond").tag(sync=True)
    _maps = T.Bytes(b"").tag(sync=True)  # every map of the trace, uint8, end to end: sent once per trace
    _after = T.Bytes(b"").tag(sync=True)  # the reweighted picture (PNG), b"" before a fork
    after_html = T.Unicode("").tag(sync=True)
    fork_disabled = T.Bool(False).tag(sync=True)
    fork_tooltip = T.Unicode("").tag(sync=True)

    @property
    def step(self) -> IntControl:  # type: ignore[override]  # the stand-in slider, as the ipywidgets view had
        """The step slider's stand-in (``value``, ``min``, ``max``); ``map_step`` is what the browser syncs."""
        return self._step

    def __init__(
        self,
        trace: Trace,
        explainer: Explainer | None = None,
        *,
        token: str | int | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        self._step = IntControl()
        super().__init__(can_stop=True)
        self.explainer = explainer if explainer is not None else trace.explainer
        self.frames = Frames(self.explainer, size)
        self.trace: Trace = trace
        self.forked: Trace | None = None
        self.header, self.help, self.after_title = Text(), Text(), Text()
        self.token, self.layer, self.branch = Choice(), Choice(), Choice()
        self.branch.options = [("cond: the prompt", "cond"), ("uncond: negative", "uncond")]
        self.branch.value = "cond"
        self.all_steps, self.preview = Checkbox(), Checkbox()
        self.factor = FloatControl(value=0.0)
        self.fork_step = IntControl()
        self.fork_button = Button("Fork with the token reweighted")
        self.fork_button.on_click(self.guard(lambda _: self.start(self._reweight_work)))
        self.view_buttons = [self.fork_button]
        T.link((self, "map_step"), (self._step, "value"))
        T.link((self, "token_index"), (self.token, "value"))
        T.link((self, "layer_key"), (self.layer, "value"))
        T.link((self, "all_steps_on"), (self.all_steps, "value"))
        T.link((self, "branch_name"), (self.branch, "value"))
        T.link((self, "fork_disabled"), (self.fork_button, "disabled"))
        T.link((self, "after_html"), (self.after_title, "value"))
        self.images = {key: Shown(lambda key=key: self._picture(key)) for key in ("overlay", "map", "before")}
        self.images["after"] = Shown(
            lambda: self._after or blank(self.frames.size, "fork with a\nreweighted token")
        )
        self.info = Shown(self._info)
        self._initial_token = token
        self._linked_slider: IntControl | None = None  # a StepExplorer's slider, once linked
        self._given_explainer = explainer
        self._updating = False
        self._maps_of: tuple[int, bytes, dict] | None = None  # (id(trace), buffer, index): the maps sent
        self._fig: LiveFigure | None = None
        self._children: tuple | None = None
        self.branch.observe(self.guard(self._on_branch), names="value")
        self.preview.observe(self.guard(lambda _: self._updating or self._send_maps()), names="value")
        self.guard(self.set_trace)(trace)

    # ---- the browser's messages ------------------------------------------------------------------
    def action_reweight(self, factor: float, step: int) -> None:
        """The browser's fork button: reweight the chosen token by ``factor`` from ``step`` on."""
        self.factor.value, self.fork_step.value = float(factor), int(step)
        self.fork_button.click()

    def action_preview(self, value: bool) -> None:
        """The browser's "fast latent preview" box."""
        if not self.preview.disabled:
            self.preview.value = bool(value)
        else:
            self._send_maps()

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
        self.trace, self.forked, self._after = trace, None, b""
        if self._given_explainer is None:  # follow the trace's own model
            self.explainer = trace.explainer
            self.frames.explainer = self.explainer
        n = len(trace)
        self._updating = True  # no resend while the controls are set one by one
        try:
            self.branch.value = "cond"
            self._set_token_options("cond", chosen)
            self.layer.options = layers
            self.layer.value = ALL
            self.all_steps.value = False
            last = max(n - 1, 0)
            self._step.min = 0
            self._step.max = self.fork_step.max = last
            self._step.min = min(first_step, last)  # a fork that changed the prompt: k..
            # linked to a StepExplorer (kernel-side, both ways): keep its step rather than move it
            linked = self._linked_slider.value if self._linked_slider is not None else last
            self._step.value = min(max(linked, self._step.min), last)
            self.fork_step.value = 0
            has_uncond = "uncond" in (trace.run_settings.attention or {}).get("tokens", {})
            self.branch.disabled = not has_uncond
            self.frames.trace_latent_rgb = trace.run_settings.latent_rgb
            pixel = is_pixel_space(trace, self.explainer)
            can_decode = self.frames.can_decode() and not pixel
            self.preview.disabled = not can_decode
            self.preview.layout.display = "none" if pixel else None
            if not can_decode and not pixel:
                self.preview.value = True  # no VAE here: the fast latent preview is all there is
        finally:
            self._updating = False
        self.fork_button.disabled = self.explainer is None
        self.fork_tooltip = (
            "needs the model: open the widget with an explainer" if self.explainer is None else "fork"
        )
        self.after_title.value = "<b>reweighted (fork)</b>"
        vocab = words(trace, self.explainer)
        self.help.value = help_html(
            HELP.format(model=vocab["model"], reader=reader_clause(trace, self.explainer))
        )
        settings = trace.run_settings
        self.header.value = (
            f"<b>{_escape(str(settings.prompt))}</b> · {n} steps · guidance scale "
            f"{settings.guidance_scale} · seed {settings.seed}"
        )
        self._send_maps()

    def link(self, explorer: StepExplorer) -> AttentionMaps:
        """Move this view's step with a ``StepExplorer``'s (and the other way round), through the kernel."""
        T.link((explorer.slider, "value"), (self._step, "value"))
        self._linked_slider = explorer.slider
        return self

    def map(self) -> torch.Tensor:
        """The map shown now: [H, W] for the first prompt of the batch."""
        steps = None if self.all_steps.value else self._step.value
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
        self._after = self.frames.final(self.forked, preview=self.preview.value)
        self.say(f"forked at step {k}: “{name}” (token {token}) × {factor:g} in {self.layer.label}")
        return self.forked

    # ---- what the browser gets ---------------------------------------------------------------------
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

    def _branches(self) -> list[str]:
        return ["cond"] if self.branch.disabled else ["cond", "uncond"]

    def _send_maps(self) -> None:
        """Send the trace's maps (computed once per trace), x̂0 pictures and final picture to the browser."""
        trace, n = self.trace, len(self.trace)
        if self._maps_of is None or self._maps_of[0] != id(trace):
            layers = [None if value == ALL else value for _, value in self.layer.options]
            self._maps_of = (id(trace), *pack_maps(trace, layers, self._branches()))
        _, buffer, index = self._maps_of
        pictures: dict[str, bytes | None] = {f"{k}/x0": self._x0_png(k) for k in range(n)}
        pictures["before"] = self.frames.final(trace, preview=self.preview.value)
        if self.forked is not None:
            self._after = self.frames.final(self.forked, preview=self.preview.value)
        pixel = is_pixel_space(trace, self.explainer)
        data = {
            "help": self.help.value,
            "header": self.header.value,
            "size": self.frames.size,
            "steps": n,
            "timesteps": [float(t) for t in trace.timesteps],
            "first_step": {b: maps_first_step(trace, b) for b in self._branches()},
            "tokens": {
                b: [[token_label(t), t.index] for t in trace.token_lists(b)[0]] for b in self._branches()
            },
            "layers": [[label, value] for label, value in self.layer.options],
            "maps": index,
            "preview": {"value": self.preview.value, "disabled": self.preview.disabled, "shown": not pixel},
        }
        with self.hold_sync():
            self._maps = buffer
            self.send_view(data, pictures)

    def _x0_png(self, step: int) -> bytes | None:
        picture = self._x0_picture(step)
        return None if picture is None else png(picture)

    def _x0_picture(self, step: int) -> Image.Image | None:
        trace = self.trace
        try:
            x0 = trace["step.pred_x0", step]
        except TraceKeyError:  # not kept, or not computed (ε_u with guidance off)
            return None
        pixel = is_pixel_space(trace, self.explainer)
        return self.frames.picture(trace, ("x0", step), x0, preview=self.preview.value, pixel_space=pixel)

    # ---- what Python reads (the browser draws its own) -------------------------------------------------
    def _picture(self, key: str) -> bytes:
        """The PNG of ``key`` for the choices now: the overlay, the map alone or the final picture."""
        if key == "before":
            return self.frames.final(self.trace, preview=self.preview.value)
        values, size = self.map(), self.frames.size
        limit = float(values.max().clamp_min(1e-8))
        if key == "map":
            heat = render.heat(values, limit=limit)
            return png(Image.fromarray(heat).resize((size, size), Image.Resampling.BILINEAR))
        found = self._x0_picture(self._step.value)
        base = render.to_pil(torch.zeros(1, 3, size, size), size=size) if found is None else found
        return png(render.overlay(base, values, alpha=0.6, limit=limit))

    def _info(self) -> str:
        values, trace, step = self.map(), self.trace, self._step.value
        where = "all steps" if self.all_steps.value else f"step {step} (t = {trace.steps[step].timestep:g})"
        return (
            f"token <b>{_escape(self.token.label)}</b> · {where} · {_escape(self.layer.label)} · "
            f"{self.branch.value}: peak {float(values.max()):.3f}, mean {float(values.mean()):.3f} "
            f"(a token read evenly everywhere by every pixel would have 1/{len(self.token.options)})"
        )

    @property
    def fig(self) -> LiveFigure:
        """The per-token bars as a plotly figure, for the choices now (the browser draws its own)."""
        from diffexplain.widgets.figures import LiveFigure

        if self._fig is None:
            self._fig = LiveFigure()
            self._fig.add_bar(x=[], y=[], name="share of attention")
            self._fig.update_layout(
                height=240,
                margin={"l": 50, "r": 20, "t": 30, "b": 80},
                title={
                    "text": "share of the picture's attention per token, at this step",
                    "font": {"size": 13},
                },
                yaxis_title="mean over pixels",
                xaxis={"tickangle": -60, "type": "category"},
            )
        steps = None if self.all_steps.value else self._step.value
        maps = self.trace.attention_maps(steps=steps, layers=self.layers, branch=self.branch.value)
        shares = maps[0].mean(dim=(-1, -2)).cpu().numpy()  # [T]
        labels = [label for label, _ in self.token.options]
        with self._fig.batch_update():
            self._fig.data[0].x, self._fig.data[0].y = labels, np.round(shares, 4)
            self._fig.data[0].marker.color = [
                "#d62728" if i == self.token.index else "#1f77b4" for i in range(len(labels))
            ]
        return self._fig

    @property
    def children(self) -> tuple:
        """ipywidgets copies of the texts (help, header, info, the fork's title): for code that reads texts."""
        import ipywidgets as W

        if self._children is None:
            self._children = tuple(W.HTML() for _ in range(4))
        for box, text in zip(
            self._children,
            (self.help.value, self.header.value, self.info.value, self.after_title.value),
            strict=True,
        ):
            box.value = text
        return self._children
