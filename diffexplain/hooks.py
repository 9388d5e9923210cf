"""Hooks: named places in the loop where a function may read or replace a tensor.

A hook is ``def hook(x: Tensor, *, ctx: HookContext) -> Tensor | None``: returning ``None`` keeps
``x``, returning a tensor replaces it. Hooks are registered per call (``hooks=`` on ``run``/``fork``)
or per block (``with explainer.hooks(...)``); there is no module-level hook state.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.layers import PREFIX as ATTENTION_PREFIX
from diffexplain.names import all_hook_names, current_name, resolve_names, unknown_name_message

if TYPE_CHECKING:
    from diffexplain.trace import Trace


StepFilter = int | range | Iterable[int] | Callable[[int], bool] | None


class StepTensors(Mapping[str, torch.Tensor]):
    """A read-only view of this step's tensors by hook name (``ctx.current``); old names still work."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[current_name(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and current_name(name) in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"StepTensors({list(self._tensors)})"


@dataclass(frozen=True)
class HookContext:
    """What a hook knows about where it is called. Frozen: hooks communicate only by return value."""

    name: str  # the hook point, e.g. "step.guidance"
    step: int | None  # loop step index (one per model evaluation); None at run-level points
    timestep: float | None  # the scheduler's timestep t at this step; None at run-level points
    num_steps: int  # number of loop steps in the run (len(scheduler.timesteps))
    guidance_scale: float  # w of this run
    init_noise_sigma: float  # the scheduler's x_T scale (1 for DDIM-like, σ_max for Euler-like)
    current: Mapping[str, torch.Tensor]  # read-only: this step's tensors computed so far, by hook name
    trace: Trace  # the partial trace so far (finished steps only); read it, do not modify it


@dataclass(frozen=True)
class Replacement:
    """A record that a hook (or a fork) replaced a tensor: where, when and by whom."""

    name: str  # hook point name
    step: int | None  # loop step, None for run-level points
    hook: str  # name of the hook function


def _step_test(steps: StepFilter) -> Callable[[int, int], bool]:
    """Turn a ``steps=`` filter into ``test(step, num_steps)``; negative ints count from the end."""
    if steps is None:
        return lambda step, num_steps: True
    if isinstance(steps, bool):
        raise TypeError("steps= must be an int, a range, an iterable of ints or a predicate, not a bool")
    if isinstance(steps, int):
        steps = (steps,)
    if isinstance(steps, range):
        rng = steps
        return lambda step, num_steps: step in rng
    if callable(steps):
        predicate = steps
        return lambda step, num_steps: bool(predicate(step))
    chosen = frozenset(int(s) for s in steps)
    return lambda step, num_steps: step in chosen or (step - num_steps) in chosen


def check_hook_signature(fn: Callable[..., Any], point: str) -> None:
    """``TypeError`` unless ``fn`` can be called as ``fn(x, ctx=ctx)``, as the loop calls every hook.

    A callable whose signature cannot be read (some builtins and C extensions) is taken as it is.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, ctx=None)
    except TypeError as err:
        raise TypeError(
            f"hook {hook_name(fn)!r} for {point!r} takes {signature}, but hooks take (x, *, ctx) and are "
            f"called as hook(x, ctx=ctx), which fails here ({err}): write `def hook(x, *, ctx): ...` or "
            "`lambda x, *, ctx: ...` (x is the tensor at that point, ctx its HookContext)"
        ) from None


def hook_name(fn: Callable[..., Any]) -> str:
    """A readable name for a hook function (``__qualname__`` where there is one)."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


@dataclass(frozen=True)
class Hook:
    """A hook function bound to a hook point name (exact or glob) and an optional step filter."""

    name: str  # hook point name or glob pattern, e.g. "step.model.*"
    fn: Callable[..., Any]  # hook(x, *, ctx) -> Tensor | None
    steps: StepFilter = None  # int, range, iterable of ints, or predicate(step) -> bool; None: every step
    points: tuple[str, ...] = field(init=False, repr=False)
    _test: Callable[[int, int], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"hook for {self.name!r} must be callable, got {type(self.fn).__name__}")
        check_hook_signature(self.fn, self.name)
        if self.name.startswith(ATTENTION_PREFIX):  # a model's own layer names: resolved when it runs
            object.__setattr__(self, "points", ())
        else:
            object.__setattr__(self, "points", resolve_names(self.name, all_hook_names()))
        object.__setattr__(self, "_test", _step_test(self.steps))

    def applies_to(self, step: int | None, num_steps: int) -> bool:
        """Whether this hook runs at ``step`` (run-level points, step None, always match)."""
        return step is None or self._test(step, num_steps)


