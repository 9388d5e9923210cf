"""bench_loop's setup for FLUX.3 (``python benchmarks/bench_loop.py --family flux3``): the traced loop
against ``Flux3ModularPipeline`` (prompt upsampler removed) over small parts, w = 3.5 with the
pipeline's ``ClassifierFreeGuidance`` guider (two branches, one transformer call each).

The transformer is wider and deeper than the tests' (4 heads × 32 dims, 2 per-mode and 4 single blocks)
so that the model call dominates, as at real sizes; the text encoder is the tests' tiny Qwen3-VL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILY = "flux3"


def call(pipe: Any, prompt: str, num_inference_steps: int, generator: torch.Generator, **keywords: Any):
    """The modular pipeline's final latents [B, C, h, w] (``output="latents"``), its guider at w."""
    scale = keywords.pop("guidance_scale", None)
    if scale is not None:
        pipe.guider.guidance_scale = scale
    return pipe(
        prompt=prompt,
        num_inference_steps=num_inference_steps,
        generator=generator,
        output="latents",
        **keywords,
    )


def setup() -> dict[str, Any]:
    from diffusers import Flux3Transformer2DModel

    from tests.tiny_flux3 import FLUX3_JOINT_DIM, tiny_flux3_pipeline

    pipe = tiny_flux3_pipeline(guidance_scale=3.5)
    torch.manual_seed(0)
    pipe.update_components(
        transformer=Flux3Transformer2DModel(
            in_channels=16,
            cond_in_channels=16,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=32,
            num_attention_heads=4,
            joint_attention_dim=FLUX3_JOINT_DIM,
            timestep_channels=64,
            axes_dims_rope=(8, 8, 8, 8),
        ).eval()
    )
    return {
        "pipe": pipe,
        "options": {},
        "traced": {"guidance_scale": 3.5},
        "pipeline": {"guidance_scale": 3.5},
        "call": call,
        "size": 64,  # a 16 × 16 token grid (the small VAE: H/4)
    }
