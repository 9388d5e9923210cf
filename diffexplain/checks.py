"""Argument checks of the public API (``Explainer.run`` and ``fork``, ``Trace``, the interventions...):
each error names the argument, the value and what is expected, before anything runs."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from diffexplain.errors import user_stacklevel

SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes without overflowing


def _whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (Python or numpy integer, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_prompt(prompt: Any, name: str = "prompt") -> None:
    """A string, or a non-empty list of strings."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(p, str) for p in prompt):
        if isinstance(prompt, tuple):
            raise TypeError(f"{name} must be a string or a list of strings, got a tuple: pass list({name})")
        return
    if isinstance(prompt, list | tuple) and not prompt:
        raise ValueError(f"{name} is an empty list: give at least one prompt")
    raise TypeError(f"{name} must be a string or a list of strings, got {_show(prompt)}")


def check_negative_prompt(negative_prompt: Any, batch_size: int) -> None:
    """None, a string, or a list of strings with one entry per prompt."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return
    check_prompt(negative_prompt, "negative_prompt")
    if len(negative_prompt) != batch_size:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch_size}")


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}"
    if low is not None:
        return f" ≥ {low:g}"
    if high is not None:
        return f" ≤ {high:g}"
    return ""


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    meaning: str = "",
) -> float:
    """A finite real number in [``low``, ``high``] (each bound where given), returned as a float.

    Python and numpy ints and floats are taken; a bool, a string or None is a ``TypeError``; NaN, ±inf
    or a number out of range a ``ValueError``. Each message names the argument, the value and what is
    expected; ``meaning`` says in a few words what the number is, e.g. "w; ≤ 1 turns guidance off".
    Every float argument of the public API is checked here, so NaN and inf are refused everywhere alike.
    """
    note = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{note}, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf if value > 0 else -math.inf
    out_of_range = (low is not None and number < low) or (high is not None and number > high)
    if not math.isfinite(number) or out_of_range:
        raise ValueError(f"{name} must be a finite number{_bounds(low, high)}{note}, got {number!r}")
    return number


def check_optional_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    meaning: str = "",
) -> float | None:
    """None, or what ``check_float`` takes."""
    return None if value is None else check_float(name, value, low, high, meaning=meaning)


def check_guidance_scale(guidance_scale: Any, name: str = "guidance_scale") -> float:
    """A finite number ≥ 0 (w ≤ 1 turns guidance off); returned as a float."""
    return check_float(name, guidance_scale, low=0.0, meaning="w; ≤ 1 turns guidance off")


def check_steps(num_inference_steps: Any) -> int:
    """A whole number ≥ 1."""
    steps = _whole(num_inference_steps)
    if steps is None or steps < 1:
        raise ValueError(
            f"num_inference_steps must be a whole number of at least 1, got {num_inference_steps!r}"
        )
    return steps


def check_seed(seed: Any) -> int | None:
    """None, or a whole number in ``SEED_RANGE``."""
    if seed is None:
        return None
    low, high = SEED_RANGE
    whole = _whole(seed)
    if whole is None:
        raise TypeError(f"seed must be a whole number from {low} to 2**64 − 1, got {_show(seed)}")
    if not low <= whole <= high:
        raise ValueError(f"seed must be a whole number from {low} to 2**64 − 1, got {whole}")
    return whole


def check_size(name: str, value: Any, multiple: int, why: str) -> int:
    """A positive whole number of pixels that is a multiple of ``multiple`` (the model's size factor)."""
    whole = _whole(value)
    if whole is None or whole < 1:
        raise ValueError(f"{name} must be a positive whole number of pixels, got {value!r}")
    value = whole
    if value % multiple:
        lower = value - value % multiple
        options = f"{lower} or {lower + multiple}" if lower else f"{multiple}"
        raise ValueError(f"{name} must be a multiple of {multiple} ({why}), got {value}: use {options}")
    return value


def check_fork_step(step: Any, num_steps: int) -> int:
    """A loop step index: 0..N−1, or negative counting from the end (−1 is the last step); returns 0..N−1."""
    whole = _whole(step)
    if whole is None:
        raise TypeError(f"step must be a whole number (a loop step index), got {_show(step)}")
    step = whole
    if num_steps == 0:
        raise IndexError(f"cannot fork at step {step}: the trace has no finished steps")
    if not -num_steps <= step < num_steps:
        raise IndexError(
            f"cannot fork at step {step}: the trace has {num_steps} finished steps "
            f"(0..{num_steps - 1}, or −1..−{num_steps} from the end)"
        )
    return step % num_steps


def check_flag(name: str, value: Any) -> bool:
    """A True/False setting; ``TypeError`` naming it for anything else (a string "False" is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


START_SIGNAL_LIMIT = 0.05
"""The most signal (ᾱ at the first timestep) a run may expect in the pure noise it starts from."""
START_GAIN_LIMIT = 250.0
"""The largest |b| in x̂0 = a·x_t + b·ε at the first step before the model's errors blow up."""


def check_start_level(level: Any, timestep: float, num_steps: int) -> None:
    """A ``UserWarning`` when the first step's noise level (a ``NoiseLevel``) is known to break sampling.

    - Too little noise: the loop starts from pure noise, but with "leading" timestep spacing (DDIM,
      PNDM) the first timestep can be far below the last training step (1 step: t = 0; 2 steps:
      t = 500; 400 steps: t = 798, as 1000 // 400 = 2). The sampler reads the noise as a partly
      finished picture and returns it noisy.
    - Too much: where ᾱ is nearly 0 (the cosine schedule's last steps, t ≥ 998), x̂0 = a·x_t + b·ε
      with |b| in the hundreds: the model's small error in ε becomes a large one in x̂0, and the
      following steps carry it into the picture (garbage at 500 or 1000 steps; 25 steps start at 960).
    """
    alpha_bar, gain = float(level.alpha_bar), abs(float(level.b))
    if alpha_bar > START_SIGNAL_LIMIT:
        warnings.warn(
            f"num_inference_steps={num_steps}: this scheduler's first step is t = {timestep:g}, where "
            f"x_t is meant to be {100 * alpha_bar:.0f} % picture, but the loop starts from pure noise: "
            "expect a noisy or washed-out picture. Take a step count whose first step is near the last "
            "training step (e.g. 10 to 250 steps with DDIM's 'leading' spacing), or, where the schedule "
            "leaves some signal at its last step (SD 1.x/2.x, SDXL; not the embedded default model, whose "
            "ᾱ there is about 2e-9), a scheduler that starts at the noisiest step: "
            "explainer.set_scheduler('ddim', timestep_spacing='trailing').",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    elif gain > START_GAIN_LIMIT:
        warnings.warn(
            f"num_inference_steps={num_steps}: the first step is t = {timestep:g}, where ᾱ = "
            f"{alpha_bar:.1e} and x̂0 = a·x_t + b·ε has |b| = {gain:.0f}: the model's small errors in ε "
            "become large ones in x̂0, and later steps carry them into the picture (expect garbage). "
            "Use fewer steps (e.g. 25 to 250 with DDIM), whose first step is less extreme.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