HookSpec = Mapping[str, Callable[..., Any]] | Iterable[Hook | tuple[str, Callable[..., Any]]] | Hook | None


def as_hooks(spec: HookSpec) -> list[Hook]:
    """Normalise ``hooks=``: a dict name→fn, a list of ``(name, fn)`` / ``Hook``, a single ``Hook``, or None."""
    if spec is None:
        return []
    if isinstance(spec, Hook):
        return [spec]
    if isinstance(spec, Mapping):
        return [Hook(name, fn) for name, fn in spec.items()]
    hooks = []
    for item in spec:
        if isinstance(item, Hook):
            hooks.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            hooks.append(Hook(item[0], item[1]))
        else:
            raise TypeError(f"hooks= items must be Hook objects or (name, fn) tuples, got {item!r}")
    return hooks


def check_replacement(
    new: object, old: torch.Tensor, *, point: str, step: int | None, hook: str
) -> torch.Tensor:
    """Validate a replacement tensor: same shape, dtype and device as ``old``, all finite; else ``ValueError``."""
    where = f"hook {hook!r} at {point!r} (step {step})"
    if not isinstance(new, torch.Tensor):
        raise ValueError(f"{where} returned {type(new).__name__}; expected None or a torch.Tensor")
    for what, expected, given in (
        ("shape", tuple(old.shape), tuple(new.shape)),
        ("dtype", old.dtype, new.dtype),
        ("device", old.device, new.device),
    ):
        if expected != given:
            raise ValueError(
                f"{where} returned a tensor with the wrong {what}: expected {expected}, given {given} "
                f"(shape {tuple(old.shape)} -> {tuple(new.shape)}, dtype {old.dtype} -> {new.dtype}, "
                f"device {old.device} -> {new.device})"
            )
    if new.is_floating_point() or new.is_complex():
        bad = int((~torch.isfinite(new)).sum().item())
        if bad:
            raise ValueError(f"{where} returned a tensor with {bad} non-finite (NaN or inf) values")
    return new.detach() if new.requires_grad else new


class HookRunner:
    """The hooks of one run or fork, grouped by hook point in registration order.

    Built by the loop once the number of steps N is known, for the hook names of the run's model.
    """

    def __init__(self, hooks: Sequence[Hook], num_steps: int, names: Sequence[str] | None = None) -> None:
        self.num_steps = num_steps
        self._by_point: dict[str, list[Hook]] = {}
        names = all_hook_names() if names is None else tuple(names)
        valid = frozenset(names)
        for h in hooks:
            if h.name.startswith(ATTENTION_PREFIX):
                points = [n for n in names if n == h.name or fnmatch.fnmatchcase(n, h.name)]
            else:
                points = [p for p in h.points if p in valid]
            if not points and h.name.startswith(ATTENTION_PREFIX):
                layers = sorted({n.rsplit(".", 2)[0] for n in names if n.startswith(ATTENTION_PREFIX)})
                raise ValueError(
                    f"no attention hook point of this model matches {h.name!r}; its layers are "
                    f"{', '.join(layers) or 'none (it has no text attention)'}, each with "
                    "attn.<layer>.probs.cond/.uncond and attn.<layer>.out.cond/.uncond"
                )
            if not points:
                raise ValueError(
                    unknown_name_message("hook point for this model", h.name, names).replace(
                        "Valid names", "This model's names"
                    )
                )
            for point in points:
                self._by_point.setdefault(point, []).append(h)

    def has(self, point: str) -> bool:
        """Whether any hook is registered at ``point``."""
        return point in self._by_point

    def apply(
        self,
        point: str,
        x: torch.Tensor,
        step: int | None,
        make_ctx: Callable[[str], HookContext],
        record: Callable[[Replacement], None],
    ) -> torch.Tensor:
        """Run the hooks at ``point`` in order, each seeing the previous result; record each replacement."""
        hooks = self._by_point.get(point)
        if not hooks:
            return x
        ctx = None
        for h in hooks:
            if not h.applies_to(step, self.num_steps):
                continue
            ctx = ctx or make_ctx(point)
            version = x._version
            out = h.fn(x, ctx=ctx)
            if x._version != version:
                raise ValueError(
                    f"hook {hook_name(h.fn)!r} at {point!r} (step {step}) modified its input in place; "
                    "return a new tensor instead (e.g. x * 2, not x.mul_(2))"
                )
            if out is None:
                continue
            x = check_replacement(out, x, point=point, step=step, hook=hook_name(h.fn))
            record(Replacement(point, step, hook_name(h.fn)))
        return x
