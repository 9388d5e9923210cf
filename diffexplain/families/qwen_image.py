"""Qwen-Image (``QwenImagePipeline``): a flow-matching MMDiT over packed latents, read by Qwen2.5-VL.

Notation (``diffexplain.names``), flow matching as Flux.1 (``families.flux``)::

    x_t = (1 − σ)·x0 + σ·ε          σ = linspace(1, 1/N, N), shifted by μ (dynamic, exponential time shift)
    v   = ε − x0                     what the transformer predicts, given σ = t/1000
    x̂0  = x_t − σ·v                  a = 1, b = −σ

Guidance is the pipeline's **true CFG**, on the classic scale w (``true_cfg_scale``): two transformer calls
(one per branch), then each packed 2×2 token of the guided velocity rescaled to the norm of its conditional
one (``guiders.QwenImageGuidance``, this family's ``default_guider``, run by the loop's guidance step)::

    v̂ = v_u + w·(v_c − v_u);   v̂ ← v̂·‖v_c‖/‖v̂‖   per token (over its 4C numbers)

As the pipeline, only with a negative prompt: w > 1 and no negative prompt ("" here, None there) runs one
branch and warns (``uses_guidance``); " " or a list (even of "") is a negative prompt. The pipeline's
``guidance_scale`` is for guidance-distilled transformers (``config.guidance_embeds``), which diffusers'
``QwenImageTransformer2DModel`` cannot run yet: refused (``run_options``).

Text (``families.qwen_image_text``): Qwen2.5-VL reads the prompt inside a chat template with a system
prompt; the pipeline drops the first 34 tokens, keeps the last hidden state of the rest and pads a batch
with a mask. Per branch the conditioning is ``embeds`` [B, T, D] (``prompt.cond``) and ``mask`` [B, T]
(``prompt.mask.cond``: 1 a token, 0 padding). The two branches are encoded apart (they may differ in T): the
shorter is padded with masked zeros so the loop can hold both, and each transformer call trims its branch
back to its own T (mask None where it has no padding), exactly the tensors the pipeline passes.

Layout: unpacked [B, C, h, w] everywhere the loop, hooks and views see it (the 3-D VAE's frame axis of
length 1 dropped); only the transformer call packs ([B, (h/2)·(w/2), 4C], ``img_shapes`` (1, h/2, w/2)).
Decoding adds the frame axis back and undoes the VAE's per-channel normalisation (``QwenImageVaeAdapter``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

import diffexplain.attention.qwen  # noqa: F401  (registers the wrapper of Qwen-Image's attention processor)
from diffexplain.attention.tokens import Token
from diffexplain.conventions import Conventions
from diffexplain.errors import user_stacklevel
from diffexplain.families.base import Conditioning, conditioning_points
from diffexplain.families.flux import Flux, pack_latents, unpack_latents
from diffexplain.families.parts import PartKind
from diffexplain.families.qwen_image_text import (
    PROMPT_TEMPLATE_DROP,
    TemplateToken,
    prefix_token_count,
    prompt_tokens,
    template_tokens,
)
from diffexplain.families.vae import VaeAdapter
from diffexplain.guiders.base import Guider
from diffexplain.guiders.qwen_image import QwenImageGuidance
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit

MAX_SEQUENCE_LENGTH = 1024
"""The most text positions ``QwenImagePipeline`` takes (``max_sequence_length``; its default is 512)."""


class QwenImageVaeAdapter(VaeAdapter):
    """``AutoencoderKLQwenImage``: a Wan-style 3-D VAE on one frame, with per-channel ``latents_mean`` and
    ``latents_std``; the loop's latents are its [B, C, 1, h, w] without the frame axis."""

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) [1, C, 1, 1, 1], as the pipeline builds them."""
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
        return mean, inv_std.to(like.device, like.dtype)

    @property
    def scale_factor(self) -> int:
        """2^(number of downsamplings), as the pipeline's ``vae_scale_factor`` (8 for Qwen-Image)."""
        return 2 ** len(self.vae.temperal_downsample)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Picture [B, 3, H, W] in [-1, 1] → (posterior mean − mean)·(1/std), [B, C, h, w]."""
        z = self.vae.encode(pixels.to(self.vae.dtype)[:, :, None]).latent_dist.mean  # [B, C, 1, h, w]
        mean, inv_std = self._statistics(z)
        return ((z - mean) * inv_std)[:, :, 0]

    def encode_sample(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """As ``encode`` with a draw from the posterior instead of its mean."""
        z = self.vae.encode(pixels.to(self.vae.dtype)[:, :, None]).latent_dist.sample(generator)
        mean, inv_std = self._statistics(z)
        return ((z - mean) * inv_std)[:, :, 0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] → picture [B, 3, H, W] in [-1, 1]: z / (1/std) + mean on one frame, as the pipeline."""
        z = latents[:, :, None].to(self.vae.dtype)  # [B, C, 1, h, w]
        mean, inv_std = self._statistics(z)
        return self.vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]


