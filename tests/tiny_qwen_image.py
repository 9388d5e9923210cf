"""Tiny, seeded, offline parts for Qwen-Image (``QwenImagePipeline``), in the shapes of diffusers' own
test dummies (``tests/pipelines/qwenimage/test_qwenimage.py``), built here: nothing is downloaded.

* ``text_encoder``: ``Qwen2_5_VLForConditionalGeneration`` (2 layers, hidden 16, 2 heads, a 2-block vision
  tower that text-to-image never calls) over the local Qwen-style byte-level BPE of
  ``tests.tiny_llm_tokenizers`` (``qwen_tokenizer()``; the config's vocabulary is ``QWEN_VOCAB_SIZE``);
* ``transformer``: ``QwenImageTransformer2DModel``, 2 double-stream blocks of 3 heads × 16 dims, RoPE axes
  (8, 4, 4), ``joint_attention_dim`` 16 (the text encoder's hidden size), ``in_channels`` 16 (4 latent
  channels × a 2×2 patch), ``out_channels`` 4, no guidance embedding (as Qwen-Image);
* ``vae``: ``AutoencoderKLQwenImage`` (a Wan-style 3-D VAE, one frame), z_dim 4, spatial factor 4
  (``temperal_downsample=[False, True]``), ``latents_mean`` / ``latents_std`` set to a non-trivial
  per-channel normalisation so that decoding checks it;
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with Qwen-Image's settings (``QWEN_SCHEDULER_CONFIG``:
  dynamic shifting with an exponential time shift, ``shift_terminal`` 0.02).

``tiny_qwen_image_pipeline()`` sets ``default_sample_size`` to 8: the default image is 32 × 32 px, latents
[B, 4, 8, 8] unpacked, [B, 16, 16] packed. Tests should pass ``max_sequence_length=QWEN_MAX_SEQUENCE_LENGTH``
(the pipeline's default is 512).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from tests.tiny_llm_tokenizers import QWEN_VOCAB_SIZE, qwen_tokenizer

QWEN_TEXT_DIM = 16  # the text encoder's hidden size = transformer joint_attention_dim
QWEN_LATENT_CHANNELS = 4  # the VAE's z_dim; the transformer reads 4 × 4 = 16 per packed token
QWEN_MAX_SEQUENCE_LENGTH = 64  # what tests pass as max_sequence_length (the pipeline's default: 512)
QWEN_DEFAULT_SAMPLE_SIZE = 8  # latent side of the default image (the pipeline's default_sample_size: 128)
QWEN_LATENTS_MEAN = [0.1, -0.2, 0.05, 0.0]
QWEN_LATENTS_STD = [1.5, 0.8, 1.2, 2.0]

# Qwen-Image's scheduler settings (its scheduler_config.json, as published with the weights)
QWEN_SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.02,
    time_shift_type="exponential",
    use_dynamic_shifting=True,
)


def tiny_qwen_text_encoder(*, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL as diffusers' test builds it, with the local tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": QWEN_TEXT_DIM,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": QWEN_VOCAB_SIZE,
            "bos_token_id": 0,  # <|endoftext|> and <|im_end|> of the local vocabulary, as Qwen's own
            "eos_token_id": 2,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": QWEN_TEXT_DIM,
        },
        hidden_size=QWEN_TEXT_DIM,
        vocab_size=QWEN_VOCAB_SIZE,
        bos_token_id=0,
        eos_token_id=2,
        # the vision markers sit outside the tiny vocabulary's ids a prompt uses (never in a text prompt)
        vision_start_token_id=QWEN_VOCAB_SIZE - 3,
        vision_end_token_id=QWEN_VOCAB_SIZE - 2,
        vision_token_id=QWEN_VOCAB_SIZE - 1,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_transformer(*, seed: int = 0, guidance_embeds: bool = False) -> QwenImageTransformer2DModel:
    """diffusers' test transformer: 2 double-stream blocks, 3 heads × 16 dims."""
    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * QWEN_LATENT_CHANNELS,
        out_channels=QWEN_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=QWEN_TEXT_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(8, 4, 4),
    ).eval()


def tiny_qwen_vae(*, seed: int = 0) -> AutoencoderKLQwenImage:
    """diffusers' test 3-D VAE (z_dim 4, spatial factor 4), with a per-channel latent normalisation."""
    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=QWEN_LATENT_CHANNELS * 6,
        z_dim=QWEN_LATENT_CHANNELS,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=QWEN_LATENTS_MEAN,
        latents_std=QWEN_LATENTS_STD,
    ).eval()


def tiny_qwen_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Flow-matching Euler with Qwen-Image's settings (``QWEN_SCHEDULER_CONFIG``)."""
    return FlowMatchEulerDiscreteScheduler.from_config(QWEN_SCHEDULER_CONFIG)


def tiny_qwen_image_parts(*, guidance_embeds: bool = False) -> dict:
    """The components of a QwenImagePipeline (see the module docstring)."""
    return dict(
        transformer=tiny_qwen_transformer(guidance_embeds=guidance_embeds),
        scheduler=tiny_qwen_scheduler(),
        vae=tiny_qwen_vae(),
        text_encoder=tiny_qwen_text_encoder(),
        tokenizer=qwen_tokenizer(),
    )


def tiny_qwen_image_pipeline(**parts_kwargs) -> QwenImagePipeline:
    """QwenImagePipeline(**tiny_qwen_image_parts()), default image 32 × 32 px, no progress bar."""
    pipe = QwenImagePipeline(**tiny_qwen_image_parts(**parts_kwargs))
    pipe.default_sample_size = QWEN_DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe
