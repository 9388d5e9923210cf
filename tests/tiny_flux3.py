"""Tiny, seeded, offline parts for FLUX.3 (``Flux3ModularPipeline`` and the step-distilled
``Flux3DistilledModularPipeline``), built from configs: nothing is downloaded.

    * ``text_encoder``: a ``Qwen3VLForConditionalGeneration`` with a 32-layer text model of width
      FLUX3_TEXT_DIM = 8 (32 layers so that the pipeline's default ``text_encoder_out_layers``
      (4, 8, ..., 32) exist), 2 heads of 4 dims, a 1-layer vision tower that text prompts never run;
    * ``tokenizer``: a ``Qwen3VLProcessor`` over the local Qwen-style byte-level BPE
      (``tests.tiny_llm_tokenizers.qwen_tokenizer``) with Qwen3's chat template; the text window is
      padded to a multiple of 80 tokens, as the pipeline's text encoder step pads it;
    * prompt_embeds = the 8 chosen layers' states stacked: (1, 80, 8 · 8 = 64) = the transformer's
      ``joint_attention_dim``;
    * ``transformer``: ``Flux3Transformer2DModel``, 1 per-mode block and 1 joint single block, 2 heads x
      8 dims, RoPE axes (2, 2, 2, 2), in_channels 16 (4 VAE latent channels x 2x2 patchify);
      ``flow_map=True`` for the distilled one (a target-timestep embedder);
    * ``vae``: ``AutoencoderKLFlux2`` with 2 levels (vae_scale_factor 2), 4 latent channels and its batch
      norm over the 16 patchified channels (running statistics set to fixed non-trivial values);
    * ``scheduler``: flow-matching Euler with FLUX.3's constant shift 6.93 (the pipeline's set-timesteps
      step configures it);
    * a 16 x 16 px image is a 4 x 4 grid of 16 image tokens: latents (B, 16, 4, 4).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux3Transformer2DModel
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from tests.tiny_llm_tokenizers import QWEN3_CHAT_TEMPLATE, QWEN_VOCAB_SIZE, qwen_tokenizer

FLUX3_TEXT_DIM = 8
FLUX3_TEXT_LAYERS = 32
FLUX3_JOINT_DIM = 8 * FLUX3_TEXT_DIM  # eight stacked layers
FLUX3_SIZE = 16  # px: a 4 x 4 token grid
FLUX3_SHIFT = 6.93


def tiny_flux3_text_encoder(*, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """A Qwen3-VL with a 32-layer text model of width 8 (see the module docstring)."""
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=QWEN_VOCAB_SIZE,
            hidden_size=FLUX3_TEXT_DIM,
            intermediate_size=16,
            num_hidden_layers=FLUX3_TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 0]},
        ),
        vision_config=dict(
            depth=1,
            hidden_size=8,
            intermediate_size=16,
            num_heads=2,
            out_hidden_size=FLUX3_TEXT_DIM,
            deepstack_visual_indexes=[],
            num_position_embeddings=16,
        ),
    )
    return Qwen3VLForConditionalGeneration(config).eval()


def tiny_flux3_tokenizer() -> Qwen3VLProcessor:
    """A Qwen3-VL processor over the local Qwen-style tokenizer, with Qwen3's chat template: the pipeline
    calls its ``apply_chat_template``, then its ``.tokenizer``. Built without ``__init__``, which wants a
    video processor (torchvision) that text prompts never use."""
    processor = Qwen3VLProcessor.__new__(Qwen3VLProcessor)
    processor.tokenizer = qwen_tokenizer(model_max_length=8192)
    processor.image_processor = Qwen2VLImageProcessorPil()
    processor.video_processor = None
    processor.chat_template = QWEN3_CHAT_TEMPLATE
    return processor


def tiny_flux3_transformer(*, flow_map: bool = False, seed: int = 0) -> Flux3Transformer2DModel:
    """A FLUX.3 transformer: one per-mode block, one joint block, 2 heads x 8 dims."""
    torch.manual_seed(seed)
    return Flux3Transformer2DModel(
        in_channels=16,
        cond_in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=FLUX3_JOINT_DIM,
        timestep_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        flow_map=flow_map,
    ).eval()


def tiny_flux3_vae() -> AutoencoderKLFlux2:
    """A two-level FLUX.2-style VAE (scale factor 2, 4 latent channels) with set batch-norm statistics."""
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 16))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, 16))
    return vae.eval()


def tiny_flux3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Flow-matching Euler with FLUX.3's constant shift (no dynamic shifting)."""
    return FlowMatchEulerDiscreteScheduler(shift=FLUX3_SHIFT)


def tiny_flux3_parts(*, distilled: bool = False) -> dict:
    """The components of a FLUX.3 modular pipeline (no prompt upsampler)."""
    return dict(
        transformer=tiny_flux3_transformer(flow_map=distilled),
        scheduler=tiny_flux3_scheduler(),
        vae=tiny_flux3_vae(),
        text_encoder=tiny_flux3_text_encoder(),
        tokenizer=tiny_flux3_tokenizer(),
    )


def tiny_flux3_pipeline(*, distilled: bool = False, guidance_scale: float | None = None):
    """A ``Flux3ModularPipeline`` (or the distilled one) over the tiny parts, its prompt upsampler step
    removed (the prompt is encoded as given), no progress bar. ``guidance_scale``: the base pipeline's
    ``ClassifierFreeGuidance`` scale (its default 3.5 where None). Its default size is 16 × 16 px."""
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines import Flux3DistilledModularPipeline, Flux3ModularPipeline

    cls = Flux3DistilledModularPipeline if distilled else Flux3ModularPipeline
    blocks = cls().blocks
    blocks.sub_blocks.pop("prompt_upsampler")
    pipe = blocks.init_pipeline()
    extra = {}
    if not distilled and guidance_scale is not None:
        extra["guider"] = ClassifierFreeGuidance(guidance_scale=guidance_scale)
    pipe.update_components(**tiny_flux3_parts(distilled=distilled), **extra)
    pipe.set_progress_bar_config(disable=True)
    set_default_size(pipe, FLUX3_SIZE)
    return pipe


def set_default_size(pipe, side: int) -> None:
    """Make ``side`` × ``side`` px the default size of the pipeline's prepare-latents steps (1024 in the
    recipe), which the explainer reads too: the widgets' runs stay tiny."""
    from diffusers.modular_pipelines.flux3.before_denoise import Flux3PrepareLatentsStep

    stack = list(pipe._blocks.sub_blocks.values())  # the blocks it runs (pipe.blocks is a copy)
    while stack:
        block = stack.pop()
        if isinstance(block, Flux3PrepareLatentsStep):
            block.default_height = block.default_width = side
        stack.extend(getattr(block, "sub_blocks", {}).values())
