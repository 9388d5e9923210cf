"""diffusers' own guiders (``diffusers.guiders``) in the loop's guidance step, as a Modular Diffusers
denoise block calls them: ``set_state(step, num_inference_steps, timestep)``, ``prepare_inputs`` (where
APG resets its momentum at step 0), then ``forward(pred_cond, pred_uncond).pred``.

Only the guiders that combine ε_c and ε_u are taken (``_input_predictions == ["pred_cond",
"pred_uncond"]``: CFG, APG, CFG-Zero*, FDG, MAMBO-G, TCFG ...); the ones that need a perturbed model pass
(PAG, SLG, SEG, AutoGuidance) are refused with a message. The run's ``guidance_scale`` is the guider's
(it is set on the guider at every step), so a trace has one w. The loop then calls the model once per
branch, as a modular pipeline does, so that a run equals the modular pipeline bit for bit (tested on
``StableDiffusionXLModularPipeline``). diffusers marks its guiders as experimental: this adapter follows
the installed version's API (0.42).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider

PAIR = ["pred_cond", "pred_uncond"]


def _guider_class(name: str) -> type:
    """The diffusers guider class called ``name`` (looked up in ``diffusers.guiders`` by exact name only)."""
    import diffusers.guiders as guiders

    cls = getattr(guiders, name, None)
    if not isinstance(cls, type) or not issubclass(cls, guiders.BaseGuidance) or cls is guiders.BaseGuidance:
        raise ValueError(f"{name!r} is not a guider of diffusers.guiders")
    check_pair(cls)
    return cls


def check_pair(cls: type) -> None:
    """``ValueError`` unless the guider combines ε_c and ε_u alone (no extra model pass)."""
    needs = list(getattr(cls, "_input_predictions", []))
    if needs != PAIR:
        raise ValueError(
            f"{cls.__name__} needs the predictions {needs}, not only ε_c and ε_u ({PAIR}): a guider that "
            "needs a perturbed model pass (PAG, SLG, SEG, AutoGuidance) does not run in diffexplain's loop yet"
        )


class DiffusersGuider(Guider):
    """A ``diffusers.guiders`` guider that combines ε_c and ε_u, called at each step as a modular pipeline
    calls it. ``explainer.run(prompt, guider=AdaptiveProjectedGuidance(...))`` wraps it in this."""

    name: ClassVar[str] = "diffusers"
    label: ClassVar[str] = "a diffusers guider"
    stateful: ClassVar[bool] = True  # APG's momentum buffer; the others carry none
    separate_branches: ClassVar[bool] = True  # one model call per branch, as a modular denoise block

    def __init__(
        self, guider: Any = None, *, cls: str | None = None, config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        if guider is None:  # rebuilt from a trace's settings
            if cls is None:
                raise TypeError(
                    "DiffusersGuider takes a diffusers guider, or cls= and config= (from a trace)"
                )
            guider = _guider_class(cls).from_config(dict(config or {}))
        else:
            import diffusers.guiders as guiders

            if not isinstance(guider, guiders.BaseGuidance):
                raise TypeError(f"expected a diffusers.guiders guider; got {type(guider).__name__}")
            check_pair(type(guider))
            guider = type(guider).from_config(guider.config)  # a copy: the caller's keeps its own state
        self.guider = guider

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        self.guider.guidance_scale = guidance_scale  # the run's w
        self.guider.set_state(
            step=step.index, num_inference_steps=step.num_steps, timestep=torch.tensor(step.timestep)
        )
        self.guider.prepare_inputs({})  # resets state at step 0, as in a modular pipeline
        return self.guider.forward(eps_cond, eps_uncond).pred

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        return self(eps_cond, eps_uncond, guidance_scale, step)

    def config(self) -> dict[str, Any]:
        config = {
            k: v
            for k, v in dict(self.guider.config).items()
            if not k.startswith("_") and k != "guidance_scale"
        }
        return {"cls": type(self.guider).__name__, "config": config}

    def state(self) -> dict[str, torch.Tensor]:
        buffer = getattr(self.guider, "momentum_buffer", None)
        average = getattr(buffer, "running_average", None)
        return {"running_average": average.clone()} if isinstance(average, torch.Tensor) else {}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        momentum = getattr(self.guider, "adaptive_projected_guidance_momentum", None)
        if momentum is None:
            return
        from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

        buffer = MomentumBuffer(momentum)
        if "running_average" in state:
            buffer.running_average = state["running_average"].clone()
        self.guider.momentum_buffer = buffer

    def __repr__(self) -> str:
        return f"DiffusersGuider({type(self.guider).__name__})"
