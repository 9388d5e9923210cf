"""Explainer: owns the Stable Diffusion parts and runs the hookable loop, returning traces."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from diffexplain.hooks import Hook, HookRunner, HookSpec, as_hooks
from diffexplain.loop import encode_prompt, generate
from diffexplain.probe import weight_fingerprint
from diffexplain.scheduler_state import SCHEDULER_NAMES, describe, scheduler_by_name
from diffexplain.trace import Trace


@contextmanager
def keep_partial_trace(explainer: Explainer, trace: Trace) -> Iterator[None]:
    """On Ctrl-C or an error, keep the trace of the finished steps and re-raise the original exception."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        trace.status = "interrupted"
        trace.message = f"{type(exc).__name__} during step {len(trace)}; steps 0..{len(trace) - 1} finished"
        explainer.last_trace = trace
        exc.partial_trace = trace  # type: ignore[attr-defined]
        exc.add_note(
            f"diffexplain: the partial trace ({len(trace)} finished steps) is in exc.partial_trace "
            "and explainer.last_trace"
        )
        raise


class Explainer:
    """A Stable Diffusion model (U-Net, scheduler, tokenizer, text encoder, optional VAE) with a hookable loop.

    ``vae=None`` means pixel space: the U-Net denoises images directly and decoding is the identity.
    """

    def __init__(
        self,
        *,
        unet: Any,
        scheduler: Any,
        tokenizer: Any,
        text_encoder: Any,
        vae: Any | None = None,
        progress: bool = True,
    ) -> None:
        self.unet = unet
        self.scheduler = scheduler  # a template: every run uses a fresh copy
        self._base_scheduler_config = scheduler.config  # set_scheduler(name) builds on this, not the last one
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.progress = progress
        self.last_trace: Trace | None = None  # the latest trace, complete or interrupted
        self._scoped_hooks: list[list[Hook]] = []  # `with explainer.hooks(...)` blocks, outermost first
        self.model_name: str = ""  # a display name (set by load_model / load_default)
        self.latent_rgb: list[list[float]] | None = None  # [C, 3] map for fast latent previews, if known
        self.defaults: dict[str, Any] = {}  # the model's recommended run settings (steps, guidance scale)

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> Explainer:
        """An Explainer sharing the parts of a diffusers ``StableDiffusionPipeline`` (SD 1.x / 2.x)."""
        return cls(
            unet=pipe.unet,
            scheduler=pipe.scheduler,
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
            vae=getattr(pipe, "vae", None),
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Explainer:
        """Load with ``StableDiffusionPipeline.from_pretrained(path, **kwargs)``, then ``from_pipeline``."""
        from diffusers import StableDiffusionPipeline

        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        return cls.from_pipeline(StableDiffusionPipeline.from_pretrained(path, **kwargs))

    def to(self, *args: Any, **kwargs: Any) -> Explainer:
        """Move the U-Net, text encoder and VAE, like ``nn.Module.to`` (device and/or dtype); returns self."""
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        """The device the U-Net is on (where the loop runs)."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The U-Net's dtype."""
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size: 2^(VAE levels − 1), or 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def set_scheduler(self, name_or_scheduler: str | Any, **config_overrides: Any) -> Explainer:
        """Switch scheduler by short name (see ``SCHEDULER_NAMES``) or instance; config overrides apply.

        A name builds on the config of the scheduler the Explainer was created with (its betas,
        prediction type, spacing), so earlier ``set_scheduler`` overrides do not carry over.
        """
        if isinstance(name_or_scheduler, str):
            base = self._base_scheduler_config
            self.scheduler = scheduler_by_name(name_or_scheduler, base, **config_overrides)
        elif config_overrides:
            self.scheduler = type(name_or_scheduler).from_config(name_or_scheduler.config, **config_overrides)
        else:
            self.scheduler = name_or_scheduler
        return self

    scheduler_names: tuple[str, ...] = tuple(SCHEDULER_NAMES)

    # ---- hooks -------------------------------------------------------------------------------------
    @contextmanager
    def hooks(self, hooks: HookSpec) -> Iterator[Explainer]:
        """Add hooks to every run and fork inside the ``with`` block; removed on exit, even on error."""
        block = as_hooks(hooks)
        self._scoped_hooks.append(block)
        try:
            yield self
        finally:
            self._scoped_hooks.remove(block)

    def _runner(self, hooks: HookSpec) -> HookRunner:
        scoped = [h for block in self._scoped_hooks for h in block]
        return HookRunner(scoped + as_hooks(hooks), num_steps=0)

    # ---- running -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        guidance: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings (cond, uncond) [B, T, D] as the pipeline computes them; uncond None if not guidance."""
        return encode_prompt(
            self.tokenizer, self.text_encoder, prompt, self.device, guidance, negative_prompt
        )

    def _settings(self, **settings: Any) -> dict[str, Any]:
        unet_config = self.unet.config
        model = {
            "unet": type(self.unet).__name__,
            "name_or_path": getattr(unet_config, "_name_or_path", "") or "",
            "in_channels": unet_config.in_channels,
            "block_out_channels": list(unet_config.block_out_channels),
            "vae": None if self.vae is None else type(self.vae).__name__,
            "text_encoder": type(self.text_encoder).__name__,
            "name": self.model_name,
            "fingerprint": weight_fingerprint(self.unet),  # same weights ⇒ same hash, at every step
        }
        return {
            **settings,
            "scheduler": describe(self.scheduler),
            "prediction_type": self.scheduler.config.prediction_type,
            "model": model,
            "latent_rgb": self.latent_rgb,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.no_grad()
    def run(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        hooks: HookSpec = None,
        keep: str | Iterable[str] | None = None,
        store_dtype: torch.dtype | None = None,
        progress: bool | None = None,
        decode: bool = True,
    ) -> Trace:
        """Generate from ``prompt`` and return the trace of every step (diffusers' argument names).

        ``num_inference_steps`` and ``guidance_scale`` default to the model's recommended settings
        (``explainer.defaults``, from the model folder), else 25 steps and scale 7.5.
        ``seed`` and ``generator`` are exclusive; with neither, a random seed is drawn and recorded in
        ``trace.settings["seed"]`` so the run can be repeated. Guidance is on iff ``guidance_scale > 1``.
        ``keep`` selects hook points to store (names or globs, default all); ``store_dtype`` stores them
        in a smaller dtype (restart state for forks stays at full precision).
        """
        if seed is not None and generator is not None:
            raise ValueError("pass seed= or generator=, not both")
        if num_inference_steps is None:
            num_inference_steps = int(self.defaults.get("num_inference_steps", 25))
        if guidance_scale is None:
            guidance_scale = float(self.defaults.get("guidance_scale", 7.5))
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"num_inference_steps must be a whole number of at least 1, got {num_inference_steps!r}"
            )
        if generator is None:
            seed = secrets.randbits(63) if seed is None else int(seed)
            generator = torch.Generator(device="cpu").manual_seed(seed)
        runner = self._runner(hooks)
        sample_size = self.unet.config.sample_size
        sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
        height = height or sample_size * self.vae_scale_factor
        width = width or sample_size * self.vae_scale_factor
        do_cfg = guidance_scale > 1 and getattr(self.unet.config, "time_cond_proj_dim", None) is None
        settings = self._settings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=float(guidance_scale),
            do_cfg=do_cfg,
            seed=seed,
            generator_device=generator.device.type,
            height=int(height),
            width=int(width),
            eta=float(eta),
            decode=decode,
        )
        trace = Trace(settings, keep=keep, store_dtype=store_dtype)
        trace.explainer = self
        self.last_trace = trace
        with keep_partial_trace(self, trace):
            return generate(
                self,
                trace,
                runner,
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=float(guidance_scale),
                height=int(height),
                width=int(width),
                latents=latents,
                eta=float(eta),
                generator=generator,
                decode_image=decode,
                progress=self.progress if progress is None else progress,
            )

    @torch.no_grad()
    def fork(
        self,
        trace: Trace,
        step: int,
        *,
        hooks: HookSpec = None,
        guidance_scale: float | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        latents: torch.Tensor | None = None,
        progress: bool | None = None,
    ) -> Trace:
        """Re-run only loop steps ``step``..N−1 of ``trace`` with the given changes; steps before are copied.

        With no change (and no hooks) the fork reproduces the original bit for bit. The original run's
        hooks are not re-applied: pass them again in ``hooks=`` to keep them.
        """
        from diffexplain.fork import resume

        runner = self._runner(hooks)
        return resume(
            self,
            trace,
            step,
            runner,
            guidance_scale=guidance_scale,
            prompt=prompt,
            negative_prompt=negative_prompt,
            latents=latents,
            progress=self.progress if progress is None else progress,
        )

    def __repr__(self) -> str:
        return (
            f"Explainer(unet={type(self.unet).__name__}, scheduler={type(self.scheduler).__name__}, "
            f"vae={None if self.vae is None else type(self.vae).__name__}, device={self.device}, dtype={self.dtype})"
        )