def own_length(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One branch's text as its pipeline call passes it: cut after its last unmasked position, and the mask
    None where nothing is masked (``encode_prompt``: ``if prompt_embeds_mask.all(): None``)."""
    used = torch.nonzero(mask.bool().any(dim=0))
    length = int(used.max()) + 1 if used.numel() else mask.shape[1]
    embeds, mask = embeds[:, :length], mask[:, :length]
    return embeds, None if bool(mask.all()) else mask


def pad_text(branch: Conditioning, length: int) -> Conditioning:
    """``embeds`` and ``mask`` padded at the end to ``length`` positions with zeros (masked)."""
    extra = length - branch["embeds"].shape[1]
    if extra <= 0:
        return branch
    embeds, mask = branch["embeds"], branch["mask"]
    return {
        "embeds": torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], dim=1),
        "mask": torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1),
    }


def has_negative_prompt(negative_prompt: str | list[str] | None) -> bool:
    """Whether a run gives a negative prompt: a non-empty string (" " too) or a list (even of "")."""
    return isinstance(negative_prompt, list) or bool(negative_prompt)


class QwenImage(Flux):
    """Qwen-Image: ``QwenImagePipeline``'s parts (``QwenImageTransformer2DModel``, Qwen2.5-VL, the 3-D VAE)."""

    name: ClassVar[str] = "qwen_image"
    label: ClassVar[str] = "Qwen-Image"
    pipeline_class: ClassVar[str] = "QwenImagePipeline"
    part_names: ClassVar[tuple[str, ...]] = ("transformer", "tokenizer", "text_encoder", "vae")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"transformer": PartKind(("QwenImageTransformer2DModel",))}
    default_steps: ClassVar[int] = 50  # QwenImagePipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.0  # true_cfg_scale: guides only with a negative prompt
    compare_guidance_scale: ClassVar[float] = 4.0
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "mask")
    extra_points: ClassVar[tuple[HookPoint, ...]] = conditioning_points(
        "mask", "text mask (1: a token the transformer reads, 0: a batch's padding)", "[B, T]"
    )

    # ---- what the model is -------------------------------------------------------------------------
    @classmethod
    def default_guider(cls) -> Guider:
        """The pipeline's true CFG with its norm rescale per packed token."""
        return QwenImageGuidance()

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; w is true_cfg_scale, with the norm rescale per token."""
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v̂ = v_u + w·(v_c − v_u), then v̂·‖v_c‖/‖v̂‖ per packed 2×2 token; one call per branch",
            pipeline_scale="true_cfg_scale = w",
            notes="two branches only with a negative prompt (w > 1 without one: one branch, as the pipeline)",
        )

    @property
    def template(self) -> str:
        """The chat template the prompt is encoded in (the pipeline's ``prompt_template_encode``)."""
        return str(self.pipeline.prompt_template_encode)

    @property
    def template_drop(self) -> int:
        """The leading tokens the pipeline drops (``prompt_template_encode_start_idx``, 34)."""
        return int(getattr(self.pipeline, "prompt_template_encode_start_idx", PROMPT_TEMPLATE_DROP))

    def template_tokens(self, prompt: str) -> list[TemplateToken]:
        """Every token the text encoder reads for ``prompt``, each marked template or prompt, and dropped or
        kept (``families.qwen_image_text``)."""
        return template_tokens(self.parts["tokenizer"], self.template, prompt, self.template_drop)

    @torch.no_grad()
    def text_hidden_states(self, prompt: str) -> torch.Tensor:
        """The text encoder's last hidden state over the whole templated prompt, [1, L, D], before the pipeline
        drops its first ``template_drop`` positions (``template_tokens(prompt)`` names the L): what
        ``prompt.cond`` is cut from. An inspection helper, not a hook point (the run uses the pipeline's own
        ``encode_prompt``)."""
        tokenizer, encoder = self.parts["tokenizer"], self.parts["text_encoder"]
        tokens = tokenizer([self.template.format(prompt)], return_tensors="pt").to(encoder.device)
        out = encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        return out.hidden_states[-1]

    def describe(self) -> dict[str, Any]:
        """Flux's description plus the template, the drop and how many template tokens this tokenizer makes."""
        tokenizer = self.parts["tokenizer"]
        return {
            **super().describe(),
            "prompt_template": self.template,
            "template_drop": self.template_drop,
            "template_prefix_tokens": prefix_token_count(tokenizer, self.template),
        }

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """The prompt's room in ``max_sequence_length`` positions: less the template tokens kept before it."""
        tokenizer, encoder = self.parts["tokenizer"], self.parts["text_encoder"]
        kept_before = max(prefix_token_count(tokenizer, self.template) - self.template_drop, 0)
        room = max(int(options["max_sequence_length"]) - kept_before, 1)
        return (TextLimit(f"text_encoder ({type(encoder).__name__})", tokenizer, room),)

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """The positions the transformer reads: the templated prompt after the drop, at most
        ``max_sequence_length`` (template tokens marked with source "template")."""
        tokenizer = self.parts["tokenizer"]
        length = int(options["max_sequence_length"])
        return prompt_tokens(tokenizer, self.template, prompt, self.template_drop, length)

    # ---- guidance and conditioning -----------------------------------------------------------------
    def uses_guidance(self, guidance_scale: float, negative_prompt: str | list[str] | None) -> bool:
        """w > 1 and a negative prompt, as the pipeline; w > 1 without one warns and runs one branch."""
        if guidance_scale > 1 and not has_negative_prompt(negative_prompt):
            warnings.warn(
                f"Qwen-Image: guidance_scale={guidance_scale:g} > 1 but no negative prompt, so this run has one "
                "branch (no CFG), as QwenImagePipeline does (true_cfg_scale needs a negative_prompt). To guide, "
                "pass one: negative_prompt=' ' as Qwen-Image's examples do, or [''] for the empty prompt.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            return False
        return guidance_scale > 1

    def run_options(
        self,
        height: int,
        width: int,
        *,
        max_sequence_length: int = 512,
        embedded_guidance: float | None = None,
    ) -> dict[str, Any]:
        """The text positions kept (``max_sequence_length``, 1..1024, the pipeline's default 512). There is no
        embedded guidance: ``embedded_guidance`` and a transformer with ``guidance_embeds`` are refused."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"max_sequence_length must be between 1 and {MAX_SEQUENCE_LENGTH}, got {max_sequence_length}"
            )
        if embedded_guidance is not None or self.guidance_embeds():
            why = (
                f"embedded_guidance={embedded_guidance!r}"
                if embedded_guidance is not None
                else ("this transformer's config says guidance_embeds=True")
            )
            raise ValueError(
                f"{why}: Qwen-Image has no embedded guidance here. QwenImagePipeline's guidance_scale is for "
                "future guidance-distilled transformers, and diffusers' QwenImageTransformer2DModel has no "
                "guidance embedder to read it. Guide with guidance_scale (true CFG) and a negative prompt."
            )
        return {"max_sequence_length": max_sequence_length}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, T, D] and ``mask`` [B, T] per branch, each encoded on its own by the pipeline's
        ``encode_prompt``; with two branches the shorter is padded (masked) to the longer's T."""
        device = self.model.device
        batch_size = 1 if isinstance(prompt, str) else len(prompt)

        def branch(text: str | list[str]) -> Conditioning:
            embeds, mask = self.pipeline.encode_prompt(
                prompt=text,
                device=device,
                num_images_per_prompt=1,
                max_sequence_length=options["max_sequence_length"],
            )
            if mask is None:  # the pipeline's "no padding"
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
            return {"embeds": embeds.to(device), "mask": mask.to(device)}

        cond = branch(prompt)
        if not do_cfg:
            return cond, None
        if isinstance(negative_prompt, list):
            if len(negative_prompt) != batch_size:
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch_size}"
                )
            uncond = branch(list(negative_prompt))
        else:
            text = negative_prompt or ""
            uncond = branch(text if isinstance(prompt, str) else [text] * batch_size)
        length = max(cond["embeds"].shape[1], uncond["embeds"].shape[1])
        return pad_text(cond, length), pad_text(uncond, length)

    # ---- timesteps ---------------------------------------------------------------------------------
    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: σ = linspace(1, 1/N, N) and the shift μ from the packed image's token count."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps

        config = scheduler.config
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        _, _, h, w = self.latent_shape(1, height, width)
        mu = calculate_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        retrieve_timesteps(scheduler, num_inference_steps, self.model.device, sigmas=sigmas, mu=mu)
        if bool(torch.isnan(scheduler.sigmas).any()):
            raise ValueError(
                f"num_inference_steps={num_inference_steps}: this scheduler's σ schedule is undefined (NaN) for "
                f"so few steps (shift_terminal={config.get('shift_terminal')!r} stretches σ = 1 to 0 by 0); "
                "QwenImagePipeline would return NaN latents. Use at least 2 steps"
            )

    # ---- the autoencoder and the model call ----------------------------------------------------------
    def vae_adapter(self) -> VaeAdapter | None:
        """The 3-D VAE on one frame, with its latent normalisation."""
        vae = self.vae
        return None if vae is None else QwenImageVaeAdapter(vae)

    def _call(
        self, latents: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """One transformer call on one branch: [B, C, h, w] → v [B, C, h, w], with the branch's own text."""
        batch, _, h, w = latents.shape
        embeds, mask = own_length(conditioning["embeds"], conditioning["mask"])  # [B, T, D], [B, T] or None
        timestep = t.expand(batch).to(latents.dtype)
        velocity = self.model(
            hidden_states=pack_latents(latents),  # [B, (h/2)·(w/2), 4C]
            timestep=timestep / 1000,
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=[[(1, h // 2, w // 2)]] * batch,
            attention_kwargs={},
            return_dict=False,
            **kwargs,
        )[0]
        return unpack_latents(velocity, h, w)  # [B, C, h, w]
