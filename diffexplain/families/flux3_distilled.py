"""The step-distilled FLUX.3 (``Flux3DistilledModularPipeline``): a flow map, 16 steps, no classifier-free
guidance. The transformer (``flow_map=True``) is also given t'/1000, the timestep each step jumps to,
and predicts the average velocity over the jump (see ``families.flux3`` for the notation and x̂0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning
from diffexplain.families.flux3 import Flux3
from diffexplain.families.parts import PartKind, config_value
from diffexplain.step_scalars import FinishedStep, StepScalar


def target_timestep_scalar(step: FinishedStep) -> float | None:
    """t' of a flow-map step: the scheduler's next timestep (0 after the last)."""
    timesteps = step.scheduler.timesteps
    index = (getattr(step.scheduler, "begin_index", None) or 0) + step.index
    if index >= len(timesteps):
        return None
    return float(timesteps[index + 1]) if index + 1 < len(timesteps) else 0.0


class Flux3Distilled(Flux3):
    """The step-distilled FLUX.3 (a flow map): ``Flux3DistilledModularPipeline``, 16 steps, one branch."""

    name: ClassVar[str] = "flux3-distilled"
    label: ClassVar[str] = "FLUX.3 step-distilled (flow map)"
    pipeline_class: ClassVar[str] = "Flux3DistilledModularPipeline"
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": PartKind(
            ("Flux3Transformer2DModel",),
            "config.flow_map True (a step-distilled flow map)",
            lambda part: bool(config_value(part, "flow_map")),
        )
    }
    default_steps: ClassVar[int] = 16
    default_guidance_scale: ClassVar[float] = 1.0  # no classifier-free guidance
    compare_guidance_scale: ClassVar[float] = 1.0
    flow_map: ClassVar[bool] = True
    step_scalars: ClassVar[tuple[StepScalar, ...]] = (
        StepScalar(
            "target_timestep",
            "t', the timestep the flow map jumps to (the next step's t, 0 after the last; the model reads t'/1000)",
            target_timestep_scalar,
        ),
    )

    def conventions(self, scheduler: Any) -> Conventions:
        """An average velocity given (σ, σ') = (t/1000, t'/1000); no guidance (one branch)."""
        return Conventions(
            prediction="flow",
            model_time="(σ, σ') = (t/1000, t'/1000): where the step starts and the σ it jumps to",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="none: one branch, no classifier-free guidance",
            pipeline_scale="none (guidance_scale must be 1)",
            notes=(
                "a flow map: v is the average velocity over the jump σ → σ' (x_σ' = x_t + (σ' − σ)·v); "
                "x̂0 = x_t − σ·v continues that jump to σ = 0 (the flow map's own jump to 0 at the last step); "
                "t' is recorded per step as the scalar target_timestep"
            ),
        )

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` of the prompt alone; ``ValueError`` where guidance is asked for (w > 1)."""
        if do_cfg:
            raise ValueError(
                "the step-distilled FLUX.3 (a flow map: 16 steps, no classifier-free guidance) runs one branch: "
                "guidance_scale must be 1 (leave it unset); a negative prompt has no effect on it"
            )
        return super().encode(prompt, negative_prompt, False, options)
