"""DeepFloyd IF's two stages as families: ``IF`` (``IFPipeline``) and ``IFSuperResolution``
(``IFSuperResolutionPipeline``). ``diffexplain.cascade.Cascade`` runs them one after the other.

Both denoise in **pixel space** (no VAE: x_t is a picture [B, 3, H, W] in [-1, 1], and so is x̂0) with
the states of a frozen T5 encoder (``embeds`` [B, 77, D]; prompts lower-cased and stripped, as the
pipelines do with ``clean_caption=False``). Notation (``diffexplain.names``)::

    model output  [B, 6, H, W] = [ε (3 channels) ; v (3 channels, the learned variance)]
    ε̂ = ε_u + w·(ε_c − ε_u)        only the ε half is guided
    scheduler.step([ε̂ ; v_c])       v of the cond branch, as the pipelines (DDPM "learned_range")

Stage II (super-resolution) reads x_t beside the stage-I image upscaled to H × W (bilinear, corners
aligned) and noised to ``noise_level`` by its own ``image_noising_scheduler``; the noise level is the
U-Net's ``class_labels``::

    x_up = add_noise(upscale(image), n, noise_level)     drawn after x_T, from the run's generator
    model(cat([x_t, x_up]), t, embeds, class_labels=noise_level)

``x_up`` and ``noise_level`` are each branch's conditioning (hook points ``prompt.image.cond``,
``prompt.noise_level.cond`` and their ``uncond``), kept in the trace, so a fork of stage II re-uses them.

IF's U-Nets read the text through ``AttnAddedKVProcessor`` (text keys concatenated before the image
keys): not a cross-attention layer diffexplain captures, so IF traces have no attention maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.tokens import Token, tokenize
from diffexplain.families.base import Conditioning, Family, conditioning_points
from diffexplain.families.learned_variance import LearnedVariance, check_output_channels
from diffexplain.families.parts import PartKind, config_value
from diffexplain.families.sd import uncond_prompts
from diffexplain.prompt_limits import TextLimit, text_limit

IF_MAX_LENGTH = 77
"""IF's T5 token count: "the text encoder was trained with a max length of 77 for IF" (the pipelines)."""

DEFAULT_NOISE_LEVEL = 250
"""``IFSuperResolutionPipeline``'s ``noise_level`` default: how much the upscaled stage-I image is noised."""


def learns_variance_of_x_t(unet: Any) -> bool:
    """Stage I's U-Net reads x_t [B, C, H, W] and outputs ε and a learned variance: out = 2 × in channels."""
    out, into = config_value(unet, "out_channels"), config_value(unet, "in_channels")
    return out is not None and into is not None and int(out) == 2 * int(into)


def learns_variance_beside_image(unet: Any) -> bool:
    """Stage II's U-Net reads cat([x_t, x_up]) (2C channels) and outputs ε and a variance (2C): out = in."""
    out, into = config_value(unet, "out_channels"), config_value(unet, "in_channels")
    return out is not None and into is not None and int(out) == int(into)


def token_count(tokenizer: Any) -> int:
    """IF's 77 text positions, or the tokenizer's own limit where it is smaller (a small text encoder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return IF_MAX_LENGTH if not isinstance(limit, int) or limit <= 0 else min(IF_MAX_LENGTH, limit)


def preprocess_text(text: str | list[str]) -> list[str]:
    """IF's caption preprocessing without caption cleaning: lower case, stripped."""
    texts = [text] if isinstance(text, str) else list(text)
    return [t.lower().strip() for t in texts]


def _lower(text: str) -> str:
    """One prompt as IF's T5 reads it (``preprocess_text``)."""
    return preprocess_text(text)[0]


