"""``bench_loop.py``'s setup for Qwen-Image (``--family qwen_image``): ``QwenImagePipeline`` over small parts.

The tiny test parts (``tests/tiny_qwen_image.py``) with a wider transformer (4 double-stream blocks of
8 heads × 16 dims), at 128 px: the tiny 3-D VAE's factor is 4, so the latents are [1, 4, 32, 32] unpacked,
256 packed tokens, as the other families' 32×32 latents. Guidance is true CFG at w = 5 with the negative
prompt " " (Qwen-Image guides only with a negative prompt): two transformer calls per step and the norm
rescale per token (``QwenImageGuidance``), attention maps on (the defaults).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILY = "qwen_image"


def setup() -> dict[str, Any]:
    from diffusers import QwenImagePipeline

    from tests.tiny_qwen_image import QWEN_MAX_SEQUENCE_LENGTH, tiny_qwen_image_parts

    parts = tiny_qwen_image_parts()
    small = parts["transformer"]
    torch.manual_seed(0)
    parts["transformer"] = (
        type(small).from_config({**small.config, "num_layers": 4, "num_attention_heads": 8}).eval()
    )
    pipe = QwenImagePipeline(**parts)

    def to_trace(packed: torch.Tensor, size: dict[str, int]) -> torch.Tensor:
        """Packed [B, (h/2)·(w/2), 4C] → [B, C, h, w]: the pipeline's own unpacking, frame axis dropped."""
        return pipe._unpack_latents(packed, size["height"], size["width"], pipe.vae_scale_factor)[:, :, 0]

    return {
        "pipe": pipe,
        "options": {"max_sequence_length": QWEN_MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 5.0, "negative_prompt": " "},
        "pipeline": {"true_cfg_scale": 5.0, "negative_prompt": " "},
        "to_trace": to_trace,
        "size": 128,
    }
