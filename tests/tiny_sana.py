"""Tiny, seeded, offline parts for SANA (``SanaPipeline``): nothing is downloaded.

* ``tokenizer``: a Gemma-style SentencePiece BPE (``▁`` for spaces, byte fallback) trained here with the
  ``tokenizers`` package on a fixed corpus (the pipeline's complex human instruction among it), with
  Gemma's special tokens <pad>=0, <eos>=1, <bos>=2, <unk>=3 (and <mask>=4), wrapped in transformers'
  ``GemmaTokenizer`` (``GemmaTokenizerFast`` is the same class in transformers 5): it adds <bos>, pads
  on the right as the pipeline sets it; SANA_VOCAB_SIZE tokens;
* ``text_encoder``: ``Gemma2Model``, 1 layer, hidden SANA_TEXT_DIM = 16 (the config of diffusers'
  ``tests/pipelines/sana/test_sana.py``, wider, and with this vocabulary): prompt_embeds (B, T, 16);
* ``transformer``: ``SanaTransformer2DModel``, 2 blocks (linear self-attention ``attn1``, softmax cross-
  attention ``attn2`` over the text), 2 heads x 8 dims (inner 16 = cross_attention_dim), 4 latent
  channels, patch 1, sample_size 8;
* ``vae``: ``AutoencoderDC`` with 3 levels (8 channels each): 4x compression (real DC-AE: 32x), 4 latent
  channels, SANA's scaling_factor 0.41407; the default image is 32x32 px (SanaPipeline wants sides
  that are multiples of 32), latents (B, 4, 8, 8);
* ``scheduler``: DPMSolverMultistepScheduler with the released SANA 1024px ``scheduler_config.json``
  (flow_prediction on flow sigmas, flow_shift 3, 2nd-order DPM-Solver++).

Tests should pass ``max_sequence_length=SANA_MAX_SEQUENCE_LENGTH`` (16; the pipeline's default is 300)
and ``use_resolution_binning=False`` to the pipeline (its binning knows real sample sizes only).
"""

from __future__ import annotations

import inspect
import json
from functools import cache

import torch
from diffusers import (
    AutoencoderDC,
    DPMSolverMultistepScheduler,
    SanaPipeline,
    SanaSprintPipeline,
    SanaTransformer2DModel,
    SCMScheduler,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

SANA_VOCAB_SIZE = 640
"""The tiny Gemma-style vocabulary's size: 5 special tokens, 256 byte tokens, characters and merges."""
SANA_TEXT_DIM = 16  # Gemma2's hidden size = the transformer's caption_channels
SANA_MAX_SEQUENCE_LENGTH = 16  # what tests pass as max_sequence_length (the pipeline's default: 300)
GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4, as Gemma's

# What `scheduler/scheduler_config.json` of Sana_1600M_1024px_diffusers holds.
SANA_SCHEDULER_CONFIG = dict(
    algorithm_type="dpmsolver++",
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    flow_shift=3.0,
    lower_order_final=True,
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    solver_order=2,
    solver_type="midpoint",
    steps_offset=0,
    timestep_spacing="linspace",
    use_flow_sigmas=True,
)


def default_instruction() -> list[str]:
    """``SanaPipeline.__call__``'s default ``complex_human_instruction``, read from its signature."""
    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def corpus() -> tuple[str, ...]:
    """The fixed training text: the instruction, a few scene prompts and the characters to know."""
    return (
        *default_instruction(),
        "a red cube on the left of a blue sphere",
        "a green triangle above a yellow circle, a photo of a cat, a painting of a dog in the snow",
        "an astronaut riding a horse on the moon; a bowl of fruit on a wooden table at sunset",
        "small large big tiny bright dark white black orange purple pink brown grey square star heart",
        "house tree car boat city mountain river sky",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'\"-()[]{}<>/\\|@#$%^&*_+=~`",
    )


@cache
def _gemma_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a SentencePiece-style BPE: spaces are ``▁`` and start each word's piece."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=SANA_VOCAB_SIZE,
        special_tokens=[*GEMMA_SPECIAL_TOKENS, *byte_tokens],
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus()) * 4, trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return tokenizer.get_vocab(), [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def tiny_gemma_tokenizer(model_max_length: int = 8192) -> GemmaTokenizer:
    """A fresh Gemma-style tokenizer over the tiny BPE: <bos> added, right padding, <pad> = 0."""
    vocab, merges = _gemma_bpe()
    tokenizer = GemmaTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=model_max_length,
        add_bos_token=True,
        add_eos_token=False,
    )
    tokenizer.padding_side = "right"
    return tokenizer