def encode_t5(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None,
    do_cfg: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """T5 states (cond [B, 77, D], uncond or None), as ``IFPipeline.encode_prompt`` (attention mask on)."""

    def embed(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(
            texts,
            padding="max_length",
            max_length=token_count(tokenizer),
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        states = text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        return states.to(dtype=text_encoder.dtype, device=device)

    batch_size = 1 if isinstance(prompt, str) else len(prompt)
    cond = embed(preprocess_text(prompt))
    if not do_cfg:
        return cond.to(dtype), None
    uncond = embed(preprocess_text(uncond_prompts(negative_prompt, batch_size)))
    return cond.to(dtype), uncond.to(dtype)


class IF(LearnedVariance, Family):
    """DeepFloyd IF stage I: ``IFPipeline``'s parts (a pixel-space U-Net with a learned variance, T5)."""

    name: ClassVar[str] = "if"
    label: ClassVar[str] = "DeepFloyd IF stage I"
    pipeline_class: ClassVar[str] = "IFPipeline"
    part_names: ClassVar[tuple[str, ...]] = ("unet", "tokenizer", "text_encoder")
    # named as SD's parts without a VAE: IF's U-Net predicts a variance beside ε (its text encoder, T5 in
    # IF itself, MiniLM in the embedded pixel cascade, tells nothing)
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "unet": PartKind(
            ("UNet2DConditionModel",),
            "out_channels = 2 × in_channels (ε and a learned variance)",
            learns_variance_of_x_t,
        )
    }
    default_steps: ClassVar[int] = 100  # IFPipeline's defaults
    default_guidance_scale: ClassVar[float] = 7.0

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        check_output_channels(self.label, self.model.config.out_channels, self.image_channels())

    def image_channels(self) -> int:
        """C of x_t: the U-Net's input channels (stage II reads x_t beside an image of as many)."""
        return int(self.model.config.in_channels)

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """T5's 77 positions (``token_count``), for the lower-cased prompt."""
        tokenizer = self.parts["tokenizer"]
        return tokenize(tokenizer, preprocess_text(prompt)[0], token_count(tokenizer))

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """T5 at 77 tokens (``token_count``), reading the lower-cased prompt, as ``encode_t5``."""
        tokenizer = self.parts.get("tokenizer")
        if tokenizer is None:
            return ()
        limit = text_limit(self.parts, "tokenizer", "text_encoder", token_count(tokenizer), _lower)
        return () if limit is None else (limit,)

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """x_t is the picture itself: [B, C, H, W]."""
        return (batch_size, self.image_channels(), int(height), int(width))

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``{"embeds": [B, 77, D]}`` per branch, in the U-Net's dtype."""
        model = self.model
        cond, uncond = encode_t5(
            self.parts["tokenizer"],
            self.parts["text_encoder"],
            prompt,
            negative_prompt,
            do_cfg,
            model.device,
            model.dtype,
        )
        return {"embeds": cond}, None if uncond is None else {"embeds": uncond}

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """``scale_model_input``, then the U-Net: [2B or B, C, H, W] → [.., 2C, H, W] (ε and variance)."""
        model_input = scheduler.scale_model_input(model_input, t)
        return self.model(model_input, t, encoder_hidden_states=conditioning["embeds"], return_dict=False)[0]


class IFSuperResolution(IF):
    """DeepFloyd IF stage II: ``IFSuperResolutionPipeline``'s parts, conditioned on a stage-I image."""

    name: ClassVar[str] = "if_sr"
    label: ClassVar[str] = "DeepFloyd IF stage II (super-resolution)"
    pipeline_class: ClassVar[str] = "IFSuperResolutionPipeline"
    part_names: ClassVar[tuple[str, ...]] = ("unet", "tokenizer", "text_encoder", "image_noising_scheduler")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "unet": PartKind(
            ("UNet2DConditionModel",),
            "out_channels = in_channels (x_t beside x_up in; ε and a learned variance out)",
            learns_variance_beside_image,
        )
    }
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "image", "noise_level")
    extra_points = (
        *conditioning_points(
            "image", "x_up, the stage-I image upscaled to H × W and noised to noise_level,", "[B, 3, H, W]"
        ),
        *conditioning_points("noise_level", "noise_level (the U-Net's class_labels)", "[B]"),
    )
    default_steps: ClassVar[int] = 50  # IFSuperResolutionPipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.0
    compare_guidance_scale: ClassVar[float] = (
        4.0  # its pipeline's default, for a folder that recommends w = 1
    )

    def image_channels(self) -> int:
        """C of x_t: half the U-Net's input channels (the other half is the upscaled image)."""
        return int(self.model.config.in_channels) // 2

    def run_options(
        self, height: int, width: int, *, noise_level: int = DEFAULT_NOISE_LEVEL, **options: Any
    ) -> dict[str, Any]:
        """``noise_level`` (0..num_train_timesteps − 1 of the noising scheduler): how noisy x_up is."""
        if options:
            if "image" in options:
                raise TypeError(
                    f"{self.label} is conditioned on a stage-I image: run it with diffexplain.Cascade, "
                    "after stage I (cascade.run(prompt)) or alone on a picture of one's own "
                    "(cascade.run_stage('II', prompt, image=picture), picture a [B, 3, h, w] tensor in "
                    "[-1, 1] or a PIL image; this stage alone: Cascade({'II': explainer}))"
                )
            raise TypeError(
                f"{self.label} takes the run setting noise_level; got {', '.join(sorted(options))}"
            )
        steps = int(self.parts["image_noising_scheduler"].config.num_train_timesteps)
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level < steps:
            raise ValueError(f"noise_level must be an int in 0..{steps - 1}; got {noise_level!r}")
        return {"noise_level": int(noise_level)}

    def stage_inputs(
        self,
        image: torch.Tensor,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_T and ``{"image": x_up}``, drawn in the pipeline's order from ``generator`` (x_T, then x_up's noise).

        The protocol of a stage conditioned on the previous one (``diffexplain.cascade``): ``image`` is
        stage I's picture [B, C, h, w] in [-1, 1]; x_T is [B, C, H, W]; the tensors join the run's options.
        """
        model = self.model
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != self.image_channels():
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image must be a tensor [B, {self.image_channels()}, h, w] in [-1, 1] (stage I's output); "
                f"got {shape}"
            )
        if image.shape[0] != batch_size:
            raise ValueError(f"image holds {image.shape[0]} pictures but the prompt {batch_size}")
        shape = (batch_size, self.image_channels(), int(height), int(width))
        x_T = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
        image = image.to(device=model.device, dtype=model.dtype)
        upscaled = F.interpolate(image, (int(height), int(width)), mode="bilinear", align_corners=True)
        levels = torch.tensor([int(options["noise_level"])] * upscaled.shape[0], device=upscaled.device)
        noise = randn_tensor(
            upscaled.shape, generator=generator, device=upscaled.device, dtype=upscaled.dtype
        )
        x_up = self.parts["image_noising_scheduler"].add_noise(upscaled, noise, timesteps=levels)
        return x_T, {"image": x_up}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """T5 ``embeds``, ``noise_level`` [B] and, where the run gives it, ``image`` (x_up) per branch.

        A fork that re-encodes the prompt gets no ``image``: the loop keeps the source's.
        """
        cond, uncond = super().encode(prompt, negative_prompt, do_cfg, options)
        batch = cond["embeds"].shape[0]
        levels = torch.tensor([int(options["noise_level"])] * batch, device=self.model.device)
        shared = {"noise_level": levels}
        if "image" in options:
            shared = {"image": options["image"], **shared}
        cond = {**cond, **shared}
        return cond, None if uncond is None else {**uncond, **shared}

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The U-Net on cat([x_t, x_up]) with ``class_labels`` = noise level: [2B or B, 2C, H, W] in."""
        model_input = torch.cat([model_input, conditioning["image"]], dim=1)
        model_input = scheduler.scale_model_input(model_input, t)
        return self.model(
            model_input,
            t,
            encoder_hidden_states=conditioning["embeds"],
            class_labels=conditioning["noise_level"],
            return_dict=False,
        )[0]

    def describe(self) -> dict[str, Any]:
        """The base description, with the noising scheduler's class."""
        return {
            **super().describe(),
            "image_noising_scheduler": type(self.parts["image_noising_scheduler"]).__name__,
        }
