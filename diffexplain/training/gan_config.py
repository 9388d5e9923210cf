"""Configs of the GAN that stands beside the diffusion model (``diffexplain train --preset gan``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffexplain.errors import TrainConfigError


@dataclass
class GANTrainConfig:
    """Everything one GAN training run needs; saved next to its checkpoints."""

    name: str = "gan"  # preset name
    seed: int = 0  # dataset, initialisation and noise seed
    # pixels per side: the dataset drawn at 32 (the attribute checker reads all of 900 real one-object
    # pictures right at 32 px, as at 64); 32 costs a fifth of 64 per iteration
    image_size: int = 32
    z_dim: int = 64  # length of the generator's noise vector
    width: int = 32  # channels at full resolution; doubled at each halving (models/gan.py)
    iterations: int = 8000  # one discriminator step and one generator step each
    batch: int = 64  # real pictures (and as many generated ones) per iteration
    lr_g: float = 2e-4  # Adam, DCGAN's rates and β1 = 0.5
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = (
        0.999  # a moving average of the generator, kept in the checkpoint (export_gan(ema=True))
    )
    # bookkeeping
    log_every: int = 10  # iterations between log.jsonl lines (losses, D's mean outputs)
    checkpoint_every: int = 200  # iterations between checkpoints (resume) and progress snapshots
    progress_samples: int = 8  # pictures of fixed z stored at each snapshot (progress.safetensors)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("iterations", "batch", "log_every", "checkpoint_every", "progress_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainConfigError(f"{key} must be a whole number of at least 1, got {value!r}")
        for key in ("lr_g", "lr_d"):
            if not getattr(self, key) > 0:
                raise TrainConfigError(f"{key} must be positive, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> GANTrainConfig:
        """The config a run folder's ``config.json`` describes."""
        return cls(**saved)


GAN_PRESETS: dict[str, GANTrainConfig] = {
    # The shipped weights: 32×32 one-object pictures, batches of 64 (~40 min on one busy core).
    "gan": GANTrainConfig(),
    # Visible within 10 minutes on 2 CPU cores: the same networks, half the batch, 1500 iterations
    # (measured: 3 min 50 s with 2 threads on a busy 2-core machine; 78 % clean single objects).
    "gan-classroom": GANTrainConfig(
        name="gan-classroom", iterations=1500, batch=32, ema_decay=0.99, checkpoint_every=100, log_every=10
    ),
    # For tests: seconds.
    "gan-tiny": GANTrainConfig(
        name="gan-tiny",
        image_size=16,
        z_dim=8,
        width=8,
        iterations=6,
        batch=4,
        log_every=1,
        checkpoint_every=3,
        progress_samples=2,
        ema_decay=0.9,
    ),
}

# Fields a run folder's checkpoints depend on: a resume must keep them (iterations may grow or shrink).
GAN_FIXED_FIELDS = ("seed", "image_size", "z_dim", "width", "batch")


def gan_preset(name: str, **overrides: Any) -> GANTrainConfig:
    """A fresh copy of the GAN preset ``name``, with ``overrides`` (e.g. ``iterations=200``)."""
    if name not in GAN_PRESETS:
        raise TrainConfigError(f"unknown GAN preset {name!r}; expected one of {', '.join(GAN_PRESETS)}")
    return replace(GANTrainConfig(**GAN_PRESETS[name].to_dict()), **overrides)
