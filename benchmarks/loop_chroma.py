"""bench_loop's setup for Chroma (``python benchmarks/bench_loop.py --family chroma``): ChromaPipeline over
the tiny Chroma parts with a wider transformer (2 double and 4 single blocks, 8 heads × 16), w = 5 (real
CFG: two transformer calls per step, as the pipeline), T5 at 16 tokens, attention maps on (the default)."""

from __future__ import annotations

from typing import Any

import torch

FAMILY = "chroma"


def setup() -> dict[str, Any]:
    from diffusers import ChromaPipeline

    from tests.tiny_chroma import CHROMA_MAX_SEQUENCE_LENGTH, tiny_chroma_parts

    parts = tiny_chroma_parts()
    torch.manual_seed(0)
    parts["transformer"] = (
        type(parts["transformer"])
        .from_config(
            {
                **parts["transformer"].config,
                "num_layers": 2,
                "num_single_layers": 4,
                "num_attention_heads": 8,
                "attention_head_dim": 16,
                "axes_dims_rope": (4, 6, 6),
            }
        )
        .eval()
    )
    pipe = ChromaPipeline(**parts)

    def to_trace(packed: torch.Tensor, size: dict[str, int]) -> torch.Tensor:  # packed → [B, C, h, w]
        return pipe._unpack_latents(packed, size["height"], size["width"], pipe.vae_scale_factor)

    return {
        "pipe": pipe,
        "options": {"max_sequence_length": CHROMA_MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 5.0},
        "pipeline": {"guidance_scale": 5.0, "negative_prompt": ""},
        "to_trace": to_trace,
    }
