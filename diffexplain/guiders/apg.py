"""Adaptive projected guidance (APG: Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High
Guidance Scales in Diffusion Models", arXiv 2410.02416), as diffusers' ``AdaptiveProjectedGuidance``
computes it (``guiders/adaptive_projected_guidance.py``, the same operations in the same order).

Notation: Δ = ε_c − ε_u. With momentum β, Δ is first averaged over the steps (m ← Δ + β·m; Δ ← m); its
norm is capped at r (``norm_threshold``); then it is split against ε_c into a parallel part Δ∥ (which
saturates colours) and an orthogonal part Δ⊥, and ε̂ = ε_u + w·(Δ⊥ + η·Δ∥) (η = ``eta``, 0 drops Δ∥).
The running average m is the guider's state: every restart point keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.guiders.cfg import RESCALE_POINT, rescale_factor, rescaled
from diffexplain.names import HookPoint

APG_POINTS = (
    HookPoint("step.guider.delta", "Δ as APG uses it: averaged with momentum, its norm capped", "[B, C, h, w]", True, True),
    HookPoint("step.guider.delta_parallel", "Δ∥, the part of Δ along ε_c (it saturates)", "[B, C, h, w]", True, True),
    HookPoint("step.guider.delta_orthogonal", "Δ⊥, the part of Δ orthogonal to ε_c", "[B, C, h, w]", True, True),
)  # fmt: skip


class APG(Guider):
    """ε̂ = ε_u + w·(Δ⊥ + η·Δ∥), Δ averaged with ``momentum`` (None: none) and capped at ``norm_threshold``."""

    name: ClassVar[str] = "apg"
    label: ClassVar[str] = "adaptive projected guidance (APG)"
    points: ClassVar[tuple[HookPoint, ...]] = (*APG_POINTS, RESCALE_POINT)
    stateful: ClassVar[bool] = True

    def __init__(
        self,
        *,
        momentum: float | None = None,
        norm_threshold: float = 15.0,
        eta: float = 1.0,
        rescale: float = 0.0,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        super().__init__(start=start, stop=stop)
        for label, value in (("norm_threshold", norm_threshold), ("eta", eta), ("rescale", rescale)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{label} must be a number ≥ 0; got {value!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, int | float)):
            raise ValueError(
                f"momentum must be a number (diffusers' APG uses e.g. -0.5) or None; got {momentum!r}"
            )
        self.momentum = None if momentum is None else float(momentum)
        self.norm_threshold, self.eta, self.rescale = float(norm_threshold), float(eta), float(rescale)
        self.running_average: torch.Tensor | None = None  # m, the momentum buffer (None: not started)

    def reset(self) -> None:
        self.running_average = None

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.running_average is None else {"running_average": self.running_average.clone()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        average = state.get("running_average")
        self.running_average = None if average is None else average.clone()

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        delta = eps_cond - eps_uncond  # [B, C, h, w]
        dim = [-i for i in range(1, len(delta.shape))]
        if self.momentum is not None:  # m ← Δ + β·m (0 before the first step, as diffusers' buffer)
            previous = 0 if self.running_average is None else self.running_average
            self.running_average = delta + self.momentum * previous
            delta = self.running_average
        if self.norm_threshold > 0:
            ones = torch.ones_like(delta)
            delta_norm = delta.norm(p=2, dim=dim, keepdim=True)
            delta = delta * torch.minimum(ones, self.norm_threshold / delta_norm)
        delta = step.site("step.guider.delta", delta)
        v0, v1 = delta.double(), eps_cond.double()
        v1 = torch.nn.functional.normalize(v1, dim=dim)
        v0_parallel = (v0 * v1).sum(dim=dim, keepdim=True) * v1
        v0_orthogonal = v0 - v0_parallel
        parallel = step.site(
            "step.guider.delta_parallel", v0_parallel.to(device=delta.device, dtype=delta.dtype)
        )
        orthogonal = step.site(
            "step.guider.delta_orthogonal", v0_orthogonal.to(device=delta.device, dtype=delta.dtype)
        )
        eps_guided = eps_uncond + guidance_scale * (orthogonal + self.eta * parallel)
        if self.rescale > 0.0:
            factor = step.site(RESCALE_POINT.name, rescale_factor(eps_guided, eps_cond))
            eps_guided = rescaled(eps_guided, factor, self.rescale)
        return eps_guided

    def config(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "norm_threshold": self.norm_threshold,
            "eta": self.eta,
            "rescale": self.rescale,
            "start": self.start,
            "stop": self.stop,
        }
