"""x̂0 for every scheduler, from the scheduler's own noise level at the current step.

Notation (see ``diffexplain.names``)::

    x_t = latents, ε = model output (ε, or v for v-prediction models), x̂0 = pred_x0
    x̂0 = a·x_t + b·ε            one affine map per step; (a, b) below

    ᾱ-space (DDIM, DDPM, PNDM):  ᾱ = alphas_cumprod[t]
        epsilon: a = 1/√ᾱ, b = −√(1−ᾱ)/√ᾱ       v: a = √ᾱ, b = −√(1−ᾱ)
    σ-space (Euler, Euler a, Heun, LMS, KDPM2): σ = sigmas[step_index], x_t = x0 + σ·ε
        epsilon: a = 1, b = −σ                  v: a = 1/(σ²+1), b = −σ/√(σ²+1)
    (α_t, σ_t)-space (DPM-Solver, UniPC): (α_t, σ_t) = scheduler._sigma_to_alpha_sigma_t(sigmas[step_index])
        epsilon: a = 1/α_t, b = −σ_t/α_t        v: a = α_t, b = −σ_t
        on flow sigmas (``use_flow_sigmas``): α_t = 1 − σ, σ_t = σ, and a flow velocity v = ε − x0
        (``prediction_type="flow_prediction"``) gives a = 1, b = −σ
    sample prediction: a = 0, b = 1

Every step also records ᾱ_t and the "variance exploding" σ_t, with σ² = (1−ᾱ)/ᾱ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseLevel:
    """Noise level of one loop step and the map x̂0 = a·latents + b·model_output."""

    a: float  # coefficient of x_t in x̂0
    b: float  # coefficient of the model output (ε or v) in x̂0
    alpha_bar: float  # ᾱ_t, the signal fraction
    sigma: float  # σ_t = √((1−ᾱ)/ᾱ)


def _as_float(value: object) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def step_index(scheduler: object, timestep: torch.Tensor) -> int:
    """The scheduler's step index for ``timestep``, computed as its ``_init_step_index`` would, without side effects."""
    index = getattr(scheduler, "step_index", None)
    if index is not None:
        return int(index)
    begin = getattr(scheduler, "begin_index", None)
    if begin is not None:
        return int(begin)
    if isinstance(timestep, torch.Tensor):
        timestep = timestep.to(scheduler.timesteps.device)
    return int(scheduler.index_for_timestep(timestep))


def _coefficients(prediction_type: str, alpha: float, sigma_t: float) -> tuple[float, float]:
    """(a, b) for x_t = α·x0 + σ_t·ε (variance preserving when α² + σ_t² = 1)."""
    if prediction_type in ("sample", "original_sample"):
        return 0.0, 1.0
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma_t / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma_t
    if prediction_type == "flow_prediction":  # x_t = (1 − σ)·x0 + σ·ε, v = ε − x0
        return 1.0, -sigma_t
    raise ValueError(
        f"unknown prediction_type {prediction_type!r}: expected epsilon, v_prediction, flow_prediction or sample"
    )


def noise_level(scheduler: object, timestep: torch.Tensor) -> NoiseLevel:
    """The noise level and x̂0 coefficients of the step about to be taken with ``timestep``.

    Call it after ``scale_model_input`` and before ``step``, as the loop does.
    """
    prediction_type = scheduler.config.prediction_type
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        # (α_t, σ_t)-space: DPM-Solver, UniPC, DEIS
        alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(sigmas[step_index(scheduler, timestep)])
        alpha, sig = _as_float(alpha_t), _as_float(sigma_t)
        if getattr(scheduler.config, "use_flow_sigmas", False) and prediction_type == "flow_prediction":
            return flow_noise_level(sig)  # α = 1 − σ: the flow path, not variance preserving
        a, b = _coefficients(prediction_type, alpha, sig)
        return NoiseLevel(a, b, alpha * alpha, sig / alpha)
    if sigmas is not None:
        # σ-space: x_t = x0 + σ·ε; the model input was scaled by 1/√(σ²+1)
        index = step_index(scheduler, timestep)
        second_stage = not getattr(scheduler, "state_in_first_order", True)
        if second_stage and hasattr(scheduler, "sigmas_interpol"):  # KDPM2 evaluates at an interpolated σ
            sigma = _as_float(scheduler.sigmas_interpol[index])
        else:
            sigma = _as_float(sigmas[index])
        if prediction_type == "epsilon":
            a, b = 1.0, -sigma
        elif prediction_type == "v_prediction":
            a, b = 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)
        else:
            a, b = _coefficients(prediction_type, 1.0, 0.0)
        return NoiseLevel(a, b, 1.0 / (1.0 + sigma * sigma), sigma)
    # ᾱ-space: DDIM, DDPM, PNDM
    alpha_bar = _as_float(scheduler.alphas_cumprod[int(timestep)])
    a, b = _coefficients(prediction_type, math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar))
    return NoiseLevel(a, b, alpha_bar, math.sqrt((1.0 - alpha_bar) / alpha_bar))


def flow_noise_level(sigma: float) -> NoiseLevel:
    """The noise level of a flow-matching step at σ: x̂0 = x_t − σ·v (a = 1, b = −σ), ᾱ the signal fraction
    (1 − σ)² / ((1 − σ)² + σ²) of the same noise-to-signal ratio, σ_VE = σ/(1 − σ) (infinite at σ = 1)."""
    signal = 1.0 - sigma
    alpha_bar = signal * signal / (signal * signal + sigma * sigma)
    sigma_ve = math.inf if signal <= 0.0 else sigma / signal
    return NoiseLevel(1.0, -sigma, alpha_bar, sigma_ve)


def pred_x0_from(latents: torch.Tensor, model_output: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """x̂0 = a·x_t + b·ε."""
    if level.a == 0.0:
        return model_output * level.b
    return level.a * latents + level.b * model_output


def model_output_from(pred_x0: torch.Tensor, latents: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """The model output ε with which the scheduler moves toward ``pred_x0``: ε = (x̂0 − a·x_t) / b."""
    return (pred_x0 - level.a * latents) / level.b
