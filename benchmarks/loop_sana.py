"""bench_loop.py's setup for SANA (``SanaPipeline``): the tiny parts of ``tests/tiny_sana.py`` with a wider
transformer (4 blocks, 8 heads × 16 dims: linear self-attention, softmax cross-attention over the text),
128 px pictures (the tiny DC-AE compresses 4×: 32 × 32 latents, as the other families' benchmarks),
w = 5 on both sides, attention maps on (the default), the default complex human instruction and
``max_sequence_length=16``; the pipeline without resolution binning (it knows real sample sizes only).

    python benchmarks/bench_loop.py --family sana --repeats 3
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SanaPipeline

from tests.tiny_sana import SANA_MAX_SEQUENCE_LENGTH, tiny_sana_parts

FAMILY = "sana"


def setup() -> dict[str, Any]:
    """The pipeline over small parts and the keywords of both sides (see bench_loop's docstring)."""
    parts = tiny_sana_parts()
    model = parts["transformer"]
    torch.manual_seed(0)
    wider = {
        "num_layers": 4,
        "num_attention_heads": 8,
        "attention_head_dim": 16,
        "num_cross_attention_heads": 8,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 128,
        "sample_size": 32,
    }
    parts["transformer"] = type(model).from_config({**model.config, **wider}).eval()
    return {
        "pipe": SanaPipeline(**parts),
        "options": {"max_sequence_length": SANA_MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 5.0},
        "pipeline": {"guidance_scale": 5.0, "use_resolution_binning": False},
        "size": 128,
    }
