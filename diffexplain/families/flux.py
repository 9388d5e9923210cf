"""Flux (``FluxPipeline``): a flow-matching transformer over packed latents, with guidance distillation.

Notation (``diffexplain.names``), flow matching as SD3 (``families.sd3``)::

    x_t = (1 − σ)·x0 + σ·ε          σ = linspace(1, 1/N, N), shifted by μ (dynamic shifting)
    v   = ε − x0                     what the transformer predicts
    x̂0  = x_t − σ·v                  a = 1, b = −σ

Two guidances, kept apart:

- w (``guidance_scale``) is diffexplain's, as for every family: ε̂ = ε_u + w·(ε_c − ε_u) over two
  branches. For Flux this is ``FluxPipeline``'s **true CFG** (``true_cfg_scale``): with w > 1 the
  negative (or empty) prompt runs a second transformer call. Default 1: one branch, as the pipeline.
- g (``embedded_guidance``, a run setting) is the guidance-distilled model's *input*: FluxPipeline's
  ``guidance_scale`` (default 3.5), embedded like the timestep (``transformer.config.guidance_embeds``;
  Flux schnell has none). It is part of each branch's conditioning (``prompt.guidance.cond``).

Layout: the transformer reads latents packed in 2×2 patches, [B, (h/2)·(w/2), 4C], with position ids
(``img_ids`` [(h/2)·(w/2), 3], ``txt_ids`` [T, 3] of zeros). Everything the loop, hooks and the trace
see is unpacked, [B, C, h, w]; only ``predict`` packs its input and unpacks the output (pure reshapes:
exact, so a replaced tensor round-trips bit for bit).

Per branch the transformer reads ``embeds`` [B, T₅, D] (T5's states, ``prompt.cond``), ``pooled``
[B, P] (CLIP's pooled output, ``prompt.pooled.cond``) and, for a distilled model, ``guidance`` [B]
(g, ``prompt.guidance.cond``). Like the pipeline, each branch is its own transformer call (not batched).

Attention maps come from the double-stream blocks' joint attention (``transformer_blocks.<i>.attn``):
the image-query → text-key block, text tokens being T5's. With maps on, both branches of a step run in
one batched call (the capture reads them together), so such a run equals the pipeline to float
precision; ``attention_maps=False`` runs the pipeline's own calls, bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.tokens import Token, tokenize
from diffexplain.checks import check_float
from diffexplain.conventions import Conventions
from diffexplain.errors import user_stacklevel
from diffexplain.families.base import Conditioning, conditioning_points
from diffexplain.families.parts import PartKind
from diffexplain.families.sd3 import FlowMatching
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit, text_limit
from diffexplain.scheduler_state import FLOW_SCHEDULER_NAMES

DEFAULT_EMBEDDED_GUIDANCE = 3.5
"""FluxPipeline's ``guidance_scale`` default: g, the distilled model's guidance input."""


class _Subset(Mapping[str, tuple[type, dict[str, Any]]]):
    """Some of a scheduler-name table's entries, looked up in it on use (no scheduler imported before)."""

    def __init__(self, table: Mapping[str, tuple[type, dict[str, Any]]], names: tuple[str, ...]) -> None:
        self._table, self._names = table, names

    def __getitem__(self, name: str) -> tuple[type, dict[str, Any]]:
        if name not in self._names:
            raise KeyError(name)
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


FLUX_SCHEDULER_NAMES: Mapping[str, tuple[type, dict[str, Any]]] = _Subset(
    FLOW_SCHEDULER_NAMES, ("flow_euler",)
)
"""Flux's short scheduler names: FluxPipeline passes its own σ list, which only flow-matching Euler takes
(``flow_heun``'s ``set_timesteps`` refuses custom sigmas, in the pipeline as here)."""

