"""Z-Image (``ZImagePipeline``): a single-stream flow-matching transformer reading a Qwen3 LLM's states.

Notation (``diffexplain.names``), flow matching as SD3 and Flux (``families.sd3``)::

    x_t = (1 − σ)·x0 + σ·ε          σ = linspace(1, 1/N, N), shifted (the scheduler's shift, or μ)
    v   = ε − x0                     what step.model.* holds (after the sign below)
    x̂0  = x_t − σ·v                  a = 1, b = −σ

Z-Image's own conventions (``conventions``), kept apart from the loop's one language:

- **the sign**: the transformer outputs −v = x0 − ε; the pipeline negates it before
  ``FlowMatchEulerDiscreteScheduler.step``. ``step.model.cond`` / ``.uncond`` hold v, after the sign, so
  that x̂0 = x_t − σ·v holds as for every flow family; the raw output is exactly −step.model.* (negation
  is exact in floating point).
- **the time**: the transformer is given (1000 − t)/1000 = 1 − σ, which *rises* from 0 (noise) to 1.
- **guidance**: the pipeline's ``guidance_scale`` s means pred = c + s·(c − u) per sample in float32
  (off at s = 0), with an optional norm cap (``cfg_normalization``) and truncation (``cfg_truncation``).
  diffexplain's ``guidance_scale`` is the classic w everywhere: w = s + 1. The family's default guider is
  ``ZImageGuidance`` (the pipeline's CFG block, ``diffexplain.guiders.z_image``), so
  ``pipe(guidance_scale=s, cfg_normalization=k, cfg_truncation=τ)`` is
  ``explainer.run(guidance_scale=s + 1, guider=ZImageGuidance(normalization=k, truncation=τ))``. Where
  the guidance is truncated the pipeline runs the cond branch alone; so does ``predict`` (then
  step.model.uncond is a copy of step.model.cond, and the guider returns c).
- **Z-Image-Turbo** (distilled) runs unguided, s = 0, in 8–9 steps: ``explainer.run(prompt, **TURBO)``.

Layout: x_t is [B, C, h, w] everywhere the loop, hooks and the trace see it; ``predict`` adds the frame
axis and splits the batch into the list the transformer takes (``x.unsqueeze(2).unbind(0)``), cond rows
first as the pipeline orders them, and stacks the output back (uncond rows first, the loop's order).

Per branch the conditioning is ``embeds`` [B, T, D] (the LLM's ``hidden_states[-2]`` at every position),
``mask`` [B, T] (bool, the real tokens) and ``ids`` [B, T] (what the LLM read); the transformer is handed
``embeds[i][mask[i]]``, the pipeline's list of variable-length captions (``families.z_image_text``).
Attention maps: ``families.z_image_attention``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.layers import AttentionLayer
from diffexplain.attention.tokens import Token
from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning, conditioning_points
from diffexplain.families.flux import FLUX_SCHEDULER_NAMES
from diffexplain.families.parts import PartKind
from diffexplain.families.sd import uncond_prompts
from diffexplain.families.sd3 import FlowMatching
from diffexplain.families.z_image_attention import CallLayout, call_layout
from diffexplain.families.z_image_text import (
    caption_list,
    encode_texts,
    template_prefix,
    template_tokens,
)
from diffexplain.guiders.z_image import ZImageGuidance
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit

TURBO: dict[str, Any] = {"num_inference_steps": 9, "guidance_scale": 1.0}
"""Z-Image-Turbo's settings: 9 steps (8 model calls that matter; its model card's example), unguided (s = 0)."""

BRANCH_ROWS = "branch_rows"
"""The ``model_kwargs`` key with B, the rows of one branch (``model_kwargs``): ``predict`` reads it."""

TRUNCATION = "cfg_truncation"
"""The ``model_kwargs`` key with τ, the guider's truncation (``guider_kwargs``): ``predict`` reads it."""


