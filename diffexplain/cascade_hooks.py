"""A cascade's hooks: ``hooks=`` named ``<stage>.<point>`` split by stage, and the hooks on what passes
between stages (``<stage>.input``). See ``diffexplain.cascade``.

Each stage runs its hooks under its own names (``step.model.cond``); every error about a hook names it as
the cascade's user wrote it (``II.step.model.cond``): unknown points are checked here against the
stage's own points, and each hook function is wrapped (``in_stage``) so that a replacement of the wrong
shape, an in-place change or an exception raised inside it says which stage's point it was.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from diffexplain.hooks import Hook, HookContext, Replacement, StepTensors, check_replacement, hook_name
from diffexplain.names import current_name, unknown_name_message
from diffexplain.trace import Trace

INPUT_POINT = "input"
"""A stage's run-level hook point for what it receives from the previous stage (``"II.input"``)."""

StageHooks = Mapping[str, Callable[..., Any]] | Iterable[tuple[str, Any]] | None
"""``hooks=`` of a cascade: ``{"II.step.latents": fn}``, ``[("II.step.latents", fn)]`` or ``[("II", Hook(...))]``."""

HOOK_FORMS = "a dict {'<stage>.<point>': fn} or a list of ('<stage>.<point>', fn) and ('<stage>', Hook) pairs"


def split_hooks(
    hooks: StageHooks, points: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, list[Hook]], dict[str, list[Any]]]:
    """A cascade's ``hooks=`` by stage: each stage's loop hooks, and its ``input`` hooks.

    ``points``: each stage's own hook-point names, by stage name in run order (``Explainer.hook_points``).
    """
    names = tuple(points)
    loop: dict[str, list[Hook]] = {n: [] for n in names}
    inputs: dict[str, list[Any]] = {n: [] for n in names}
    if isinstance(hooks, Hook) or callable(hooks) or isinstance(hooks, str):
        raise TypeError(f"cascade hooks= must be {HOOK_FORMS}; got {hooks!r}")
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
            check_point(f"{stage}.{value.name}", stage, value.name, points[stage], first=stage == names[0])
            loop[stage].append(stage_hook(stage, value))
        elif point == INPUT_POINT:
            if stage == names[0]:
                raise ValueError(f"hook {key!r}: the first stage receives nothing from a previous one")
            check_callable(key, value)
            inputs[stage].append(value)
        elif not point:
            raise ValueError(f"hook {key!r}: name a hook point after the stage, e.g. '{stage}.step.latents'")
        else:
            check_callable(key, value)
            check_point(key, stage, point, points[stage], first=stage == names[0])
            try:  # hooks.py's own checks of the function, as the user named it
                hook = Hook(point, value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"hook {key!r}: {exc}") from None
            loop[stage].append(stage_hook(stage, hook))
    return loop, inputs


def check_callable(key: str, fn: object) -> None:
    """``TypeError`` naming the hook ``key`` when ``fn`` is no function."""
    if not callable(fn):
        raise TypeError(
            f"hook {key!r}: expected a function hook(x, *, ctx) -> Tensor | None; got {type(fn).__name__}"
        )


def check_point(key: str, stage: str, point: str, names: tuple[str, ...], *, first: bool) -> None:
    """``ValueError`` naming ``key`` (``"II.step.model.condd"``) when ``point`` (a name or a glob) matches
    none of the stage's hook points; the close names and the valid ones are listed with the stage in front."""
    point = current_name(point, warn=False)
    if point in names or any(fnmatch.fnmatchcase(n, point) for n in names):
        return
    valid = ([] if first else [f"{stage}.{INPUT_POINT}"]) + [f"{stage}.{n}" for n in names]
    raise ValueError(unknown_name_message(f"hook point of stage {stage}", key, valid))


def stage_hook(stage: str, hook: Hook) -> Hook:
    """``hook`` (at a point of stage ``stage``) with its function wrapped by ``in_stage``."""
    return dataclasses.replace(hook, fn=in_stage(stage, hook.fn))


def in_stage(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called as the loop calls a hook, its errors naming the point ``<stage>.<point>``.

    The wrapper has ``fn``'s name, so the stage's ``trace.replacements`` record ``fn`` as usual."""

    def hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor | None:
        return call_hook(fn, x, ctx, f"{stage}.{ctx.name}")

    hook.__name__ = getattr(fn, "__name__", hook_name(fn))
    hook.__qualname__ = hook_name(fn)
    return hook


def call_hook(fn: Callable[..., Any], x: torch.Tensor, ctx: HookContext, point: str) -> torch.Tensor | None:
    """``fn(x, ctx=ctx)`` with ``HookRunner.apply``'s checks (no change in place; a replacement of the same
    shape, dtype and device, finite), each error naming ``point`` as the cascade's user wrote it. An
    exception raised inside ``fn`` goes on unchanged, with a note naming the hook and the point."""
    name = hook_name(fn)
    version = x._version
    try:
        out = fn(x, ctx=ctx)
    except Exception as exc:
        exc.add_note(f"diffexplain: raised in hook {name!r} at {point!r} (step {ctx.step})")
        raise
    if x._version != version:
        raise ValueError(
            f"hook {name!r} at {point!r} (step {ctx.step}) modified its input in place; "
            "return a new tensor instead (e.g. x * 2, not x.mul_(2))"
        )
    return None if out is None else check_replacement(out, x, point=point, step=ctx.step, hook=name)


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
            guidance_scale=previous.run_settings.guidance_scale,
            init_noise_sigma=1.0,
            current=StepTensors({}),
            trace=previous,
        )
        result = call_hook(fn, image, ctx, name)
        if result is not None:
            image = result
            replacements.append(Replacement(name, None, hook_name(fn)))
    return image