def tiny_gemma_encoder(*, seed: int = 0) -> Gemma2Model:
    """A one-layer Gemma 2 over the tiny vocabulary, hidden SANA_TEXT_DIM, eager attention."""
    torch.manual_seed(seed)
    config = Gemma2Config(
        head_dim=8,
        hidden_size=SANA_TEXT_DIM,
        initializer_range=0.02,
        intermediate_size=32,
        max_position_embeddings=8192,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_key_value_heads=2,
        vocab_size=SANA_VOCAB_SIZE,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return Gemma2Model(config).eval()


def tiny_sana_transformer(*, seed: int = 0, out_channels: int = 4, **sprint) -> SanaTransformer2DModel:
    """Two SANA blocks (linear self-attention, softmax cross-attention), 2 heads x 8 dims, 4 channels;
    ``sprint``: SANA-Sprint's config entries (``guidance_embeds``, ``qk_norm``)."""
    torch.manual_seed(seed)
    return SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=out_channels,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=SANA_TEXT_DIM,
        sample_size=8,
        **sprint,
    ).eval()


def tiny_dc_ae(*, seed: int = 0) -> AutoencoderDC:
    """A DC-AE with 3 levels: 4x compression, 4 latent channels, SANA's scaling factor."""
    torch.manual_seed(seed)
    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()


def tiny_sana_scheduler() -> DPMSolverMultistepScheduler:
    """SANA's scheduler: DPM-Solver++ (2M) on flow sigmas, flow_prediction, flow_shift 3."""
    return DPMSolverMultistepScheduler.from_config(SANA_SCHEDULER_CONFIG)


def tiny_sana_parts(*, out_channels: int = 4) -> dict:
    """The components of a SanaPipeline (see the module docstring)."""
    return dict(
        tokenizer=tiny_gemma_tokenizer(),
        text_encoder=tiny_gemma_encoder(seed=1),
        vae=tiny_dc_ae(seed=2),
        transformer=tiny_sana_transformer(seed=0, out_channels=out_channels),
        scheduler=tiny_sana_scheduler(),
    )


def tiny_sana_pipeline(**kwargs) -> SanaPipeline:
    """SanaPipeline(**tiny_sana_parts()), no progress bar; pass max_sequence_length=16 and
    use_resolution_binning=False to its calls."""
    pipe = SanaPipeline(**tiny_sana_parts(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- SANA-Sprint ---------------------------------------------------------------------------------------
def tiny_sana_sprint_parts() -> dict:
    """The components of a SanaSprintPipeline: SANA's, with a guidance embedding and norms across heads
    (as diffusers' Sprint test dummies), and ``SCMScheduler`` (σ_d = 0.5, TrigFlow)."""
    parts = tiny_sana_parts()
    parts["transformer"] = tiny_sana_transformer(guidance_embeds=True, qk_norm="rms_norm_across_heads")
    parts["scheduler"] = SCMScheduler()
    return parts


def tiny_sana_sprint_pipeline() -> SanaSprintPipeline:
    """SanaSprintPipeline(**tiny_sana_sprint_parts()), no progress bar; pass max_sequence_length=16 and
    use_resolution_binning=False to its calls (and intermediate_timesteps=None for other than 2 steps)."""
    pipe = SanaSprintPipeline(**tiny_sana_sprint_parts())
    pipe.set_progress_bar_config(disable=True)
    return pipe
