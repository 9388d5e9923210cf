"""bench_loop.py's setup for SANA-Sprint (``SanaSprintPipeline``): loop_sana.py's wider transformer with a
guidance embedding and norms across heads, ``SCMScheduler``, 128 px pictures (32 × 32 latents), w = 5
embedded (one branch), attention maps on. The trace holds the scheduler's latents, σ_d·x (``to_trace``).
A distilled model: run it with few steps.

    python benchmarks/bench_loop.py --family sana_sprint --steps 4 --repeats 3
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SanaSprintPipeline

from tests.tiny_sana import SANA_MAX_SEQUENCE_LENGTH, tiny_sana_sprint_parts

FAMILY = "sana_sprint"


class StepsSprintPipeline(SanaSprintPipeline):
    """SanaSprintPipeline whose intermediate timestep (1.3) is left out where it does not apply (other than
    2 steps), as the family does; the pipeline itself refuses its default there."""

    def __call__(self, *args: Any, num_inference_steps: int = 2, **kwargs: Any) -> Any:
        if num_inference_steps != 2:
            kwargs.setdefault("intermediate_timesteps", None)
        return super().__call__(*args, num_inference_steps=num_inference_steps, **kwargs)


def setup() -> dict[str, Any]:
    """The pipeline over small parts and the keywords of both sides (see bench_loop's docstring)."""
    parts = tiny_sana_sprint_parts()
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
    sigma_data = float(parts["scheduler"].config.sigma_data)
    return {
        "pipe": StepsSprintPipeline(**parts),
        "options": {"max_sequence_length": SANA_MAX_SEQUENCE_LENGTH},
        "traced": {"guidance_scale": 5.0},
        "pipeline": {"guidance_scale": 5.0, "use_resolution_binning": False},
        "to_trace": lambda latents, size: latents * sigma_data,
        "size": 128,
    }
