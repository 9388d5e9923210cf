"""bench_loop's setup for FLUX.2 [klein] Base (``--family flux2_klein``): real CFG, two transformer calls per
step (``cache_context("cond"/"uncond")``), the text through a 27-layer Qwen3 stacked at layers 9, 18, 27.

The transformer is the tiny one made wider (2 double- and 2 single-stream blocks, 8 heads × 16 dims) at
64 px: x_t [1, 16, 16, 16], 256 image tokens beside 48 text tokens (32 × 32 latents, 1024 tokens at
128 px, cost seconds per step on one shared CPU thread). ``Flux2KleinPipeline``'s latent output
is the VAE's space (denormalised, unpatchified); the trace holds the normalised patchified latents, so the
pipeline's own last latents are read at its step-end callback and compared as the trace holds them
(``to_trace``): a callback that only keeps a reference, in every timed pipeline call alike.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILY = "flux2_klein"


def setup() -> dict[str, Any]:
    from diffusers import Flux2KleinPipeline

    from diffexplain.families.flux2_latents import unpack
    from tests.tiny_flux2 import MAX_SEQUENCE_LENGTH, tiny_klein_parts

    parts = tiny_klein_parts()
    config = {**parts["transformer"].config, "num_layers": 2, "num_single_layers": 2}
    config |= {"num_attention_heads": 8, "attention_head_dim": 16}
    torch.manual_seed(0)
    parts["transformer"] = type(parts["transformer"]).from_config(config).eval()
    pipe = Flux2KleinPipeline(**parts, is_distilled=False)
    last: list[torch.Tensor] = []

    def keep_last(pipe: Any, i: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        last[:] = [tensors["latents"]]  # packed [B, h·w, C] after step i
        return {}

    def to_trace(latents: torch.Tensor, size: dict[str, int]) -> torch.Tensor:
        side = size["height"] // 4  # the tiny VAE's scale 2, × 2 for the patches
        return unpack(last[0], side, size["width"] // 4)

    return {
        "pipe": pipe,
        "options": {"max_sequence_length": MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 4.0},
        "pipeline": {"guidance_scale": 4.0, "callback_on_step_end": keep_last},
        "to_trace": to_trace,
        "size": 64,
    }
