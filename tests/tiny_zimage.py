"""Tiny Z-Image parts (``ZImagePipeline``), built here from configs with seeded weights (never downloaded).

The shapes of diffusers' own Z-Image test dummies (tests/pipelines/z_image/test_z_image.py): a
``ZImageTransformer2DModel`` of dim 32 (2 heads, RoPE axes 8 + 4 + 4, one noise and one context refiner
layer, two unified layers, 2×2 patches), a 16-channel ``AutoencoderKL`` with Flux's scaling and shift
(downsampling 2), and a ``Qwen3Model`` of width 16 over the local Qwen-style tokenizer
(``tests.tiny_llm_tokenizers.qwen_tokenizer``, Qwen3's chat template). The scheduler is
``FlowMatchEulerDiscreteScheduler`` as Z-Image-Turbo's ``scheduler_config.json`` sets it (shift 3, no
dynamic shifting).

The transformer's ``x_pad_token`` and ``cap_pad_token`` are ``torch.empty`` in diffusers (a checkpoint
fills them): here they are drawn, seeded, as trained weights would be, or outputs would be NaN.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from tests.tiny_llm_tokenizers import QWEN_VOCAB_SIZE, qwen_tokenizer

ZIMAGE_MAX_SEQUENCE_LENGTH = 48  # the tokens the tiny runs pass (the pipeline's default is 512)
ZIMAGE_TEXT_WIDTH = 16  # the LLM's hidden size = the transformer's cap_feat_dim
ZIMAGE_DEFAULT_SAMPLE_SIZE = 8  # latents 8×8: default pictures 16×16 px (real Z-Image: 1024²)

# What `scheduler/scheduler_config.json` of Z-Image-Turbo holds.
ZIMAGE_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def tiny_zimage_transformer(*, seed: int = 0) -> ZImageTransformer2DModel:
    """diffusers' test transformer (dim 32, 2 heads), its pad tokens drawn (seeded) as a checkpoint holds them."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=ZIMAGE_TEXT_WIDTH,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # torch.empty in diffusers: filled as trained weights would be
        transformer.x_pad_token.copy_(torch.randn(transformer.x_pad_token.shape, generator=generator))
        transformer.cap_pad_token.copy_(torch.randn(transformer.cap_pad_token.shape, generator=generator))
    return transformer.eval()


def tiny_zimage_vae(*, seed: int = 0) -> AutoencoderKL:
    """A 16-channel AutoencoderKL (two blocks: downsampling 2) with Flux's scaling and shift factors."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()


def tiny_qwen3(*, seed: int = 0) -> Qwen3Model:
    """A two-layer Qwen3 of width 16 over the tiny Qwen vocabulary (QWEN_VOCAB_SIZE)."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        hidden_size=ZIMAGE_TEXT_WIDTH,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=QWEN_VOCAB_SIZE,
        max_position_embeddings=512,
    )
    return Qwen3Model(config).eval()


def tiny_zimage_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Z-Image-Turbo's scheduler: flow-matching Euler, shift 3 (ZIMAGE_SCHEDULER_CONFIG)."""
    return FlowMatchEulerDiscreteScheduler.from_config(ZIMAGE_SCHEDULER_CONFIG)


def tiny_zimage_parts() -> dict:
    """The components of a ZImagePipeline (see the module docstring)."""
    return dict(
        transformer=tiny_zimage_transformer(),
        scheduler=tiny_zimage_scheduler(),
        vae=tiny_zimage_vae(),
        text_encoder=tiny_qwen3(seed=2),
        tokenizer=qwen_tokenizer(),
    )


def tiny_zimage_pipeline() -> ZImagePipeline:
    """ZImagePipeline(**tiny_zimage_parts()), no progress bar, ``default_sample_size`` 8 (the Explainer's
    default picture 16 px; the pipeline's own default stays 1024); pass max_sequence_length."""
    pipe = ZImagePipeline(**tiny_zimage_parts())
    pipe.default_sample_size = ZIMAGE_DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe
