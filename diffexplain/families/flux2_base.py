"""What FLUX.2 klein and dev share (``families.flux2``): the patchified latents, the LLM's stacked layers as
the prompt's conditioning, and one transformer call per branch with 4-D positions.

Per branch the transformer reads ``embeds`` [B, T, L·D] (``prompt.cond``), flattened from ``layers``
[B, L, T, D] (``prompt.layers.cond``: hooks there run first, and a replaced stack becomes ``embeds``
before ``prompt.cond``'s hooks), and for dev ``guidance`` [B] (g, ``prompt.guidance.cond``). Each branch
is its own transformer call (uncond first), inside ``cache_context("uncond")`` / ``("cond")`` as
``Flux2KleinPipeline``'s CFG; the joint-attention capture reads the calls one branch at a time.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.tokens import Token
from diffexplain.errors import user_stacklevel
from diffexplain.families.base import Conditioning
from diffexplain.families.flux import BRANCH_SIZE, FLUX_SCHEDULER_NAMES
from diffexplain.families.flux2_latents import Flux2VaeAdapter, latent_ids, pack, text_ids, unpack
from diffexplain.families.flux2_text import (
    chat_tokens,
    check_layers,
    flatten_layers,
    stack_layers,
    text_tokenizer,
)
from diffexplain.families.parts import PartKind
from diffexplain.families.sd3 import FlowMatching
from diffexplain.names import HookPoint
from diffexplain.prompt_limits import TextLimit

LAYER_POINTS = (
    HookPoint(
        "prompt.layers.cond",
        "the text encoder's hidden states at text_encoder_out_layers, before they are concatenated into "
        "prompt.cond (replace it and prompt.cond follows)",
        "[B, L, T, D]",
        False,
    ),
    HookPoint(
        "prompt.layers.uncond",
        "the same for the negative (or empty) prompt",
        "[B, L, T, D]",
        False,
        True,
    ),
)
GUIDANCE_POINTS = (
    HookPoint("prompt.guidance.cond", "embedded guidance g fed with the prompt (dev's input)", "[B]", False),
    HookPoint(
        "prompt.guidance.uncond",
        "embedded guidance g fed with the negative (or empty) prompt",
        "[B]",
        False,
        True,
    ),
)
TRANSFORMER = PartKind(("Flux2Transformer2DModel",))


class Flux2Family(FlowMatching):
    """What FLUX.2 klein and dev share: the latents, the layer-stacked text, the model call."""

    model_attr: ClassVar[str] = "transformer"
    output_kind: ClassVar[str] = "velocity"
    part_names: ClassVar[tuple[str, ...]] = ("transformer", "tokenizer", "text_encoder", "vae")
    conditioning_keys: ClassVar[tuple[str, ...]] = ("layers", "embeds")
    extra_points: ClassVar[tuple[HookPoint, ...]] = LAYER_POINTS
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = FLUX_SCHEDULER_NAMES
    attention_kind: ClassVar[str] = "joint"
    default_steps: ClassVar[int] = 50  # the pipelines' defaults
    default_guidance_scale: ClassVar[float] = 4.0
    compare_guidance_scale: ClassVar[float] = 4.0
    text_layers: ClassVar[tuple[int, ...]]  # the pipeline's text_encoder_out_layers
    text_source: ClassVar[str]  # the text encoder, for the token lists
    add_special_tokens: ClassVar[bool] = True  # how the pipeline tokenizes the chat text

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.pipeline = self.reference_pipeline(pipeline, parts.get("scheduler"), **self._pipeline_extra())
        self._warned_cfg = False  # the w-is-not-the-pipeline's notice is given once per adapter

    def _pipeline_extra(self) -> dict[str, Any]:
        """Further arguments of the reference pipeline built over bare parts (klein: ``is_distilled``)."""
        return {}

    # ---- what the model is -------------------------------------------------------------------------
    @classmethod
    def hook_points(cls) -> tuple[HookPoint, ...]:
        """The loop's points with the layer stack first: its hooks run before ``prompt.cond`` is made from it."""
        points = super().hook_points()
        return LAYER_POINTS + tuple(p for p in points if p not in LAYER_POINTS)

    def guidance_embeds(self) -> bool:
        """Whether the transformer takes an embedded guidance g (dev)."""
        return bool(getattr(self.model.config, "guidance_embeds", False))

    def encoder_shape(self) -> tuple[int, int]:
        """(layers, width) of the text encoder's language model."""
        config = self.parts["text_encoder"].config
        config = getattr(config, "text_config", None) or config
        return int(config.num_hidden_layers), int(config.hidden_size)

    @abstractmethod
    def chat_text(self, prompt: str) -> str:
        """The text the pipeline encodes for ``prompt``, chat template included."""

    def describe(self) -> dict[str, Any]:
        """The base description plus the latent channels, g as an input, and the chat template's text
        (``{prompt}`` where the prompt goes)."""
        return {
            **super().describe(),
            "latent_channels": int(self.model.config.in_channels) // 4,
            "guidance_embeds": self.guidance_embeds(),
            "chat_template": self.chat_text("\x00").replace("\x00", "{prompt}"),
        }

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """Every position of the chat text (``max_sequence_length``): the template's own tokens
        (kind "template"), the prompt's, and padding."""
        tokenizer = text_tokenizer(self.parts["tokenizer"])
        return chat_tokens(
            tokenizer,
            self.chat_text,
            prompt,
            int(options["max_sequence_length"]),
            source=self.text_source,
            template_prompt=prompt.replace("[IMG]", "") if self.text_source == "mistral" else None,
            add_special_tokens=self.add_special_tokens,
        )

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """The chat text is cut at ``max_sequence_length``: the prompt has that less the template's tokens."""
        tokenizer = text_tokenizer(self.parts["tokenizer"])
        template = sum(t.kind == "template" for t in self.prompt_tokens("", options))
        room = max(int(options["max_sequence_length"]) - template, 1)
        return (TextLimit(f"text_encoder ({type(self.parts['text_encoder']).__name__})", tokenizer, room),)

    # ---- sizes, latents, timesteps -----------------------------------------------------------------
    def vae_adapter(self) -> Flux2VaeAdapter | None:
        """``AutoencoderKLFlux2``: patchified and batch-normalised (``flux2_latents``)."""
        return None if self.vae is None else Flux2VaeAdapter(self.vae)

    def default_size(self) -> tuple[int, int]:
        """(H, W): the pipeline's ``default_sample_size`` (128) × the VAE's own scale (8): 1024²."""
        side = int(getattr(self.pipeline, "default_sample_size", 128)) * (self.vae_scale_factor // 2)
        return side, side

    def size_multiple(self) -> tuple[int, str]:
        """The VAE's scale × 2: one latent position is a 2×2 patch of the VAE's latents."""
        return self.vae_scale_factor, "the VAE's scale factor × 2 (its latents are patchified 2×2)"

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: Gaussian noise [B, C, h, w], drawn as the pipeline draws it before packing."""
        model = self.model
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                packed = (
                    " (the pipeline's packed tokens: pass them as [B, C, h, w])" if latents.dim() == 3 else ""
                )
                raise ValueError(
                    f"latents has shape {list(latents.shape)}{packed}; expected x_T {list(shape)} = [B, C, h, w]"
                )
            return latents.to(device=model.device, dtype=model.dtype)
        return randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)

    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """As the pipelines: σ = linspace(1, 1/N, N), μ = compute_empirical_mu(h·w, N), begin index 0."""
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, retrieve_timesteps

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        _, _, h, w = self.latent_shape(1, height, width)
        mu = compute_empirical_mu(image_seq_len=h * w, num_steps=num_inference_steps)
        retrieve_timesteps(scheduler, num_inference_steps, self.model.device, sigmas=sigmas, mu=mu)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    # ---- the prompt ----------------------------------------------------------------------------------
    def run_options(
        self,
        height: int,
        width: int,
        *,
        max_sequence_length: int = 512,
        text_encoder_out_layers: list[int] | tuple[int, ...] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The chat text's token count (``max_sequence_length``, the pipelines' default 512) and the LLM layers
        whose states feed the transformer (``text_encoder_out_layers``, the pipeline's by default)."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int):
            raise ValueError(f"max_sequence_length must be a whole number, got {max_sequence_length!r}")
        if not 1 <= max_sequence_length <= 4096:
            raise ValueError(f"max_sequence_length must be between 1 and 4096, got {max_sequence_length}")
        layers = self.text_layers if text_encoder_out_layers is None else text_encoder_out_layers
        count, width_d = self.encoder_shape()
        encoder = type(self.parts["text_encoder"]).__name__
        joint = int(self.model.config.joint_attention_dim)
        options = {
            "max_sequence_length": max_sequence_length,
            "text_encoder_out_layers": check_layers(layers, encoder, count, width_d, joint),
        }
        return options | self.more_options(**extra)

    def more_options(self, **extra: Any) -> dict[str, Any]:
        """A model's own further settings (dev: ``embedded_guidance``); none by default."""
        if extra:
            raise TypeError(f"{self.label} takes no run setting {', '.join(sorted(extra))}")
        return {}

    @abstractmethod
    def text_inputs(self, prompts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask [B, T] of the chat texts, as the pipeline tokenizes them."""

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``layers`` [B, L, T, D] and ``embeds`` [B, T, L·D] (and dev's ``guidance`` [B]) per branch, each
        branch's prompts through the chat template and the LLM once, as the pipelines do."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = self._branch(prompts, options)
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
        self.notice_cfg()
        return cond, self._branch(negatives, options)

    def _branch(self, prompts: list[str], options: dict[str, Any]) -> Conditioning:
        encoder, device = self.parts["text_encoder"], self.model.device
        input_ids, mask = self.text_inputs(prompts, int(options["max_sequence_length"]))
        encoder_device = next(encoder.parameters()).device
        output = encoder(
            input_ids=input_ids.to(encoder_device),
            attention_mask=mask.to(encoder_device),
            output_hidden_states=True,
            use_cache=False,
        )
        layers = stack_layers(output.hidden_states, options["text_encoder_out_layers"])
        layers = layers.to(dtype=encoder.dtype, device=device)  # [B, L, T, D]
        conditioning = {"layers": layers, "embeds": flatten_layers(layers)}  # embeds [B, T, L·D]
        g = options.get("embedded_guidance")
        if g is not None:  # float32, as the pipeline makes it
            conditioning["guidance"] = torch.full([len(prompts)], g, device=device, dtype=torch.float32)
        return conditioning

    def conditioning_hooked(
        self, key: str, cond: Conditioning, uncond: Conditioning | None, replaced: tuple[bool, bool]
    ) -> None:
        """A replaced layer stack becomes the branch's ``embeds`` (before ``prompt.cond``'s hooks run)."""
        if key != "layers":
            return
        for branch, was_replaced in zip((cond, uncond), replaced, strict=True):
            if branch is not None and was_replaced:
                branch["embeds"] = flatten_layers(branch["layers"])

    def notice_cfg(self) -> None:
        """Once per adapter, where w > 1 is not what the pipeline would do with its guidance_scale."""
        message = self.cfg_notice()
        if self._warned_cfg or not message:
            return
        self._warned_cfg = True
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())

    def cfg_notice(self) -> str:
        """What w > 1 means here, where the pipeline does otherwise; "" where it runs CFG itself."""
        return ""

    # ---- the model call ----------------------------------------------------------------------------
    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """B, the rows of one branch: ``predict`` calls the transformer once per branch, as the pipelines."""
        return {BRANCH_SIZE: int(latents.shape[0])}

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The transformer on each branch: [2B or B, C, h, w] → v, same shape; uncond rows first, each
        branch its own call in its ``cache_context``, as ``Flux2KleinPipeline``'s CFG."""
        kwargs = dict(model_kwargs)
        rows = int(kwargs.pop(BRANCH_SIZE, model_input.shape[0]))
        names = ("uncond", "cond") if model_input.shape[0] == 2 * rows else ("cond",)
        outputs = []
        for index, name in enumerate(names):
            part = {key: x[index * rows : (index + 1) * rows] for key, x in conditioning.items()}
            with self.model.cache_context(name):
                outputs.append(self._call(model_input[index * rows : (index + 1) * rows], t, part, kwargs))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _call(
        self, latents: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """One transformer call on one branch: [B, C, h, w] → v [B, C, h, w]."""
        _, _, h, w = latents.shape
        embeds = conditioning["embeds"]  # [B, T, L·D]
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        velocity = self.model(
            hidden_states=pack(latents).to(self.model.dtype),  # [B, h·w, C]
            timestep=timestep / 1000,
            guidance=conditioning.get("guidance"),  # [B] (dev) or None
            encoder_hidden_states=embeds,
            txt_ids=text_ids(embeds.shape[1], latents.device),  # [T, 4]
            img_ids=latent_ids(h, w, latents.device),  # [h·w, 4]
            joint_attention_kwargs=None,
            return_dict=False,
            **kwargs,
        )[0]
        return unpack(velocity, h, w)  # [B, C, h, w]
