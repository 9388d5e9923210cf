"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``), and the embedded default model.

One CLIP-style text encoder, a ``UNet2DConditionModel`` predicting ε or v, a VAE (or none: pixel
space). Guidance-distilled U-Nets (``time_cond_proj_dim``, e.g. LCM) take w as ``timestep_cond``: with
``LCMScheduler`` this family is ``LatentConsistencyModelPipeline`` bit for bit (``also_serves``), one
branch, w embedded, and the scheduler's ``denoised`` recorded at ``step.denoised``
(``diffexplain.scheduler_outputs``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain import scheduler_outputs  # noqa: F401  (declares LCM's step.denoised with the family)
from diffexplain.conventions import Conventions
from diffexplain.errors import user_stacklevel
from diffexplain.families.base import Conditioning, Family
from diffexplain.families.parts import PartKind, config_value


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Fourier embedding of w − 1 for guidance-distilled U-Nets (``time_cond_proj_dim``), as diffusers."""
    w = w * 1000.0
    half_dim = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=dtype) * -emb)
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def predicts_output_alone(unet: Any) -> bool:
    """Whether a U-Net's output is shaped like its input (ε or v alone, no learned variance beside it), or
    like x_t for an inpainting U-Net (``is_inpainting_unet``); True where its config does not say."""
    out, into = config_value(unet, "out_channels"), config_value(unet, "in_channels")
    return out is None or into is None or int(out) == int(into) or is_inpainting_unet(unet)


def is_inpainting_unet(unet: Any) -> bool:
    """Whether a U-Net reads [x_t ; m ; masked picture latents]: in_channels = 2·C + 1 (9 for C = 4), as
    ``StableDiffusionInpaintPipeline`` concatenates them (``diffexplain.inpaint``)."""
    out, into = config_value(unet, "out_channels"), config_value(unet, "in_channels")
    return out is not None and into is not None and int(into) == 2 * int(out) + 1


def with_inpaint_channels(model_input: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """An inpainting U-Net's input: [x_t ; m ; masked picture latents]  [2B or B, 2C + 1, h, w] where the
    run's conditioning holds the mask (``diffexplain.inpaint.with_mask_channels``); x_t as is otherwise."""
    if "mask" not in conditioning:
        return model_input
    return torch.cat([model_input, conditioning["mask"], conditioning["masked_image_latents"]], dim=1)


def uncond_prompts(negative_prompt: str | list[str] | None, batch_size: int) -> list[str]:
    """The unconditional branch's prompts: "" or the negative prompt, one per image (a list must match)."""
    if negative_prompt is None or negative_prompt == "":
        return [""] * batch_size
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if len(negative_prompt) != batch_size:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch_size}")
    return list(negative_prompt)