BRANCH_SIZE = "branch_size"
"""The ``model_kwargs`` key telling ``predict`` how many rows one branch has (B)."""


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → [B, (h/2)·(w/2), 4C]: 2×2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    latents = latents.reshape(
        b, c, h // 2, 2, w // 2, 2
    )  # a view where it can be (any layout a hook returns)
    latents = latents.permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (h/2)·(w/2), 4C] → [B, C, h, w] for a latent size h × w, as ``FluxPipeline._unpack_latents``."""
    b, _, channels = packed.shape
    packed = packed.reshape(b, height // 2, width // 2, channels // 4, 2, 2)
    packed = packed.permute(0, 3, 1, 4, 2, 5)
    return packed.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids of the packed image tokens [(h/2)·(w/2), 3]: (0, row, column), as the pipeline."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class Flux(FlowMatching):
    """Flux.1 dev / schnell: ``FluxPipeline``'s parts (``FluxTransformer2DModel``, flow matching)."""

    name: ClassVar[str] = "flux"
    label: ClassVar[str] = "Flux"
    pipeline_class: ClassVar[str] = "FluxPipeline"
    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = (
        "transformer",
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "vae",
    )
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"transformer": PartKind(("FluxTransformer2DModel",))}
    default_steps: ClassVar[int] = 28  # FluxPipeline's defaults (Flux dev)
    default_guidance_scale: ClassVar[float] = 1.0  # w = true_cfg_scale: one branch; g defaults to 3.5
    compare_guidance_scale: ClassVar[float] = 4.0  # true CFG as diffusers' examples set true_cfg_scale
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "pooled", "guidance")
    extra_points: ClassVar[tuple[HookPoint, ...]] = (
        *conditioning_points("pooled", "pooled text embedding (CLIP's pooled output)", "[B, P]"),
        HookPoint(
            "prompt.guidance.cond",
            "embedded guidance g fed with the prompt (a distilled model's input)",
            "[B]",
            False,
        ),
        HookPoint(
            "prompt.guidance.uncond",
            "embedded guidance g fed with the negative (or empty) prompt",
            "[B]",
            False,
            True,
        ),
    )
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLUX_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "joint"

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"))
        self._warned_true_cfg = False  # the w-is-true-CFG notice is given once per adapter

    # ---- what the model is -------------------------------------------------------------------------
    def guidance_embeds(self) -> bool:
        """Whether the transformer takes the embedded guidance g (guidance-distilled, e.g. Flux dev)."""
        return bool(getattr(self.model.config, "guidance_embeds", False))

    def conventions(self, scheduler: Any) -> Conventions:
        """A flow velocity given σ = t/1000; w is FluxPipeline's true CFG (two calls), and a guidance-distilled
        transformer (Flux dev) reads its own embedded guidance g as an input."""
        embedded = (
            "; the embedded guidance g (FluxPipeline's guidance_scale) is an input" * self.guidance_embeds()
        )
        return Conventions(
            prediction="flow",
            model_time="σ = t/1000",
            time_direction="σ falls from 1 (noise) to 0 (picture)",
            guidance_formula="v_u + w·(v_c − v_u), one transformer call per branch",
            pipeline_scale="true_cfg_scale = w",
            notes=f"w = 1: one branch{embedded}",
        )

    def describe(self) -> dict[str, Any]:
        """The base description plus the latent channels (in_channels / 4) and whether g is an input."""
        return {
            **super().describe(),
            "latent_channels": int(self.model.config.in_channels) // 4,
            "guidance_embeds": self.guidance_embeds(),
        }

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """CLIP (its pooled output) at its ``model_max_length`` (77) and T5 at ``max_sequence_length``, as
        ``FluxPipeline.encode_prompt`` cuts them."""
        t5_length = int(options["max_sequence_length"])
        limits = [
            text_limit(self.parts, "tokenizer", "text_encoder"),
            text_limit(self.parts, "tokenizer_2", "text_encoder_2", t5_length),
        ]
        return tuple(limit for limit in limits if limit is not None)

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """T5's ``max_sequence_length`` positions: the token states the transformer reads."""
        t5 = self.parts["tokenizer_2"]
        return tokenize(t5, prompt, int(options["max_sequence_length"]), source="t5")

    # ---- sizes and latents -------------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(H, W): the pipeline's ``default_sample_size`` (128) × the VAE's scale factor, 1024² for Flux."""
        side = int(getattr(self.pipeline, "default_sample_size", 128)) * self.vae_scale_factor
        return side, side

    def size_multiple(self) -> tuple[int, str]:
        """The VAE's scale factor × 2: latents are packed in 2×2 patches."""
        return self.vae_scale_factor * 2, "the VAE's scale factor × 2 (latents are packed in 2×2 patches)"

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """The unpacked x_t: [B, C, h, w] with C = in_channels / 4 (the transformer reads 4C per patch)."""
        scale = self.vae_scale_factor
        channels = int(self.model.config.in_channels) // 4
        return (batch_size, channels, 2 * (int(height) // (scale * 2)), 2 * (int(width) // (scale * 2)))

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: plain Gaussian noise drawn unpacked [B, C, h, w], as the pipeline draws it before packing."""
        model = self.model
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                packed = (
                    f" ({self.pipeline_class}'s packed layout: pass them unpacked)"
                    if latents.dim() == 3
                    else ""
                )
                raise ValueError(
                    f"latents has shape {list(latents.shape)}{packed}; expected the unpacked x_T "
                    f"{list(shape)} = [B, C, h, w] for this size"
                )
            return latents.to(device=model.device, dtype=model.dtype)
        return randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)

    # ---- timesteps and the scheduler ---------------------------------------------------------------
    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipeline: σ = linspace(1, 1/N, N) and the shift μ from the packed image's token count."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        config = scheduler.config
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if config.get("use_flow_sigmas", False):
            sigmas = None
        _, _, h, w = self.latent_shape(1, height, width)
        mu = calculate_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        retrieve_timesteps(scheduler, num_inference_steps, self.model.device, sigmas=sigmas, mu=mu)

    # ---- guidance and conditioning -----------------------------------------------------------------
    def run_options(
        self,
        height: int,
        width: int,
        *,
        max_sequence_length: int = 512,
        embedded_guidance: float | None = None,
    ) -> dict[str, Any]:
        """T5's token count (``max_sequence_length``, 1..512, the pipeline's default 512) and g
        (``embedded_guidance``: FluxPipeline's ``guidance_scale``, default 3.5; None for a model without
        a guidance embedding, which refuses any other value)."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if not 1 <= max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be between 1 and 512, got {max_sequence_length}")
        if not self.guidance_embeds():
            if embedded_guidance is not None:
                raise ValueError(
                    f"embedded_guidance={embedded_guidance!r}: this Flux transformer has no guidance "
                    "embedding (config.guidance_embeds is False, e.g. Flux schnell); leave it unset, "
                    "or use guidance_scale (true CFG) instead"
                )
            return {"max_sequence_length": max_sequence_length, "embedded_guidance": None}
        g = DEFAULT_EMBEDDED_GUIDANCE if embedded_guidance is None else embedded_guidance
        g = check_float("embedded_guidance", g, low=0.0, meaning="g, FluxPipeline's guidance_scale")
        return {"max_sequence_length": max_sequence_length, "embedded_guidance": g}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``embeds`` [B, T₅, D], ``pooled`` [B, P] and (distilled models) ``guidance`` [B] per branch,
        each prompt encoded on its own by the pipeline's ``encode_prompt``, as the pipeline does."""
        device = self.model.device
        batch_size = 1 if isinstance(prompt, str) else len(prompt)

        def branch(text: str | list[str]) -> Conditioning:
            embeds, pooled, _ = self.pipeline.encode_prompt(
                prompt=text,
                prompt_2=None,
                device=device,
                num_images_per_prompt=1,
                max_sequence_length=options["max_sequence_length"],
            )
            conditioning = {"embeds": embeds.to(device), "pooled": pooled.to(device)}
            g = options.get("embedded_guidance")
            if g is not None:  # float32, as the pipeline makes it
                conditioning["guidance"] = torch.full([batch_size], g, device=device, dtype=torch.float32)
            return conditioning

        cond = branch(prompt)
        if not do_cfg:
            return cond, None
        if isinstance(negative_prompt, list):
            if len(negative_prompt) != batch_size:
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch_size}"
                )
            return cond, branch(list(negative_prompt))
        text = negative_prompt or ""  # the empty prompt where there is no negative one
        if not text:
            self._notice_true_cfg()
        return cond, branch(text if isinstance(prompt, str) else [text] * batch_size)

    def _notice_true_cfg(self) -> None:
        """Once: w > 1 with no negative prompt on a distilled model is true CFG, not FluxPipeline's guidance_scale."""
        if self._warned_true_cfg or not self.guidance_embeds():
            return
        self._warned_true_cfg = True
        warnings.warn(
            "Flux: guidance_scale > 1 is true CFG here (FluxPipeline's true_cfg_scale): a second transformer "
            "call per step, with the empty negative prompt. FluxPipeline's guidance_scale, the distilled "
            "model's own guidance input, is embedded_guidance= here (default 3.5): for a run like "
            "pipe(prompt, guidance_scale=g), leave guidance_scale at 1 and pass embedded_guidance=g.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """B, the rows of one branch: ``predict`` calls the transformer once per branch, as the pipeline."""
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
        """The transformer on each branch: [2B or B, C, h, w] unpacked in → the velocity v, same shape.

        With two branches (uncond rows first) it runs twice, one call per branch, as FluxPipeline's true
        CFG does; each call packs its input and unpacks its output.
        """
        kwargs = dict(model_kwargs)
        rows = int(kwargs.pop(BRANCH_SIZE, model_input.shape[0]))
        outputs = []
        for start in range(0, model_input.shape[0], rows):
            part = {key: x[start : start + rows] for key, x in conditioning.items()}
            outputs.append(self._call(model_input[start : start + rows], t, part, kwargs))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _call(
        self, latents: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """One transformer call on one branch: [B, C, h, w] → v [B, C, h, w]."""
        _, _, h, w = latents.shape
        embeds = conditioning["embeds"]  # [B, T, D]
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        velocity = self.model(
            hidden_states=pack_latents(latents),  # [B, (h/2)·(w/2), 4C]
            timestep=timestep / 1000,
            guidance=conditioning.get("guidance"),  # [B] or None
            pooled_projections=conditioning["pooled"],  # [B, P]
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3).to(device=embeds.device, dtype=embeds.dtype),
            img_ids=image_ids(h, w, latents.device, embeds.dtype),
            joint_attention_kwargs={},
            return_dict=False,
            **kwargs,
        )[0]
        return unpack_latents(velocity, h, w)  # [B, C, h, w]
