"""The model seam: what a pipeline family's adapter owns, so that the loop owns none of it.

The loop (``diffexplain.loop``) is the same for every family. A ``Family`` adapter owns, in the
spirit of k-diffusion's denoiser wrappers (``external.py``: the wrapper knows what the output means)
and of Modular Diffusers' guider inputs (conditioning as named (cond, uncond) pairs):

- how a prompt becomes each branch's conditioning: a mapping of named tensors per branch
  (``"embeds"`` always; SDXL adds ``"pooled"`` and ``"time_ids"``, SD3 ``"pooled"``);
- the model call (U-Net or transformer) on both branches batched, uncond first, as the pipelines do;
- what the output means (ε, v or flow velocity) and the x̂0 it implies at this step (``noise_level``);
- the latent layout, and decoding and encoding images.

Notation (``diffexplain.names``): x_t ``latents``, ε the model output, x̂0 = a·x_t + b·ε.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.attention.layers import AttentionLayer, find_attention_layers
from diffexplain.attention.tokens import Token, tokenize
from diffexplain.conventions import Conventions
from diffexplain.families.parts import PartKind
from diffexplain.families.vae import VaeAdapter
from diffexplain.names import HOOK_POINTS, HookPoint, declare_points
from diffexplain.noise_levels import NoiseLevel, noise_level
from diffexplain.prompt_limits import TextLimit, text_limit
from diffexplain.scheduler_state import SCHEDULER_NAMES
from diffexplain.step_scalars import StepScalar

if TYPE_CHECKING:
    from diffexplain.guiders.base import Guider

Conditioning = dict[str, torch.Tensor]
"""One branch's conditioning: named tensors, ``"embeds"`` [B, T, D] always first."""


def conditioning_point(key: str, branch: str) -> str:
    """The run-level hook point of one conditioning tensor: ``prompt.cond``, ``prompt.pooled.uncond``..."""
    return f"prompt.{branch}" if key == "embeds" else f"prompt.{key}.{branch}"


def conditioning_points(key: str, tensor: str, shape: str) -> tuple[HookPoint, HookPoint]:
    """The cond and uncond hook points of an extra conditioning tensor (e.g. SDXL's pooled embeddings)."""
    return (
        HookPoint(conditioning_point(key, "cond"), f"{tensor} of the prompt", shape, False),
        HookPoint(
            conditioning_point(key, "uncond"),
            f"{tensor} of the negative (or empty) prompt",
            shape,
            False,
            True,
        ),
    )


