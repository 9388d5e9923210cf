"""A cascade's hooks: ``hooks=`` named ``<stage>.<point>`` split by stage, and the hooks on what passes
between stages (``<stage>.input``). See ``diffexplain.cascade``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from diffexplain.hooks import Hook, HookContext, Replacement, StepTensors, check_replacement, hook_name
from diffexplain.trace import Trace

INPUT_POINT = "input"
"""A stage's run-level hook point for what it receives from the previous stage (``"II.input"``)."""

StageHooks = Mapping[str, Callable[..., Any]] | Iterable[tuple[str, Any]] | None
"""``hooks=`` of a cascade: ``{"II.step.latents": fn}``, ``[("II.step.latents", fn)]`` or ``[("II", Hook(...))]``."""


def split_hooks(
    hooks: StageHooks, names: tuple[str, ...]
) -> tuple[dict[str, list[Hook]], dict[str, list[Any]]]:
    """A cascade's ``hooks=`` by stage (``names``): each stage's loop hooks, and its ``input`` hooks."""
    loop: dict[str, list[Hook]] = {n: [] for n in names}
    inputs: dict[str, list[Any]] = {n: [] for n in names}
    items = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks or ())
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(
                f"cascade hooks= items must be ('<stage>.<point>', fn) or ('<stage>', Hook); got {item!r}"
            )
        key, value = item
        stage, _, point = key.partition(".")
        if stage not in names:
            raise ValueError(
                f"hook {key!r}: a cascade's hook names start with a stage name, one of "
                f"{', '.join(names)} (e.g. '{names[-1]}.step.latents')"
            )
        if isinstance(value, Hook):
            if point:
                raise ValueError(
                    f"hook {key!r}: pass a Hook as ('{stage}', Hook(...)), the point in the Hook"
                )
            loop[stage].append(value)
        elif point == INPUT_POINT:
            if stage == names[0]:
                raise ValueError(f"hook {key!r}: the first stage receives nothing from a previous one")
            inputs[stage].append(value)
        elif not point:
            raise ValueError(f"hook {key!r}: name a hook point after the stage, e.g. '{stage}.step.latents'")
        else:
            loop[stage].append(Hook(point, value))
    return loop, inputs


def apply_input_hooks(
    stage: str,
    image: torch.Tensor,
    fns: list[Any],
    previous: Trace,
    replacements: list[Replacement],
) -> torch.Tensor:
    """Run the ``<stage>.input`` hooks on what the previous stage passes (each may replace it)."""
    name = f"{stage}.{INPUT_POINT}"
    for fn in fns:
        ctx = HookContext(
            name=name,
            step=None,
            timestep=None,
            num_steps=len(previous.steps),
            guidance_scale=float(previous.settings.get("guidance_scale", 1.0)),
            init_noise_sigma=1.0,
            current=StepTensors({}),
            trace=previous,
        )
        result = fn(image, ctx=ctx)
        if result is not None:
            image = check_replacement(result, image, point=name, step=None, hook=hook_name(fn))
            replacements.append(Replacement(name, None, hook_name(fn)))
    return image
