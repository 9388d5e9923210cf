"""SANA-Sprint (``SanaSprintPipeline``): SANA's parts, distilled by sCM to 1–4 steps, sampled in TrigFlow
time with ``SCMScheduler``, guidance-distilled (w is an input, one branch).

Notation (σ_d = ``scheduler.config.sigma_data``, 0.5; t is TrigFlow's angle, from π/2 to 0)::

    x_t  = cos t·x0 + sin t·z                 z = σ_d·ε; the loop's latents are the scheduler's (σ_d·x)
    s    = sin t / (sin t + cos t)            the flow time the transformer is given
    x_in = x_t/σ_d · √(s² + (1 − s)²)          = (1 − s)·x0/σ_d + s·ε: the flow-matching input
    v    = transformer(x_in, s, w·guidance_embeds_scale)          a flow velocity
    F    = σ_d·((1 − 2s)·x_in + (1 − 2s + 2s²)·v) / √(s² + (1 − s)²)   TrigFlow's velocity (step.model.cond)
    x̂0   = cos t·x_t − sin t·F                a = cos t, b = −sin t (SCMScheduler's denoised)
    x_{t'} = cos t'·x̂0 + sin t'·σ_d·ε'        a fresh draw each step; t' = 0 at the last: x_0 = x̂0

The pipeline runs the scheduler's timesteps but its end point ([π/2 ≈ 1.5708, 1.3, 0] for 2 steps, else
linspace(1.5708, 0, N + 1)), and returns the last denoised / σ_d: in the trace's layout (the scheduler's)
that is ``final_latents``, which ``decode`` divides by σ_d. Every step's x̂0 is a picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning
from diffexplain.families.parts import PartKind, config_value
from diffexplain.families.sana import Sana
from diffexplain.noise_levels import NoiseLevel
from diffexplain.scheduler_state import SCM_SCHEDULER_NAMES

MAX_TIMESTEP = 1.57080  # SanaSprintPipeline's max_timesteps (≈ π/2)
INTERMEDIATE_TIMESTEP = 1.3  # its intermediate_timesteps, used with 2 steps only


class SanaSprint(Sana):
    """SANA-Sprint: ``SanaSprintPipeline``'s parts (a ``SanaTransformer2DModel`` with a guidance embedding)."""

    name: ClassVar[str] = "sana_sprint"
    label: ClassVar[str] = "SANA-Sprint"
    pipeline_class: ClassVar[str] = "SanaSprintPipeline"
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": PartKind(
            ("SanaTransformer2DModel",),
            "a guidance embedding (config.guidance_embeds true)",
            lambda model: bool(config_value(model, "guidance_embeds")),
        )
    }
    default_steps: ClassVar[int] = 2  # SanaSprintPipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.5
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = SCM_SCHEDULER_NAMES

    def sigma_data(self, scheduler: Any) -> float:
        """σ_d: the scale of z, and of the loop's latents against the picture's."""
        return float(scheduler.config.sigma_data)

    # ---- what the model is -------------------------------------------------------------------------
    def guidance_distilled(self) -> bool:
        """w is the transformer's input (``guidance_embeds``): one branch, never two."""
        return True

    def conventions(self, scheduler: Any) -> Conventions:
        """TrigFlow's velocity (converted from the transformer's flow velocity), one branch with w embedded."""
        return Conventions(
            prediction="trigflow",
            model_time="s = sin t/(sin t + cos t): TrigFlow's angle t as a flow time",
            time_direction="t falls from π/2 ≈ 1.5708 (noise) to 0 (picture)",
            guidance_formula="one branch; w enters as guidance = w·guidance_embeds_scale (an embedding)",
            pipeline_scale="guidance_scale = w",
            notes=(
                "the transformer outputs a flow velocity v at s on x_t/σ_d·√(s² + (1 − s)²); step.model.cond "
                "is σ_d·((1 − 2s)·x_in + (1 − 2s + 2s²)·v)/√(s² + (1 − s)²), as the pipeline converts it; the "
                "latents are the scheduler's, σ_d·x (the picture's are final_latents / σ_d)"
            ),
        )

    def describe(self) -> dict[str, Any]:
        """SANA's description plus the guidance embedding's scale."""
        scale = float(getattr(self.model.config, "guidance_embeds_scale", 0.1))
        return {**super().describe(), "guidance_embeds_scale": scale}

    # ---- the text: one branch ----------------------------------------------------------------------
    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, M, D] and ``attention_mask`` [B, M] of the prompt, by the pipeline's own
        ``encode_prompt`` (the instruction before it, the kept positions); no negative branch."""
        device = self.model.device
        embeds, mask = self.pipeline.encode_prompt(
            prompt,
            num_images_per_prompt=1,
            device=device,
            clean_caption=False,
            max_sequence_length=int(options["max_sequence_length"]),
            complex_human_instruction=options.get("complex_human_instruction"),
        )
        return {"embeds": embeds.to(device), "attention_mask": mask.to(device)}, None

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """``guidance`` [B]: w·guidance_embeds_scale in the text encoder's dtype, as the pipeline makes it."""
        dtype = self.parts["text_encoder"].dtype
        guidance = torch.full([1], guidance_scale, device=latents.device, dtype=torch.float32)
        guidance = guidance.expand(latents.shape[0]).to(dtype)
        return {"guidance": guidance * self.model.config.guidance_embeds_scale}

    # ---- latents and the schedule ------------------------------------------------------------------
    def init_noise_sigma(self, scheduler: Any) -> float:
        """σ_d: x_T = σ_d·ε."""
        return self.sigma_data(scheduler)

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T = σ_d·ε, ε drawn in float32 (or the given latents, unit scale), as the pipeline."""
        return super().prepare_latents(scheduler, shape, generator, latents) * scheduler.config.sigma_data

    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: from 1.5708, through 1.3 with 2 steps (evenly otherwise), to 0; begin index 0."""
        scheduler.set_timesteps(
            num_inference_steps,
            device=self.model.device,
            max_timesteps=MAX_TIMESTEP,
            intermediate_timesteps=INTERMEDIATE_TIMESTEP if num_inference_steps == 2 else None,
        )
        scheduler.set_begin_index(0)

    def loop_timesteps(self, scheduler: Any) -> torch.Tensor:
        """The scheduler's timesteps but its end point 0, as the pipeline runs them."""
        return scheduler.timesteps[:-1]

    def noise_level(self, scheduler: Any, timestep: torch.Tensor) -> NoiseLevel:
        """x̂0 = cos t·x_t − sin t·F (cos and sin in float32, as the scheduler); ᾱ = cos² t, σ = tan t."""
        t = torch.as_tensor(timestep, dtype=torch.float32)
        cos, sin = float(torch.cos(t)), float(torch.sin(t))
        return NoiseLevel(cos, -sin, cos * cos, math.inf if cos <= 0.0 else sin / cos)

    def add_noise(
        self, scheduler: Any, clean_latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """TrigFlow's forward process: x_t = cos t·x0 + sin t·σ_d·ε (``timestep`` a scalar or one per row)."""
        t = timestep.reshape(-1, *([1] * (clean_latents.dim() - 1))).to(torch.float32)
        return torch.cos(t) * clean_latents + torch.sin(t) * noise * scheduler.config.sigma_data

    def entry_step(self, num_inference_steps: int, strength: float) -> int:
        """Not offered: SanaSprintImg2ImgPipeline is another pipeline."""
        raise NotImplementedError("SANA-Sprint here runs from noise only (SanaSprintPipeline)")

    # ---- the model call and the picture ------------------------------------------------------------
    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """x_t [B, C, h, w] (float32) → F [B, C, h, w] (float32): the transformer at the flow time s on the
        flow-matching input, its velocity converted to TrigFlow's, as ``SanaSprintPipeline.__call__``."""
        model, sigma_data = self.model, scheduler.config.sigma_data
        timestep = t.expand(model_input.shape[0])  # [B]
        scm_timestep = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))  # s [B]
        s = scm_timestep.view(-1, 1, 1, 1)
        norm = torch.sqrt(s**2 + (1 - s) ** 2)
        latent_model_input = model_input / sigma_data * norm  # x_in
        velocity = model(
            latent_model_input.to(dtype=model.dtype),
            encoder_hidden_states=conditioning["embeds"].to(dtype=model.dtype),  # [B, M, D]
            encoder_attention_mask=conditioning["attention_mask"],  # [B, M]
            timestep=scm_timestep,
            return_dict=False,
            **model_kwargs,  # guidance [B]
        )[0]
        trig = ((1 - 2 * s) * latent_model_input + (1 - 2 * s + 2 * s**2) * velocity) / norm
        return trig.float() * sigma_data

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The picture of the scheduler's latents: the DC-AE decodes latents / σ_d, as the pipeline."""
        sigma_data = float(getattr(self.pipeline.scheduler.config, "sigma_data", 0.5))
        return super().decode(latents / sigma_data)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """A picture's clean latents in the scheduler's layout: the DC-AE's, times σ_d."""
        sigma_data = float(getattr(self.pipeline.scheduler.config, "sigma_data", 0.5))
        return super().encode_image(pixels) * sigma_data
