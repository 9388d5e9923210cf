"""Schedulers: short names, an allow-list of classes, and generic snapshots of their mutable state.

A fork restarts the loop at step k. For that, the trace keeps, per step, a snapshot of the
scheduler's mutable attributes (everything in ``scheduler.__dict__`` except the config):
tensors by reference (diffusers schedulers reassign tensors rather than mutate them),
containers (``model_outputs``, ``ets``, ``derivatives``, ``timestep_list`` ...) shallow-copied,
since schedulers do mutate those in place.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

OWN_SCHEDULERS = {"FlowMatchEulerInverseScheduler": "diffexplain.flow_inversion"}
"""Scheduler classes of this package (name → module) that trace files may name, beside diffusers' own."""


class _Classes(Mapping[str, type[SchedulerMixin]]):
    """Scheduler classes by exact name, imported from diffusers on first use (some pull in scipy)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names

    def __getitem__(self, name: str) -> type[SchedulerMixin]:
        if name not in self._names:
            raise KeyError(name)
        if name in OWN_SCHEDULERS:  # the package's own, imported on use
            return getattr(importlib.import_module(OWN_SCHEDULERS[name]), name)
        return getattr(diffusers, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Names(Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]]):
    """Short scheduler names → (class, config overrides), the class imported on first use."""

    def __init__(self, table: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self._table = table

    def __getitem__(self, name: str) -> tuple[type[SchedulerMixin], dict[str, Any]]:
        class_name, overrides = self._table[name]
        return SCHEDULER_CLASSES[class_name], dict(overrides)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


# The only scheduler classes a trace file may name, looked up by exact class name.
SCHEDULER_CLASSES: Mapping[str, type[SchedulerMixin]] = _Classes(
    (
        "DDIMInverseScheduler",  # DDIM inversion's (diffexplain.inversion)
        "DDIMScheduler",
        "DDPMScheduler",
        "DEISMultistepScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "EulerAncestralDiscreteScheduler",
        "EulerDiscreteScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchEulerInverseScheduler",  # flow reversal's (diffexplain.flow_inversion)
        "FlowMatchHeunDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "LCMScheduler",
        "LMSDiscreteScheduler",
        "PNDMScheduler",
        "SCMScheduler",  # SANA-Sprint's (TrigFlow)
        "UnCLIPScheduler",  # the Kandinsky 2.2 prior's
        "UniPCMultistepScheduler",
    )
)

SCHEDULER_NAMES: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]] = _Names(
    {
        "ddim": ("DDIMScheduler", {}),
        "ddpm": ("DDPMScheduler", {}),
        "pndm": ("PNDMScheduler", {}),
        "lms": ("LMSDiscreteScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "heun": ("HeunDiscreteScheduler", {}),
        "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
        "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        "unipc": ("UniPCMultistepScheduler", {}),
    }
)
"""Short scheduler names of the ε/v families (SD, SDXL): name → (diffusers class, config overrides)."""

FLOW_SCHEDULER_NAMES: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]] = _Names(
    {
        "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
        "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
    }
)
"""Short scheduler names of the flow-matching families (SD3): name → (diffusers class, config overrides)."""

FLOW_SIGMA_SCHEDULER_NAMES: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]] = _Names(
    {
        "flow_euler": ("DPMSolverMultistepScheduler", {"solver_order": 1}),
        "dpm++2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
        "unipc": ("UniPCMultistepScheduler", {}),
    }
)
"""Short scheduler names of a U-Net that predicts a flow velocity (the embedded flow model): the solvers
that take ``use_flow_sigmas`` and ``prediction_type="flow_prediction"`` (first-order DPM-Solver is Euler)."""


SCM_SCHEDULER_NAMES: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]] = _Names(
    {"scm": ("SCMScheduler", {})}
)
"""SANA-Sprint's one scheduler: sCM's TrigFlow sampler (``SCMScheduler``), which reads a TrigFlow velocity."""


def names_for(
    base_config: Any, names: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]]
) -> Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]]:
    """The short names that fit a scheduler config: the flow-sigma ones where it predicts a flow velocity
    (``prediction_type="flow_prediction"``), where DDIM or Euler would misread the output; else ``names``."""
    if dict(base_config).get("prediction_type") == "flow_prediction":
        return FLOW_SIGMA_SCHEDULER_NAMES
    return names


_CONFIG_ATTR = "_internal_dict"


def effective_config(config: Any) -> dict[str, Any]:
    """A scheduler config as the scheduler uses it, safe to pass to ``from_config``.

    diffusers lists the keys a scheduler was built with by default in ``_use_default_values``, and
    ``from_config`` drops those keys. But a pipeline may have patched them since:
    ``StableDiffusionPipeline.__init__`` writes ``steps_offset=1`` and ``clip_sample=False`` into a
    default-built scheduler's config. Dropping the list keeps every value the scheduler really uses.
    """
    return {k: v for k, v in dict(config).items() if k != "_use_default_values"}


def scheduler_by_name(
    name: str,
    base_config: Any,
    names: Mapping[str, tuple[type[SchedulerMixin], dict[str, Any]]] = SCHEDULER_NAMES,
    **config_overrides: Any,
) -> SchedulerMixin:
    """A scheduler from a short name in ``names`` (``"euler_a"``, ``"dpm++2m"``, ...) built on ``base_config``."""
    if name not in names:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(names)}")
    cls, defaults = names[name]
    return cls.from_config(effective_config(base_config), **{**defaults, **config_overrides})


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The allowed scheduler class called ``name``; ``KeyError`` if it is not on the allow-list."""
    return SCHEDULER_CLASSES[name]


def fresh_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A new scheduler of the same class and config, with no state (so runs never leak into each other)."""
    return type(scheduler).from_config(effective_config(scheduler.config))


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 1:
        return value.clone()  # sample-shaped state, which some schedulers update in place (PNDM's PRK +=)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def snapshot(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The scheduler's mutable state: its ``__dict__`` minus the config, containers shallow-copied."""
    return {k: _copy(v) for k, v in vars(scheduler).items() if k != _CONFIG_ATTR}


def restore(
    class_name: str, config: dict[str, Any], state: dict[str, Any], device: torch.device | None = None
) -> SchedulerMixin:
    """A scheduler rebuilt from class name, config and a ``snapshot``.

    Tensors that lived off the CPU (on the original device, or per the ``DEVICES_KEY`` map a loaded
    snapshot carries) are moved to ``device``; CPU tensors stay on the CPU, as the scheduler keeps them.
    """
    scheduler = scheduler_class(class_name).from_config(effective_config(config))
    devices = state.get(DEVICES_KEY, {})
    for key, value in state.items():
        if key == DEVICES_KEY:
            continue
        value = _copy(value)
        if device is not None:
            value = _to_device(value, device, devices.get(key))
        setattr(scheduler, key, value)
    return scheduler


DEVICES_KEY = "__devices__"  # attribute name -> device type, in snapshots loaded from a file


def _to_device(value: Any, device: torch.device, recorded: str | None) -> Any:
    if isinstance(value, list):
        return [_to_device(v, device, recorded) for v in value]
    if isinstance(value, torch.Tensor) and (recorded or value.device.type) != "cpu":
        return value.to(device)
    return value


def describe(scheduler: SchedulerMixin) -> dict[str, Any]:
    """Class name and config of a scheduler, JSON-ready."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": _jsonable(config)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
