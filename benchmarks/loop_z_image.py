"""bench_loop.py's setup for Z-Image (``ZImagePipeline``): ``python benchmarks/bench_loop.py --family z_image``.

The tiny parts of ``tests/tiny_zimage.py`` with a wider transformer (dim 128, 4 heads, two refiner layers
and four unified layers), so that the model call dominates as at real sizes; its pad tokens are drawn
again (``from_config`` leaves them ``torch.empty``). Guidance: the pipeline's s = 4 is the traced run's
w = 5 (both branches in one batched call, as the pipeline).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILY = "z_image"


def setup() -> dict[str, Any]:
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    from tests.tiny_zimage import ZIMAGE_MAX_SEQUENCE_LENGTH, tiny_zimage_parts

    parts = tiny_zimage_parts()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel.from_config(
        {**parts["transformer"].config, "dim": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4,
         "n_refiner_layers": 2, "axes_dims": [8, 12, 12]}
    ).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # torch.empty in diffusers: drawn as a checkpoint's would be
        transformer.x_pad_token.copy_(torch.randn(transformer.x_pad_token.shape, generator=generator))
        transformer.cap_pad_token.copy_(torch.randn(transformer.cap_pad_token.shape, generator=generator))
    parts["transformer"] = transformer
    pipe = ZImagePipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return {
        "pipe": pipe,
        "options": {"max_sequence_length": ZIMAGE_MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 5.0},  # the classic w = s + 1
        "pipeline": {"guidance_scale": 4.0},  # ZImagePipeline's s
    }
