"""Tiny, seeded, offline parts of a ChromaPipeline (built from configs, nothing downloaded).

Chroma is Flux-shaped without CLIP and without a guidance embedding (``tests/tiny_families.py`` for Flux):

* ``text_encoder``: the 2-layer T5 of the SD3 and Flux tiny parts (d_model 96) over the same Unigram
  vocabulary (``tiny_t5_tokenizer``): prompt_embeds (B, max_sequence_length, 96), run with its mask;
* ``transformer``: ChromaTransformer2DModel, 1 double and 1 single block, 4 heads x 8 dims, RoPE axes
  (2, 2, 4), in_channels 16 (4 latent channels x 2x2 packing), a 1-layer approximator of width 32 (the
  shapes of diffusers' own Chroma test, tests/pipelines/chroma/test_pipeline_chroma.py, at Flux's tiny sizes);
* the VAE and scheduler are Flux's tiny ones (4 latent channels, downsampling 2; flow-matching Euler with
  dynamic shifting); ``tiny_chroma_pipeline`` sets ``default_sample_size`` to 8: the default image is
  16x16 px, latents (B, 4, 8, 8) unpacked, (B, 16, 16) packed;
* tests should pass ``max_sequence_length=CHROMA_MAX_SEQUENCE_LENGTH`` (16): the pipeline's default is 512.
"""

from __future__ import annotations

import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel

from tests.tiny_families import (
    FLUX_DEFAULT_SAMPLE_SIZE,
    SD3_JOINT_DIM,
    tiny_flux_scheduler,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
    tiny_vae,
)

CHROMA_MAX_SEQUENCE_LENGTH = 16


def tiny_chroma_transformer(*, seed: int = 0) -> ChromaTransformer2DModel:
    """A Chroma transformer with one double-stream and one single-stream block, 4 heads x 8 dims."""
    torch.manual_seed(seed)
    return ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=SD3_JOINT_DIM,  # T5's d_model
        axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    ).eval()


def tiny_chroma_parts() -> dict:
    """The components of a ChromaPipeline (module docstring)."""
    tokenizer = tiny_t5_tokenizer()
    return dict(
        transformer=tiny_chroma_transformer(),
        scheduler=tiny_flux_scheduler(),
        vae=tiny_vae(
            latent_channels=4,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        text_encoder=tiny_t5_encoder(tokenizer, seed=2),
        tokenizer=tokenizer,
    )


def tiny_chroma_pipeline() -> ChromaPipeline:
    """ChromaPipeline(**tiny_chroma_parts()), default image 16x16 px, no progress bar; pass max_sequence_length=16."""
    pipe = ChromaPipeline(**tiny_chroma_parts())
    pipe.default_sample_size = FLUX_DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe
