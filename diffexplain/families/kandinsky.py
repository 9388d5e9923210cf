"""Kandinsky 2.2 as two families: ``KandinskyPrior`` (``KandinskyV22PriorPipeline``) and ``KandinskyDecoder``
(``KandinskyV22Pipeline``). ``diffexplain.cascade.Cascade`` runs them one after the other, as DALL-E 2
(unCLIP) does: a *prior* turns the text into a CLIP image embedding, a *decoder* draws from that embedding.

Notation (``diffexplain.names``; D the CLIP embedding width, 1280 for Kandinsky 2.2)::

    prior (x_t is a vector, not a picture: the normalised CLIP image embedding)
      x_t        step.latents       the noisy image embedding entering the step         [B, D]
      x̂0_c       step.model.cond    the prior's output with the prompt                  [B, D]
      x̂0_u       step.model.uncond  its output with the negative (or empty) prompt      [B, D]
      x̂0         step.guidance      x̂0_u + w·(x̂0_c − x̂0_u), the guided output           [B, D]
                 step.pred_x0       x̂0 clipped to ±clip_sample_range, as the scheduler uses it
      e          decode.image       post_process_latents(x_0) = x_0·clip_std + clip_mean [B, D]
    decoder (an ordinary latent loop)
      x_t        step.latents       MoVQ latents                                        [B, 4, h, w]
      e, e_neg   prompt.cond/uncond image_embeds and negative_image_embeds              [B, D]
      [ε ; v]    model output       ε (guided) and a learned variance (the cond branch's to DDPM)

The prior is trained with ``prediction_type="sample"``: its output *is* x̂0, so the loop's ``step.model.*``
and ``step.guidance`` hold predicted embeddings (x̂0 = 0·x_t + 1·output), not noise; the names are the
loop's, the tensors' descriptions (``hook_points()``) say what they hold.

The negative image embedding the decoder reads (``uncond``) is, as in the pipeline, the CLIP embedding of
an all-zero picture (``get_zero_embed``) when there is no negative prompt (``negative_prompt=""``, the
pipeline's ``None``); with a negative prompt the prior runs it as extra batch rows (x_t is [2B, D]: the
prompts' rows, then the negative prompt's) and its result is the negative embedding.

Between the stages (``hand_over``, the cascade's ``"decoder.input"`` hook point) passes one tensor
[2, B, D]: ``[image_embeds, negative_image_embeds]``. Neither model reads text by cross-attention over
words (the prior is a causal transformer over [text tokens, text embedding, time, x_t]; the decoder's
attention keys are image-embedding tokens), so Kandinsky traces have no per-word attention maps.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers import UnCLIPScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.families.base import Conditioning, Family, conditioning_points
from diffexplain.families.learned_variance import LearnedVariance, check_output_channels
from diffexplain.families.parts import PartKind
from diffexplain.families.sd import uncond_prompts
from diffexplain.families.vae import MovqAdapter
from diffexplain.names import HookPoint


def has_negative_prompt(negative_prompt: str | list[str] | None) -> bool:
    """Whether the prior runs a negative prompt (the pipeline's ``negative_prompt`` not None): any
    non-empty text. "" (diffexplain's default) is the pipeline's None: the zero-image negative embedding."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return bool(negative_prompt)
    return any(bool(n) for n in negative_prompt)


def _described(points: tuple[HookPoint, ...], texts: dict[str, tuple[str, str]]) -> tuple[HookPoint, ...]:
    """``points`` with the tensor and shape of those named in ``texts`` rewritten (same names, same order)."""
    return tuple(
        dataclasses.replace(p, tensor=texts[p.name][0], shape=texts[p.name][1]) if p.name in texts else p
        for p in points
    )


PRIOR_POINTS = {
    "prompt.cond": ("CLIP text hidden states of the prompt (and of the negative prompt's rows)", "[B, T, D]"),
    "prompt.uncond": ("CLIP text hidden states of the negative (or empty) prompt", "[B, T, D]"),
    "latents.init": ("x_T, the starting noise of the image embedding", "[B, D]"),
    "step.latents": ("x_t, the noisy (normalised) CLIP image embedding entering the step", "[B, D]"),
    "step.prompt.cond": ("the prompt's CLIP text hidden states fed to the prior at this step", "[B, T, D]"),
    "step.prompt.uncond": ("the negative prompt's text hidden states fed to the prior", "[B, T, D]"),
    "step.model.cond": ("x̂0_c, the prior's predicted image embedding with the prompt", "[B, D]"),
    "step.model.uncond": ("x̂0_u, its predicted image embedding without the prompt (CFG on only)", "[B, D]"),
    "step.guidance": ("x̂0 = x̂0_u + w·(x̂0_c − x̂0_u), the guided predicted embedding", "[B, D]"),
    "step.pred_x0": ("x̂0 clipped to ±clip_sample_range, as the UnCLIPScheduler uses it", "[B, D]"),
    "step.next": ("x_{t−1}, the scheduler's output for the next step", "[B, D]"),
    "decode.image": ("the CLIP image embeddings, post_process_latents(x_0) (not a picture)", "[B, D]"),
}
"""What the loop's hook points hold in the prior (B doubles with a negative prompt: its rows follow)."""

DECODER_POINTS = {
    "prompt.cond": ("image_embeds, the CLIP image embedding the prior made", "[B, D]"),
    "prompt.uncond": ("negative_image_embeds (the zero picture's, or the negative prompt's)", "[B, D]"),
    "step.prompt.cond": ("image_embeds fed to the U-Net at this step", "[B, D]"),
    "step.prompt.uncond": ("negative_image_embeds fed to the U-Net at this step", "[B, D]"),
    "step.model.cond": (
        "ε_c, the U-Net's noise prediction with image_embeds (its variance half apart)",
        "[B, C, h, w]",
    ),
    "step.model.uncond": (
        "ε_u, its noise prediction with negative_image_embeds (CFG on only)",
        "[B, C, h, w]",
    ),
    "decode.image": ("the picture in [-1, 1], movq.decode(x_0, force_not_quantize=True)", "[B, 3, H, W]"),
}


class KandinskyPrior(Family):
    """Kandinsky 2.2's prior: ``KandinskyV22PriorPipeline``'s parts (a ``PriorTransformer``, CLIP text and
    image encoders, ``UnCLIPScheduler``); its x_t is an image embedding [B, D], not a picture."""

    name: ClassVar[str] = "kandinsky_prior"
    label: ClassVar[str] = "Kandinsky 2.2 prior"
    pipeline_class: ClassVar[str] = "KandinskyV22PriorPipeline"
    model_attr: ClassVar[str] = "prior"
    output_kind: ClassVar[str] = "image embedding"
    part_names: ClassVar[tuple[str, ...]] = ("prior", "image_encoder", "text_encoder", "tokenizer")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {"prior": PartKind(("PriorTransformer",))}
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds", "text_embeds", "mask")
    extra_points = (
        *conditioning_points("text_embeds", "CLIP's projected (pooled) text embedding", "[B, D]"),
        *conditioning_points("mask", "the text attention mask (True: a real token)", "[B, T]"),
    )
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = {"unclip": (UnCLIPScheduler, {})}
    default_steps: ClassVar[int] = 25  # KandinskyV22PriorPipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.0

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        parts.pop("image_processor", None)  # the pipeline's, for pictures given as conditions: not used here
        super().__init__(**parts)
        prior = self.model
        if not hasattr(prior, "post_process_latents") or not hasattr(prior.config, "embedding_dim"):
            raise TypeError(
                f"{self.label}: prior must be a diffusers PriorTransformer; got {type(prior).__name__}"
            )
        dim = int(prior.config.get("embedding_proj_dim") or prior.config.embedding_dim)
        projection = getattr(self.parts["text_encoder"].config, "projection_dim", None)
        if projection != dim:
            raise ValueError(
                f"{self.label}: text_encoder.config.projection_dim is {projection}; expected the prior's "
                f"{dim} (its embedding_proj_dim or embedding_dim: a CLIPTextModelWithProjection of its CLIP)"
            )

    @classmethod
    def hook_points(cls) -> tuple[HookPoint, ...]:
        """The loop's hook points with what they hold in the prior (``PRIOR_POINTS``), and the family's."""
        return _described(super().hook_points(), PRIOR_POINTS)

    def attention_layers(self) -> tuple:
        """None: the prior reads the text by self-attention over one sequence, not per-word cross-attention."""
        return ()

    @property
    def embedding_dim(self) -> int:
        """D, the CLIP image embedding's width."""
        return int(self.model.config.embedding_dim)

    def describe(self) -> dict[str, Any]:
        """The family, classes and D (``embedding_dim``, where a U-Net records its in_channels)."""
        return {
            "family": self.name,
            "pipeline": self.pipeline_class,
            "model_class": type(self.model).__name__,
            "name_or_path": getattr(self.model.config, "_name_or_path", "") or "",
            "in_channels": self.embedding_dim,
            "embedding_dim": self.embedding_dim,
            "vae": None,
            "text_encoders": [type(self.parts["text_encoder"]).__name__],
            "image_encoder": type(self.parts["image_encoder"]).__name__,
        }

    # ---- sizes and latents: one vector per picture -------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(1, 1): the prior makes no picture (height and width are unused)."""
        return 1, 1

    def size_multiple(self) -> tuple[int, str]:
        return 1, "the prior's output is a vector"

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """x_t is the image embedding: [B, D] (B counts the negative prompt's rows too)."""
        return (batch_size, self.embedding_dim)

    def step_kwargs_at(self, scheduler: Any, index: int) -> dict[str, Any]:
        """``prev_timestep``: the next step's timestep (None at the last), as the pipeline passes it."""
        if "prev_timestep" not in inspect.signature(scheduler.step).parameters:
            return {}
        timesteps = scheduler.timesteps
        return {"prev_timestep": None if index + 1 == timesteps.shape[0] else timesteps[index + 1]}

    # ---- conditioning ------------------------------------------------------------------------------
    def _encode_text(self, texts: list[str]) -> Conditioning:
        """``_encode_prompt``'s CLIP pass: hidden states, projected text embedding and the token mask."""
        tokenizer, text_encoder = self.parts["tokenizer"], self.parts["text_encoder"]
        device = self.model.device
        tokens = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        output = text_encoder(tokens.input_ids.to(device))  # no attention mask, as the pipeline
        return {
            "embeds": output.last_hidden_state,
            "text_embeds": output.text_embeds,
            "mask": tokens.attention_mask.bool().to(device),
        }

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``{"embeds", "text_embeds", "mask"}`` per branch; with a negative prompt, its rows follow the
        prompts' in the cond branch and the uncond branch holds it twice (the pipeline's batch)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = uncond_prompts(negative_prompt, len(prompts))
        if has_negative_prompt(negative_prompt):
            prompts, negatives = prompts + negatives, negatives + negatives
        cond = self._encode_text(prompts)
        return cond, self._encode_text(negatives) if do_cfg else None

    # ---- the model call ----------------------------------------------------------------------------
    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The prior on both branches batched: [2B or B, D] in, the predicted embeddings x̂0 [.., D] out."""
        if conditioning["embeds"].shape[0] != model_input.shape[0]:
            raise ValueError(
                f"{self.label}: x_t has {model_input.shape[0]} rows but the text {conditioning['embeds'].shape[0]}: "
                "a negative prompt adds the prior's rows, so a fork cannot add or remove one (run again instead)"
            )
        return self.model(
            model_input,
            timestep=t,
            proj_embedding=conditioning["text_embeds"],
            encoder_hidden_states=conditioning["embeds"],
            attention_mask=conditioning["mask"],
        ).predicted_image_embedding

    # ---- the output: image embeddings --------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x_0 [B, D] → the CLIP image embeddings: ``prior.post_process_latents`` (x·clip_std + clip_mean)."""
        return self.model.post_process_latents(latents)

    def zero_embeds(self, batch_size: int) -> torch.Tensor:
        """The CLIP embedding of an all-zero picture, [B, D] (the pipeline's ``get_zero_embed``)."""
        encoder = self.parts["image_encoder"]
        size = int(encoder.config.image_size)
        zeros = torch.zeros(1, 3, size, size).to(device=self.model.device, dtype=encoder.dtype)
        return encoder(zeros)["image_embeds"].repeat(batch_size, 1)

    def hand_over(self, latents: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
        """What the decoder receives: ``[image_embeds, negative_image_embeds]`` [2, B, D], as the pipeline
        returns them (the negative prompt's rows, or the zero picture's embedding)."""
        embeds = self.decode(latents)
        if has_negative_prompt(settings.get("negative_prompt")):
            image_embeds, negative = embeds.chunk(2)
        else:
            image_embeds, negative = embeds, self.zero_embeds(embeds.shape[0])
        return torch.stack([image_embeds, negative.to(image_embeds.dtype)])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{self.label} denoises an image embedding, not a picture: there is nothing to encode"
        )


class KandinskyDecoder(LearnedVariance, Family):
    """Kandinsky 2.2's decoder: ``KandinskyV22Pipeline``'s parts (a U-Net conditioned on an image embedding,
    with a learned variance, and the MoVQ that decodes its latents)."""

    name: ClassVar[str] = "kandinsky"
    label: ClassVar[str] = "Kandinsky 2.2 decoder"
    pipeline_class: ClassVar[str] = "KandinskyV22Pipeline"
    part_names: ClassVar[tuple[str, ...]] = ("unet", "movq")
    part_kinds: ClassVar[Mapping[str, PartKind]] = {
        "unet": PartKind(("UNet2DConditionModel",)),
        "movq": PartKind(("VQModel",)),
    }
    default_steps: ClassVar[int] = 100  # KandinskyV22Pipeline's defaults
    default_guidance_scale: ClassVar[float] = 4.0
    stage_input_point: ClassVar[tuple[str, str]] = (
        "image embeddings [image_embeds, negative_image_embeds]",
        "[2, B, D]",
    )

    def __init__(self, *, pipeline: Any = None, **parts: Any) -> None:
        super().__init__(**parts)
        config = self.model.config
        if config.get("encoder_hid_dim_type") != "image_proj":
            raise ValueError(
                f"{self.label}: unet.config.encoder_hid_dim_type is {config.get('encoder_hid_dim_type')!r}; "
                "expected 'image_proj' (a U-Net conditioned on a CLIP image embedding)"
            )
        check_output_channels(self.label, config.out_channels, int(config.in_channels))

    @classmethod
    def hook_points(cls) -> tuple[HookPoint, ...]:
        """The loop's hook points, the conditioning ones described as image embeddings (``DECODER_POINTS``)."""
        return _described(super().hook_points(), DECODER_POINTS)

    def attention_layers(self) -> tuple:
        """None: the U-Net's attention keys are image-embedding tokens, not words."""
        return ()

    @property
    def vae(self) -> Any:
        """The MoVQ (a ``VQModel``): it decodes the latents, as a VAE does."""
        return self.parts["movq"]

    def vae_adapter(self) -> MovqAdapter:
        """The MoVQ's adapter: no scaling, ``.latents`` out of its encoder, decoded without quantising."""
        return MovqAdapter(self.vae)

    def default_size(self) -> tuple[int, int]:
        """The U-Net's sample_size × the MoVQ's scale factor (``KandinskyV22Pipeline`` itself defaults to
        512 × 512 whatever the config: pass ``height`` and ``width`` to match it)."""
        return super().default_size()

    @property
    def embedding_dim(self) -> int:
        """D, the image embedding width the U-Net reads (``encoder_hid_dim``)."""
        return int(self.model.config.encoder_hid_dim)

    def size_multiple(self) -> tuple[int, str]:
        """The MoVQ's scale factor squared: ``KandinskyV22Pipeline`` rounds other sizes up."""
        return (
            self.vae_scale_factor**2,
            "the MoVQ's scale factor squared (the pipeline rounds other sizes up)",
        )

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list:
        return []

    def run_options(self, height: int, width: int, **options: Any) -> dict[str, Any]:
        if options:
            raise TypeError(
                f"{self.label} takes no run settings of its own (got {', '.join(sorted(options))}): it draws "
                "from the prior's image embedding; run it after the prior with diffexplain.Cascade, and "
                "replace the embedding with a 'decoder.input' hook, or run it alone on embeddings of your "
                "own with cascade.run_stage('decoder', prompt, image_embeds=..., negative_image_embeds=...) "
                "([B, D] each; this stage alone: Cascade({'decoder': explainer}))"
            )
        return {}

    def check_previous(self, previous: Family) -> None:
        """The stage before must make image embeddings of this U-Net's width D (a ``KandinskyPrior``)."""
        if not hasattr(previous, "hand_over"):
            raise TypeError(
                f"{self.label} draws from an image embedding: the stage before it must be a Kandinsky 2.2 "
                f"prior (KandinskyV22PriorPipeline's parts); got {previous.label}"
            )
        made = int(getattr(previous, "embedding_dim", -1))
        if made != self.embedding_dim:
            raise ValueError(
                f"the prior makes image embeddings of {made} numbers but the decoder reads "
                f"{self.embedding_dim} (its unet.config.encoder_hid_dim)"
            )

    def stage_inputs(
        self,
        image: torch.Tensor,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_T [B, 4, h, w] from ``generator``, and the embeddings ``image`` = [image_embeds, negative] [2, B, D]
        as the run's ``image_embeds`` and ``negative_image_embeds`` (the protocol of ``diffexplain.cascade``)."""
        model = self.model
        expected = (2, batch_size, self.embedding_dim)
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != expected:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image embeddings must be a tensor [2, B, D] = {list(expected)} "
                f"([image_embeds, negative_image_embeds], the prior's output); got {got}"
            )
        shape = self.latent_shape(batch_size, height, width)
        x_T = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
        return x_T, {"image_embeds": image[0], "negative_image_embeds": image[1]}

    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """``{"embeds": image_embeds}`` (cond) and ``{"embeds": negative_image_embeds}`` (uncond), from the
        run's embeddings (the decoder reads no text: the prompt only labels the run)."""
        if "image_embeds" not in options:
            raise ValueError(
                f"{self.label} draws from an image embedding and reads no prompt: run it after the prior "
                "(diffexplain.Cascade), and change the embedding in the prior's stage or with a "
                "'decoder.input' hook, or run it on embeddings of your own with cascade.run_stage('decoder', "
                "prompt, image_embeds=..., negative_image_embeds=...) (a fork of the decoder can neither change its prompt nor turn "
                "guidance on where the run had it off: run the cascade again)"
            )
        device, dtype = self.model.device, self.model.dtype
        cond = {"embeds": options["image_embeds"].to(device=device, dtype=dtype)}
        if not do_cfg:
            return cond, None
        return cond, {"embeds": options["negative_image_embeds"].to(device=device, dtype=dtype)}

    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The U-Net with ``added_cond_kwargs={"image_embeds": ...}`` and no text: [2B or B, 8, h, w] out.

        ``scale_model_input`` is the identity for DDPM and DDIM (the pipeline does not call it)."""
        model_input = scheduler.scale_model_input(model_input, t)
        return self.model(
            sample=model_input,
            timestep=t,
            encoder_hidden_states=None,
            added_cond_kwargs={"image_embeds": conditioning["embeds"]},
            return_dict=False,
        )[0]