class Family(ABC):
    """A pipeline family's adapter: its parts and what only it knows (see the module docstring).

    The contract a subclass fulfils (every other method is optional: its docstring says what the
    default does, which is Stable Diffusion's behaviour unless it says otherwise):

    - **required class attributes**: ``name``, ``label``, ``pipeline_class`` and ``part_names``;
    - **required methods** (abstract: a family without them cannot be instantiated):
      ``encode`` (a prompt → each branch's conditioning) and ``predict`` (one model call on both branches);
    - **optional class attributes** (their defaults are commented below): ``also_serves`` (further diffusers
      pipeline classes whose loop this family matches bit for bit: ``from_pipeline`` and ``from_pretrained``
      accept them too; ``pipeline_classes()`` lists all), ``model_attr``, ``output_kind``,
      ``conditioning_keys``, ``extra_points``, ``scheduler_names``, ``default_steps``,
      ``default_guidance_scale``, ``compare_guidance_scale``, ``attention_kind`` and ``part_kinds`` (what
      ``family_from_parts`` checks of the parts beyond their names, to tell apart families whose parts
      have the same names);
    - **optional, the prompt**: ``run_options``, ``model_kwargs``, ``guidance_distilled``, ``prompt_tokens``,
      ``negative_prompt_tokens``, ``text_limits``, ``attention_layers`` (with ``attention_kind``),
      ``conditioning_hooked`` (conditioning tensors derived from others);
    - **optional, guidance** (a family whose pipeline guides its own way): ``uses_guidance``,
      ``default_guider``, ``guider_kwargs``;
    - **optional, the conventions**: ``conventions`` (what the output means, its sign, the model's time and the
      pipeline's guidance scale; recorded in every trace);
    - **optional, the model's output**: ``noise_level``, ``split_output``, ``scheduler_input``, ``add_noise``;
    - **optional, from a picture** (``diffexplain.img2img``, ``diffexplain.inpaint``): ``entry_step`` (with
      ``add_noise`` and the VAE adapter's ``encode_sample``), ``inpaint_vae_adapter``;
    - **optional, sizes and latents**: ``default_size``, ``size_multiple``, ``latent_shape``,
      ``init_noise_sigma``, ``prepare_latents``;
    - **optional, the scheduler**: ``set_timesteps``, ``loop_timesteps``, ``step_kwargs``, ``step_kwargs_at``,
      ``scheduler_names``;
    - **optional, the autoencoder**: ``vae_adapter`` (a ``diffexplain.families.vae.VaeAdapter``; the
      default reads an ``AutoencoderKL``), through which ``vae_scale_factor``, ``decode`` and ``encode_image``
      go; a family whose output is no latent (Kandinsky's prior) overrides ``decode`` and ``encode_image``;
    - **optional, the record**: ``describe``, ``hook_points`` (with ``extra_points``);
    - **cascade stages only** (no default; ``diffexplain.cascade`` looks for them): ``stage_inputs``,
      ``hand_over``, ``check_previous``, ``image_channels``.
    """

    name: ClassVar[str]  # short name, e.g. "sd"
    label: ClassVar[str]  # for people, e.g. "Stable Diffusion 1.x / 2.x"
    pipeline_class: ClassVar[str]  # the diffusers pipeline it mirrors
    # further pipeline classes it mirrors over the same parts (SD: LatentConsistencyModelPipeline); none by default
    also_serves: ClassVar[tuple[str, ...]] = ()
    model_attr: ClassVar[str] = "unet"  # the pipeline's attribute holding the denoiser
    output_kind: ClassVar[str] = "noise"  # what the model predicts, in words: "noise" or "velocity"
    conditioning_keys: ClassVar[tuple[str, ...]] = ("embeds",)
    extra_points: ClassVar[tuple[HookPoint, ...]] = ()  # hook points this family adds to the loop's
    scheduler_names: ClassVar[Mapping[str, tuple[type, dict[str, Any]]]] = SCHEDULER_NAMES
    part_names: ClassVar[tuple[str, ...]]  # the constructor arguments it takes (the pipeline's parts)
    # what family_from_parts checks of some parts beyond their names (class, config), to tell apart
    # families whose parts have the same names (SD without a VAE and IF stage I); none by default
    part_kinds: ClassVar[Mapping[str, PartKind]] = {}
    default_steps: ClassVar[int] = 25  # run() defaults where the model folder recommends none
    default_guidance_scale: ClassVar[float] = 7.5  # the family's pipeline default
    # the guided side of a guidance comparison (GuidanceLab) where the default is w ≤ 1 (no guidance)
    compare_guidance_scale: ClassVar[float] = 7.5
    attention_kind: ClassVar[str] = "cross"  # how the image reads the text: "cross" or "joint" attention
    step_scalars: ClassVar[tuple[StepScalar, ...]] = ()  # per-step numbers this family adds to the loop's

    @classmethod
    def pipeline_classes(cls) -> tuple[str, ...]:
        """Every diffusers pipeline class this family mirrors: ``pipeline_class``, then ``also_serves``.
        Not an override: set ``also_serves``."""
        return (cls.pipeline_class, *cls.also_serves)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family's own hook points are declared where it is defined (``names.declare_points``), so a
        ``Hook`` may name them before it meets a model."""
        super().__init_subclass__(**kwargs)
        declare_points(cls.extra_points)

    def __init__(self, **parts: Any) -> None:
        """Keep the parts named in ``part_names`` (``vae`` may be left out: pixel space); ``TypeError`` on a
        missing or unknown one. Optional to extend: a family that checks its parts or builds its reference
        pipeline calls ``super().__init__(**parts)`` first."""
        missing = [n for n in self.part_names if n not in parts and n != "vae"]
        unknown = sorted(set(parts) - set(self.part_names) - {"scheduler"})
        if missing or unknown:
            raise TypeError(
                f"{self.label} ({self.pipeline_class}) takes the parts {', '.join(self.part_names)}; "
                f"missing: {missing or 'none'}, unknown: {unknown or 'none'}"
            )
        self.parts: dict[str, Any] = {n: parts.get(n) for n in self.part_names}

    def reference_pipeline(self, pipeline: Any, scheduler: Any, **extra: Any) -> Any:
        """``pipeline``, or one of ``pipeline_class`` over these parts: its ``encode_prompt`` is the reference.

        A helper for the families whose ``encode`` calls their pipeline's own (SDXL, SD3, Flux); not an override."""
        if pipeline is not None:
            return pipeline
        import diffusers  # the pipeline classes load lazily: only a family built from parts needs one

        return getattr(diffusers, self.pipeline_class)(**self.parts, scheduler=scheduler, **extra)

    # ---- parts -------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The denoiser: a U-Net or a transformer. Not an override: set ``model_attr`` to the part's name."""
        return self.parts[self.model_attr]

    @property
    def vae(self) -> Any | None:
        """The VAE, or None in pixel space. Optional: the default is the ``vae`` part (Kandinsky's decoder
        returns its ``movq``)."""
        return self.parts.get("vae")

    def modules(self) -> Iterator[torch.nn.Module]:
        """Every torch module among the parts (for ``Explainer.to``). Not meant to be overridden."""
        for part in self.parts.values():
            if isinstance(part, torch.nn.Module):
                yield part

    @classmethod
    def hook_points(cls) -> tuple[HookPoint, ...]:
        """The loop's hook points plus this family's, in the order a run reaches them.

        Optional: the default adds ``extra_points`` (run-level ones after the prompt's, per-step ones after
        the loop's); Kandinsky's families override it to describe the points in their own words."""
        extra_run = tuple(p for p in cls.extra_points if not p.per_step)
        extra_step = tuple(p for p in cls.extra_points if p.per_step)
        head = tuple(p for p in HOOK_POINTS if p.name.startswith("prompt."))
        rest = tuple(p for p in HOOK_POINTS if not p.name.startswith("prompt.") and p.name != "decode.image")
        tail = tuple(p for p in HOOK_POINTS if p.name == "decode.image")
        return head + extra_run + rest + extra_step + tail

    def attention_layers(self) -> tuple[AttentionLayer, ...]:
        """The denoiser's layers where the image reads the text (found from its modules, once per model).

        Optional: the default finds ``attention_kind`` layers by module type; return ``()`` for a model
        whose attention keys are not words (no attention maps then)."""
        model = self.model
        cached = getattr(self, "_attention_layers", None)
        if cached is None or cached[0] is not model:
            cached = (model, find_attention_layers(model, self.attention_kind))
            self._attention_layers = cached
        return cached[1]

    def prompt_tokens(self, prompt: str, options: dict[str, Any]) -> list[Token]:
        """One entry per text position T the model's attention sees, for one prompt (padding included).

        Optional: the default tokenizes with the ``tokenizer`` part at its ``model_max_length``."""
        tokenizer = self.parts["tokenizer"]
        return tokenize(tokenizer, prompt, int(tokenizer.model_max_length))

    def negative_prompt_tokens(self, negative_prompt: str, options: dict[str, Any]) -> list[Token]:
        """The uncond branch's text positions, for one negative (or empty) prompt.

        Optional: the default is ``prompt_tokens`` of the negative prompt."""
        return self.prompt_tokens(negative_prompt, options)

    def text_limits(self, options: dict[str, Any]) -> tuple[TextLimit, ...]:
        """How many tokens each text encoder reads, as ``encode`` cuts prompts (``diffexplain.prompt_limits``
        finds and names the words cut). Optional: the default is the ``tokenizer``'s ``model_max_length``;
        none without one."""
        limit = text_limit(self.parts, "tokenizer", "text_encoder")
        return () if limit is None else (limit,)

    def conventions(self, scheduler: Any) -> Conventions:
        """What the model outputs (after its sign), the time it is given, and what the pipeline's guidance
        number means (``diffexplain.conventions``); every trace records it.

        Optional: the default reads ``prediction_type`` from the scheduler's config ("flow" for a velocity
        family whose scheduler has none), sign +1, the model given t, and classic CFG."""
        prediction = scheduler.config.get("prediction_type") or (
            "flow" if self.output_kind == "velocity" else "epsilon"
        )
        return Conventions(prediction=prediction)

    def describe(self) -> dict[str, Any]:
        """What a trace records about the model (JSON-ready): family, classes and the denoiser's shape.

        Optional: families extend the default's dict (``{**super().describe(), ...}``) with their own facts."""
        model = self.model
        config = model.config
        return {
            "family": self.name,
            "pipeline": self.pipeline_class,
            "model_class": type(model).__name__,
            "name_or_path": getattr(config, "_name_or_path", "") or "",
            "in_channels": int(config.in_channels),
            "vae": None if self.vae is None else type(self.vae).__name__,
            "text_encoders": [
                type(p).__name__
                for n, p in self.parts.items()
                if n.startswith("text_encoder") and p is not None
            ],
        }

    # ---- sizes and latents -------------------------------------------------------------------------
    def vae_adapter(self) -> VaeAdapter | None:
        """The autoencoder behind ``vae_scale_factor``, ``decode`` and ``encode_image``; None in pixel space.

        Optional: the default wraps ``vae`` as diffusers' ``AutoencoderKL`` (``VaeAdapter``: scale factor from
        ``block_out_channels``, ``latent_dist.mean``, ``scaling_factor`` and ``shift_factor``). A family with
        another autoencoder returns its own ``VaeAdapter`` subclass here (SDXL's ``SdxlVaeAdapter``,
        Kandinsky's ``MovqAdapter``); nothing else needs to change."""
        vae = self.vae
        return None if vae is None else VaeAdapter(vae)

    def inpaint_vae_adapter(self) -> VaeAdapter | None:
        """The autoencoder as the family's inpainting pipeline encodes the picture and the masked picture
        (``diffexplain.inpaint``). Optional: the default is ``vae_adapter()``; SDXL's inpainting pipeline
        encodes without the latent statistics its img2img pipeline uses."""
        return self.vae_adapter()

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size: the VAE adapter's ``scale_factor``, or 1 in pixel space.

        Not an override: supply a ``vae_adapter`` instead."""
        adapter = self.vae_adapter()
        return 1 if adapter is None else adapter.scale_factor

    def default_size(self) -> tuple[int, int]:
        """(H, W) of the images the model makes by default.

        Optional: the default is the denoiser's ``config.sample_size`` × ``vae_scale_factor``."""
        sample = self.model.config.sample_size
        h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        return int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor

    def size_multiple(self) -> tuple[int, str]:
        """What image sides must be a multiple of, and why (for the error message).

        Optional: the default is ``vae_scale_factor`` (a patchified transformer multiplies its patch size in)."""
        return self.vae_scale_factor, "the VAE's scale factor" if self.vae is not None else "pixel space"

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """The shape of x_t for images of ``height`` × ``width``: [B, C, h, w].

        Optional: the default is [B, ``config.in_channels``, H / ``vae_scale_factor``, W / ``vae_scale_factor``]."""
        scale = self.vae_scale_factor
        return (batch_size, int(self.model.config.in_channels), int(height) // scale, int(width) // scale)

    def init_noise_sigma(self, scheduler: Any) -> float:
        """The scale of x_T: σ_max for σ-space schedulers, 1 for the others (and for flow matching).

        Optional: the default reads the scheduler's ``init_noise_sigma`` (1 where it has none)."""
        return float(getattr(scheduler, "init_noise_sigma", 1.0))

    def prepare_latents(
        self,
        scheduler: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_T: Gaussian noise (or the given latents) times ``init_noise_sigma``, as diffusers.

        Optional: the default draws ``randn_tensor(shape)`` on the model's device and dtype, as the SD
        pipeline; override where the family's pipeline draws or scales otherwise (Flux)."""
        model = self.model
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
        else:
            latents = latents.to(model.device)
        return latents * scheduler.init_noise_sigma

    # ---- timesteps and the scheduler ---------------------------------------------------------------
    def set_timesteps(self, scheduler: Any, num_inference_steps: int, height: int, width: int) -> None:
        """``scheduler.set_timesteps`` as the family's pipeline calls it (``retrieve_timesteps``).

        Optional: the default is ``scheduler.set_timesteps(num_inference_steps)`` (Flux and SD3 shift σ)."""
        scheduler.set_timesteps(num_inference_steps, device=self.model.device)

    def loop_timesteps(self, scheduler: Any) -> torch.Tensor:
        """The timesteps the loop steps through, once ``set_timesteps`` has run (a run from a picture
        starts later in them: ``img2img.loop_timesteps``).

        Optional: the default is all of ``scheduler.timesteps``; SANA-Sprint's ``SCMScheduler`` lists its
        end point t = 0 too, which its pipeline never runs (``timesteps[:-1]``)."""
        return scheduler.timesteps

    def step_kwargs(self, scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for ``scheduler.step``, where its signature accepts them.

        Optional: the default passes each where ``scheduler.step`` takes it, as the pipelines'
        ``prepare_extra_step_kwargs``."""
        params = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def step_kwargs_at(self, scheduler: Any, index: int) -> dict[str, Any]:
        """Keyword arguments of ``scheduler.step`` that change with loop step ``index``.

        Optional: the default is none (the Kandinsky prior's ``UnCLIPScheduler`` takes the next timestep,
        ``prev_timestep``)."""
        return {}

    def add_noise(
        self, scheduler: Any, clean_latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """The forward process with the model's own scheduler: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (``add_noise``);
        ``timestep`` a scalar or one per row [B].

        Optional: the default calls ``scheduler.add_noise``; flow matching overrides it (``scale_noise``)."""
        return scheduler.add_noise(clean_latents, noise, timestep.reshape(-1))

    def entry_step(self, num_inference_steps: int, strength: float) -> int:
        """t_start, the inference steps a run from a picture skips (its pipeline's ``get_timesteps``):
        N − min(⌊N·s⌋, N). N when it would run none.

        Optional: the default is the Stable Diffusion img2img pipelines' (SD, SDXL); flow matching's
        pipelines cut ⌊N − N·s⌋ instead (``FlowMatching.entry_step``)."""
        return num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)

    def noise_level(self, scheduler: Any, timestep: torch.Tensor) -> NoiseLevel:
        """ᾱ_t, σ_t and the x̂0 map (a, b) of this step.

        Optional: the default covers ε and v prediction from the scheduler's ``prediction_type`` and
        ``alphas_cumprod`` (``noise_levels.noise_level``); flow matching overrides it (x̂0 = x_t − σ·v)."""
        return noise_level(scheduler, timestep)

    # ---- guidance and conditioning -----------------------------------------------------------------
    def guidance_distilled(self) -> bool:
        """Whether the model takes w as an input instead of running two branches (no CFG then).

        Optional: the default is False (SD's LCM-style U-Nets say True)."""
        return False

    def uses_guidance(self, guidance_scale: float, negative_prompt: str | list[str] | None) -> bool:
        """Whether a run with w = ``guidance_scale`` and this negative prompt has two branches (decided once
        per run: ``trace.settings["do_cfg"]``).

        Optional: the default is w > 1 on a model that is not guidance-distilled (``guidance.guidance_on``);
        Qwen-Image's pipeline also needs a negative prompt."""
        from diffexplain.guidance import guidance_on

        return guidance_on(guidance_scale, distilled=self.guidance_distilled())

    @classmethod
    def default_guider(cls) -> Guider | None:
        """The guidance method of a run given none (``guider=None``, no ``guidance_rescale``), and of
        ``trace.reguide`` without one. Optional: the default is None, the loop's ε_u + w·(ε_c − ε_u);
        Qwen-Image's is its pipeline's true CFG with the norm rescale per token, Z-Image's its own formula."""
        return None

    @abstractmethod
    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        do_cfg: bool,
        options: dict[str, Any],
    ) -> tuple[Conditioning, Conditioning | None]:
        """The conditioning of each branch (cond, uncond or None with guidance off), in the model's dtype.

        Required: ``{"embeds": [B, T, D], ...}`` per branch, with the keys of ``conditioning_keys``."""

    def conditioning_hooked(
        self, key: str, cond: Conditioning, uncond: Conditioning | None, replaced: tuple[bool, bool]
    ) -> None:
        """Called after the run-level hooks of ``prompt.<key>.*`` (``replaced``: whether a hook replaced the
        cond, uncond tensor), in the order of the conditioning's keys: a family whose other tensors derive
        from this one recomputes them here, in place, before their own hooks run.

        Optional: the default does nothing (FLUX.2 flattens a replaced layer stack into ``embeds``)."""
        return None

    def run_options(self, height: int, width: int, **options: Any) -> dict[str, Any]:
        """The family's own run settings (JSON-ready), with defaults filled in; unknown ones are an error.

        Optional: the default takes none (``TypeError`` naming any given)."""
        if options:
            raise TypeError(f"{self.label} takes no extra run settings; got {', '.join(sorted(options))}")
        return {}

    def model_kwargs(self, guidance_scale: float, latents: torch.Tensor) -> dict[str, Any]:
        """Extra keyword arguments of every model call of a run (e.g. a distilled model's w embedding).

        Optional: the default is none."""
        return {}

    def guider_kwargs(self, guider: Mapping[str, Any] | None) -> dict[str, Any]:
        """Extra ``model_kwargs`` of a run from its guider's settings (``Guider.describe()``), for a model call
        that depends on them. Optional: the default is none (Z-Image skips the negative branch at the
        steps where its guidance is truncated, as its pipeline does)."""
        return {}

    # ---- the model call ----------------------------------------------------------------------------
    @abstractmethod
    def predict(
        self,
        scheduler: Any,
        model_input: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        model_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """One model call on both branches batched ([2B or B, C, h, w] in and out).

        Required: ``scale_model_input`` where the family's pipeline calls it, then the denoiser with the
        conditioning as its pipeline passes it."""

    def split_output(
        self, model_output: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model output's guided part (ε, v or velocity, shaped like x_t) and an unguided extra part
        for the scheduler step (DeepFloyd IF's learned variance), or None.

        Optional: the default returns the whole output and no extra part (``LearnedVariance`` splits [ε ; v])."""
        return model_output, None

    def scheduler_input(
        self, scheduler: Any, eps_guided: torch.Tensor, extra: torch.Tensor | None
    ) -> torch.Tensor:
        """What ``scheduler.step`` reads: ε̂, with the extra part (of the cond branch) where there is one.

        Optional: the default is ε̂ alone."""
        return eps_guided

    # ---- images ------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → image [B, 3, H, W] in [-1, 1]; in pixel space (no VAE) the image is the latents.

        Optional: the default is ``vae_adapter().decode``; override only for an output that is no latent
        (Kandinsky's prior: image embeddings)."""
        adapter = self.vae_adapter()
        if adapter is None:
            return latents
        return adapter.decode(latents)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] → clean latents x0, on the model's device and in its dtype.

        Optional: the default is ``vae_adapter().encode`` (for an ``AutoencoderKL``: the posterior mean,
        shifted and scaled); in pixel space the image itself."""
        model = self.model
        pixels = pixels.to(model.device)
        adapter = self.vae_adapter()
        if adapter is None:
            return pixels.to(model.dtype)
        return adapter.encode(pixels).to(model.dtype)
