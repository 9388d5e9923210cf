"""Flow reversal: the flow-matching ODE run backwards with Euler, from a picture's latents x0 (σ = 0) up to
x_1 (σ = 1), so that a flow-matching Euler run from that x_1 draws the picture again (SD3, Flux). The
loop that runs it is the package's own, as for DDIM inversion (``diffexplain.inversion``): the backward
run is an ordinary trace with hook points, x̂0 per step and forks.

Notation (``diffexplain.names``): σ_0 = 1 > σ_1 > … > σ_{N−1} > σ_N = 0 the forward run's noise levels
(the family's own schedule, shifted as its pipeline shifts it), v_θ the guided velocity::

    forward step i  (Euler):  x_{σ_{i+1}} = x_{σ_i} + (σ_{i+1} − σ_i)·v_θ(x_{σ_i}, σ_i)        σ decreasing
    reversal step j (Euler):  x_{σ'_{j+1}} = x_{σ'_j} + (σ'_{j+1} − σ'_j)·v_θ(x_{σ'_j}, σ'_j)  σ' = σ reversed:
                              σ'_j = σ_{N−j}, from σ'_0 = 0 up to σ'_N = 1

Each reversal step evaluates v at the level it leaves (σ'_j = σ_{N−j}), the forward step that undoes it at
the level it leaves (σ_{N−j−1}): the two meet the model at the two ends of the same interval, so a
reversal step followed by its forward step returns x + Δσ·(v(x, σ_{N−j}) − v(x', σ_{N−j−1})), exact only
where v is constant along the step. That O(Δσ) mismatch per step is the method's whole error: it shrinks
with more steps and a smoother v. A few-step distilled model (Flux schnell, SD3.5 Turbo: 1 to 4 steps)
takes steps too long for it, so it inverts poorly; guidance (w > 1) makes v less smooth too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffexplain.scheduler_state import effective_config, names_for, scheduler_by_name

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer


class FlowMatchEulerInverseScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-matching Euler on the reversed schedule: σ' = 0, σ_{N−1}, …, σ_1, 1 (timesteps 1000·σ'_j for the
    N steps), so that ``step`` (x + (σ'_{j+1} − σ'_j)·v, unchanged) climbs from x0 to x_1."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """The forward schedule (``FlowMatchEulerDiscreteScheduler.set_timesteps``, the same arguments),
        reversed: sigmas [N + 1] from 0 to 1, timesteps [N] = 1000·sigmas[:N]."""
        super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)
        self.sigmas = self.sigmas.flip(0)  # [0, σ_{N−1}, …, σ_0 = 1]
        self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps  # [N]


def inverse_scheduler(explainer: Explainer) -> FlowMatchEulerInverseScheduler:
    """``FlowMatchEulerInverseScheduler`` on the config of the explainer's flow-matching Euler (its shift and
    dynamic shifting, from the scheduler it was made with), without stochastic sampling."""
    base = explainer._base_scheduler_config  # noqa: SLF001 - what set_scheduler("flow_euler") builds on
    euler = scheduler_by_name("flow_euler", base, names_for(base, explainer.family.scheduler_names))
    config = {**effective_config(euler.config), "stochastic_sampling": False}
    return FlowMatchEulerInverseScheduler.from_config(config)


def forward_scheduler(config: dict[str, Any]) -> FlowMatchEulerDiscreteScheduler:
    """The forward (denoising) flow-matching Euler on an inversion's scheduler config."""
    return FlowMatchEulerDiscreteScheduler.from_config(effective_config(config))