def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str | list[str],
    device: torch.device,
    do_cfg: bool,
    negative_prompt: str | list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings (cond [B, T, D], uncond [B, T, D] or None), as ``StableDiffusionPipeline.encode_prompt``."""
    batch_size = 1 if isinstance(prompt, str) else len(prompt)
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    def embed(text: str | list[str], max_length: int) -> torch.Tensor:
        tokens = tokenizer(
            text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(device) if use_mask else None
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    prompt_embeds = embed(prompt, tokenizer.model_max_length)
    dtype = text_encoder.dtype
    prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)  # [B, T, D]
    if not do_cfg:
        return prompt_embeds, None
    uncond_tokens = uncond_prompts(negative_prompt, batch_size)
    negative_prompt_embeds = embed(uncond_tokens, prompt_embeds.shape[1]).to(dtype=dtype, device=device)
    return prompt_embeds, negative_prompt_embeds  # [B, T, D] each


class StableDiffusion(Family):
    """SD 1.x / 2.x: ``StableDiffusionPipeline``'s parts (the default model is one of these)."""

    name: ClassVar[str] = "sd"
    label: ClassVar[str] = "Stable Diffusion 1.x / 2.x"
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"
    also_serves: ClassVar[tuple[str, ...]] = (
        "LatentConsistencyModelPipeline",
    )  # its loop, with an LCM U-Net
    part_names: ClassVar[tuple[str, ...]] = ("unet", "tokenizer", "text_encoder", "vae")
    # without a VAE its parts are named as IF stage I's: its U-Net predicts ε or v alone, IF's a variance too
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "unet": PartKind(
            ("UNet2DConditionModel",),
            "out_channels = in_channels (ε or v alone, no learned variance)",
            predicts_output_alone,
        )
    }

    def __init__(self, **parts: Any) -> None:
        """The parts; a guidance-distilled (LCM) U-Net takes ``LatentConsistencyModelPipeline``'s defaults,
        4 steps and w = 8.5."""
        super().__init__(**parts)
        if self.guidance_distilled():
            self.default_steps, self.default_guidance_scale = 4, 8.5
        self._warned_negative = False  # the negative-prompt-is-ignored notice is given once per adapter

    def describe(self) -> dict[str, Any]:
        """The base description plus the U-Net's block widths (kept for older readers of trace files)."""
        return {**super().describe(), "block_out_channels": list(self.model.config.block_out_channels)}

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """[B, C, h, w], C the U-Net's output channels (an inpainting U-Net reads 2·C + 1)."""
        scale = self.vae_scale_factor
        return (batch_size, int(self.model.config.out_channels), int(height) // scale, int(width) // scale)

    def guidance_distilled(self) -> bool:
        """A U-Net with ``time_cond_proj_dim`` (LCM-style) takes w as an input."""
        return getattr(self.model.config, "time_cond_proj_dim", None) is not None

    def conventions(self, scheduler: Any) -> Conventions:
        """The scheduler's prediction type, the model given t; an LCM-style U-Net reads w as an embedding of
        w − 1 (``timestep_cond``) on one branch instead of CFG's second."""
        prediction = scheduler.config.get("prediction_type") or "epsilon"
        if not self.guidance_distilled():
            return Conventions(prediction=prediction)
        return Conventions(
            prediction=prediction,
            guidance_formula="one branch; w enters as timestep_cond = embedding(w − 1)",
            notes="guidance-distilled (LCM): no second branch, w is an input (the guidance is embedded); "
            "a negative prompt is ignored",
        )

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``{"embeds": [B, T, D]}`` per branch, in the U-Net's dtype (a no-op when equal). A
        guidance-distilled U-Net has one branch: a negative prompt is ignored, with a notice (once)."""
        model = self.model
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt or ())
        if any(negatives) and self.guidance_distilled() and not self._warned_negative:
            self._warned_negative = True
            warnings.warn(
                "this U-Net is guidance-distilled (LCM: time_cond_proj_dim): it runs one branch and takes w "
                "as an input, so negative_prompt is ignored (LatentConsistencyModelPipeline takes none)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        cond, uncond = encode_prompt(
            self.parts["tokenizer"], self.parts["text_encoder"], prompt, model.device, do_cfg, negative_prompt
        )
        return {"embeds": cond.to(model.dtype)}, None if uncond is None else {
            "embeds": uncond.to(model.dtype)
        }

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """``timestep_cond``: the w embedding of a guidance-distilled U-Net, else None."""
        dim = getattr(self.model.config, "time_cond_proj_dim", None)
        if dim is None:
            return {"timestep_cond": None}
        w = torch.tensor(guidance_scale - 1).repeat(latents.shape[0])
        cond = guidance_scale_embedding(w, dim, torch.float32).to(device=latents.device, dtype=latents.dtype)
        return {"timestep_cond": cond}

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """``scale_model_input``, then the U-Net on both branches: [2B or B, C, h, w] → ε or v. An inpainting
        U-Net reads the mask and the masked picture's latents beside x_t (conditioning keys of the run)."""
        model_input = with_inpaint_channels(scheduler.scale_model_input(model_input, t), conditioning)
        return self.model(
            model_input,
            t,
            encoder_hidden_states=conditioning["embeds"],
            return_dict=False,
            **model_kwargs,
        )[0]
