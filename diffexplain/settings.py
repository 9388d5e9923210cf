"""The settings of one run: what it was asked to do, checked once, and what it ran on.

``RunSettings`` is frozen: a fork or a cascade stage derives its own with ``dataclasses.replace``, and
the loop records what it learns while running (the attention layers and tokens) the same way. A trace
holds it as ``trace.run_settings``; ``trace.settings`` is its JSON form (``to_json``), the dict users
and trace files have always read. ``from_json`` reads that form back, from files of every version,
and is the one place a file's settings are validated.

Adding a setting: one field here (with a default, so that older files still load) and the code that
uses it. A key this version does not know (a file from a newer diffexplain) is kept in ``extra`` and
written back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from diffexplain.scheduler_state import SCHEDULER_CLASSES

GENERATOR_DEVICES = ("cpu", "cuda", "mps", "xpu")
MAX_CONFIG_INT = 10**7  # larger ints in a scheduler config are treated as hostile (huge allocations)


class SettingsError(ValueError):
    """Settings that cannot describe a run: a wrong type, a missing key, a class not allowed."""


@dataclass(frozen=True)
class RunSettings:
    """One run's settings (diffusers' argument names), and the context it ran in.

    A fork's or a cascade stage's settings are ``dataclasses.replace(settings, ...)`` of another's.
    Lists (``prompt``, ``options`` values) are shared with the JSON form: do not mutate them.
    """

    # ---- what the run was asked to do (checked by the Explainer before it starts)
    prompt: str | list[str]
    num_inference_steps: int
    guidance_scale: float  # w
    height: int  # H, the picture's size in pixels
    width: int  # W
    negative_prompt: str | list[str] = ""
    do_cfg: bool = True  # guidance on: decided once, from w and the model (guidance.guidance_on)
    seed: int | None = None  # None: the caller passed its own generator
    generator_device: str = "cpu"
    eta: float = 0.0
    decode: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)  # the family's own (run_options), JSON-ready
    restart: bool = True  # a restart point per step (what a fork needs)
    attention_maps: bool = True  # each step's cross-attention maps
    guider: Mapping[str, Any] | None = None  # the guidance method (Guider.describe()); None: ε_u + w·Δ
    # img2img (diffexplain.img2img): s, and t_start = N − min(⌊N·s⌋, N), the inference steps skipped;
    # None for a run from noise (and files from before), left out of the JSON form then
    strength: float | None = None
    entry_step: int | None = None
    # inpainting (diffexplain.inpaint): "blend" (a regular U-Net, the known region blended back each step)
    # or "channels" (an inpainting U-Net: mask and masked picture as input channels); None otherwise
    inpaint: str | None = None
    # ---- what it ran on (recorded by the Explainer)
    scheduler: Mapping[str, Any] = field(default_factory=dict)  # {"class": ..., "config": {...}}
    # what the model output is: "epsilon", "v_prediction", "flow_prediction" (a flow velocity read by a
    # flow-sigma scheduler) or "flow" (a flow family: SD3, Flux)
    prediction_type: str | None = None
    model: Mapping[str, Any] = field(default_factory=dict)  # family, name, parts, fingerprint...
    latent_rgb: list[list[float]] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # CPU threads of the run (None: a GPU, or a file from before)
    # ---- what the loop learned while running
    attention: Mapping[str, Any] | None = None  # layers, tokens, maps, first_step, resolutions
    # ---- keys this version does not know (a newer file's), written back unchanged
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def batch_size(self) -> int:
        """B: the number of prompts."""
        return 1 if isinstance(self.prompt, str) else len(self.prompt)

    @property
    def inference_steps_run(self) -> int:
        """The inference steps the loop runs: N, less those a run from a picture skips (``entry_step``)."""
        return self.num_inference_steps - (self.entry_step or 0)

    @property
    def family(self) -> str:
        """The name of the family that made the run ("sd" for files that do not say)."""
        return str(self.model.get("family", "sd"))

    @property
    def fingerprint(self) -> str | None:
        """The weights' fingerprint, where recorded."""
        return self.model.get("fingerprint") or None

    def replace(self, **changes: Any) -> RunSettings:
        """``dataclasses.replace``: these settings with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    # ---- JSON -------------------------------------------------------------------------------------
    @cached_property
    def _json(self) -> Mapping[str, Any]:
        doc: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("attention", "strength", "entry_step", "inpaint") and value is None:
                continue  # as files always had it: no key without attention (or without a picture)
            doc[f.name] = _plain(value)
        doc.update({k: v for k, v in self.extra.items() if k not in doc})
        return MappingProxyType(doc)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``trace.settings``): a new dict of plain JSON values."""
        return _plain(self._json)

    def as_mapping(self) -> Mapping[str, Any]:
        """The JSON form, read-only and made once (``trace.settings``)."""
        return self._json

    @classmethod
    def from_json(cls, doc: Any) -> RunSettings:
        """Settings from their JSON form, of any file version; ``SettingsError`` naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise SettingsError(f"settings should be a JSON object; got {type(doc).__name__}")
        for key in ("prompt", "guidance_scale", "scheduler"):
            if key not in doc:
                raise SettingsError(f"missing key {key!r} in settings")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in doc.items() if k in known}
        guidance_scale = _number(doc["guidance_scale"], "guidance_scale")
        values.setdefault("do_cfg", guidance_scale > 1.0)  # version 1 files: guidance on iff w > 1
        values.setdefault("negative_prompt", "")
        for key in ("num_inference_steps", "height", "width"):  # interrupted files of version 1 lack none
            if key not in values:
                raise SettingsError(f"missing key {key!r} in settings")
        if "attention_maps" not in values:  # files from before: maps were kept where "attention" says so
            info = doc.get("attention")
            values["attention_maps"] = bool(info.get("maps")) if isinstance(info, Mapping) else False
        values["options"] = values.get("options") or {}
        extra = {k: v for k, v in doc.items() if k not in known}
        return cls(**values, extra=extra)


def _plain(value: Any) -> Any:
    """A JSON value with every mapping a new dict and every tuple a list."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingsError(f"settings.{name} should be a finite number; got {value!r}")
    return float(value)


