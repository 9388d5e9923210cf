"""SANA (``SanaPipeline``): a linear-attention transformer over DC-AE latents, flow matching solved by
DPM-Solver, a Gemma 2 text encoder read after a "complex human instruction".

Notation (``diffexplain.names``), flow matching on the scheduler's flow sigmas::

    x_t = (1 − σ)·x0 + σ·ε          σ from DPMSolverMultistepScheduler (use_flow_sigmas, flow_shift)
    v   = ε − x0                     what the transformer predicts (prediction_type="flow_prediction")
    x̂0  = x_t − σ·v                  a = 1, b = −σ (``noise_levels.flow_noise_level``)
    v̂   = v_u + w·(v_c − v_u)        classic CFG, both branches in one batched call (uncond rows first)

The transformer is given t·timestep_scale with t = ⌊1000·σ⌋ (DPM-Solver's integer timesteps; SANA's
timestep_scale is 1). Per branch it reads ``embeds`` [B, M, D] (Gemma 2's states of the M kept positions:
``families.sana_text``) and their ``attention_mask`` [B, M] (1: a token, 0: padding), which the
transformer turns into a −10000 bias on the padded keys of its cross-attention.

Layout: latents [B, C, h, w] (DC-AE: h = H/32 for the released models), unpatched: the transformer
patchifies them itself (patch size 1), so hooks and the trace see what the pipeline's loop sees. Like the
pipeline, latents are drawn and stepped in float32; the transformer reads them in its own dtype and
its output is read back as float32.

Attention: each block's self-attention (``attn1``) is *linear* attention (``SanaLinearAttnProcessor2_0``,
ReLU feature maps: there is no softmax matrix to show, and it is left alone); its cross-attention (``attn2``)
is softmax attention of the image queries over the M text positions: those are the attention layers
here (maps, ``attn.*`` hook points, reweight edits), captured beside the model's own processor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.tokens import Token
from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning, Family, conditioning_points
from diffexplain.families.parts import PartKind, config_value
from diffexplain.families.sana_text import check_instruction, pipeline_instruction, preprocess, sana_tokens
from diffexplain.families.sd import uncond_prompts
from diffexplain.families.vae import VaeAdapter
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit, text_limit
from diffexplain.scheduler_state import FLOW_SIGMA_SCHEDULER_NAMES

DEFAULT = "default"
"""``complex_human_instruction="default"``: the pipeline's own instruction (``SanaPipeline.__call__``'s)."""

PIPELINE_SIDE = 32
"""SanaPipeline.check_inputs wants image sides that are multiples of 32, whatever the autoencoder."""


class DcAeAdapter(VaeAdapter):
    """diffusers' ``AutoencoderDC`` (deep compression: 32× for SANA's): 2^(levels − 1) from
    ``encoder_block_out_channels``, a deterministic encoder (``.latent``), ``scaling_factor`` and no shift."""

    @property
    def scale_factor(self) -> int:
        """Image size / latent size, as ``SanaPipeline.__init__`` computes it."""
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → ``encode(pixels).latent · scaling_factor``."""
        vae = self.vae
        return vae.encode(pixels.to(vae.dtype)).latent * vae.config.scaling_factor

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """DC-AE's encoder is deterministic: the same as ``encode`` (no draw)."""
        return self.encode(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → picture [B, 3, H, W] in [-1, 1], as the pipeline: cast, then / scaling_factor."""
        vae = self.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


class Sana(Family):
    """SANA 1.0 / 1.5: ``SanaPipeline``'s parts (``SanaTransformer2DModel``, ``AutoencoderDC``, Gemma 2)."""

    name: ClassVar[str] = "sana"
    label: ClassVar[str] = "SANA"
    pipeline_class: ClassVar[str] = "SanaPipeline"
    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = ("tokenizer", "text_encoder", "vae", "transformer")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": PartKind(
            ("SanaTransformer2DModel",),
            "no guidance embedding (config.guidance_embeds false; SANA-Sprint has one)",
            lambda model: not config_value(model, "guidance_embeds"),
        )
    }
    default_steps: ClassVar[int] = 20  # SanaPipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.5
    compare_guidance_scale: ClassVar[float] = 4.5
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "attention_mask")
    extra_points: ClassVar[tuple[HookPoint, ...]] = conditioning_points(
        "attention_mask",
        "the text positions' mask (1: a token, 0: padding) for the cross-attention",
        "[B, T]",
    )
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLOW_SIGMA_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "cross"  # attn2 only: attn1 is linear self-attention

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"))

    # ---- what the model is -------------------------------------------------------------------------
    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity (flow_prediction on DPM-Solver's flow sigmas) given t·timestep_scale, classic CFG."""
        scale = float(getattr(self.model.config, "timestep_scale", 1.0))
        return Conventions(
            prediction="flow_prediction",
            model_time=f"t·timestep_scale = ⌊1000·σ⌋·{scale:g} (DPM-Solver's integer t)",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v_u + w·(v_c − v_u), both branches in one batched transformer call",
            pipeline_scale="guidance_scale = w",
            notes=(
                "the prompt is read after the complex human instruction (Gemma 2, causal); the transformer "
                "reads <bos> and the last max_sequence_length − 1 positions; its self-attention is linear, "
                "its cross-attention (attn2) softmax"
            ),
        )

    def describe(self) -> dict[str, Any]:
        """The base description plus the latent channels, patch size and timestep scale."""
        config = self.model.config
        return {
            **super().describe(),
            "latent_channels": int(config.in_channels),
            "patch_size": int(config.patch_size),
            "timestep_scale": float(getattr(config, "timestep_scale", 1.0)),
            "cross_attention_layers": len(self.attention_layers()),
        }

    # ---- the text ----------------------------------------------------------------------------------
    def run_options(
        self,
        height: int,
        width: int,
        *,
        max_sequence_length: int = 300,
        complex_human_instruction: list[str] | str | None = DEFAULT,
    ) -> dict[str, Any]:
        """M (``max_sequence_length``, the pipeline's default 300: the positions the transformer reads) and
        the ``complex_human_instruction`` put before every prompt ("default": the pipeline's own; None: none),
        recorded as the lines actually encoded."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if max_sequence_length < 2:
            raise ValueError(f"max_sequence_length must be at least 2, got {max_sequence_length}")
        if isinstance(complex_human_instruction, str) and complex_human_instruction == DEFAULT:
            instruction = pipeline_instruction(type(self.pipeline))
        else:
            instruction = check_instruction(complex_human_instruction)
        return {"max_sequence_length": max_sequence_length, "complex_human_instruction": instruction}

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """The M positions the cross-attention reads: <bos>, the tail of [instruction; prompt], padding."""
        return sana_tokens(
            self.parts["tokenizer"],
            prompt,
            int(options["max_sequence_length"]),
            options.get("complex_human_instruction"),
        )

    def negative_prompt_tokens(self, negative_prompt: str, options: dict[str, Any]) -> list[Token]:
        """The negative (or empty) prompt's M positions: encoded without the instruction."""
        return sana_tokens(
            self.parts["tokenizer"], negative_prompt, int(options["max_sequence_length"]), None
        )

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """Gemma 2 reads M positions of the (lower-cased) prompt, <bos> included: with the default
        instruction, whose last space joins the prompt's first word, the kept tail holds M − 1 prompt tokens."""
        limit = text_limit(
            self.parts, "tokenizer", "text_encoder", int(options["max_sequence_length"]), preprocess
        )
        return () if limit is None else (limit,)

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, M, D] and ``attention_mask`` [B, M] per branch, by the pipeline's own
        ``encode_prompt`` (the instruction before the prompt, the kept positions; none for the negative)."""
        device = self.model.device
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        negative = uncond_prompts(negative_prompt, batch_size) if do_cfg else ""
        embeds, mask, neg_embeds, neg_mask = self.pipeline.encode_prompt(
            prompt,
            do_cfg,
            negative_prompt=negative,
            num_images_per_prompt=1,
            device=device,
            clean_caption=False,
            max_sequence_length=int(options["max_sequence_length"]),
            complex_human_instruction=options.get("complex_human_instruction"),
        )
        cond = {"embeds": embeds.to(device), "attention_mask": mask.to(device)}
        if not do_cfg:
            return cond, None
        return cond, {"embeds": neg_embeds.to(device), "attention_mask": neg_mask.to(device)}

    # ---- sizes and latents -------------------------------------------------------------------------
    def vae_adapter(self) -> VaeAdapter | None:
        """The DC-AE (``AutoencoderDC``) behind ``vae_scale_factor``, ``decode`` and ``encode_image``."""
        vae = self.vae
        return None if vae is None else DcAeAdapter(vae)

    @property
    def vae_scale_factor(self) -> int:
        """The DC-AE's compression; 32 without a VAE, as ``SanaPipeline.__init__``."""
        adapter = self.vae_adapter()
        return 32 if adapter is None else adapter.scale_factor

    def size_multiple(self) -> tuple[int, str]:
        """32 (the pipeline's check) and the VAE's scale factor × the patch size, whichever is coarser."""
        latent = self.vae_scale_factor * int(self.model.config.patch_size)
        multiple = PIPELINE_SIDE * latent // math.gcd(PIPELINE_SIDE, latent)
        return multiple, f"32 (SanaPipeline's check) and the VAE's scale factor × the patch size ({latent})"

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: Gaussian noise drawn in float32 (as the pipeline, whatever the transformer's dtype), not
        scaled (flow matching starts at σ = 1)."""
        device = self.model.device
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(
                    f"latents has shape {list(latents.shape)}; expected {list(shape)} = [B, C, h, w]"
                )
            return latents.to(device=device, dtype=torch.float32)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    # ---- the model call ----------------------------------------------------------------------------
    def split_output(
        self, model_output: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """v alone; a transformer with twice the channels out (a learned σ) gives its first half, as the
        pipeline keeps it (the second half goes nowhere)."""
        if model_output.shape[1] == 2 * latents.shape[1]:
            return model_output.chunk(2, dim=1)[0], None
        return model_output, None

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The transformer on both branches: [2B or B, C, h, w] (float32) → v [2B or B, C, h, w] (float32),
        given t·timestep_scale, the text states and their mask, in the transformer's dtype as the pipeline."""
        model = self.model
        dtype = model.dtype
        timestep = t.expand(model_input.shape[0]) * model.config.timestep_scale  # [2B or B]
        return model(
            model_input.to(dtype=dtype),
            encoder_hidden_states=conditioning["embeds"].to(dtype=dtype),  # [2B or B, M, D]
            encoder_attention_mask=conditioning["attention_mask"],  # [2B or B, M]
            timestep=timestep,
            return_dict=False,
            **model_kwargs,
        )[0].float()
