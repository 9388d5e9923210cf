"""A guidance method as an object: what the loop's guidance step calls to combine the step's predictions.

Notation (``diffexplain.names``): ε_c ``eps_cond``, ε_u ``eps_uncond``, Δ = ε_c − ε_u ``delta``, w
``guidance_scale``, ε̂ ``eps_guided``; N steps, i the loop step.

A guider says which predictions it needs (``needs``: ε_c and ε_u for every method here), whether it acts at
step i (``active``: a guidance interval ``[start, stop)`` as a fraction of the steps, as diffusers' guiders
take it), how it combines them (``combine``), which intermediates it shows as hook points (``points``,
called through ``step.site``), and what state it carries from step to step (``state``/``load_state``:
APG's momentum), which the loop keeps in every restart point so that forks stay bit-exact. It is
recorded in the trace's settings (``describe``) and rebuilt from there (``guider_from_json``).

Without a guider the loop guides with ``guidance.guide``, ε̂ = ε_u + w·Δ, exactly as before guiders.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from diffexplain.names import HookPoint, declare_points

GUIDERS: dict[str, type[Guider]] = {}
"""Every guider class by name (filled as each is defined): what trace files name."""


@dataclass(frozen=True)
class GuidanceStep:
    """What a guider sees of the step it guides."""

    index: int  # i, the loop step
    num_steps: int  # N
    timestep: float  # the scheduler's t
    site: Callable[
        [str, torch.Tensor], torch.Tensor
    ]  # a hook point call: site(name, x) -> x or a replacement
    latents: torch.Tensor | None = (
        None  # x_t entering the step (in a run; None when re-guiding)   [B, C, h, w]
    )
    scheduler: Any = None  # the run's scheduler at this step (its σ table)
    # the model on both branches at another point: predict(x, t) -> (ε_c, ε_u); None when re-guiding
    predict: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None


class Guider(ABC):
    """One guidance method (see the module docstring). Subclasses set ``name`` and ``label``, and define
    ``combine`` and ``config``; stateful ones ``state``, ``load_state`` and ``reset``."""

    name: ClassVar[str]  # how settings and files name it, e.g. "cfg"
    label: ClassVar[str]  # for people, e.g. "classifier-free guidance"
    needs: ClassVar[tuple[str, ...]] = ("cond", "uncond")  # the predictions it combines
    points: ClassVar[tuple[HookPoint, ...]] = ()  # its intermediates, called through step.site
    stateful: ClassVar[bool] = False  # carries state from step to step (kept in restart points)
    sampler_stage: ClassVar[bool] = False  # also replaces the scheduler's step (``sampler_step``: CFG++)
    separate_branches: ClassVar[bool] = False  # one model call per branch (as Modular Diffusers calls them)
    checks_scheduler: ClassVar[bool] = False  # ``check_scheduler(scheduler, eta)`` before a run starts

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            GUIDERS.setdefault(cls.name, cls)
            declare_points(cls.points)

    def __init__(self, *, start: float = 0.0, stop: float = 1.0) -> None:
        if not (isinstance(start, int | float) and isinstance(stop, int | float)) or isinstance(start, bool):
            raise TypeError(
                f"start and stop must be numbers (fractions of the steps); got {start!r}, {stop!r}"
            )
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(
                f"start={start!r}, stop={stop!r}: guidance acts in [start, stop), fractions of the steps with "
                "0 ≤ start < stop ≤ 1 (start=0, stop=1: every step)"
            )
        self.start, self.stop = float(start), float(stop)

    def active(self, index: int, num_steps: int) -> bool:
        """Whether guidance acts at loop step ``index`` of ``num_steps``: int(start·N) ≤ i < int(stop·N),
        as diffusers' guiders decide it."""
        return int(self.start * num_steps) <= index < int(self.stop * num_steps)

    def __call__(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        """ε̂ at this step: ``combine`` where the guider is active, else ε_c (guidance off at this step)."""
        if not self.active(step.index, step.num_steps) or math.isclose(guidance_scale, 1.0):
            return eps_cond
        return self.combine(eps_cond, eps_uncond, guidance_scale, step)

    @abstractmethod
    def combine(
        self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, step: GuidanceStep
    ) -> torch.Tensor:
        """ε̂ from ε_c and ε_u [B, C, h, w] at scale w."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-ready (``type(self)(**config)`` rebuilds it)."""

    def describe(self) -> dict[str, Any]:
        """What the trace's settings record: ``{"name": ..., **config}``."""
        return {"name": self.name, **self.config()}

    def reset(self) -> None:  # noqa: B027 - optional: stateless guiders have nothing to forget
        """Forget the state of an earlier run (a run starts from step 0)."""

    def state(self) -> dict[str, torch.Tensor]:
        """The state entering the next step, as tensors (copies), for a restart point; {} when stateless."""
        return {}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:  # noqa: B027 - optional, as reset
        """Continue from a restart point's ``state()``."""

    # ---- how the loop calls the model for it (a diffusers guider: as a modular pipeline does) --------
    def begin(self, index: int, num_steps: int, timestep: float, guidance_scale: float) -> None:  # noqa: B027
        """A step begins, before its model calls (optional; a diffusers guider sets its state here)."""

    def bracket(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """Entered around each separate model call (optional: nothing; a diffusers guider's layer hooks)."""
        return nullcontext()

    def needs_perturbed(self) -> bool:
        """Whether this step needs a perturbed model's prediction too (PAG, SLG, SEG); default no."""
        return False

    def perturbed(
        self,
        family: Any,
        scheduler: Any,
        latents: torch.Tensor,
        t: Any,
        cond: Any,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """ε_c from the perturbed model, where ``needs_perturbed`` (the loop sets ``perturbed_prediction``)."""
        raise NotImplementedError(f"{type(self).__name__} needs no perturbed model")

    perturbed_prediction: torch.Tensor | None = None  # this step's, set by the loop where one is needed

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def guider_from_json(doc: Mapping[str, Any] | None) -> Guider | None:
    """The guider a trace's settings describe (None: the loop's own ε_u + w·Δ); ``ValueError`` naming the
    known guiders for one this version does not have."""
    if doc is None:
        return None
    name = doc.get("name")
    if name not in GUIDERS:
        raise ValueError(f"unknown guider {name!r}; known: {', '.join(sorted(GUIDERS))}")
    return GUIDERS[name](**{k: v for k, v in doc.items() if k != "name"})


def with_guider_points(
    points: tuple[HookPoint, ...], guider: Mapping[str, Any] | None
) -> tuple[HookPoint, ...]:
    """``points`` with the guider's own (``step.guider.*``) just before ``step.guidance``, where it runs."""
    if guider is None or guider.get("name") not in GUIDERS:
        return points
    own = GUIDERS[guider["name"]].points
    names = [p.name for p in points]
    at = names.index("step.guidance") if "step.guidance" in names else len(points)
    return (*points[:at], *own, *points[at:])
