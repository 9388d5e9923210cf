"""FLUX.2 (``Flux2KleinPipeline``, ``Flux2Pipeline``): a flow-matching transformer over patchified latents
that reads a chat LLM's stacked hidden states.

Notation (``diffexplain.names``), flow matching as Flux.1 (``families.flux``)::

    x_t = (1 − σ)·x0 + σ·ε          σ = linspace(1, 1/N, N), shifted by μ = compute_empirical_mu(h·w, N)
    v   = ε − x0                     what the transformer predicts (it is given σ = t/1000)
    x̂0  = x_t − σ·v                  a = 1, b = −σ

Layout (``families.flux2_latents``): x_t is the patchified, batch-normalised VAE space, [B, 128, h, w] at
1/16 of the image side; the transformer reads it as h·w tokens with 4-D positions. Text
(``families.flux2_text``): the chat template's text of the prompt through the LLM; the hidden states at
``text_encoder_out_layers`` are the hook point ``prompt.layers.cond`` [B, L, T, D], flattened into
``prompt.cond`` [B, T, L·D].

Three models, three guidances (w is diffexplain's classic ε_u + w·(ε_c − ε_u) over two branches):

- **klein Base** (``is_distilled=False``): real CFG, ``neg + w·(pos − neg)`` with two transformer calls
  (``cache_context("cond"/"uncond")``), w = the pipeline's ``guidance_scale`` (default 4, 50 steps);
- **klein distilled** (``is_distilled=True``, 4 steps): no CFG; the pipeline ignores ``guidance_scale``.
  Here w > 1 still runs two branches (a warning says the pipeline would not);
- **dev** (``Flux2Pipeline``): guidance-distilled, g (``embedded_guidance``, the pipeline's
  ``guidance_scale``, default 4) is an input (``prompt.guidance.cond``), as Flux.1 dev; w > 1 adds a
  true-CFG branch the pipeline does not have (a warning says so).

Reference images (FLUX.2's editing: extra image tokens at time positions 10, 20, ...) are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffexplain.checks import check_float
from diffexplain.conventions import Conventions
from diffexplain.families.flux2_base import GUIDANCE_POINTS, LAYER_POINTS, TRANSFORMER, Flux2Family
from diffexplain.families.flux2_text import mistral_chat_text, mistral_inputs, qwen3_chat_text, qwen3_inputs
from diffexplain.families.parts import PartKind
from diffexplain.names import HookPoint

__all__ = ["Flux2Dev", "Flux2Family", "Flux2Klein"]


class Flux2Klein(Flux2Family):
    """FLUX.2 [klein] (``Flux2KleinPipeline``): Qwen3 text, klein Base (CFG) or distilled (no CFG)."""

    name: ClassVar[str] = "flux2_klein"
    label: ClassVar[str] = "FLUX.2 [klein]"
    pipeline_class: ClassVar[str] = "Flux2KleinPipeline"
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": TRANSFORMER,
        "text_encoder": PartKind(("Qwen3ForCausalLM", "Qwen3Model")),
    }
    text_layers: ClassVar[tuple[int, ...]] = (9, 18, 27)
    text_source: ClassVar[str] = "qwen3"

    def __init__(self, *, pipeline: Any = None, is_distilled: bool | None = None, **parts: Any) -> None:
        """``is_distilled``: the pipeline's config (``Flux2KleinPipeline(..., is_distilled=True)``) where a
        pipeline is given, else this argument (default False: klein Base)."""
        if pipeline is not None:
            given = bool(pipeline.config.get("is_distilled", False))
            if is_distilled is not None and bool(is_distilled) != given:
                raise ValueError(f"is_distilled={is_distilled!r}, but the pipeline's config says {given}")
            is_distilled = given
        self.is_distilled = bool(is_distilled)
        # the pipeline's guidance_scale is ignored by a distilled klein: one branch and 4 steps by default
        self.default_steps = 4 if self.is_distilled else 50  # type: ignore[misc]
        self.default_guidance_scale = 1.0 if self.is_distilled else 4.0  # type: ignore[misc]
        super().__init__(pipeline=pipeline, **parts)

    def _pipeline_extra(self) -> dict[str, Any]:
        return {"is_distilled": self.is_distilled}

    def chat_text(self, prompt: str) -> str:
        """Qwen3's chat template: one user turn, the generation prompt, thinking off."""
        return qwen3_chat_text(self.parts["tokenizer"], prompt)

    def text_inputs(self, prompts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt's chat text tokenized on its own, as ``_get_qwen3_prompt_embeds``."""
        return qwen3_inputs(self.parts["tokenizer"], prompts, length)

    def describe(self) -> dict[str, Any]:
        """The FLUX.2 description plus ``is_distilled``."""
        return {**super().describe(), "is_distilled": self.is_distilled}

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; Base: CFG with two calls; distilled: none in the pipeline."""
        if self.is_distilled:
            return Conventions(
                prediction="flow",
                model_time="σ = t/1000",
                time_direction="σ falls from 1 (noise) to 0 (picture)",
                guidance_formula="none: one branch (the pipeline ignores guidance_scale)",
                pipeline_scale="guidance_scale (ignored)",
                notes="step-distilled (4 steps) without CFG; w > 1 here runs v_u + w·(v_c − v_u) anyway, "
                "one transformer call per branch, which the pipeline never does",
            )
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v_u + w·(v_c − v_u), one transformer call per branch",
            pipeline_scale="guidance_scale = w",
            notes="klein Base (undistilled); the pipeline's negative prompt is always the empty one "
            "(negative_prompt_embeds to change it)",
        )

    def cfg_notice(self) -> str:
        """A distilled klein: the pipeline ignores w; here it runs two branches."""
        if not self.is_distilled:
            return ""
        return (
            "FLUX.2 [klein] distilled: Flux2KleinPipeline ignores guidance_scale for this step-distilled model "
            "(no CFG); here guidance_scale > 1 runs CFG anyway (a second transformer call per step), which "
            "the model was not trained for. For the pipeline's picture leave guidance_scale at 1."
        )


class Flux2Dev(Flux2Family):
    """FLUX.2 [dev] (``Flux2Pipeline``): Mistral Small 3.1 text, guidance-distilled (g is an input)."""

    name: ClassVar[str] = "flux2"
    label: ClassVar[str] = "FLUX.2 [dev]"
    pipeline_class: ClassVar[str] = "Flux2Pipeline"
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": TRANSFORMER,
        "text_encoder": PartKind(("Mistral3ForConditionalGeneration", "Mistral3Model")),
    }
    conditioning_keys: ClassVar[tuple[str, ...]] = ("layers", "embeds", "guidance")
    extra_points: ClassVar[tuple[HookPoint, ...]] = LAYER_POINTS + GUIDANCE_POINTS
    default_guidance_scale: ClassVar[float] = 1.0  # w: one branch; g defaults to 4
    text_layers: ClassVar[tuple[int, ...]] = (10, 20, 30)
    text_source: ClassVar[str] = "mistral"
    add_special_tokens: ClassVar[bool] = False

    def chat_text(self, prompt: str) -> str:
        """The system message and the prompt as the user turn, through the processor's chat template."""
        return mistral_chat_text(self.parts["tokenizer"], prompt.replace("[IMG]", ""))

    def text_inputs(self, prompts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole batch through the chat template at once, as ``_get_mistral_3_small_prompt_embeds``."""
        return mistral_inputs(self.parts["tokenizer"], prompts, length)

    def more_options(self, *, embedded_guidance: float | None = None) -> dict[str, Any]:
        """g (``embedded_guidance``: Flux2Pipeline's ``guidance_scale``, default 4.0; None for a transformer
        without a guidance embedding, which refuses any other value)."""
        if not self.guidance_embeds():
            if embedded_guidance is not None:
                raise ValueError(
                    f"embedded_guidance={embedded_guidance!r}: this FLUX.2 transformer has no guidance "
                    "embedding (config.guidance_embeds is False); leave it unset"
                )
            return {"embedded_guidance": None}
        g = 4.0 if embedded_guidance is None else embedded_guidance
        return {
            "embedded_guidance": check_float("embedded_guidance", g, low=0.0, meaning="Flux2Pipeline's g")
        }

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; g embedded; w > 1 adds true CFG the pipeline lacks."""
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="none in the pipeline: g (its guidance_scale) is embedded as an input; "
            "w > 1 here: v_u + w·(v_c − v_u), one transformer call per branch",
            pipeline_scale="none (Flux2Pipeline's guidance_scale is g = embedded_guidance)",
            notes="guidance-distilled: g is an input, as Flux.1 dev",
        )

    def cfg_notice(self) -> str:
        """dev: the pipeline has no CFG; w > 1 runs true CFG on top of g."""
        return (
            "FLUX.2 [dev]: guidance_scale > 1 is true CFG here (a second transformer call per step, with the "
            "negative or empty prompt), which Flux2Pipeline does not have. Its guidance_scale is the "
            "distilled model's own input, embedded_guidance= here (default 4.0): for a run like "
            "pipe(prompt, guidance_scale=g), leave guidance_scale at 1 and pass embedded_guidance=g."
        )
