"""The loop's hook sites: ``sites(name, x)`` runs the hooks registered at hook point ``name`` on ``x``
(each may return a replacement), keeps the result in ``ctx.current`` and, where kept, in the trace;
then it calls the derived points declared to come after ``name`` (``HookPoint.derive``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffexplain.hooks import HookContext, HookRunner, Replacement, StepTensors
from diffexplain.names import HookPoint

if TYPE_CHECKING:
    from diffexplain.trace import Trace


class Sites:
    """Calls the hooks at each hook point and collects this step's tensors (``ctx.current``)."""

    def __init__(
        self, trace: Trace, hooks: HookRunner, guidance_scale: float, init_noise_sigma: float
    ) -> None:
        self.trace, self.hooks = trace, hooks
        self.guidance_scale, self.init_noise_sigma = guidance_scale, init_noise_sigma
        self.step: int | None = None
        self.timestep: float | None = None
        self.current: dict[str, torch.Tensor] = {}
        self.pending: list[Replacement] = []  # this step's replacement records, committed when it finishes
        self.derived: dict[str, list[HookPoint]] = {}  # derived points by the point they come after
        for point in trace.hook_points:
            if point.derive is not None and point.after is not None:
                self.derived.setdefault(point.after, []).append(point)

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run the hooks at ``name`` on ``x`` and return the (possibly replaced) tensor; then the derived
        points declared to come after ``name``, each computed from this step's tensors so far."""
        if self.hooks.has(name):
            record = self.pending.append if self.step is not None else self.trace.replacements.append
            x = self.hooks.apply(name, x, self.step, self._ctx, record)
        self.current[name] = x
        if self.step is None and name in self.trace.kept:
            self.trace.run_tensors[name] = self.trace.store(x)
        for point in self.derived.get(name, ()):
            self(point.name, point.derive(StepTensors(self.current)))  # type: ignore[misc]
        return x

    def _ctx(self, name: str) -> HookContext:
        return HookContext(
            name=name,
            step=self.step,
            timestep=self.timestep,
            num_steps=self.hooks.num_steps,
            guidance_scale=self.guidance_scale,
            init_noise_sigma=self.init_noise_sigma,
            current=StepTensors(self.current),
            trace=self.trace,
        )

    def begin_step(self, step: int, timestep: float) -> None:
        """Start collecting a new step."""
        self.step, self.timestep = step, timestep
        self.current, self.pending = {}, []

    def end_step(self) -> None:
        """Leave step mode (for run-level points after the loop)."""
        self.step, self.timestep, self.current = None, None, {}
