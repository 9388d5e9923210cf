"""The hybrid loss of a U-Net that predicts ε and its own variance (Nichol & Dhariwal 2021, IF's recipe).

Notation (one training step t, ᾱ_t = alphas_cumprod[t], β_t = 1 − ᾱ_t/ᾱ_{t−1})::

    model output [B, 2C, H, W] = [ε̂ ; v],  v ∈ [-1, 1]
    log σ²_θ = f·log β_t + (1 − f)·log β̃_t,  f = (v + 1)/2     DDPM's "learned_range", as diffusers
    β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)                          the true posterior's variance
    μ̃_t = c0·x0 + ct·x_t                                        the true posterior's mean
    μ_θ = c0·x̂0 + ct·x_t,  x̂0 = (x_t − √(1 − ᾱ_t)·sg(ε̂))/√ᾱ_t   ε is not moved by this term
    L = w_t·‖ε̂ − ε‖² + λ·KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)) / ln 2     bits per dimension

The stop-gradient (sg) lets the bound train only the variance half, as in the paper's L_hybrid.
"""

from __future__ import annotations

import math

import torch


class PosteriorTerms:
    """Per-timestep constants of q(x_{t−1} | x_t, x0) for a noise schedule's ``alphas_cumprod`` [T]."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        a = alphas_cumprod.double()
        a_prev = torch.cat([a.new_ones(1), a[:-1]])
        betas = 1 - a / a_prev
        variance = betas * (1 - a_prev) / (1 - a)
        self.sqrt_a = a.sqrt().float()
        self.sqrt_1ma = (1 - a).sqrt().float()
        self.log_beta = betas.log().float()
        # β̃_0 is 0: use β̃_1 there, as guided-diffusion does (diffusers clamps it to 1e-20 instead)
        self.log_variance = torch.cat([variance[1:2], variance[1:]]).log().float()
        self.coef_x0 = (betas * a_prev.sqrt() / (1 - a)).float()
        self.coef_xt = ((1 - a_prev) * (1 - betas).sqrt() / (1 - a)).float()

    def at(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """values[t] shaped [B, 1, 1, 1] to broadcast over pictures."""
        return values.to(t.device)[t].view(-1, 1, 1, 1)

    def vlb_bits(
        self, eps_pred: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """KL(q ‖ p_θ) per picture [B], in bits per dimension; gradients reach ``v`` only."""
        x0_pred = (x_t - self.at(self.sqrt_1ma, t) * eps_pred.detach()) / self.at(self.sqrt_a, t)
        mean_true = self.at(self.coef_x0, t) * x0 + self.at(self.coef_xt, t) * x_t
        mean_model = self.at(self.coef_x0, t) * x0_pred + self.at(self.coef_xt, t) * x_t
        frac = (v + 1) / 2
        log_var_model = frac * self.at(self.log_beta, t) + (1 - frac) * self.at(self.log_variance, t)
        log_var_true = self.at(self.log_variance, t)
        kl = 0.5 * (
            -1.0
            + log_var_model
            - log_var_true
            + torch.exp(log_var_true - log_var_model)
            + (mean_true - mean_model) ** 2 * torch.exp(-log_var_model)
        )
        return kl.mean(dim=(1, 2, 3)) / math.log(2.0)


def snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR ε-loss weights min(SNR_t, γ)/SNR_t [T] (Hang et al. 2023); all 1 when ``gamma`` is 0."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (gamma / snr).clamp(max=1.0) if gamma > 0 else torch.ones_like(snr)


def noisy_step_weights(alphas_cumprod: torch.Tensor, cap: float) -> torch.Tensor:
    """ε-loss weights clamp(1/SNR_t, 1, cap) [T]; all 1 when ``cap`` is 0.

    ‖x̂0 − x0‖² = ‖ε̂ − ε‖²/SNR_t, so this is the "truncated SNR" loss max(SNR_t, 1)·‖x̂0 − x0‖² of
    Salimans & Ho (2022): the ε error where SNR_t ≥ 1, the x̂0 error at the noisy steps (``cap`` only keeps
    the last steps, where SNR_t → 0, finite). Plain ε-MSE scales the x̂0 error down by SNR_t (×0.006 at
    t = 950): a super-resolution model trained on it barely reads its upscaled picture at the noisy steps,
    the very steps where sampling settles colours and background."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (1 / snr).clamp(min=1.0, max=cap) if cap > 0 else torch.ones_like(snr)