def _whole(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SettingsError(f"settings.{name} should be a whole number ≥ {low}; got {value!r}")


def _texts(value: Any, name: str) -> None:
    ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(p, str) for p in value))
    if not ok:
        raise SettingsError(f"settings.{name} should be a string or a list of strings; got {value!r}")


def _flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise SettingsError(f"settings.{name} should be true or false; got {value!r}")


def _mapping(value: Any, name: str) -> None:
    if not isinstance(value, Mapping):
        raise SettingsError(f"settings.{name} should be a JSON object; got {type(value).__name__}")


def _check(s: RunSettings) -> None:
    """Every field's type, and the scheduler against the allow-list: the one check of settings."""
    _texts(s.prompt, "prompt")
    _texts(s.negative_prompt, "negative_prompt")
    _whole(s.num_inference_steps, "num_inference_steps", 1)
    _whole(s.height, "height", 1)
    _whole(s.width, "width", 1)
    _number(s.guidance_scale, "guidance_scale")
    _number(s.eta, "eta")
    for name in ("do_cfg", "decode", "restart", "attention_maps"):
        _flag(getattr(s, name), name)
    if s.seed is not None:
        _whole(s.seed, "seed", 0)
    if s.generator_device not in GENERATOR_DEVICES:
        raise SettingsError(
            f"settings.generator_device must be one of {GENERATOR_DEVICES}; got {s.generator_device!r}"
        )
    if s.threads is not None:
        _whole(s.threads, "threads", 1)
    if (s.strength is None) != (s.entry_step is None):
        raise SettingsError("settings.strength and settings.entry_step go together (a run from a picture)")
    if s.strength is not None and not 0.0 < _number(s.strength, "strength") <= 1.0:
        raise SettingsError(f"settings.strength should be in (0, 1]; got {s.strength!r}")
    if s.entry_step is not None:
        _whole(s.entry_step, "entry_step", 0)
        if s.entry_step >= s.num_inference_steps:
            raise SettingsError(
                f"settings.entry_step = {s.entry_step} skips all {s.num_inference_steps} inference steps"
            )
    if s.inpaint not in (None, "blend", "channels"):
        raise SettingsError(f"settings.inpaint should be 'blend', 'channels' or null; got {s.inpaint!r}")
    if s.inpaint is not None and s.strength is None:
        raise SettingsError("settings.inpaint needs settings.strength (inpainting starts from a picture)")
    for name in ("options", "model", "scheduler", "extra"):
        _mapping(getattr(s, name), name)
    if s.attention is not None:
        _mapping(s.attention, "attention")
    if s.guider is not None:
        _mapping(s.guider, "guider")
        if not isinstance(s.guider.get("name"), str):
            raise SettingsError("settings.guider should name its guider ('name')")
    for name in ("prediction_type",):
        value = getattr(s, name)
        if value is not None and not isinstance(value, str):
            raise SettingsError(f"settings.{name} should be a string or null; got {value!r}")
    _check_scheduler(s.scheduler)


def _check_scheduler(scheduler: Mapping[str, Any]) -> None:
    name = scheduler.get("class")
    if not isinstance(name, str):
        raise SettingsError("settings.scheduler should hold the scheduler's 'class' name")
    if name not in SCHEDULER_CLASSES:
        raise SettingsError(
            f"scheduler class {name!r} is not allowed; allowed: {', '.join(sorted(SCHEDULER_CLASSES))}"
        )
    config = scheduler.get("config")
    if not isinstance(config, Mapping):
        raise SettingsError("settings.scheduler should hold the scheduler's 'config' (a JSON object)")
    for key, value in config.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_CONFIG_INT for v in values):
            raise SettingsError(f"settings.scheduler.config.{key} = {value!r} is absurdly large")
        if any(isinstance(v, dict | list) for v in values):
            raise SettingsError(f"settings.scheduler.config.{key} is nested too deeply")
