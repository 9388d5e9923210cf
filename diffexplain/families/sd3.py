"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): a flow-matching transformer with three text encoders.

Notation (``diffexplain.names``), flow matching (rectified flow)::

    x_t = (1 − σ)·x0 + σ·ε          σ = scheduler.sigmas[step], from 1 (pure noise) to 0
    v   = ε − x0                     what the transformer predicts: a velocity, not a noise
    x̂0  = x_t − σ·v                  so a = 1, b = −σ in x̂0 = a·x_t + b·v
    ᾱ   = (1 − σ)² / ((1 − σ)² + σ²) the signal fraction of the same noise-to-signal ratio

Per branch the transformer reads the joint token states (``embeds`` [B, 77 + T₅, D]: both CLIP
encoders' states side by side, padded to T5's width, then T5's) and the pooled projection
(``pooled`` [B, P]). The text is encoded by the pipeline's own ``encode_prompt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.tokens import Token, tokenize
from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning, Family, conditioning_points
from diffexplain.families.parts import PartKind
from diffexplain.names import HookPoint
from diffexplain.noise_levels import NoiseLevel, flow_noise_level, step_index
from diffexplain.prompt_limits import TextLimit, text_limit
from diffexplain.scheduler_state import FLOW_SCHEDULER_NAMES


class FlowMatching(Family):
    """What every flow-matching family shares (SD3, Flux): the forward process and x̂0 = x_t − σ·v."""

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity, sign +1, the model given t = 1000·σ (σ falls from 1 to 0), classic CFG."""
        return Conventions(
            prediction="flow", model_time="t = 1000·σ", time_direction="σ falls from 1 (noise) to 0 (picture)"
        )

    def add_noise(
        self, scheduler: Any, clean_latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """The forward process of flow matching: x_t = (1 − σ)·x0 + σ·ε (the scheduler's ``scale_noise``)."""
        return scheduler.scale_noise(clean_latents, timestep.reshape(-1), noise)

    def entry_step(self, num_inference_steps: int, strength: float) -> int:
        """t_start as the flow-matching img2img pipelines cut it (SD3's, Flux's ``get_timesteps``):
        ⌊max(N − min(N·s, N), 0)⌋, in floating point (N = 10, s = 0.35: ⌊6.5⌋ = 6, four steps run where
        SD's rule runs three)."""
        return int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))

    def noise_level(self, scheduler: Any, timestep: torch.Tensor) -> NoiseLevel:
        """σ of this step from the scheduler's own table; x̂0 = x_t − σ·v."""
        sigma = scheduler.sigmas[step_index(scheduler, timestep)]
        return flow_noise_level(float(sigma.item()) if isinstance(sigma, torch.Tensor) else float(sigma))


class StableDiffusion3(FlowMatching):
    """SD3 / SD3.5: ``StableDiffusion3Pipeline``'s parts (``SD3Transformer2DModel``, flow matching)."""

    name: ClassVar[str] = "sd3"
    label: ClassVar[str] = "Stable Diffusion 3"
    pipeline_class: ClassVar[str] = "StableDiffusion3Pipeline"
    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = (
        "transformer",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "vae",
    )
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"transformer": PartKind(("SD3Transformer2DModel",))}
    default_steps: ClassVar[int] = 28  # StableDiffusion3Pipeline's defaults
    default_guidance_scale: ClassVar[float] = 7.0
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "pooled")
    extra_points: ClassVar[tuple[HookPoint, ...]] = conditioning_points(
        "pooled", "pooled text embedding (both CLIP encoders' projections)", "[B, P]"
    )
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLOW_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "joint"

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"))

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """CLIP's 77 positions, then T5's ``max_sequence_length`` (zeros without a T5: no words there)."""
        clip = self.parts["tokenizer"]
        tokens = tokenize(clip, prompt, int(clip.model_max_length), source="clip")
        length = int(options["max_sequence_length"])
        t5 = self.parts.get("tokenizer_3")
        if t5 is not None and self.parts.get("text_encoder_3") is not None:
            return tokens + tokenize(t5, prompt, length, source="t5", offset=len(tokens))
        return tokens + [Token(len(tokens) + i, "<zeros>", None, "pad", None, "t5") for i in range(length)]

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """Both CLIPs at the first tokenizer's ``model_max_length`` (77), T5 at ``max_sequence_length``,
        as ``StableDiffusion3Pipeline.encode_prompt`` cuts them."""
        tokenizer = self.parts.get("tokenizer")
        clip = int(tokenizer.model_max_length) if tokenizer is not None else 77
        limits = [
            text_limit(self.parts, "tokenizer", "text_encoder", clip),
            text_limit(self.parts, "tokenizer_2", "text_encoder_2", clip),
            text_limit(self.parts, "tokenizer_3", "text_encoder_3", int(options["max_sequence_length"])),
        ]
        return tuple(limit for limit in limits if limit is not None)

    def describe(self) -> dict[str, Any]:
        """The base description plus the transformer's patch size."""
        return {**super().describe(), "patch_size": int(self.model.config.patch_size)}

    def size_multiple(self) -> tuple[int, str]:
        """The VAE's scale factor × the transformer's patch size, as the pipeline checks."""
        patch = int(self.model.config.patch_size)
        return self.vae_scale_factor * patch, f"the VAE's scale factor × the patch size {patch}"

    def run_options(self, height: int, width: int, *, max_sequence_length: int = 256) -> dict[str, Any]:
        """T5's token count (diffusers' ``max_sequence_length``, at most 512)."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if not 1 <= max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be between 1 and 512, got {max_sequence_length}")
        return {"max_sequence_length": max_sequence_length}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, 77 + T₅, D] and ``pooled`` [B, P] per branch, as the pipeline makes them."""
        device = self.model.device
        embeds, neg_embeds, pooled, neg_pooled = self.pipeline.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative_prompt or None,
            max_sequence_length=options["max_sequence_length"],
        )
        cond = {"embeds": embeds.to(device), "pooled": pooled.to(device)}
        if not do_cfg:
            return cond, None
        return cond, {"embeds": neg_embeds.to(device), "pooled": neg_pooled.to(device)}

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: plain Gaussian noise (flow matching starts at σ = 1, no init_noise_sigma), as the pipeline."""
        model = self.model
        if latents is not None:
            return latents.to(device=model.device, dtype=model.dtype)
        return randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)

    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: with ``use_dynamic_shifting``, the shift μ follows the image's token count."""
        kwargs: dict[str, Any] = {}
        config = scheduler.config
        if config.get("use_dynamic_shifting", None):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            _, _, h, w = self.latent_shape(1, height, width)
            patch = self.model.config.patch_size
            kwargs["mu"] = calculate_shift(
                (h // patch) * (w // patch),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(num_inference_steps, device=self.model.device, **kwargs)

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The transformer on both branches: [2B or B, C, h, w] → the velocity v, same shape."""
        return self.model(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=conditioning["embeds"],
            pooled_projections=conditioning["pooled"],
            return_dict=False,
            **model_kwargs,
        )[0]
