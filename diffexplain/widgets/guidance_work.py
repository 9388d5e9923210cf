"""What GuidanceLab does, whatever draws it: the runs (guidance off and on, at a scale, off in a step
range), the re-guided strip (``trace.reguide``: no model call), the Δ and effective-w plots and the seed
grid's counts. ``GuidanceLab`` (an anywidget, ``guidance_lab.py``) and ``ClassicGuidanceLab`` (ipywidgets,
``classic_guidance_lab.py``) give it their controls: ``prompt``, ``seed``, ``steps``, ``scale``, ``method``,
``range``, ``preview``, ``images[key]``, ``caption``, ``on_title``, ``range_title``, ``strip``,
``strip_label``, ``fig``, ``effective``, ``grid`` (each with ``value`` / ``layout.display``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from diffexplain import interventions, render
from diffexplain.errors import TraceKeyError
from diffexplain.guiders.menu import PLAIN
from diffexplain.views import blank, effective_scales, is_pixel_space, png, rms, words
from diffexplain.widgets.actions import Work
from diffexplain.widgets.figures import LiveFigure
from diffexplain.widgets.stages import embedding_caption

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.guiders.base import Guider
    from diffexplain.trace import Trace

HELP = (
    "Classifier-free guidance: at every step the {model} predicts the {output} with the prompt (<b>ε_c</b>) and "
    "without it (<b>ε_u</b>); the loop uses <b>ε̂ = ε_u + w·(ε_c − ε_u)</b>. With <b>w = 1</b> guidance is off. "
    "Moving the <b>w</b> slider re-guides the steps already computed (no new {model} call): the strip shows "
    "the guess x̂0 each step would make at that w. <b>Run at this scale</b> runs the whole loop again. "
    "<b>Guidance off for steps</b> turns guidance off in a range of steps only (a fork from the range start). "
    "The <b>method</b> menu swaps the guidance step for another method (rescale, a step window, APG, "
    "CFG-Zero*, CFG++): the guided run, the strip and the seed grid use it."
)
STRIP_STEPS = 8  # at most this many steps in the re-guided strip


DELTA_SERIES = ("‖Δ‖ of the run (RMS)", "‖w·Δ‖ at the slider's w", "‖Δ‖, guidance off in the range")
DELTA_TITLE = "what the prompt adds, per step: Δ = ε_c − ε_u"
EFFECTIVE_TITLE = "effective w per step: ⟨ε̂ − ε_u, Δ⟩ / ‖Δ‖² of the guided run"


def guidance_figures() -> tuple[LiveFigure, LiveFigure]:
    """The lab's two plotly figures: Δ per step (3 series) and the guided run's effective w per step."""
    effective = LiveFigure()
    effective.add_scatter(x=[], y=[], name="effective w", mode="lines+markers")
    effective.update_layout(
        height=220,
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        title={"text": EFFECTIVE_TITLE, "font": {"size": 13}},
        xaxis_title="loop step",
        yaxis_title="w",
    )
    fig = LiveFigure()
    for name in DELTA_SERIES:
        fig.add_scatter(x=[], y=[], name=name, mode="lines+markers")
    fig.update_layout(
        height=280,
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        title={"text": DELTA_TITLE, "font": {"size": 13}},
        xaxis_title="loop step",
        yaxis_title="RMS",
        legend={"orientation": "h", "y": -0.3},
    )
    return fig, effective


class GuidanceWork:
    """The lab's actions and drawing (see the module's docstring); the widget class gives the controls."""

    @property
    def guider(self) -> Guider | None:
        """The chosen guidance method (None: ε_u + w·Δ), for the guided run, the strip and the seed grid."""
        return self.methods[self.method.value]

    @property
    def traces(self) -> dict[str, Trace | None]:
        """The current traces: "off" (w = 1), "on" (w > 1) and "range" (guidance off in a range, or None)."""
        return {"off": self.off, "on": self.on, "range": self.ranged}

    # ---- actions (each a generator that yields between loop steps: DxWidget.start) ---------------
    def _run(self, w: float) -> Generator[int, None, Trace]:
        if self.cascade is not None:
            return self._run_cascade(w)
        return self.run_steps(
            self.explainer,
            self.prompt.value,
            seed=self.seed.seed,
            guidance_scale=w,
            num_inference_steps=self.steps.value,
            negative_prompt=self.negative_prompt,
            guider=self.guider if w > 1 else None,
        )

    def _run_cascade(self, w: float) -> Generator[int, None, Trace]:
        """The whole cascade with w in the chosen stage; the chosen stage's trace."""
        cascade = self.cascade
        assert cascade is not None and self.stage is not None
        steps = {"num_inference_steps": self.steps.value}
        settings = {n: {**steps, **({"guidance_scale": w} if n == self.stage else {})} for n in cascade.names}
        ticks = [(f"{n}.step.next", self.progress._tick) for n in cascade.names]  # noqa: SLF001 - its own bar
        run = yield from cascade.run_steps(
            self.prompt.value,
            negative_prompt=self.negative_prompt,
            seed=self.seed.seed,
            hooks=ticks,
            progress=False,
            **settings,
        )
        return run.stages[self.stage]

    def _on_method(self, change: dict | None = None) -> None:
        """Another guidance method: the guided run again with it (the strip re-guides with it at once)."""
        if self.cascade is not None and self.guider is not None:
            self.method.value = PLAIN
            raise ValueError("guidance methods are for single models; this lab runs a cascade")
        if self.on is not None:
            self.start(self._at_scale_work)

    def _on_stage(self, name: str | None) -> None:
        """Another stage chosen: its explainer, and the off/on pair run again for it."""
        if self.cascade is None or name is None or name == self.stage:
            return
        self.stage = name
        self.explainer = self.frames.explainer = self.cascade.stages[name]
        self.off = self.on = self.ranged = None
        self.guard(lambda: self.start(self._run_work))()

    def run(self) -> None:
        """Run the loop with guidance off (w = 1) and on (w = the slider's value, at least 1.5)."""
        self.finish(self._run_work())

    def _run_work(self) -> Work:
        self.say("running with guidance off, then on …")
        w = self.scale.value if self.scale.value > 1 else self._w_on
        off = yield from self._run(1.0)
        on = yield from self._run(w)
        if self.on is not None and self.on.run_settings.prompt != on.run_settings.prompt:
            self.grid.forget()  # the cached grid columns belonged to the old prompt
        self.off, self.on, self.ranged = off, on, None  # together: a stopped run leaves the last pair
        self.grid.clear()  # the grid and sweep belonged to the previous run
        n = len(self.on)
        self.range.max = n - 1
        self.range.value = (0, max(0, n // 2 - 1))
        self.say(f"done: {n} steps each, seed {self.seed.seed}")
        self._redraw()

    def run_at_scale(self) -> None:
        """Run the full loop again at the slider's w (replaces the "guidance on" result)."""
        self.finish(self._at_scale_work())

    def _at_scale_work(self) -> Work:
        w = self.scale.value
        if w <= 1:
            self.say("w = 1 is guidance off: that is the left picture")
            return
        self.say(f"running the whole loop at w = {w:g} …")
        self.on = yield from self._run(w)
        self.ranged = None
        self.say(f"ran at w = {w:g}")
        self._redraw()

    def guidance_off_range(self) -> None:
        """Fork the guided run at the range start with guidance off (ε̂ = ε_c) in the chosen steps."""
        self.finish(self._range_work())

    def _range_work(self) -> Work:
        if self.on is None:
            raise RuntimeError("run first: there is no guided trace to fork")
        a, b = self.range.value
        hooks = interventions.cfg_off(steps=range(a, b + 1))
        self.say(f"forking at step {a}: guidance off for steps {a}–{b} …")
        self.ranged = yield from self.fork_steps(self.explainer, self.on, a, hooks=hooks)
        copied = (
            "" if a == 0 else f"; steps 0–{a - 1} copied from the guided run" if a > 1 else "; step 0 copied"
        )
        self.say(f"guidance off for steps {a}–{b} (a fork from step {a}{copied})")
        self._redraw()

    def count_seeds(self) -> None:
        """Draw the seed grid: the prompt at w = 0, 1 and the slider's w over the seeds, each checked."""
        self._single_model("the seed grid")
        self.grid.count()

    def _single_model(self, what: str) -> None:
        if self.cascade is not None:
            raise ValueError(
                f"{what} counts runs of one model; this lab runs a cascade (stages {self.cascade.names})"
            )

    def compare_methods(self) -> None:
        """Count the same seeds at the chosen w under every method of the menu (``grid.methods_table``)."""
        self._single_model("comparing methods")
        self.grid.compare_methods()

    def sweep(self) -> None:
        """Count the same seeds at w = 0, 1, 2, 3, 5, 7.5, 10 and plot share right and diversity vs w."""
        self._single_model("the w sweep")
        self.grid.run_sweep()

    # ---- drawing ---------------------------------------------------------------------------------
    def _delta(self, trace: Trace) -> list[float | None]:
        out: list[float | None] = []
        for i in range(len(trace)):
            try:
                out.append(rms(trace["step.model.cond", i] - trace["step.model.uncond", i]))
            except TraceKeyError:  # not kept, or not computed (ε_u with guidance off)
                out.append(None)
        return out

    def _redraw(self) -> None:
        if self.off is None or self.on is None:
            return
        preview = self.preview.value
        self.caption.value = embedding_caption(self.on)
        self.caption.layout.display = None if self.caption.value else "none"
        self.images["off"].value = self.frames.final(self.off, preview=preview)
        self.images["on"].value = self.frames.final(self.on, preview=preview)
        method = "" if self.on.run_settings.guider is None else f", {self.method.value}"
        self.on_title.value = f"<b>guidance on (w = {self.on.run_settings.guidance_scale:g}{method})</b>"
        self.images["diff"].value = self.frames.difference(self.on, self.off, preview=preview)
        if self.ranged is not None:
            a, b = self.range.value
            self.images["range"].value = self.frames.final(self.ranged, preview=preview)
            self.range_title.value = f"<b>guidance off in steps {a}–{b}</b>"
        else:  # a new run: the last range's picture belonged to the previous one
            self.images["range"].value = blank(self.frames.size, "press “Guidance off\nfor these steps”")
            self.range_title.value = "<b>guidance off in a step range</b>"
        self._base_delta = self._delta(self.on)
        steps = list(range(len(self.on)))
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = steps, self._base_delta
            if self.ranged is not None:
                self.fig.data[2].x, self.fig.data[2].y = steps, self._delta(self.ranged)
            else:
                self.fig.data[2].x, self.fig.data[2].y = [], []
        effective = effective_scales(self.on)
        known = [w for w in effective if w is not None] or [1.0]
        with self.effective.batch_update():  # from 0, so that float noise around a constant w stays flat
            self.effective.data[0].x, self.effective.data[0].y = steps, effective
            self.effective.layout.yaxis.range = [min(0.0, min(known)), max(1.0, max(known)) * 1.15]
        self._on_scale()

    def _strip_steps(self, n: int) -> list[int]:
        if n <= STRIP_STEPS:
            return list(range(n))
        return sorted({round(i * (n - 1) / (STRIP_STEPS - 1)) for i in range(STRIP_STEPS)})

    def _on_scale(self, change: dict | None = None) -> None:
        """Re-guide every cached step at the slider's w (``trace.reguide``: no U-Net call)."""
        trace = self.on
        if trace is None:
            return
        w = float(self.scale.value)
        pixel = is_pixel_space(trace, self.explainer)
        tiles: list[Image.Image] = []
        labels = []
        for k in self._strip_steps(len(trace)):
            x0 = trace.reguide(k, w, guider=self.guider).pred_x0
            tiles.append(
                self.frames.picture(
                    trace,
                    ("reguide", k, w, self.method.value),
                    x0,
                    preview=self.preview.value,
                    pixel_space=pixel,
                    size=96,
                )
            )
            labels.append(f"step {k}")
        self.strip.value = png(render.strip(tiles, labels))
        self.strip_label.value = (
            f"<b>x̂0 at each step, re-guided at w = {w:g}</b> from the cached ε_c and ε_u of the "
            f"w = {trace.run_settings.guidance_scale:g} run (no {words(trace, self.explainer)['model']} call)"
        )
        with self.fig.batch_update():
            push = [None if d is None else w * d for d in self._base_delta]
            self.fig.data[1].x, self.fig.data[1].y = list(range(len(trace))), push
