"""PromptSwap's work, shared by the anywidget view (``prompt_swap.PromptSwap``) and the ipywidgets one it
replaced (``classic_prompt_swap.ClassicPromptSwap``): run prompt A, fork it with prompt B from step k, and
sweep k. A mixin: the view supplies its controls (``prompt_a``, ``prompt_b``, ``seed``, ``steps``, ``k``...),
``original``, ``swapped``, ``sweep``, ``_redraw`` and the sweep's two drawing calls ``_sweep_started`` and
``_sweep_grew``; ``Actions`` gives ``finish``, ``say``, ``run_steps`` and ``fork_steps``."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from diffexplain.widgets.actions import Work

if TYPE_CHECKING:
    from diffexplain.trace import Trace


class PromptSwapWork:
    """The runs, the swap and the sweep of a PromptSwap (module docstring)."""

    explainer: Any

    # ---- actions ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run prompt A from scratch (clears the swap and the sweep)."""
        self.finish(self._run_work())

    def _run_work(self) -> Work:
        self.say("running prompt A …")
        self.original = yield from self.run_steps(
            self.explainer,
            self.prompt_a.value,
            seed=self.seed.seed,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.steps.value,
        )
        self.swapped, self.sweep = None, {}
        n = len(self.original)
        self.step.max = n - 1
        self.step.value = n // 3
        self.say(f"ran prompt A: {n} steps")
        self._redraw()

    def _fork(self, k: int) -> Generator[int, None, Trace]:
        assert self.original is not None
        return self.fork_steps(self.explainer, self.original, k, prompt=self.prompt_b.value)

    def swap(self) -> None:
        """Fork the A run at step k with prompt B."""
        self.finish(self._swap_work())

    def _swap_work(self) -> Work:
        if self.original is None:
            raise RuntimeError("run prompt A first")
        k = self.step.value
        self.say(f"forking at step {k} with prompt B …")
        self.swapped = yield from self._fork(k)
        self.swap_title.value = f"<b>A, then B from step {k}</b>"
        self.say(
            f"steps 0–{k - 1} with A (copied), steps {k}–{len(self.swapped) - 1} with B"
            if k
            else "B from step 0"
        )
        self._redraw()

    def sweep_steps(self) -> list[int]:
        """The fork steps of a sweep: ``points`` values of k spread evenly over the run."""
        assert self.original is not None
        n, m = len(self.original), self.points.value
        return sorted({round(i * (n - 1) / (m - 1)) for i in range(m)})

    def run_sweep(self) -> None:
        """Fork at each sweep step with prompt B and show the final pictures in a row, labelled by k."""
        self.finish(self._sweep_work())

    def _sweep_work(self) -> Work:
        if self.original is None:
            raise RuntimeError("run prompt A first")
        self.sweep = {}
        self._sweep_started()
        ks = self.sweep_steps()
        for n, k in enumerate(ks):
            self.say(f"sweep: forking at step {k} ({n + 1} of {len(ks)}) …")
            self.sweep[k] = yield from self._fork(k)
            self._sweep_grew()  # the strip fills as the forks finish (a stopped sweep keeps them)
        self.say(f"sweep done: {len(self.sweep)} forks")
