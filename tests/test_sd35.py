"""SD3.5 runs through the SD3 family: a tiny SD3.5-shaped transformer (RMS qk-norm as SD3.5 Large and
Medium, a dual-attention layer as SD3.5 Medium) equals StableDiffusion3Pipeline bit for bit, forks replay
it, and its joint-attention maps are recorded."""

from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from diffexplain import Explainer
from diffexplain.families import StableDiffusion3
from tests.conftest import PROMPT
from tests.tiny_families import (
    SD3_CLIP_DIM_1,
    SD3_CLIP_DIM_2,
    SD3_JOINT_DIM,
    SD3_MAX_SEQUENCE_LENGTH,
    tiny_sd3_parts,
)

STEPS = 4


def tiny_sd35_transformer() -> SD3Transformer2DModel:
    """tiny_sd3_transformer with SD3.5's changes: qk_norm="rms_norm" and a dual-attention first block."""
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=SD3_JOINT_DIM,
        caption_projection_dim=4 * 8,
        pooled_projection_dim=SD3_CLIP_DIM_1 + SD3_CLIP_DIM_2,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    ).eval()


@pytest.fixture(scope="module")
def pipe() -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline(**{**tiny_sd3_parts(), "transformer": tiny_sd35_transformer()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0])
def test_sd35_equals_the_pipeline_and_forks_replay_it(pipe, guidance_scale):
    explainer = Explainer.from_pipeline(pipe, progress=False)
    assert isinstance(explainer.family, StableDiffusion3)
    options = {"max_sequence_length": SD3_MAX_SEQUENCE_LENGTH}
    trace = explainer.run(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance_scale, seed=5, **options)
    expected = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
        **options,
    ).images
    assert torch.equal(trace.final_latents, expected)
    for k in (1, STEPS - 1):
        assert torch.equal(explainer.fork(trace, k).final_latents, trace.final_latents), k


def test_sd35_joint_attention_maps_cover_the_dual_attention_block(pipe):
    explainer = Explainer.from_pipeline(pipe, progress=False)
    layers = explainer.family.attention_layers()
    assert layers and all(layer.kind == "joint" for layer in layers)
    trace = explainer.run(PROMPT, num_inference_steps=2, seed=0, max_sequence_length=SD3_MAX_SEQUENCE_LENGTH)
    maps = trace.steps[0].attention
    assert maps, "no attention maps recorded"
    for value in maps.values():
        assert torch.isfinite(value).all()
        total = value.sum(dim=1)  # over the text tokens: each pixel's share of attention on the text
        assert float(total.min()) >= 0 and float(total.max()) <= 1 + 1e-4
