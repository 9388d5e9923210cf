"""Configs of the embedded default model and its training presets.

One dataclass per training run; every field has a comment. The shipped weights record the preset
and the exact command that produced them under ``recipe`` in ``models/default/model.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffexplain.errors import TrainConfigError

TEXT_MAX_LENGTH = 32  # tokens per caption (captions are at most ~26 word pieces)


def vae_config(block_out_channels: tuple[int, ...] = (32, 64, 64)) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config: 64×64 RGB → 4×16×16 latents (factor 4 for three blocks)."""
    n = len(block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": min(16, block_out_channels[0]),
        "sample_size": 64,
    }


def unet_config(
    block_out_channels: tuple[int, ...] = (64, 128, 128),
    sample_size: int = 16,
    norm_groups: int = 32,
    pooled_text: bool = False,
    cross_attention: tuple[bool, ...] = (True, True, False),
) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` config with cross-attention on 384-d MiniLM token states.

    ``norm_groups`` is capped at the first block's width. Keep several channels per group: with one
    channel per group, GroupNorm removes each channel's mean per image, and the image-wide offsets
    (a light or dark background; the exact level of the noise at the noisiest steps) must then be
    rebuilt from deeper layers.

    ``pooled_text`` adds diffusers' ``addition_embed_type="text"`` (as DeepFloyd IF does): an
    attention-pooled summary of the token states joins the timestep embedding, so the caption reaches
    every ResNet block, not only the cross-attention layers. It needs no extra input: the U-Net pools
    the same ``encoder_hidden_states`` it attends to.

    ``cross_attention`` says, per resolution level (16×16, 8×8, 4×4 for 16×16 latents), whether its down
    and up blocks attend to the caption (the middle block, at the lowest level, always does). The
    default attends at the two finest levels; ``benchmarks/bench_attention.py`` shows where each layer
    reads an object's words.
    """
    if len(cross_attention) != len(block_out_channels):
        raise TrainConfigError(
            f"cross_attention has {len(cross_attention)} levels, block_out_channels {len(block_out_channels)}; "
            "expected one flag per level"
        )
    extra: dict[str, Any] = {}
    if pooled_text:
        extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": 8}
    return extra | {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 1,
        "down_block_types": [("CrossAttnDownBlock2D" if a else "DownBlock2D") for a in cross_attention],
        "up_block_types": [("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in reversed(cross_attention)],
        "cross_attention_dim": 384,
        "attention_head_dim": 4,
        "norm_num_groups": min(norm_groups, block_out_channels[0]),
    }


def differences(
    theirs: dict[str, Any],
    mine: dict[str, Any],
    keys: Iterable[str] | None = None,
    *,
    mine_label: str = "here",
) -> list[str]:
    """``"key: X there, Y here"`` for each of ``keys`` (default: all of ``mine``'s) whose values differ.

    For errors that refuse a run, a checkpoint or a model folder built with another config.
    """
    return [
        f"{k}: {theirs.get(k)!r} there, {mine[k]!r} {mine_label}"
        for k in (mine if keys is None else keys)
        if theirs.get(k) != mine[k]
    ]


def scheduler_config() -> dict[str, Any]:
    """Training noise schedule (cosine), shared by every inference scheduler of the default model."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "epsilon",
        "clip_sample": False,
    }


OBJECTIVES = ("epsilon", "flow")
"""What a U-Net learns to predict: the noise ε (the default model), or the flow velocity v = ε − x0."""


def flow_scheduler_config() -> dict[str, Any]:
    """The flow model's sampler: diffusers' ``DPMSolverMultistepScheduler`` on flow sigmas, first order.

    With ``use_flow_sigmas`` and ``prediction_type="flow_prediction"`` it reads the output as a velocity
    (x̂0 = x_t − σ·v) on the straight path x_t = (1 − σ)·x0 + σ·ε, as SANA's pipeline does; at first
    order its step is exactly Euler's, x_s = x_t + (σ_s − σ_t)·v. Unlike ``FlowMatchEulerDiscreteScheduler``
    it has ``init_noise_sigma`` and ``scale_model_input``, so ``StableDiffusionPipeline`` runs it unchanged.
    """
    return {
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 1.0,
        "solver_order": 1,
        "final_sigmas_type": "zero",
    }


@dataclass
class TrainConfig:
    """Everything one training run needs; saved next to its checkpoints."""

    name: str = "default"  # preset name
    objective: str = "epsilon"  # what the U-Net predicts: "epsilon" (noise) or "flow" (velocity ε − x0)
    seed: int = 0  # dataset and initialisation seed
    image_size: int = 64  # pixels per side
    two_object_share: float = 0.4  # fraction of two-object scenes in the data
    # VAE stage
    vae_blocks: tuple[int, ...] = (32, 64, 64)
    vae_steps: int = 800  # optimiser steps
    vae_batch: int = 24
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4  # a light KL (per pixel value) keeps latents tame without blurring
    vae_init: str = ""  # a model folder ("default": the shipped one) whose VAE is used; no VAE stages then
    # U-Net stage
    # Stage 2: decoder-only fine-tune (the encoder, so the U-Net's latent space, stays fixed)
    decoder_steps: int = 600
    # Stage 3: U-Net
    unet_blocks: tuple[int, ...] = (32, 64, 128)
    unet_norm_groups: int = 8  # GroupNorm groups in the U-Net (4 channels per group in the first block)
    unet_pooled_text: bool = True  # pooled caption added to the timestep embedding (see unet_config)
    unet_cross_attention: tuple[bool, ...] = (True, True, False)  # per level, from the finest (unet_config)
    latent_pool: int = 24_000  # images encoded once to latents, then reused
    unet_steps: int = 2200
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    caption_dropout: float = 0.1  # share of empty captions, so classifier-free guidance works
    ema_decay: float = 0.995  # ~200-step average; a longer one lags a model that still improves fast
    min_snr_gamma: float = 5.0  # loss weight min(SNR_t, γ)/SNR_t: less effort on nearly clean steps; 0 = off
    # Floor β on the weight of the noisiest steps, in clean-image terms: max(min(SNR_t, γ), β)/SNR_t, at
    # most LOW_SNR_WEIGHT_CAP. Plain ε-loss weighs a wrong layout at t = 960 by SNR ≈ 0.004 (see unet.py).
    low_snr_floor: float = 0.0
    # Weight of the cross-attention loss (training/attention_loss.py): in two-object scenes, each object's
    # colour and shape words are to be read in the object's half of the picture. 0 = off.
    attention_loss_weight: float = 0.0
    # Share of each batch whose t is drawn from the noisiest steps (t ≥ HIGH_NOISE_FROM, where sampling
    # chooses the layout) instead of from all of 0..T−1. 0 = uniform t, as plain diffusion training.
    high_noise_share: float = 0.0
    # A model folder ("default": the shipped one) whose U-Net and VAE this run starts from, or a run folder
    # whose EMA U-Net, VAE and latent pool it starts from.
    unet_init: str = ""
    # bookkeeping
    log_every: int = 25
    checkpoint_every: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainConfig:
        """The config a run folder's ``config.json`` describes, also one written before a field existed.

        Fields added later take the value that reproduces what such older runs trained.
        """
        return cls(**(_BEFORE_FIELDS | saved))

    @property
    def latent_size(self) -> int:
        """Latent pixels per side: each VAE level but the last halves the picture."""
        return self.image_size // 2 ** (len(self.vae_blocks) - 1)

    def unet_config(self, sample_size: int) -> dict[str, Any]:
        """The U-Net config this run trains, for latents of ``sample_size`` per side."""
        return unet_config(
            tuple(self.unet_blocks),
            sample_size,
            self.unet_norm_groups,
            self.unet_pooled_text,
            tuple(self.unet_cross_attention),
        )


# What runs trained before these fields existed: 32 GroupNorm groups, cross-attention only, plain
# min-SNR weights, from scratch.
_BEFORE_FIELDS: dict[str, Any] = {
    "unet_norm_groups": 32,
    "unet_pooled_text": False,
    "low_snr_floor": 0.0,
    "attention_loss_weight": 0.0,
    "high_noise_share": 0.0,
    "unet_init": "",
    "vae_init": "",
    "objective": "epsilon",
}


# Continues a trained model (`--unet-init`, e.g. `default`): binds each two-object caption's words to
# their object's half. The cross-attention loss asks every layer after the first to read an object's
# colour and shape words in its half (training/attention_loss.py), and a quarter of each batch is
# drawn from the noisiest steps, where the queries have to know their place from noise alone.
_BIND = TrainConfig(
    name="bind",
    two_object_share=0.6,
    decoder_steps=0,
    unet_steps=1200,
    unet_lr=5e-4,
    unet_warmup=100,
    low_snr_floor=0.2,
    attention_loss_weight=1.0,
    high_noise_share=0.25,
)

# Rough but recognisable in at most 10 minutes on 2 CPU cores, so a class can watch a model learn:
# only the U-Net trains (the default architecture, from scratch), in the shipped model's VAE
# latents, on one-object scenes. Measured: 8 min 9 s; colour and position 70 %, shape 40 %.
_CLASSROOM = TrainConfig(
    name="classroom",
    two_object_share=0.0,
    vae_init="default",
    decoder_steps=0,
    latent_pool=4096,
    unet_steps=600,
    unet_batch=32,
    unet_lr=1e-3,
    unet_warmup=50,
    ema_decay=0.99,
    low_snr_floor=0.2,
    checkpoint_every=100,
)

PRESETS: dict[str, TrainConfig] = {
    # The shipped model.
    "default": TrainConfig(),
    # Continues a trained `default` model (`--unet-init runs/default/model`): the noisiest steps weigh
    # more (low_snr_floor, see training/unet.py), so the caption, not the starting noise, decides where
    # objects go; and a further decoder fine-tune. Its steps count from 0 from a model folder; from a
    # run folder (`--unet-init RUN`) its decoder stage continues to `decoder_steps` in all.
    "refine": TrainConfig(
        name="refine",
        decoder_steps=900,
        unet_steps=1200,
        unet_lr=5e-4,
        unet_warmup=100,
        low_snr_floor=0.2,
    ),
    "bind": _BIND,
    # Continues a `bind` model (`--unet-init runs/bind/model`): a tenth of the attention weight, so the
    # noise loss wins back the shapes that the full weight cost, while the layers keep reading each
    # object's words in its half. The last stage of the shipped weights.
    "settle": replace(_BIND, name="settle", unet_lr=3e-4, unet_warmup=50, attention_loss_weight=0.1),
    # Continues a `settle` model (`--unet-init default`): three quarters two-object scenes, on fresh
    # images (seed 1), at a lower rate, the attention loss kept at settle's weight. For two-object
    # captions as people write them (issue #21).
    "pairs": replace(
        _BIND,
        name="pairs",
        seed=1,
        two_object_share=0.75,
        unet_lr=2e-4,
        unet_warmup=50,
        attention_loss_weight=0.1,
    ),
    "classroom": _CLASSROOM,
    # The shipped flow model: continues the shipped ε model's U-Net (`--unet-init default`) with the
    # flow objective, so the two models share every part and all they learned but the dialect; two-object
    # scenes and the attention loss as in `pairs`.
    "flow": replace(
        _BIND,
        name="flow",
        objective="flow",
        seed=2,
        two_object_share=0.6,
        unet_steps=1500,
        unet_lr=5e-4,
        unet_warmup=100,
        attention_loss_weight=0.1,
    ),
    # `classroom` with the flow objective: the same U-Net from scratch, in the same time, predicting the
    # velocity, so a class can train both dialects and compare.
    "flow-classroom": replace(_CLASSROOM, name="flow-classroom", objective="flow"),
    # For tests: seconds.
    "tiny": TrainConfig(
        name="tiny",
        image_size=32,
        vae_blocks=(8, 16),
        vae_steps=4,
        vae_batch=4,
        unet_blocks=(16, 32, 32),
        latent_pool=32,
        unet_steps=6,
        unet_batch=8,
        unet_warmup=1,
        ema_decay=0.9,
        decoder_steps=2,
        log_every=1,
        checkpoint_every=3,
    ),
}


PRESETS_NEEDING_INIT: frozenset[str] = frozenset({"refine", "bind", "settle", "pairs", "flow"})
"""Presets that continue another run, so need ``unet_init`` (``--unet-init``)."""


def preset(name: str) -> TrainConfig:
    """A fresh copy of the preset called ``name``."""
    if name not in PRESETS:
        raise TrainConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name].to_dict())
