"""Chroma (``ChromaPipeline``): Flux's transformer shape, T5 alone, real CFG, and a text mask.

What differs from Flux (``families.flux``, whose packing, schedule and per-branch calls it shares):

- one text encoder, T5, run **with** its attention mask (Flux runs T5 without one); no CLIP, so no
  pooled embedding: the transformer's modulation comes from the timestep alone (its approximator);
- the transformer reads a text mask per prompt, ``mask`` [B, T] (``prompt.mask.cond``): 1 on the prompt's
  tokens **and on the first pad token** (T5's ``</s>`` is a real token; the pad after it stays visible), 0
  on the other pads. The pipeline extends it with ones over the image tokens and each joint block takes
  the outer product, [B, 1, T + N, T + N];
- no guidance embedding: w (``guidance_scale``, default 5) is real CFG over two transformer calls,
  v̂ = v_u + w·(v_c − v_u), as ChromaPipeline computes ``neg + s·(pos − neg)`` (s = w, no offset); w ≤ 1
  runs one branch. 35 steps by default.

The mask reaches ``scaled_dot_product_attention`` as ChromaPipeline makes it (diffusers 0.42): a float
0/1 tensor, which SDPA *adds* to the scores. So the image → text scores of the kept tokens get +1 and the
other pads +0: they are down-weighted (by e), not removed. The hook points ``attn.*.probs.*`` carry the
block as the model computes it, bias included; the per-step maps leave the masked pads out (zero there,
renormalised over the kept tokens).

Notation (``diffexplain.names``), flow matching as Flux::

    x_t = (1 − σ)·x0 + σ·ε      v = ε − x0      x̂0 = x_t − σ·v
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain.attention.tokens import Token, tokenize
from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning, conditioning_points
from diffexplain.families.flux import Flux, image_ids, pack_latents, unpack_latents
from diffexplain.families.parts import PartKind
from diffexplain.families.sd import uncond_prompts
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit, text_limit


class Chroma(Flux):
    """Chroma1: ``ChromaPipeline``'s parts (``ChromaTransformer2DModel``, T5, flow matching, real CFG)."""

    name: ClassVar[str] = "chroma"
    label: ClassVar[str] = "Chroma"
    pipeline_class: ClassVar[str] = "ChromaPipeline"
    part_names: ClassVar[tuple[str, ...]] = ("transformer", "tokenizer", "text_encoder", "vae")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"transformer": PartKind(("ChromaTransformer2DModel",))}
    default_steps: ClassVar[int] = 35  # ChromaPipeline's defaults
    default_guidance_scale: ClassVar[float] = 5.0  # real CFG: two transformer calls per step
    compare_guidance_scale: ClassVar[float] = 5.0
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "mask")
    extra_points: ClassVar[tuple[HookPoint, ...]] = conditioning_points(
        "mask", "T5 text mask for the transformer (1: the prompt's tokens and the first pad)", "[B, T]"
    )

    # ---- what the model is -------------------------------------------------------------------------
    def guidance_embeds(self) -> bool:
        """Chroma's transformer has no guidance embedding (its guidance is real CFG)."""
        return False

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; w is ChromaPipeline's guidance_scale, real CFG over two calls."""
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v_u + w·(v_c − v_u), one transformer call per branch",
            pipeline_scale="guidance_scale = w",
            notes="no guidance embedding: real CFG, w = 1 one branch; T5 text mask keeps one pad token",
        )

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """T5 at ``max_sequence_length``, as ``ChromaPipeline._get_t5_prompt_embeds`` cuts it."""
        limit = text_limit(self.parts, "tokenizer", "text_encoder", int(options["max_sequence_length"]))
        return () if limit is None else (limit,)

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """T5's ``max_sequence_length`` positions: the token states the transformer reads."""
        return tokenize(self.parts["tokenizer"], prompt, int(options["max_sequence_length"]), source="t5")

    # ---- guidance and conditioning -----------------------------------------------------------------
    def run_options(self, height: int, width: int, *, max_sequence_length: int = 512) -> dict[str, Any]:
        """T5's token count (``max_sequence_length``, 1..512, the pipeline's default 512)."""
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
        """``embeds`` [B, T, D] (T5 run with its mask) and ``mask`` [B, T] per branch, by the pipeline's
        ``encode_prompt`` (the negative prompt, or the empty one, with guidance on)."""
        device = self.model.device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = uncond_prompts(negative_prompt, len(prompts)) if do_cfg else None
        embeds, _, mask, neg_embeds, _, neg_mask = self.pipeline.encode_prompt(
            prompt=prompts,
            negative_prompt=negatives,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            max_sequence_length=options["max_sequence_length"],
        )
        cond = {"embeds": embeds.to(device), "mask": mask.to(device)}
        if not do_cfg:
            return cond, None
        return cond, {"embeds": neg_embeds.to(device), "mask": neg_mask.to(device)}

    # ---- the model call ----------------------------------------------------------------------------
    def _call(
        self, latents: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """One transformer call on one branch, as ChromaPipeline's: [B, C, h, w] → v [B, C, h, w]."""
        batch, _, h, w = latents.shape
        embeds, mask = conditioning["embeds"], conditioning["mask"]  # [B, T, D], [B, T]
        packed = pack_latents(latents)  # [B, (h/2)·(w/2), 4C]
        # the text mask, then ones over the image tokens (ChromaPipeline._prepare_attention_mask)
        ones = torch.ones(batch, packed.shape[1], device=mask.device, dtype=torch.bool)
        attention_mask = torch.cat([mask, ones], dim=1)  # [B, T + N], in the mask's (float) dtype
        timestep = t.expand(batch).to(latents.dtype)
        velocity = self.model(
            hidden_states=packed,
            timestep=timestep / 1000,
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3).to(device=embeds.device, dtype=embeds.dtype),
            img_ids=image_ids(h, w, latents.device, embeds.dtype),
            attention_mask=attention_mask,
            joint_attention_kwargs={},
            return_dict=False,
            **kwargs,
        )[0]
        return unpack_latents(velocity, h, w)  # [B, C, h, w]