class ZImage(FlowMatching):
    """Z-Image / Z-Image-Turbo: ``ZImagePipeline``'s parts (``ZImageTransformer2DModel``, a Qwen3 LLM)."""

    name: ClassVar[str] = "z_image"
    label: ClassVar[str] = "Z-Image"
    pipeline_class: ClassVar[str] = "ZImagePipeline"
    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = ("transformer", "tokenizer", "text_encoder", "vae")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"transformer": PartKind(("ZImageTransformer2DModel",))}
    default_steps: ClassVar[int] = 50  # ZImagePipeline's defaults: 50 steps, s = 5 (w = 6)
    default_guidance_scale: ClassVar[float] = 6.0
    compare_guidance_scale: ClassVar[float] = 6.0
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "mask", "ids")
    extra_points: ClassVar[tuple[HookPoint, ...]] = (
        *conditioning_points(
            "mask", "real-token mask (bool: True is read, False is padding dropped)", "[B, T]"
        ),
        *conditioning_points("ids", "token ids the LLM read (the chat-template text)", "[B, T]"),
    )
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLUX_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "joint"

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"))

    # ---- what the model is -------------------------------------------------------------------------
    def conventions(self, scheduler: Any) -> Conventions:
        """The transformer outputs −v and is given 1 − σ; the pipeline's s is w − 1 (module docstring)."""
        return Conventions(
            prediction="flow",
            model_output_sign=-1,
            model_time="(1000 − t)/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture); the model's time 1 − σ rises from 0 to 1",
            guidance_formula="c + s·(c − u)",
            pipeline_scale="s = w − 1",
            classic_offset=1.0,
            notes=(
                "the raw transformer output is −step.model.*; ZImageGuidance is the pipeline's CFG block "
                "(per sample in float32, cfg_normalization as normalization, cfg_truncation as truncation); "
                "Z-Image-Turbo runs at s = 0 (w = 1), 8–9 steps"
            ),
        )

    def describe(self) -> dict[str, Any]:
        """The base description plus the patch size and the LLM's class (the transformer reads its states)."""
        config = self.model.config
        return {
            **super().describe(),
            "patch_size": int(config.all_patch_size[0]),
            "text_encoder_layer": "hidden_states[-2]",
        }

    def attention_layers(self) -> tuple[AttentionLayer, ...]:
        """The unified layers' attention (``layers.<i>.attention``), where image tokens read the caption's."""
        model = self.model
        cached = getattr(self, "_attention_layers", None)
        if cached is None or cached[0] is not model:
            layers = tuple(
                AttentionLayer(f"layers.{i}.attention", block.attention, "joint")
                for i, block in enumerate(model.layers)
            )
            cached = (model, layers)
            self._attention_layers = cached
        return cached[1]

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """The LLM's ``max_sequence_length`` positions of the chat text: the template's tokens ``special``."""
        return template_tokens(self.parts["tokenizer"], prompt, int(options["max_sequence_length"]))

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """The LLM reads ``max_sequence_length`` tokens, the chat template's opening ones first: the prompt's
        words past the rest are cut (and the template's closing tokens with them)."""
        tokenizer, encoder = self.parts.get("tokenizer"), self.parts.get("text_encoder")
        if tokenizer is None or encoder is None:
            return ()
        room = int(options["max_sequence_length"]) - template_prefix(tokenizer)
        return (TextLimit(f"text_encoder ({type(encoder).__name__})", tokenizer, max(room, 0)),)

    # ---- sizes and latents -------------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(H, W): 1024², the pipeline's default (a pipeline's ``default_sample_size`` × the VAE's factor)."""
        sample = getattr(self.pipeline, "default_sample_size", None)
        side = 1024 if sample is None else int(sample) * self.vae_scale_factor
        return side, side

    def size_multiple(self) -> tuple[int, str]:
        """The VAE's scale factor × 2: the transformer reads 2×2 patches."""
        return self.vae_scale_factor * 2, "the VAE's scale factor × 2 (the transformer reads 2×2 patches)"

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """x_t [B, C, h, w], C = the transformer's in_channels, as ``ZImagePipeline.prepare_latents``."""
        scale = self.vae_scale_factor
        channels = int(self.model.config.in_channels)
        return (batch_size, channels, 2 * (int(height) // (scale * 2)), 2 * (int(width) // (scale * 2)))

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T in float32 whatever the model's dtype (the pipeline keeps its latents in float32)."""
        device = self.model.device
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(
                    f"latents has shape {list(latents.shape)}; expected x_T {list(shape)} = [B, C, h, w]"
                )
            return latents.to(device=device, dtype=torch.float32)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: σ = linspace(1, 1/N, N), μ from the image's token count, the begin index 0."""
        from diffusers.pipelines.z_image.pipeline_z_image import (
            calculate_shift,
            get_default_z_image_sigmas,
            retrieve_timesteps,
        )

        config = scheduler.config
        _, _, h, w = self.latent_shape(1, height, width)
        mu = calculate_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = get_default_z_image_sigmas(num_inference_steps)
        retrieve_timesteps(scheduler, num_inference_steps, self.model.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    # ---- guidance and conditioning -----------------------------------------------------------------
    @classmethod
    def default_guider(cls) -> ZImageGuidance:
        """The pipeline's CFG block: c + (w − 1)·(c − u) per sample, no norm cap, no truncation."""
        return ZImageGuidance()

    def guider_kwargs(self, guider: Mapping[str, Any] | None) -> dict[str, Any]:
        """τ for ``predict``, where the run's guider is ``ZImageGuidance`` with a truncation."""
        if guider is None or guider.get("name") != ZImageGuidance.name or guider.get("truncation") is None:
            return {}
        return {TRUNCATION: float(guider["truncation"])}

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """B, the rows of one branch: ``predict`` tells [uncond; cond] (2B rows) from B prompts unguided."""
        return {BRANCH_ROWS: int(latents.shape[0])}

    def run_options(
        self, height: int, width: int, *, max_sequence_length: int = 512, **other: Any
    ) -> dict[str, Any]:
        """The LLM's token count (``max_sequence_length``, 1..4096, the pipeline's default 512). The
        pipeline's ``cfg_normalization`` and ``cfg_truncation`` are the guider's: a ``TypeError`` says so."""
        moved = sorted(set(other) & {"cfg_normalization", "cfg_truncation"})
        if moved:
            raise TypeError(
                f"{', '.join(moved)}: Z-Image's guidance settings belong to its guider here, "
                "guider=ZImageGuidance(normalization=..., truncation=...) (from diffexplain.guiders)"
            )
        if other:
            raise TypeError(
                f"Z-Image takes max_sequence_length as its own run setting; got {', '.join(sorted(other))}"
            )
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if not 1 <= max_sequence_length <= 4096:
            raise ValueError(f"max_sequence_length must be between 1 and 4096, got {max_sequence_length}")
        return {"max_sequence_length": max_sequence_length}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, T, D], ``mask`` [B, T] and ``ids`` [B, T] per branch: each branch's prompts in one
        batch through the chat template, as the pipeline encodes them."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        tokenizer, encoder = self.parts["tokenizer"], self.parts["text_encoder"]
        length, device = int(options["max_sequence_length"]), self.model.device
        cond = encode_texts(tokenizer, encoder, prompts, length, device)
        if not do_cfg:
            return cond, None
        negatives = uncond_prompts(negative_prompt, len(prompts))
        return cond, encode_texts(tokenizer, encoder, negatives, length, device)

    # ---- the model call ----------------------------------------------------------------------------
    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The transformer on both branches: [2B or B, C, h, w] (uncond rows first) → v, same shape, float32.

        One call, cond rows first, as the pipeline; at a truncated step the cond rows alone (the uncond rows
        of the result are then a copy of the cond ones). Output negated: v = −(the transformer's output)."""
        kwargs = dict(model_kwargs)
        truncation = kwargs.pop(TRUNCATION, None)
        rows = model_input.shape[0]
        b = int(kwargs.pop(BRANCH_ROWS, rows))
        two = rows == 2 * b  # [uncond; cond] with guidance on
        order = list(range(b, rows)) + list(range(b)) if two else list(range(rows))  # cond rows first
        mode = "both" if two else "one"
        if two and truncation is not None and truncation <= 1 and (1000 - float(t)) / 1000 > truncation:
            order, mode = order[:b], "cond_for_both"  # guidance truncated: the pipeline runs cond alone
        latents = model_input.to(self.model.dtype)[order]  # [N, C, h, w]
        embeds, mask = conditioning["embeds"][order], conditioning["mask"][order]
        timestep = (1000 - t.expand(len(order))) / 1000  # the model's time: 1 − σ
        layout = CallLayout(
            image_tokens=(latents.shape[-2] // 2) * (latents.shape[-1] // 2),
            positions=tuple(m.nonzero().flatten() for m in mask),
            text_length=int(mask.shape[1]),
            rows=b,
            mode=mode,
        )
        with call_layout(layout):
            outputs = self.model(
                list(latents.unsqueeze(2).unbind(dim=0)),  # [C, 1, h, w] each: a frame axis
                timestep,
                caption_list(embeds, mask),  # [L_i, D] each: the padding dropped
                return_dict=False,
                **kwargs,
            )[0]
        velocity = -torch.stack([o.float() for o in outputs]).squeeze(2)  # [N, C, h, w], after the sign
        return layout.to_loop(velocity)
