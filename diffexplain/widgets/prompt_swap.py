"""PromptSwap: change the prompt from step k on (a fork) and see when the layout is decided.

An anywidget (``LabView``): A's x̂0 at every step and the sweep's final pictures go to the browser once,
so the swap step k slider shows what prompt B inherits at k (and the sweep's picture for that k) with no
kernel; Run, "Switch to B from step k" and "Sweep k" run the model in Python with the busy state, Stop
and errors (``diffexplain/web/prompt_swap.js``). The ipywidgets version is ``ClassicPromptSwap``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from diffexplain import render
from diffexplain.checks import check_guidance_scale
from diffexplain.views import DEFAULT_SIZE, blank, default_guidance, default_steps, is_pixel_space, png
from diffexplain.web.view_data import get
from diffexplain.widgets.base import Frames
from diffexplain.widgets.lab_view import LabView, SeedText, lab_bundle
from diffexplain.widgets.prompt_swap_work import PromptSwapWork
from diffexplain.widgets.stand_ins import Button, Checkbox, IntControl, Shown, Text

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = (
    "Run prompt <b>A</b>, then switch to prompt <b>B</b> from step <b>k</b> on: a <b>fork</b> copies steps "
    "0…k−1 of the A run and runs only steps k… with B. Swap early and you get B's picture; swap late and "
    "you keep A's layout with B's details at most. <b>Sweep</b> forks at several k and lines up the final "
    "pictures, so you can see at which step the layout is decided and when only details still change."
)
SWEEP_TILE = 96
SERIES = ("change from A (mean |Δpixel|)", "change from B-from-step-0")
STRIP_EMPTY = "<b>final pictures when prompt B takes over at step k</b> (press “Sweep k”)"
STRIP_DONE = "<b>final pictures when prompt B takes over at step k</b> (last: prompt A throughout)"


class PromptSwap(PromptSwapWork, LabView):
    """Prompt A, switched to prompt B from step k (``fork(prompt=...)``), and a sweep over k.

    ``original`` is the prompt-A trace, ``swapped`` the latest fork, ``sweep`` the forks by k. Stand-ins:
    ``prompt_a``, ``prompt_b``, ``seed``, ``steps``, ``preview``, ``step`` (k), ``points``; buttons
    ``run_button``, ``swap_button``, ``sweep_button``; ``images[key].value``, ``strip.value`` (PNG),
    ``fig`` (the sweep plot as a plotly figure, built when read; the browser draws its own).
    """

    css_class = "dx-prompt-swap"
    _esm = lab_bundle("prompt_swap.js")
    step = None  # type: ignore[assignment]  # the swap step k (an IntControl): this view shows no trace step

    def __init__(
        self,
        explainer: Explainer,
        prompt_a: str,
        prompt_b: str,
        *,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        sweep_points: int = 6,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer
        self.frames = Frames(explainer, size)
        self.guidance_scale = (
            default_guidance(explainer) if guidance_scale is None else check_guidance_scale(guidance_scale)
        )
        self.original: Trace | None = None
        self.swapped: Trace | None = None
        self.sweep: dict[int, Trace] = {}
        self._pics: dict[str, bytes | None] = {}
        self._strip: bytes = blank(SWEEP_TILE, "press “Sweep k”")
        self._curves: dict[str, list] = {"ks": [], "from_a": [], "from_b": []}
        self.prompt_a = self.bind("prompt_a", Text(prompt_a))
        self.prompt_b = self.bind("prompt_b", Text(prompt_b))
        self.seed = self.bind("seed", SeedText(seed))
        steps = num_inference_steps or default_steps(explainer)
        self.steps = self.bind("steps", IntControl(min=1, max=1000, value=steps))
        self.preview = self.bind("preview", Checkbox(value=False, disabled=explainer.vae is None))
        self.step = self.bind("step", IntControl(min=0, max=1, value=0))
        self.points = self.bind("points", IntControl(min=2, max=50, value=sweep_points))
        self.run_button = Button("Run prompt A")
        self.swap_button = Button("Switch to B from step k")
        self.sweep_button = Button("Sweep k")
        self.name_buttons(run=self.run_button, swap=self.swap_button, sweep=self.sweep_button)
        self.swap_title = Text("<b>A, then B from step k</b>")
        self.strip_label = Text(STRIP_EMPTY)
        self.images = {key: Shown(lambda key=key: self._picture(key)) for key in ("a", "swap", "diff")}
        self.images["a_x0"] = Shown(lambda: self._picture(f"{self._k()}/x0"))
        self.strip = Shown(lambda: self._strip)

        self.run_button.on_click(self.guard(lambda _: self.start(self._run_work)))
        self.swap_button.on_click(self.guard(lambda _: self.start(self._swap_work)))
        self.sweep_button.on_click(self.guard(lambda _: self.start(self._sweep_work)))
        self.preview.observe(self.guard(lambda _: self._redraw()), names="value")
        self._send_lab()
        self.guard(self.run)()

    # ---- the sweep's drawing (PromptSwapWork calls them) -------------------------------------------
    def _sweep_started(self) -> None:
        self._redraw()

    def _sweep_grew(self) -> None:
        self._redraw()

    # ---- pictures --------------------------------------------------------------------------------
    def _k(self) -> int:
        n = 1 if self.original is None else len(self.original)
        return max(0, min(self.step.value, n - 1))

    def _redraw(self) -> None:
        """Every picture (A's final and x̂0 at each step, the swap, the sweep's finals), sent once."""
        trace = self.original
        if trace is None:
            return
        preview, pixel = self.preview.value, is_pixel_space(trace, self.explainer)
        pics: dict[str, bytes | None] = {"a": self.frames.final(trace, preview=preview)}
        if self.swapped is not None:
            pics["swap"] = self.frames.final(self.swapped, preview=preview)
            pics["diff"] = self.frames.difference(self.swapped, trace, preview=preview)
        else:  # a new run: the last swap belonged to the previous prompt A
            pics["swap"] = blank(self.frames.size, "switch to B\nfrom step k")
            pics["diff"] = blank(self.frames.size)
            self.swap_title.value = "<b>A, then B from step k</b>"
        for k in range(len(trace)):
            x0 = get(trace, "step.pred_x0", k)
            if x0 is not None:  # (not kept: the panel shows a blank)
                pics[f"{k}/x0"] = self.frames.latents(
                    trace, ("x̂0", k), x0, preview=preview, pixel_space=pixel
                )
        pics.update(self._draw_sweep())
        self._pics = pics
        self._send_lab()

    def _draw_sweep(self) -> dict[str, bytes]:
        """The sweep's tiles (``sweep/k``, ``sweep/A``), the strip Python shows, and the two curves."""
        assert self.original is not None
        preview = self.preview.value
        ks = sorted(self.sweep)
        if not ks:
            self._strip = blank(SWEEP_TILE, "press “Sweep k”")
            self.strip_label.value = STRIP_EMPTY
            self._curves = {"ks": [], "from_a": [], "from_b": []}
            return {}
        tiles = [self.frames.final_picture(self.sweep[k], preview=preview, size=SWEEP_TILE) for k in ks]
        tiles.append(self.frames.final_picture(self.original, preview=preview, size=SWEEP_TILE))
        self._strip = png(render.strip(tiles, [f"k={k}" for k in ks] + ["A only"]))
        self.strip_label.value = STRIP_DONE
        arrays = [np.asarray(t, dtype=np.float32) / 255 for t in tiles]
        ref_a, ref_b = arrays[-1], arrays[0]
        self._curves = {
            "ks": ks,
            "from_a": [round(float(np.abs(a - ref_a).mean()), 5) for a in arrays[:-1]],
            "from_b": [round(float(np.abs(a - ref_b).mean()), 5) for a in arrays[:-1]],
        }
        out = {f"sweep/{k}": png(tile) for k, tile in zip(ks, tiles, strict=False)}
        out["sweep/A"] = png(tiles[-1])
        return out

    def _send_lab(self) -> None:
        data = {
            "help": HELP,
            "size": self.frames.size,
            "steps": 0 if self.original is None else len(self.original),
            "swap_title": self.swap_title.value,
            "strip_label": self.strip_label.value,
            "sweep": self._curves,
            "series": list(SERIES),
            "preview_disabled": self.preview.disabled,
        }
        self.send_view(data, self._pics)

    def _picture(self, key: str) -> bytes:
        return self._pics.get(key) or blank(self.frames.size)

    @property
    def fig(self) -> go.Figure:
        """The sweep plot (change of the final picture by swap step k) as a plotly figure, built when read."""
        c: dict[str, Any] = self._curves
        fig = go.Figure()
        fig.add_scatter(x=c["ks"], y=c["from_a"], name=SERIES[0], mode="lines+markers")
        fig.add_scatter(x=c["ks"], y=c["from_b"], name=SERIES[1], mode="lines+markers")
        fig.update_layout(
            height=260,
            title={"text": "how much the final picture differs, by swap step k", "font": {"size": 13}},
            xaxis_title="swap step k",
            yaxis_title="mean |difference| (0–1)",
        )
        return fig
