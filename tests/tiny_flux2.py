"""Tiny, seeded, offline parts for FLUX.2: ``Flux2KleinPipeline`` (klein Base and distilled) and
``Flux2Pipeline`` (dev), shaped as diffusers' own tests build them (tests/pipelines/flux2/), with more text
layers so that the pipelines' own ``text_encoder_out_layers`` defaults work.

    Flux2KleinPipeline(**tiny_klein_parts(), is_distilled=False)   # or tiny_klein_pipeline(distilled=...)
    Flux2Pipeline(**tiny_dev_parts())                              # or tiny_dev_pipeline()

* the transformer: ``Flux2Transformer2DModel``, one double- and one single-stream block, 2 heads × 16 dims,
  RoPE axes (4, 4, 4, 4), in_channels 16 (4 VAE latent channels × a 2×2 patch), joint_attention_dim
  JOINT_DIM = 3 layers × 16; ``guidance_embeds`` False for klein, True for dev;
* the VAE: ``AutoencoderKLFlux2`` with 4 latent channels and two levels (scale 2; the image side is 2 × 2
  × the latent side), its batch-norm statistics (``bn.running_mean`` / ``running_var``) set to seeded
  values so that the normalisation is not the identity;
* klein's text encoder: ``Qwen3ForCausalLM``, 27 layers of width 16 (layers 9, 18, 27 exist), over the
  local Qwen-style BPE with Qwen3's chat template (``tests.tiny_llm_tokenizers``);
* dev's text encoder: ``Mistral3ForConditionalGeneration`` (a 30-layer Mistral of width 16 and a
  one-layer Pixtral vision tower), over a local byte-level BPE with Mistral's control tokens and a
  Mistral-style chat template (``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``). The real model's
  processor is a ``PixtralProcessor``, which needs torchvision (not installed here): the tokenizer stands
  in for it (``Flux2Pipeline`` calls only its ``apply_chat_template``, which both have);
* the scheduler: ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting, as FLUX.2's;
* the pipelines' ``default_sample_size`` is set to 16: the default image is 32 × 32 px, latents
  [B, 16, 8, 8] (64 image tokens). Tests should pass ``max_sequence_length=MAX_SEQUENCE_LENGTH``.
"""

from __future__ import annotations

from functools import cache

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.tiny_llm_tokenizers import CORPUS, QWEN_VOCAB_SIZE, qwen_tokenizer

TEXT_DIM = 16  # the LLMs' hidden size D
JOINT_DIM = 3 * TEXT_DIM  # three stacked layers: the transformer's joint_attention_dim
MAX_SEQUENCE_LENGTH = 48  # what tests should pass (the pipelines' default: 512)
DEFAULT_SAMPLE_SIZE = 16  # the pipelines' default_sample_size (real: 128): a 32 × 32 px default image
SCHEDULER_CONFIG = dict(  # FLUX.2's scheduler_config.json, as far as the tiny runs need it
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)
MISTRAL_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>",
)  # fmt: skip
MISTRAL_VOCAB_SIZE = 640
# Mistral Small 3.1's template, cut to text turns (content as a string or a list of text parts)
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def tiny_transformer(*, guidance_embeds: bool, seed: int = 0) -> Flux2Transformer2DModel:
    """A FLUX.2 transformer with one double- and one single-stream block (module docstring)."""
    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=JOINT_DIM,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    ).eval()


def tiny_flux2_vae(seed: int = 0) -> AutoencoderKLFlux2:
    """``AutoencoderKLFlux2``, 4 latent channels, scale 2, with seeded batch-norm statistics."""
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    vae.bn.running_mean.copy_(0.3 * torch.randn(16, generator=generator))
    vae.bn.running_var.copy_(0.5 + torch.rand(16, generator=generator))
    return vae


def tiny_flux2_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)


def tiny_qwen3(seed: int = 1) -> Qwen3ForCausalLM:
    """A 27-layer Qwen3 causal LM of width 16 over the tiny Qwen vocabulary."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=TEXT_DIM,
        intermediate_size=32,
        num_hidden_layers=27,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
    )
    return Qwen3ForCausalLM(config).eval()


def tiny_klein_parts() -> dict:
    """The components of a Flux2KleinPipeline (pass ``is_distilled`` to the pipeline)."""
    return dict(
        transformer=tiny_transformer(guidance_embeds=False),
        scheduler=tiny_flux2_scheduler(),
        vae=tiny_flux2_vae(),
        text_encoder=tiny_qwen3(),
        tokenizer=qwen_tokenizer(),
    )


def tiny_klein_pipeline(*, distilled: bool = False) -> Flux2KleinPipeline:
    """Flux2KleinPipeline over the tiny parts, default image 32 × 32 px, no progress bar."""
    pipe = Flux2KleinPipeline(**tiny_klein_parts(), is_distilled=distilled)
    pipe.default_sample_size = DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def _mistral_backend() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MISTRAL_VOCAB_SIZE,
        special_tokens=list(MISTRAL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((*CORPUS, SYSTEM_MESSAGE) * 4, trainer=trainer)
    return tokenizer


def mistral_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A Mistral-style byte-level BPE (control tokens first: <unk> 0, <s> 1, </s> 2, ..., <pad> 10) with
    the chat template above, right padding."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_mistral_backend().to_str()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def tiny_mistral3(seed: int = 2) -> Mistral3ForConditionalGeneration:
    """Mistral3ForConditionalGeneration: a 30-layer Mistral of width 16 (layers 10, 20, 30 exist) and a
    one-layer Pixtral vision tower (never used: no images)."""
    tokenizer = mistral_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<s>", "</s>", "<pad>", "[IMG]")}
    config = Mistral3Config(
        text_config=dict(
            model_type="mistral",
            vocab_size=MISTRAL_VOCAB_SIZE,
            hidden_size=TEXT_DIM,
            intermediate_size=32,
            max_position_embeddings=1024,
            num_attention_heads=2,
            num_hidden_layers=30,
            num_key_value_heads=2,
            head_dim=8,
            rms_norm_eps=1e-5,
            rope_theta=1e9,
            sliding_window=None,
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        vision_config=dict(
            model_type="pixtral",
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=16,
            num_channels=3,
            head_dim=8,
        ),
        image_token_index=ids["[IMG]"],
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def tiny_dev_parts(*, guidance_embeds: bool = True) -> dict:
    """The components of a Flux2Pipeline (FLUX.2 dev)."""
    return dict(
        transformer=tiny_transformer(guidance_embeds=guidance_embeds),
        scheduler=tiny_flux2_scheduler(),
        vae=tiny_flux2_vae(),
        text_encoder=tiny_mistral3(),
        tokenizer=mistral_tokenizer(),
    )


def tiny_dev_pipeline(*, guidance_embeds: bool = True) -> Flux2Pipeline:
    """Flux2Pipeline over the tiny parts, default image 32 × 32 px, no progress bar."""
    pipe = Flux2Pipeline(**tiny_dev_parts(guidance_embeds=guidance_embeds))
    pipe.default_sample_size = DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    return pipe
