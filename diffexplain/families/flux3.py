"""FLUX.3 (``Flux3ModularPipeline``) and its step-distilled flow map (``Flux3DistilledModularPipeline``):
a flow-matching transformer over VAE-patchified latent tokens, read from Modular Diffusers' blocks.

Notation (``diffexplain.names``), flow matching as SD3 and Flux (``families.sd3``)::

    x_t = (1 − σ)·x0 + σ·ε        σ = linspace(1, 1/N, N), shifted by the scheduler's constant 6.93
    v   = ε − x0                   what the base transformer predicts, given σ = t/1000
    x̂0  = x_t − σ·v                a = 1, b = −σ

The flow map (``flow_map=True``, the distilled checkpoints) is also given σ' = t'/1000, the σ this step
jumps to (the next step's, 0 after the last), and predicts the *average* velocity u(x_t, σ, σ') over
the jump, so that one Euler step lands where the flow would: x_{σ'} = x_t + (σ' − σ)·u. Its x̂0 here is
x_t − σ·u: the jump continued along u to σ = 0. That is the flow map's own jump to the picture only at
the last step (σ' = 0); earlier it extrapolates the step's chord, as a base model's x̂0 extrapolates
its tangent. Each step records t' as the per-step scalar ``target_timestep``.

Layout: the latents are [B, C, h, w] with C = 4·(VAE channels) (the VAE's 2×2 patchify) and h = H/16;
the transformer reads them as tokens, [B, h·w, C] (``flatten(2).transpose(1, 2)``, as the pipeline's
prepare-latents step packs them), with 4-D position ids (``img_ids`` from the pipeline's own
``_prepare_image_ids``, ``txt_ids`` from its text RoPE step). Everything hooks and traces see is
[B, C, h, w], which is also the pipeline's ``output="latents"``.

Text: the prompt goes through Qwen3-VL's chat template, padded (right) to a multiple of 80 tokens, and
the states of 8 of its layers are stacked (``embeds`` [B, T, 8·D]); the encoding is the pipeline's
own text-encoder step's function. The prompt upsampler (a Qwen3.5 LLM that rewrites the prompt) is not
run: diffexplain encodes the prompt as given. Guidance: one transformer call per branch, as the
pipeline's ``ClassifierFreeGuidance`` guider makes them; the distilled model has one branch only.

The step-distilled flow map is ``families.flux3_distilled.Flux3Distilled``.

Attention maps come from the joint single blocks (``single_transformer_blocks.<i>.attn``): text and
image tokens form one sequence (text first) in one softmax, whose image-query → text-key block is
read beside the layer (``diffexplain.attention.single_stream``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.layers import AttentionLayer
from diffexplain.attention.tokens import Token, words_of
from diffexplain.conventions import Conventions
from diffexplain.families.base import Conditioning
from diffexplain.families.flux import BRANCH_SIZE, FLUX_SCHEDULER_NAMES
from diffexplain.families.flux2_latents import Flux2VaeAdapter
from diffexplain.families.modular import pipeline_blocks
from diffexplain.families.parts import PartKind, config_value
from diffexplain.families.sd3 import FlowMatching
from diffexplain.families.vae import VaeAdapter
from diffexplain.prompt_limits import TextLimit


def window_length(tokenizer: Any, text: str, max_sequence_length: int, pad_multiple: int) -> int:
    """The text window of one templated prompt: its length rounded up to ``pad_multiple``, at most
    ``max_sequence_length`` (the pipeline's text-encoder step)."""
    real = tokenizer(text, truncation=True, max_length=max_sequence_length)["input_ids"]
    return min(math.ceil(len(real) / pad_multiple) * pad_multiple, max_sequence_length)


class Flux3(FlowMatching):
    """FLUX.3: ``Flux3ModularPipeline``'s components (``Flux3Transformer2DModel``, Qwen3-VL, FLUX.2's VAE)."""

    name: ClassVar[str] = "flux3"
    label: ClassVar[str] = "FLUX.3"
    pipeline_class: ClassVar[str] = "Flux3ModularPipeline"
    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = ("transformer", "tokenizer", "text_encoder", "vae")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "transformer": PartKind(
            ("Flux3Transformer2DModel",),
            "config.flow_map False (the base model)",
            lambda part: not config_value(part, "flow_map"),
        )
    }
    default_steps: ClassVar[int] = 50  # the pipeline's set-timesteps step
    default_guidance_scale: ClassVar[float] = 3.5  # its ClassifierFreeGuidance guider
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLUX_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "single"
    flow_map: ClassVar[bool] = False

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = pipeline  # the modular pipeline, where there is one: its blocks' settings are read
        self._text_step = self._block("text_encoder", "Flux3TextEncoderStep")
        self._latents_step = self._block("denoise", "Flux3PrepareLatentsStep")

    def _block(self, name: str, cls: str) -> Any:
        """The pipeline's own block of class ``cls`` (searched under its step ``name``), else a fresh one:
        its settings (the text window's padding, the RoPE scale, the default size) are the recipe's."""
        import diffusers.modular_pipelines.flux3.before_denoise as before
        import diffusers.modular_pipelines.flux3.encoders as encoders

        wanted = getattr(encoders, cls, None) or getattr(before, cls)
        blocks = None if self.pipeline is None else pipeline_blocks(self.pipeline)
        stack = [blocks.sub_blocks.get(name)] if blocks is not None else []
        while stack:
            block = stack.pop(0)
            if isinstance(block, wanted):
                return block
            stack.extend(getattr(block, "sub_blocks", {}).values())
        return wanted()

    # ---- what the model is -------------------------------------------------------------------------
    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; w is the pipeline's ClassifierFreeGuidance scale, one call per branch."""
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v_u + w·(v_c − v_u), one transformer call per branch (ClassifierFreeGuidance)",
            pipeline_scale="guider.guidance_scale = w",
            notes="w ≤ 1: one branch; the negative prompt defaults to the empty prompt, encoded like the prompt",
        )

    def describe(self) -> dict[str, Any]:
        """The base description plus the flow-map flag and the text window's padding multiple."""
        return {
            **super().describe(),
            "flow_map": bool(config_value(self.model, "flow_map")),
            "pad_multiple": int(self._text_step.pad_multiple),
        }

    def attention_layers(self) -> tuple[AttentionLayer, ...]:
        """The joint single blocks' attention (one sequence, text first): ``single_transformer_blocks.<i>.attn``."""
        cached = getattr(self, "_attention_layers", None)
        if cached is None or cached[0] is not self.model:
            blocks = self.model.single_transformer_blocks
            found = tuple(
                AttentionLayer(f"single_transformer_blocks.{i}.attn", block.attn, "single")
                for i, block in enumerate(blocks)
            )
            cached = self._attention_layers = (self.model, found)
        return cached[1]

    def _templated(self, prompt: str) -> str:
        tokenizer = self.parts["tokenizer"]
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """The text window's positions: the chat template's tokens ("special"), the prompt's ("word", with
        their words) and the padding to the window ("pad"), as the transformer reads them."""
        tokenizer = self.parts["tokenizer"].tokenizer
        text = self._templated(prompt)
        length = window_length(
            tokenizer, text, int(options["max_sequence_length"]), self._text_step.pad_multiple
        )
        enc = tokenizer(
            text, padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True
        )
        start = text.find(prompt) if prompt else -1
        words = [(a + start, b + start, w) for a, b, w in words_of(prompt)] if start >= 0 else []
        texts = tokenizer.convert_ids_to_tokens(enc["input_ids"])
        tokens = []
        for i, (piece, real, (a, b)) in enumerate(
            zip(texts, enc["attention_mask"], enc["offset_mapping"], strict=True)
        ):
            hit = next((k for k, (s, e, _) in enumerate(words) if s < b and a < e), None) if real else None
            kind = "pad" if not real else ("word" if hit is not None else "special")
            word = None if hit is None else words[hit][2]
            tokens.append(Token(i, str(piece), word, kind, hit, "qwen3-vl"))
        return tokens

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """None checked here: the window holds up to ``max_sequence_length`` (8192) tokens."""
        return ()

    # ---- sizes and latents -------------------------------------------------------------------------
    def vae_adapter(self) -> VaeAdapter | None:
        """FLUX.2's batch-normalised, patchified VAE (``Flux2VaeAdapter``)."""
        return None if self.vae is None else Flux2VaeAdapter(self.vae)

    def default_size(self) -> tuple[int, int]:
        """(H, W): the pipeline's prepare-latents defaults, 1024²."""
        step = self._latents_step
        return int(step.default_height), int(step.default_width)

    def size_multiple(self) -> tuple[int, str]:
        """16 for FLUX.2's VAE: its scale factor 8 × the 2×2 patchify."""
        return self.vae_scale_factor, "the VAE's scale factor × 2 (latents are patchified 2×2)"

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """x_t: [B, C, H/16, W/16] with C = the transformer's in_channels (4 × the VAE's)."""
        scale = self.vae_scale_factor
        return (batch_size, int(self.model.config.in_channels), int(height) // scale, int(width) // scale)

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: Gaussian noise drawn in float32, then cast to the transformer's dtype, as the pipeline."""
        model = self.model
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(
                    f"latents has shape {list(latents.shape)}; expected x_T {list(shape)} = [B, C, h, w] "
                    "(the pipeline's unpacked grid, not its tokens)"
                )
            return latents.to(device=model.device, dtype=model.dtype)
        noise = randn_tensor(shape, generator=generator, device=model.device, dtype=torch.float32)
        return noise.to(model.dtype)

    # ---- timesteps and the scheduler ---------------------------------------------------------------
    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline's set-timesteps step: σ = linspace(1, 1/N, N) (the scheduler's shift applies),
        begin index 0."""
        from diffusers.modular_pipelines.flux3.before_denoise import retrieve_timesteps

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        retrieve_timesteps(scheduler, num_inference_steps, self.model.device, sigmas=sigmas)
        scheduler.set_begin_index(0)

    # ---- guidance and conditioning -----------------------------------------------------------------
    def run_options(self, height: int, width: int, *, max_sequence_length: int = 8192) -> dict[str, Any]:
        """The text window's cap (``max_sequence_length``, the pipeline's default 8192)."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be at least 1, got {max_sequence_length}")
        return {"max_sequence_length": max_sequence_length}

    def _embeds(self, prompts: list[str], options: dict[str, Any]) -> torch.Tensor:
        """The stacked Qwen3-VL states of each prompt (the pipeline's text-encoder step, one prompt per
        call), in the transformer's dtype: [B, T, 8·D]; ``ValueError`` where the windows differ."""
        step = self._text_step
        embeds = [
            step._get_qwen3_vl_prompt_embeds(
                text_encoder=self.parts["text_encoder"],
                tokenizer=self.parts["tokenizer"],
                prompt=p,
                device=self.model.device,
                max_sequence_length=options["max_sequence_length"],
                pad_multiple=step.pad_multiple,
            )
            for p in prompts
        ]
        windows = sorted({int(e.shape[1]) for e in embeds})
        if len(windows) > 1:
            raise ValueError(
                f"these prompts fill text windows of {windows} tokens (each is padded to a multiple of "
                f"{step.pad_multiple}); FLUX.3 encodes one prompt per call: run them one at a time, or "
                "use prompts of similar length"
            )
        return torch.cat(embeds).to(self.model.dtype)

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, T, 8·D] per branch; the negative (or empty) prompt encoded the same way."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = {"embeds": self._embeds(prompts, options)}
        if not do_cfg:
            return cond, None
        if isinstance(negative_prompt, list):
            if len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompts)}"
                )
            negatives = list(negative_prompt)
        else:
            negatives = [negative_prompt or ""] * len(prompts)
        return cond, {"embeds": self._embeds(negatives, options)}

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """B, the rows of one branch: ``predict`` calls the transformer once per branch, as the guider."""
        return {BRANCH_SIZE: int(latents.shape[0])}

    # ---- the model call ----------------------------------------------------------------------------
    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The transformer on each branch (uncond rows first), one call each: [2B or B, C, h, w] → v."""
        kwargs = dict(model_kwargs)
        rows = int(kwargs.pop(BRANCH_SIZE, model_input.shape[0]))
        target = self.target_timestep(scheduler, t) if self.flow_map else None
        outputs = []
        for start in range(0, model_input.shape[0], rows):
            part = {key: x[start : start + rows] for key, x in conditioning.items()}
            outputs.append(self._call(model_input[start : start + rows], t, target, part, kwargs))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def target_timestep(self, scheduler: Any, t: torch.Tensor) -> torch.Tensor:
        """t', the timestep a flow-map step jumps to: the next in the schedule, 0 after the last (the
        pipeline's distilled denoiser). A t off the schedule (a probe) jumps to 0: x̂0 in one call.
        (A flow schedule's timesteps are distinct, so t's place in it is found by value.)"""
        timesteps = scheduler.timesteps
        t = torch.as_tensor(t)
        at = (timesteps == t.to(timesteps.device)).nonzero()
        index = int(at[0]) if len(at) else len(timesteps)
        return timesteps[index + 1] if index + 1 < len(timesteps) else torch.zeros_like(t)

    def _call(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        target: torch.Tensor | None,
        conditioning: Conditioning,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """One transformer call on one branch: [B, C, h, w] → v [B, C, h, w] (tokens [B, h·w, C] inside)."""
        from diffusers.modular_pipelines.flux3.before_denoise import (
            Flux3TextRoPEInputsStep,
            _prepare_image_ids,
        )

        b, c, h, w = latents.shape
        model = self.model
        tokens = latents.to(model.dtype).flatten(2).transpose(1, 2)  # [B, h·w, C]
        embeds = conditioning["embeds"]  # [B, T, 8·D]
        extra = {}
        if target is not None:
            extra["target_timestep"] = (torch.as_tensor(target) / 1000).expand(b).to(tokens.dtype)
        velocity = model(
            hidden_states=tokens,
            encoder_hidden_states=embeds,
            timestep=(torch.as_tensor(t) / 1000).expand(b).to(tokens.dtype),
            img_ids=_prepare_image_ids(h, w, self._latents_step.image_rope_scale).to(latents.device),
            txt_ids=Flux3TextRoPEInputsStep._prepare_text_ids(embeds).to(embeds.device),
            return_dict=False,
            **extra,
            **kwargs,
        )[0]  # [B, h·w, C]
        return velocity.transpose(1, 2).reshape(b, c, h, w)
