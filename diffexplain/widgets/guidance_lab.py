"""GuidanceLab: the same seed and prompt with classifier-free guidance off and on, and a scale slider;
below, a seed grid that counts over many seeds. An anywidget (``TraceView``) running
``diffexplain/web/guidance_lab.js``; the ipywidgets version is ``ClassicGuidanceLab``.

In the browser, with no kernel round trip: the x̂0 of every step of the unguided, guided and
range-forked runs (sent once per run, ``_frames``), scrubbed with a step slider, the arrow keys or a
click on the strips, and the plots' step cursor. Messages to Python (busy state, Stop, errors): run,
run at this scale, the method, guidance off in a step range, the w slider (re-guiding needs the cached
ε_c and ε_u: ``trace.reguide``, no model call; the strip comes back in ``_strip``), the preview box, the
stage, and the seed grid's Count seeds / Sweep w / Compare methods (``_grid``, ``_grid_frames``).

Python keeps today's attributes as stand-ins (``diffexplain.widgets.stand_ins``): ``prompt``, ``seed``,
``steps``, ``scale``, ``method``, ``range``, ``preview``, ``stage_chooser``, the buttons (``click()``),
``images[key].value``, ``strip.value``, the texts, ``fig`` and ``effective`` (plotly figures in Python)
and ``grid`` (``seed_grid_view.SeedGrid``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as T

from diffexplain.checks import check_guidance_scale
from diffexplain.guiders.menu import PLAIN, method_menu
from diffexplain.views import DEFAULT_SIZE, default_guidance, default_steps, is_pixel_space, png, words
from diffexplain.web import bundle
from diffexplain.web.view_data import get
from diffexplain.widgets.base import Frames, help_html
from diffexplain.widgets.guidance_work import (
    DELTA_TITLE,
    EFFECTIVE_TITLE,
    HELP,
    GuidanceWork,
    guidance_figures,
)
from diffexplain.widgets.lab_controls import FloatControl, Picture, RangeControl
from diffexplain.widgets.seed_grid_view import SeedGrid, SeedText
from diffexplain.widgets.stand_ins import Button, Checkbox, Chooser, IntControl, Text
from diffexplain.widgets.trace_view import TraceView, pack_pictures

if TYPE_CHECKING:
    from diffexplain.cascade import Cascade
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

FINALS = ("off", "on", "diff", "range")


class GuidanceLab(GuidanceWork, TraceView):
    """Guidance off vs on for one prompt and seed; re-guide cached steps at any w; guidance off in a step
    range; and, counted over ``seeds`` seeds, w = 0 / w = 1 / the chosen w with the checker's verdicts
    (``count_seeds``), a w sweep (``sweep``) and every guidance method (``compare_methods``).

    The constructor runs the loop twice (w = 1 and w = ``guidance_scale``); ``traces`` holds the results.
    The seed grid runs when its button is pressed (or ``count_seeds()``); ``lab.grid.columns`` holds it.

    ``explainer`` may be a ``Cascade``: a stage chooser picks the stage whose w changes (``stage``,
    default the first); each run is the whole cascade, the other stages at their own default w, and
    the lab shows the chosen stage's trace. The seed grid is for single models and is hidden then.
    Scrubbing through the steps runs in the browser (see the module's docstring).
    """

    _esm = bundle("guidance_lab.js")
    css_class = "dx-guidance-lab"
    _strip = T.Bytes(b"").tag(sync=True)  # the re-guided strip's PNG (a message to Python: trace.reguide)
    _reguide = T.Dict().tag(sync=True)  # its label, w and ‖w·Δ‖ per step
    _grid = T.Dict().tag(sync=True)  # the seed grid (SeedGrid.view)
    _grid_frames = T.Bytes(b"").tag(sync=True)  # its pictures, PNGs end to end
    _grid_index = T.Dict().tag(sync=True)  # {"c/j": [offset, length]} into _grid_frames

    def __init__(
        self,
        explainer: Explainer | Cascade,
        prompt: str,
        seed: int = 0,
        *,
        stage: str | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        negative_prompt: str = "",
        size: int = DEFAULT_SIZE,
        seeds: int = 12,
    ) -> None:
        super().__init__(can_stop=True)
        from diffexplain.cascade import Cascade

        self._ready = False  # True once every control exists: changes are then sent to the browser
        self.cascade = explainer if isinstance(explainer, Cascade) else None
        self.stage: str | None = None  # the stage whose w changes, for a cascade
        if self.cascade is not None:
            self.stage = self.cascade.names[0] if stage is None else stage
            if self.stage not in self.cascade.stages:
                raise ValueError(f"stage={stage!r}: expected one of {', '.join(self.cascade.names)}")
            explainer = self.cascade.stages[self.stage]
        names = list(self.cascade.names) if self.cascade else []
        self.stage_chooser = Chooser(options=[(f"stage {n}", n) for n in names], value=self.stage)
        self.stage_chooser.layout.display = None if len(names) > 1 else "none"
        self.explainer = explainer
        if explainer.family.guidance_distilled():
            raise ValueError(
                "GuidanceLab compares guidance off and on over two branches; this model is guidance-distilled "
                "(w is an input of its one branch, as LCM's): compare runs at several guidance_scale instead"
            )
        self.frames = Frames(explainer, size)
        w0 = default_guidance(explainer) if guidance_scale is None else check_guidance_scale(guidance_scale)
        w0 = w0 if w0 > 1 else explainer.family.compare_guidance_scale  # the guided run needs w > 1
        self.negative_prompt = negative_prompt
        self.prompt = Text(prompt)
        self.seed = SeedText(seed)
        self.steps = IntControl(max=1000)
        self.steps.min, self.steps.value = 1, num_inference_steps or default_steps(explainer)
        self.run_button = Button("Run guidance off and on")
        self.preview = Checkbox(disabled=explainer.vae is None)
        self.scale = FloatControl(value=w0)
        self.methods = method_menu(explainer.scheduler, explainer.model)  # label -> guider (None: ε_u + w·Δ)
        self.method = Chooser(options=list(self.methods), value=PLAIN)
        self.run_scale_button = Button("Run at this scale")
        self.range = RangeControl()
        self.range_button = Button("Guidance off for these steps")
        self.images = {key: Picture() for key in FINALS}
        self.caption = Text()  # what the pictures are, where they are no pictures (the Kandinsky prior)
        self.on_title = Text("<b>guidance on</b>")
        self.range_title = Text("<b>guidance off in a step range</b>")
        self.strip, self.strip_label = Picture(), Text()
        self.help = Text(help_html(HELP.format(**words(None, explainer))))
        self.fig, self.effective = guidance_figures()
        self.grid = SeedGrid(self, seeds)
        if self.cascade is not None:
            self.grid.layout.display = "none"  # it counts runs of one model
        self.view_buttons = [self.run_button, self.run_scale_button, self.range_button, *self.grid.buttons()]

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.run_scale_button.on_click(self.guard(lambda _: self.start(self._at_scale_work)))
        self.range_button.on_click(self.guard(lambda _: self.start(self._range_work)))
        self.scale.observe(self.guard(self._on_scale), names="value")
        self.method.observe(self.guard(self._on_method), names="value")
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")
        self.stage_chooser.observe(self.guard(lambda c: self._on_stage(c["new"])), names="value")
        self.off: Trace | None = None
        self.on: Trace | None = None
        self.ranged: Trace | None = None
        self._w_on = w0
        self._ready = True
        self.grid_changed()
        self.guard(self.run)()
        if self.on is None:
            self._send_lab()  # nothing ran (an error): the controls alone

    # ---- the browser's messages ------------------------------------------------------------------
    def _take(self, prompt: str | None = None, seed: str | None = None, steps: int | None = None) -> None:
        """The boxes as the browser has them (sent with each action that runs the model)."""
        if prompt is not None:
            self.prompt.value = str(prompt)
        if seed is not None:
            self.seed.value = str(seed)
        if steps is not None:
            self.steps.value = int(steps)

    def action_run(self, **boxes: Any) -> None:
        """Run guidance off and on."""
        self._take(**boxes)
        self.run_button.click()

    def action_run_scale(self, w: float, **boxes: Any) -> None:
        """Run the whole loop at the slider's w."""
        self._take(**boxes)
        self.scale.value = float(w)
        self.run_scale_button.click()

    def action_scale(self, w: float) -> None:
        """The w slider, let go: re-guide the cached steps (no model call)."""
        self.scale.value = float(w)

    def action_method(self, label: str) -> None:
        """Another guidance method from the menu: the guided run again with it."""
        self.method.value = label

    def action_range_off(self, a: int, b: int, **boxes: Any) -> None:
        """Guidance off in steps a..b: a fork of the guided run."""
        self.range.value = (int(a), int(b))
        self.range_button.click()

    def action_grid(self, what: str, seeds: int, **boxes: Any) -> None:
        """The seed grid's buttons: ``what`` is "count", "sweep" or "compare"."""
        self._take(**boxes)
        self.grid.n_seeds.value = int(seeds)
        buttons = {"count": self.grid.count_button, "sweep": self.grid.sweep_button}
        buttons["compare"] = self.grid.compare_button
        if what not in buttons:
            raise ValueError(f"what={what!r}: expected count, sweep or compare")
        buttons[what].click()

    def action_preview(self, value: bool) -> None:
        """The "fast latent preview" box."""
        if not self.preview.disabled:
            self.preview.value = bool(value)

    def action_stage(self, name: str) -> None:
        """A cascade's stage button."""
        self.stage_chooser.value = name

    # ---- what the browser draws ------------------------------------------------------------------
    def _redraw(self) -> None:
        super()._redraw()
        self._send_lab()

    def _on_scale(self, change: dict | None = None) -> None:
        super()._on_scale(change)
        if self._ready and self.on is not None:
            push = self.fig.data[1].y
            self._strip = self.strip.value
            self._reguide = {
                "label": self.strip_label.value,
                "w": float(self.scale.value),
                "push": [None if v is None else float(v) for v in push or []],
            }

    def grid_changed(self) -> None:
        """Send the seed grid to the browser (its cells, counts, tables and sweep)."""
        if not getattr(self, "_ready", False) or not hasattr(self, "grid"):
            return
        frames, index = pack_pictures(self.grid.pictures())
        with self.hold_sync():
            self._grid, self._grid_frames, self._grid_index = self.grid.view(), frames, index

    def _step_pictures(self) -> dict[str, bytes | None]:
        """x̂0 of every step of the off, on and range runs (``"k/off"``...), decoded as the finals are."""
        pictures: dict[str, bytes | None] = {}
        for name, trace in (("off", self.off), ("on", self.on), ("range", self.ranged)):
            if trace is None:
                continue
            pixel = is_pixel_space(trace, self.explainer)
            for k in range(len(trace)):
                x0 = get(trace, "step.pred_x0", k)
                pictures[f"{k}/{name}"] = (
                    None
                    if x0 is None
                    else png(
                        self.frames.picture(
                            trace, ("x̂0", k), x0, preview=self.preview.value, pixel_space=pixel
                        )
                    )
                )
        return pictures

    def _series(self) -> dict[str, Any]:
        def floats(values: Any) -> list[float | None]:
            return [None if v is None else float(v) for v in values or []]

        return {
            "delta": [{"name": s.name, "y": floats(s.y)} for s in self.fig.data],
            "effective": floats(self.effective.data[0].y),
            "delta_title": DELTA_TITLE,
            "effective_title": EFFECTIVE_TITLE,
        }

    def _send_lab(self) -> None:
        """Send the view: the finals, every step's x̂0 of each run, the plots, the controls' state."""
        pictures: dict[str, bytes | None] = {key: self.images[key].value or None for key in FINALS}
        if self.off is not None and self.on is not None:
            pictures |= self._step_pictures()
        n = len(self.on) if self.on is not None else 0
        pixel = self.on is not None and is_pixel_space(self.on, self.explainer)
        data = {
            "help": self.help.value,
            "prompt": self.prompt.value,
            "seed": self.seed.value,
            "steps": self.steps.value,
            "n": n,
            "timesteps": [float(t) for t in self.on.timesteps] if self.on is not None else [],
            "ranged": self.ranged is not None,
            "titles": {
                "off": "<b>guidance off (w = 1)</b>",
                "on": self.on_title.value,
                "diff": "<b>difference |on − off|</b>",
                "range": self.range_title.value,
            },
            "caption": self.caption.value,
            "w": float(self.scale.value),
            "scale": {"min": self.scale.min, "max": self.scale.max, "step": self.scale.step},
            "methods": list(self.methods),
            "method": self.method.value,
            "range": {"min": self.range.min, "max": self.range.max, "value": list(self.range.value)},
            "preview": {"value": self.preview.value, "disabled": self.preview.disabled, "shown": not pixel},
            "stages": [value for _, value in self.stage_chooser.options],
            "stage": self.stage,
            "model": words(self.on, self.explainer)["model"] if self.on is not None else "model",
            "size": self.frames.size,
            **self._series(),
        }
        self.send_view(data, pictures)

    @property
    def children(self) -> tuple:
        """ipywidgets copies of the lab's texts (help, titles, the strip's label, caption, grid note): for
        code that reads the texts the way it did."""
        import ipywidgets as W

        texts = (self.help, self.on_title, self.range_title, self.strip_label, self.caption, self.grid.note)
        return tuple(W.HTML(t.value) for t in texts)
