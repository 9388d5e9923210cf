"""Configs of the embedded pixel cascade (``diffexplain train --preset pixel-cascade``).

The Imagen recipe at toy scale, in DeepFloyd IF's format: a frozen language-model encoder (MiniLM),
a base model that denoises 16×16 *pixels* (no VAE), and a super-resolution diffusion model that draws
64×64 pixels beside the base picture upscaled (and noised to a ``noise_level``). Both U-Nets predict
ε and a learned variance (6 output channels, DDPM ``variance_type="learned_range"``), as IF's do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffexplain.errors import TrainConfigError

STAGES = ("I", "II")


@dataclass
class CascadeTrainConfig:
    """Everything one cascade training run needs; saved next to its checkpoints."""

    name: str = "pixel-cascade"  # preset name
    seed: int = 0  # dataset, initialisation, noise and timestep seed
    image_size: int = 64  # stage II's pictures (the dataset is drawn at this size)
    base_size: int = 16  # stage I's pictures: the dataset's pictures area-averaged down to this size
    two_object_share: float = 0.5  # share of two-object scenes in the training data
    # stage I: the default latent U-Net's shape (3 levels, attention at the two finest), on pixels
    base_blocks: tuple[int, ...] = (32, 64, 128)
    base_cross_attention: tuple[bool, ...] = (True, True, False)
    # "default": start stage I from the shipped latent U-Net (same 16×16 grid; only the first and last
    # convolutions differ: 4 latent channels in and out there, 3 pixel channels in and 6 out here)
    base_init: str = "default"
    base_steps: int = 3000
    base_batch: int = 64
    base_lr: float = 2e-4
    # stage II: full resolution without attention, the caption read at the lowest level only
    sr_blocks: tuple[int, ...] = (32, 64, 96)
    sr_cross_attention: tuple[bool, ...] = (False, False, True)
    sr_steps: int = 3800
    sr_batch: int = 32
    sr_lr: float = 3e-4
    sr_crop: int = 32  # stage II trains on random crops of this size (0: whole pictures); it is convolutional
    # Stage II trains in two phases. Phase 1, its first sr_crop_steps steps (0: all of them): crops (4× cheaper)
    # and ε-prediction. Phase 2: whole pictures (the group norms then learn the statistics they meet at 64×64)
    # and sr_prediction. "v_prediction": at the noisy steps v ≈ −x0, which the model reads off its upscaled
    # picture; ε there is ≈ x_t, which a small U-Net reproduces too roughly for x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ
    # (measured: x̂0 6× further from the picture at t = 950 than the upscaled picture itself, with or
    # without it). IFSuperResolutionPipeline runs either: the scheduler's prediction_type says which.
    sr_crop_steps: int = 2500
    sr_prediction: str = "v_prediction"
    # phase 2's loss weight clamp(1/SNR_t, 1, cap) (0: off): with ε-prediction, the x̂0 error at the noisy
    # steps (tried at 20 and 1000: it did not fix ε's precision problem above; v-MSE already weighs x̂0)
    sr_noisy_weight_cap: float = 0.0
    sr_noise_max: int = 500  # training noise levels of the upscaled picture: uniform on 0..sr_noise_max − 1
    # both stages
    warmup: int = 100
    caption_dropout: float = 0.1  # share of empty captions (classifier-free guidance needs ε(x_t, ∅))
    # ε-loss weight min(SNR, γ)/SNR (0: off, every step weighs 1). Off for pixels: with γ = 5 the nearly
    # clean steps weigh ~1e-4, the model never learns to remove the last bit of noise, and in pixel space
    # (no VAE decoder to smooth it) that noise stays in the picture (measured: ε error ≈ 1 at t ≤ 20)
    min_snr_gamma: float = 0.0
    vlb_weight: float = 1.0  # weight of the variational bound that trains the variance half (bits/dim)
    ema_decay: float = 0.995
    log_every: int = 25
    checkpoint_every: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_blocks = tuple(self.base_blocks)
        self.base_cross_attention = tuple(self.base_cross_attention)
        self.sr_blocks = tuple(self.sr_blocks)
        self.sr_cross_attention = tuple(self.sr_cross_attention)
        for key in ("base_steps", "sr_steps", "base_batch", "sr_batch", "log_every", "checkpoint_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainConfigError(f"{key} must be a whole number of at least 1, got {value!r}")
        if self.image_size % self.base_size or self.image_size <= self.base_size:
            raise TrainConfigError(
                f"image_size ({self.image_size}) must be a larger multiple of base_size ({self.base_size})"
            )
        if self.sr_crop and (self.sr_crop > self.image_size or self.sr_crop % 8):
            raise TrainConfigError(
                f"sr_crop must be 0 or a multiple of 8 up to image_size ({self.image_size}); got {self.sr_crop}"
            )
        if (
            isinstance(self.sr_crop_steps, bool)
            or not isinstance(self.sr_crop_steps, int)
            or self.sr_crop_steps < 0
        ):
            raise TrainConfigError(
                f"sr_crop_steps must be a whole number of at least 0, got {self.sr_crop_steps!r}"
            )
        if self.sr_prediction not in ("epsilon", "v_prediction"):
            raise TrainConfigError(
                f"sr_prediction must be 'epsilon' or 'v_prediction', got {self.sr_prediction!r}"
            )
        if not self.sr_noisy_weight_cap >= 0:
            raise TrainConfigError(
                f"sr_noisy_weight_cap must be 0 (off) or more, got {self.sr_noisy_weight_cap!r}"
            )
        if not 0 < self.sr_noise_max <= 1000:
            raise TrainConfigError(f"sr_noise_max must be in 1..1000, got {self.sr_noise_max}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        saved = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in saved.items()}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> CascadeTrainConfig:
        """The config a run folder's ``config.json`` describes."""
        return cls(**saved)


CASCADE_PRESETS: dict[str, CascadeTrainConfig] = {
    # The shipped weights (see docs/models/pixel-cascade.md for the measured figures and the times).
    "pixel-cascade": CascadeTrainConfig(),
    # For tests: seconds, from scratch.
    "pixel-cascade-tiny": CascadeTrainConfig(
        name="pixel-cascade-tiny",
        image_size=32,
        base_size=16,
        base_blocks=(8, 16),
        base_cross_attention=(True, False),
        base_init="",
        base_steps=4,
        base_batch=4,
        sr_blocks=(8, 16),
        sr_cross_attention=(False, True),
        sr_steps=4,
        sr_batch=4,
        sr_crop=16,
        sr_crop_steps=2,
        warmup=2,
        log_every=1,
        checkpoint_every=2,
        ema_decay=0.9,
    ),
}

# Fields a run folder's checkpoints depend on: a resume must keep them (the step counts may change).
CASCADE_FIXED_FIELDS = (
    "seed",
    "image_size",
    "base_size",
    "base_blocks",
    "base_cross_attention",
    "sr_blocks",
    "sr_cross_attention",
    "base_batch",
    "sr_batch",
)


def cascade_preset(name: str, **overrides: Any) -> CascadeTrainConfig:
    """A fresh copy of the cascade preset ``name``, with ``overrides`` (e.g. ``base_steps=200``)."""
    if name not in CASCADE_PRESETS:
        raise TrainConfigError(
            f"unknown pixel-cascade preset {name!r}; expected one of {', '.join(CASCADE_PRESETS)}"
        )
    return replace(CascadeTrainConfig(**CASCADE_PRESETS[name].to_dict()), **overrides)
