"""Stable Diffusion XL (``StableDiffusionXLPipeline``): two text encoders, pooled embeddings, time ids.

Per branch the U-Net reads three tensors: the two encoders' penultimate token states side by side
(``embeds`` [B, T, D₁ + D₂]), the second encoder's pooled projection (``pooled`` [B, P]) and the
micro-conditioning time ids (``time_ids`` [B, 6]: original size, crop corner, target size). The text
is encoded by the pipeline's own ``encode_prompt``, so every detail (clip skip, zeroed negative
embeddings for an empty negative prompt) is diffusers'. The refiner is not covered.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffexplain.attention.tokens import Token
from diffexplain.families.base import Conditioning, conditioning_points
from diffexplain.families.sd import StableDiffusion, with_inpaint_channels
from diffexplain.families.vae import SdxlVaeAdapter
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit, text_limit


def _size(value: Any, what: str) -> list[int]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"{what} must be two whole numbers (height, width), got {value!r}")
    return [int(v) for v in value]


class StableDiffusionXL(StableDiffusion):
    """SDXL base: ``StableDiffusionXLPipeline``'s parts."""

    name: ClassVar[str] = "sdxl"
    label: ClassVar[str] = "Stable Diffusion XL"
    pipeline_class: ClassVar[str] = "StableDiffusionXLPipeline"
    also_serves: ClassVar[tuple[str, ...]] = ()  # not LCM's SD pipeline, which the SD family serves
    part_names: ClassVar[tuple[str, ...]] = (
        "unet",
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "vae",
    )
    default_guidance_scale: ClassVar[float] = 5.0  # StableDiffusionXLPipeline's default
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "pooled", "time_ids")
    extra_points: ClassVar[tuple[HookPoint, ...]] = (
        *conditioning_points("pooled", "pooled text embedding (text_encoder_2's projection)", "[B, P]"),
        *conditioning_points(
            "time_ids", "micro-conditioning: original size, crop corner, target size", "[B, 6]"
        ),
    )

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        # the pipeline's encode_prompt and time ids are the reference
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"), add_watermarker=False)

    def run_options(
        self,
        height: int,
        width: int,
        *,
        original_size: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
    ) -> dict[str, Any]:
        """SDXL's micro-conditioning (diffusers' argument names); sizes default to (height, width)."""
        return {
            "original_size": _size(original_size or (height, width), "original_size"),
            "target_size": _size(target_size or (height, width), "target_size"),
            "crops_coords_top_left": _size(crops_coords_top_left, "crops_coords_top_left"),
        }

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, T, D], ``pooled`` [B, P] and ``time_ids`` [B, 6] per branch, as the pipeline makes them."""
        pipe, model = self.pipeline, self.model
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt,
            device=model.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative_prompt or None,  # "" means the pipeline's default: None
        )
        encoder_2 = self.parts["text_encoder_2"]
        projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            tuple(options["original_size"]),
            tuple(options["crops_coords_top_left"]),
            tuple(options["target_size"]),
            dtype=embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        ).to(model.device)
        time_ids = time_ids.repeat(batch_size, 1)  # [B, 6]
        cond = {"embeds": embeds.to(model.device), "pooled": pooled.to(model.device), "time_ids": time_ids}
        if not do_cfg:
            return cond, None
        uncond = {"embeds": neg_embeds.to(model.device), "pooled": neg_pooled.to(model.device)}
        return cond, {**uncond, "time_ids": time_ids}

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """Both CLIP encoders, each at its tokenizer's ``model_max_length`` (77), as ``encode_prompt``."""
        limits = [
            text_limit(self.parts, "tokenizer", "text_encoder"),
            text_limit(self.parts, "tokenizer_2", "text_encoder_2"),
        ]
        return tuple(limit for limit in limits if limit is not None)

    def negative_prompt_tokens(self, negative_prompt: str, options: dict[str, Any]) -> list[Token]:
        """With ``force_zeros_for_empty_prompt`` (SDXL base) an empty negative prompt is all zeros: no tokens."""
        zeros = bool(getattr(self.pipeline.config, "force_zeros_for_empty_prompt", False))
        if negative_prompt or not zeros:
            return self.prompt_tokens(negative_prompt, options)
        length = int(self.parts["tokenizer"].model_max_length)
        return [Token(i, "<zeros>", None, "pad") for i in range(length)]

    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: ``set_timesteps``, then ``set_begin_index(0)`` where the scheduler has it."""
        scheduler.set_timesteps(num_inference_steps, device=self.model.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """``scale_model_input``, then the U-Net with ``added_cond_kwargs`` (pooled text and time ids); an
        inpainting U-Net reads the mask and the masked picture's latents beside x_t, as SD's."""
        model_input = with_inpaint_channels(scheduler.scale_model_input(model_input, t), conditioning)
        added = {"text_embeds": conditioning["pooled"], "time_ids": conditioning["time_ids"]}
        return self.model(
            model_input,
            t,
            encoder_hidden_states=conditioning["embeds"],
            added_cond_kwargs=added,
            return_dict=False,
            **model_kwargs,
        )[0]

    def vae_adapter(self) -> SdxlVaeAdapter | None:
        """SDXL's VAE decodes as its pipeline: in float32 when an fp16 VAE asks for it (``force_upcast``),
        with ``latents_mean`` / ``latents_std`` if set (``SdxlVaeAdapter``)."""
        vae = self.vae
        return None if vae is None else SdxlVaeAdapter(vae)

    def inpaint_vae_adapter(self) -> SdxlVaeAdapter | None:
        """As ``StableDiffusionXLInpaintPipeline._encode_vae_image``: float32 where ``force_upcast``, then
        z · scaling_factor, without ``latents_mean`` / ``latents_std`` (its img2img pipeline uses them)."""
        vae = self.vae
        return None if vae is None else SdxlVaeAdapter(vae, normalise=False)
