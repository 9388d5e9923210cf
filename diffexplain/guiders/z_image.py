"""Z-Image's guidance as a guider (diffusers' ``ZImagePipeline``, pipeline_z_image.py, the CFG block of its
loop): pred = c + s·(c − u) per sample in float32, with s = w − 1 so that the run's w keeps the classic
ε_u + w·Δ meaning (Z-Image's own scale s is off at 0, the classic w at 1); its norm cap
(``normalization`` k: ‖pred‖ ≤ k·‖c‖) and its truncation (``truncation`` τ: guidance off once the
normalised time (1000 − t)/1000, which is 1 − σ on a flow scheduler, passes τ).

Notation: c = ε_c (here a velocity), u = ε_u, per sample. Z-Image negates its model's output before the
scheduler; that is the family's convention, not the guider's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.names import HookPoint

CAP_POINT = HookPoint(
    "step.guider.norm_cap", "the factor Z-Image's normalisation multiplies each sample's pred by (1: no cap)",
    "[B]", True, True,
)  # fmt: skip


class ZImageGuidance(Guider):
    """pred = c + (w − 1)·(c − u) per sample, capped at ``normalization``·‖c‖, off after ``truncation``."""

    name: ClassVar[str] = "z_image"
    label: ClassVar[str] = "Z-Image's CFG (normalisation, truncation)"
    points: ClassVar[tuple[HookPoint, ...]] = (CAP_POINT,)

    def __init__(
        self,
        *,
        normalization: float = 0.0,
        truncation: float | None = None,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        super().__init__(start=start, stop=stop)
        if isinstance(normalization, bool) or not isinstance(normalization, int | float) or normalization < 0:
            raise ValueError(
                f"normalization (Z-Image's cfg_normalization) must be a number ≥ 0; got {normalization!r}"
            )
        if truncation is not None and (
            isinstance(truncation, bool) or not isinstance(truncation, int | float)
        ):
            raise ValueError(
                f"truncation (Z-Image's cfg_truncation) must be a number or None; got {truncation!r}"
            )
        self.normalization = float(normalization)
        self.truncation = None if truncation is None else float(truncation)

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        t_norm = (1000 - float(step.timestep)) / 1000
        if self.truncation is not None and self.truncation <= 1 and t_norm > self.truncation:
            return eps_cond  # truncated: Z-Image's scale 0, c alone
        return super().__call__(eps_cond, eps_uncond, guidance_scale, step)

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        s = guidance_scale - 1.0  # Z-Image's scale from the classic w
        preds, caps = [], []
        for j in range(eps_cond.shape[0]):  # per sample, in float32, as the pipeline
            pos, neg = eps_cond[j].float(), eps_uncond[j].float()
            pred = pos + s * (pos - neg)
            cap = torch.ones((), dtype=pred.dtype)
            if self.normalization > 0.0:
                ori_pos_norm = torch.linalg.vector_norm(pos)
                new_pos_norm = torch.linalg.vector_norm(pred)
                max_new_norm = ori_pos_norm * self.normalization
                if new_pos_norm > max_new_norm:
                    cap = max_new_norm / new_pos_norm
            preds.append(pred)
            caps.append(cap)
        caps_tensor = step.site(CAP_POINT.name, torch.stack(caps))  # [B]; a hook may change the caps
        capped = [pred * caps_tensor[j] if self.normalization > 0.0 else pred for j, pred in enumerate(preds)]
        return torch.stack(capped).to(eps_cond.dtype)

    def config(self) -> dict[str, Any]:
        return {
            "normalization": self.normalization,
            "truncation": self.truncation,
            "start": self.start,
            "stop": self.stop,
        }
