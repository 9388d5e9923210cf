"""diffusers' own guiders (``diffusers.guiders``) in the loop's guidance step, as a Modular Diffusers
denoise block calls them: ``set_state(step, num_inference_steps, timestep)``, ``prepare_inputs`` (where
APG resets its momentum at step 0), then ``forward(pred_cond, pred_uncond).pred``.

The guiders that combine ε_c and ε_u (CFG, APG, CFG-Zero*, FDG, MAMBO-G, TCFG ...) are taken, and the ones
that add a perturbed-model prediction (PAG and SLG: ``pred_cond_skip``, SEG: ``pred_cond_seg``): the loop
then runs the cond branch once more with the guider's hooks on the model, outside the attention capture,
and records it at ``step.guider.perturbed``. The run's ``guidance_scale`` is the guider's
(it is set on the guider at every step), so a trace has one w. The loop then calls the model once per
branch, as a modular pipeline does, so that a run equals the modular pipeline bit for bit (tested on
``StableDiffusionXLModularPipeline``). diffusers marks its guiders as experimental: this adapter follows
the installed version's API (0.42).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from diffexplain.guiders.base import GuidanceStep, Guider
from diffexplain.names import HookPoint

PAIR = ["pred_cond", "pred_uncond"]
PERTURBED = ("pred_cond_skip", "pred_cond_seg")  # a third prediction from a perturbed model: PAG/SLG, SEG
PERTURBED_POINT = HookPoint(
    "step.guider.perturbed",
    "ε_c from the guider's perturbed model (PAG, SLG: layers skipped; SEG: smoothed attention)",
    "[B, C, h, w]",
    True,
    True,
)


def _guider_class(name: str) -> type:
    """The diffusers guider class called ``name`` (looked up in ``diffusers.guiders`` by exact name only)."""
    import diffusers.guiders as guiders

    cls = getattr(guiders, name, None)
    if not isinstance(cls, type) or not issubclass(cls, guiders.BaseGuidance) or cls is guiders.BaseGuidance:
        raise ValueError(f"{name!r} is not a guider of diffusers.guiders")
    check_pair(cls)
    return cls


def check_pair(cls: type) -> None:
    """``ValueError`` unless the guider needs ε_c and ε_u, and at most one perturbed-model prediction."""
    needs = list(getattr(cls, "_input_predictions", []))
    if needs[:2] != PAIR or len(needs) > 3 or (len(needs) == 3 and needs[2] not in PERTURBED):
        raise ValueError(
            f"{cls.__name__} needs the predictions {needs}: diffexplain's loop runs guiders that take ε_c and "
            f"ε_u ({PAIR}) and at most one perturbed-model prediction ({', '.join(PERTURBED)})"
        )


class DiffusersGuider(Guider):
    """A ``diffusers.guiders`` guider that combines ε_c and ε_u, called at each step as a modular pipeline
    calls it. ``explainer.run(prompt, guider=AdaptiveProjectedGuidance(...))`` wraps it in this."""

    name: ClassVar[str] = "diffusers"
    label: ClassVar[str] = "a diffusers guider"
    stateful: ClassVar[bool] = True  # APG's momentum buffer; the others carry none
    separate_branches: ClassVar[bool] = True  # one model call per branch, as a modular denoise block
    points: ClassVar[tuple[HookPoint, ...]] = (PERTURBED_POINT,)

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
        needs = list(type(guider)._input_predictions)
        self.perturbed_name: str | None = needs[2] if len(needs) == 3 else None  # e.g. "pred_cond_skip"
        self.perturbed_prediction: torch.Tensor | None = None  # this step's, set by the loop
        self._step: int | None = None  # the step ``begin`` was called for

    def begin(self, index: int, num_steps: int, timestep: float, guidance_scale: float) -> None:
        """A step begins, before its model calls: the guider's step, scale and batches, as a modular
        denoise block sets them (APG resets its momentum at step 0 here)."""
        self.guider.guidance_scale = guidance_scale  # the run's w
        self.guider.set_state(step=index, num_inference_steps=num_steps, timestep=torch.tensor(timestep))
        self.guider.prepare_inputs({})
        self.perturbed_prediction, self._step = None, index

    @contextmanager
    def bracket(self, model: torch.nn.Module) -> Iterator[None]:
        """One model call, between the guider's ``prepare_models`` and ``cleanup_models`` (which install
        and remove its layer hooks on the call that needs them, counted as a modular pipeline counts)."""
        self.guider.prepare_models(model)
        try:
            yield
        finally:
            self.guider.cleanup_models(model)

    def needs_perturbed(self) -> bool:
        """Whether this step needs the perturbed-model prediction (PAG/SLG/SEG, inside their step range)."""
        return self.perturbed_name is not None and self.guider.num_conditions > 2

    def perturbed(
        self,
        family: Any,
        scheduler: Any,
        latents: torch.Tensor,
        t: Any,
        cond: Any,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """ε_c from the perturbed model: the cond branch once more, with the guider's hooks on the model."""
        with self.bracket(family.model):
            output = family.predict(scheduler, latents, t, cond, model_kwargs)
        return family.split_output(output, latents)[0]  # [B, C, h, w]

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        if self._step != step.index:  # called outside the loop (reguide): the step's state first
            self.begin(step.index, step.num_steps, step.timestep, guidance_scale)
        extra = {}
        if self.perturbed_name is not None:
            if self.perturbed_prediction is None and self.needs_perturbed():
                raise ValueError(
                    f"{type(self.guider).__name__} needs the perturbed model's prediction, which only a run "
                    "makes (it calls the model): it cannot be replayed from a trace"
                )
            extra[self.perturbed_name] = self.perturbed_prediction
        return self.guider.forward(eps_cond, eps_uncond, **extra).pred

    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        return self(eps_cond, eps_uncond, guidance_scale, step)

    def config(self) -> dict[str, Any]:
        config = {
            k: _json_value(v)
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


def _json_value(value: Any) -> Any:
    """A guider config value as JSON (a ``LayerSkipConfig`` as its dict; diffusers' ``from_config`` takes it back)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value
