"""Explainer: a pipeline family's parts, defaults and hook scopes; ``run`` and ``fork`` enter one loop."""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from diffexplain import checks, img2img, inpaint, inversion
from diffexplain.attention.layers import with_attention_points
from diffexplain.explainer_parts import ModelParts
from diffexplain.families import (
    FAMILIES,
    Family,
    family_from_parts,
    family_from_pipeline,
)
from diffexplain.families.base import Conditioning
from diffexplain.families.modular import is_modular, modular_defaults
from diffexplain.fingerprint import LazyFingerprint, same_weights
from diffexplain.guiders.base import Guider, with_guider_points
from diffexplain.guiders.choose import run_guider
from diffexplain.hooks import Hook, HookSpec, as_hooks
from diffexplain.jobs import Job, finishing
from diffexplain.loop import Components, Resume, loop_steps
from diffexplain.names import HookPoint, with_image_points
from diffexplain.prompt_limits import cut_prompts, warn_cut
from diffexplain.prompt_warnings import warn_prompt
from diffexplain.scheduler_outputs import with_scheduler_points
from diffexplain.scheduler_state import describe, effective_config, names_for, scheduler_by_name
from diffexplain.settings import RunSettings
from diffexplain.threads import check_threads, cpu_threads, decide_threads
from diffexplain.trace import Trace, resolve_keep


class Explainer(ModelParts):
    """A diffusion model (one pipeline family's parts) with a hookable, forkable loop.

    Build it from a pipeline (``from_pipeline``, ``from_pretrained``) or from parts, named as the
    pipeline names them: ``Explainer(unet=..., scheduler=..., tokenizer=..., text_encoder=..., vae=...)``
    for Stable Diffusion; SDXL's and SD3's parts pick those families. ``vae=None`` means pixel space.
    """

    def __init__(
        self,
        *,
        scheduler: Any,
        family: Family | None = None,
        progress: bool = True,
        model_name: str = "",
        latent_rgb: list[list[float]] | None = None,
        defaults: dict[str, Any] | None = None,
        **parts: Any,
    ) -> None:
        if family is None:
            family = family_from_parts({**parts, "vae": parts.get("vae")})
        elif parts:
            raise TypeError("pass family= or the parts, not both")
        self.family = family
        self.scheduler = scheduler  # a template: every run uses a fresh copy
        self._base_scheduler_config = effective_config(scheduler.config)  # what set_scheduler(name) builds on
        self.progress = progress
        self.last_trace: Trace | None = None  # the latest trace, complete or interrupted
        self._scoped_hooks: list[list[Hook]] = []  # `with explainer.hooks(...)` blocks, outermost first
        self.model_name = model_name  # a display name
        self.latent_rgb = latent_rgb  # [C, 3] map for fast latent previews, if known
        self.defaults: dict[str, Any] = dict(defaults or {})  # recommended run settings (steps, guidance)
        # the words the model was trained on (the default model's captions); None: any text
        self.vocabulary: frozenset[str] | None = None
        self._threads: int | None = (
            None  # CPU threads of every run, decided at the first (diffexplain.threads)
        )

    @property
    def threads(self) -> int | None:
        """The CPU thread count of this explainer's runs (None on a GPU), decided once, at the first run
        (``DIFFEXPLAIN_THREADS``: ``auto`` by default, see ``diffexplain.threads``), and recorded in each
        trace; a fork runs on its trace's count. Set it to choose: the same count gives the same bits."""
        if self.device.type != "cpu":
            return None
        if self._threads is None:
            self._threads = decide_threads()
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._threads = check_threads(value, "Explainer.threads")

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipe: Any, **kwargs: Any) -> Explainer:
        """An Explainer sharing a diffusers pipeline's parts; the family is picked from the pipeline's class.

        A Modular Diffusers pipeline (``diffexplain.families.modular``) also gives its guider: the default
        guidance method of every run (``explainer.defaults["guider"]``), its scale the default w."""
        family = family_from_pipeline(pipe)
        if is_modular(pipe):
            kwargs["defaults"] = {**modular_defaults(pipe), **(kwargs.get("defaults") or {})}
        return cls(family=family, scheduler=pipe.scheduler, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Explainer:
        """Load a pipeline (folder or Hub id) with the diffusers class its ``model_index.json`` names, then ``from_pipeline``.

        ``kwargs`` go to the pipeline's ``from_pretrained`` (e.g. ``torch_dtype=torch.float16``), but for the
        Explainer's own (``progress``, ``model_name``, ``latent_rgb``, ``defaults``). Where the pipeline is
        is decided first (``diffexplain.models.hub``): a missing folder is ``FileNotFoundError`` ("no such
        folder"); a hub id that is neither cached nor reachable is ``HubUnreachableError`` at once, and a
        cached one loads offline when the hub cannot be reached. A local folder of a Modular Diffusers
        pipeline (``modular_model_index.json``, its ``save_pretrained``) loads with ``ModularPipeline`` and
        its ``load_components(**kwargs)`` (``diffexplain.families.modular.load_modular``).
        """
        from diffexplain.loading import load_pipeline

        own = {k: kwargs.pop(k) for k in ("progress", "model_name", "latent_rgb", "defaults") if k in kwargs}
        return cls.from_pipeline(load_pipeline(path, **kwargs), **own)

    def to(self, *args: Any, **kwargs: Any) -> Explainer:
        """Move every model part, like ``nn.Module.to`` (device and/or dtype); returns self."""
        for module in self.family.modules():
            module.to(*args, **kwargs)
        return self

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """The short scheduler names ``set_scheduler`` takes for this family."""
        return tuple(names_for(self._base_scheduler_config, self.family.scheduler_names))

    def set_scheduler(self, name_or_scheduler: str | Any, **config_overrides: Any) -> Explainer:
        """Switch scheduler by short name (see ``scheduler_names``) or instance; config overrides apply.

        A name builds on the config of the scheduler the Explainer was created with (its betas,
        prediction type, spacing), so earlier ``set_scheduler`` overrides do not carry over.
        """
        if isinstance(name_or_scheduler, str):
            base = self._base_scheduler_config
            names = names_for(base, self.family.scheduler_names)
            self.scheduler = scheduler_by_name(name_or_scheduler, base, names, **config_overrides)
        elif config_overrides:
            config = effective_config(name_or_scheduler.config)
            self.scheduler = type(name_or_scheduler).from_config(config, **config_overrides)
        else:
            self.scheduler = name_or_scheduler
        return self

    def hook_points(self) -> tuple[HookPoint, ...]:
        """Every hook point of this model: the loop's, its family's and its attention layers' (``attn.*``).

        Each has its tensor, shape and flags: per step, only with guidance on (``cfg_only``), and heavy
        (kept only when ``keep=`` asks for it: the attention points are heavy).
        """
        return with_attention_points(self.family.hook_points(), self.family.attention_layers())

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

    def _hooks(self, hooks: HookSpec) -> list[Hook]:
        return [h for block in self._scoped_hooks for h in block] + as_hooks(hooks)

    # ---- running -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        guidance: bool = True,
        **options: Any,
    ) -> tuple[Conditioning, Conditioning | None]:
        """Each branch's conditioning as the loop computes it: (cond, uncond or None), named tensors."""
        h, w = self.family.default_size()
        run_options = self.family.run_options(h, w, **options)
        warn_cut(cut_prompts(self.family.text_limits(run_options), prompt, negative_prompt))
        return self.family.encode(prompt, negative_prompt, guidance, run_options)

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        guidance: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings (cond, uncond) [B, T, D] as the pipeline computes them; uncond None if not guidance."""
        cond, uncond = self.encode(prompt, negative_prompt, guidance=guidance)
        return cond["embeds"], None if uncond is None else uncond["embeds"]

    def _model_record(self) -> dict[str, Any]:
        """What a run's settings record of the model: the family's description, its name and conventions."""
        conventions = self.family.conventions(self.scheduler).record()
        return {**self.family.describe(), "name": self.model_name, "conventions": conventions}

    def _context(self) -> dict[str, Any]:
        """What a run runs on, as its settings record it: scheduler, model, device, dtype, threads."""
        return {
            "scheduler": describe(self.scheduler),
            "prediction_type": self.scheduler.config.get(
                "prediction_type", "flow" if self.family.output_kind == "velocity" else None
            ),
            "model": self._model_record(),
            "latent_rgb": self.latent_rgb,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": self.threads,
        }

    def _new_trace(self, settings: RunSettings, keep: Any, store_dtype: torch.dtype | None) -> Trace:
        points = with_guider_points(self.hook_points(), settings.guider)
        points = with_image_points(points, settings.strength, settings.inpaint)  # from a picture: image.*
        points = with_scheduler_points(points, settings.scheduler.get("class"))  # LCM: step.denoised
        trace = Trace(settings, keep=keep, store_dtype=store_dtype, points=points)
        trace.explainer = self
        trace.fingerprint_source = LazyFingerprint(self.model)
        self.last_trace = trace
        return trace

    def start_run(
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
        restart: bool = True,
        attention_maps: bool = True,
        guider: Guider | None = None,
        guidance_rescale: float = 0.0,
        image: img2img.PictureInput | None = None,
        mask_image: inpaint.MaskInput | None = None,
        strength: float | None = None,
        stage_input: torch.Tensor | None = None,
        **options: Any,
    ) -> Job:
        """``run``, as a :class:`~diffexplain.jobs.Job` that runs one loop step per ``advance()``: the
        arguments are checked now, the model runs as the job advances (``job.finish()`` is ``run``).

        ``stage_input``: what a cascade stage receives (the previous stage's picture, or the prior's
        image embeddings [2, B, D]); ``Cascade`` passes it, checked (``cascade_stage.stage_input``).
        """
        if seed is not None and generator is not None:
            raise ValueError("pass seed= or generator=, not both")
        if image is not None and latents is not None:
            raise ValueError(
                "pass image= (start from a picture) or latents= (start from these x_T), not both"
            )
        if generator is None:
            seed = secrets.randbits(63) if seed is None else checks.check_seed(seed)
            generator = torch.Generator(device="cpu").manual_seed(seed)
        settings = self.run_settings(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            generator_device=generator.device.type,
            height=height,
            width=width,
            eta=eta,
            decode=decode,
            restart=restart,
            attention_maps=attention_maps,
            guider=guider,
            guidance_rescale=guidance_rescale,
            image=image,
            mask_image=mask_image,
            strength=strength,
            **options,
        )
        self._warn_prompt(prompt, negative_prompt, settings.options)
        start = img2img.check_start(  # checked by run_settings: the picture's pixels, once more
            self.family,
            image,
            settings.strength if image is not None else strength,
            height=height,
            width=width,
            num_inference_steps=settings.num_inference_steps,
            batch_size=settings.batch_size,
        )
        trace = self._new_trace(settings, keep, store_dtype)
        steps = self._loop(
            trace,
            self._hooks(hooks),  # now: the hooks of the `with explainer.hooks(...)` block around this call
            generator=generator,
            latents=latents,
            stage_input=stage_input,
            image=None if start is None else start.pixels,
            mask=inpaint.check_mask(mask_image, start, settings.batch_size),  # [B_m, 1, H, W], or None
            progress=self.progress if progress is None else progress,
        )
        return Job(steps, trace)

    run = finishing(
        start_run,
        """Generate from ``prompt`` and return the trace of every step (diffusers' argument names).

        ``num_inference_steps`` and ``guidance_scale`` default to the model's recommended settings
        (``explainer.defaults``, from the model folder), else the family's: 25 steps and the scale of
        its pipeline (7.5 for SD, 5 for SDXL; SD3: 28 steps, scale 7).
        ``seed`` and ``generator`` are exclusive; with neither, a random seed is drawn and recorded in
        ``trace.settings["seed"]`` so the run can be repeated. Guidance is on iff ``guidance_scale > 1``
        (and the model is not guidance-distilled). ``keep`` selects hook points to store (names or
        globs, default all but the heavy ones); ``store_dtype`` stores them in a smaller dtype (restart
        state for forks stays at full precision). ``options`` are the family's own settings, e.g.
        SDXL's ``original_size`` or SD3's ``max_sequence_length``; a model folder's defaults may set them too
        (e.g. ``noise_level`` for a pixel cascade's stage II). ``restart=False`` makes no restart
        points (no scheduler snapshot or generator state per step): such a trace cannot be forked.
        ``attention_maps`` keeps each step's cross-attention maps (``trace.attention("red")``): each
        text-attention layer runs its own processor and p is computed beside it, so the run equals the
        pipeline bit for bit either way; ``False`` leaves the model untouched and skips that work. The run
        uses ``self.threads`` CPU threads, recorded in the trace. ``guider`` is the guidance method
        (``diffexplain.guiders``: ``CFG`` with a step interval or a rescale, ``APG``; None: ε_u + w·(ε_c − ε_u)),
        recorded in ``trace.settings["guider"]``; ``guidance_rescale`` is the pipelines' knob (φ in [0, 1]:
        ``CFG(rescale=φ)``, equal to ``StableDiffusionPipeline(..., guidance_rescale=φ)`` bit for bit).
        ``image`` starts from a picture (img2img, SDEdit; the SD, SDXL, SD3 and Flux families): a PIL image
        (RGB), a list of them, or a float tensor [B, 3, H, W] or [3, H, W] in [0, 1], whose size sets height
        and width; ``strength`` (s in (0, 1], default the family's img2img pipeline's: 0.8 SD, 0.3 SDXL, 0.6
        SD3 and Flux) is the share of the schedule that runs, from the picture noised to its first timestep,
        equal to the family's img2img pipeline bit for bit (``diffexplain.img2img.PIPELINES``).
        ``mask_image`` inpaints: white (≥ 0.5) is repainted, black kept; its default strength is 1 (from
        noise), with a regular U-Net (the known region blended back each step) or an inpainting one
        (2·C + 1 input channels), equal to ``StableDiffusionInpaintPipeline`` (SDXL:
        ``StableDiffusionXLInpaintPipeline``, default strength 0.9999) bit for bit (``diffexplain.inpaint``).
        ``run(...)`` is ``start_run(...).finish()``.
        """,
    )

    def run_settings(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        generator_device: str = "cpu",
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        decode: bool = True,
        restart: bool = True,
        attention_maps: bool = True,
        guider: Guider | None = None,
        guidance_rescale: float = 0.0,
        image: img2img.PictureInput | None = None,
        mask_image: inpaint.MaskInput | None = None,
        strength: float | None = None,
        **options: Any,
    ) -> RunSettings:
        """The checked :class:`~diffexplain.settings.RunSettings` of a run with these arguments (``run``'s),
        defaults filled in, without running anything; an error names a setting that is wrong."""
        checks.check_prompt(prompt)
        checks.check_negative_prompt(negative_prompt, 1 if isinstance(prompt, str) else len(prompt))
        if num_inference_steps is None:
            num_inference_steps = int(self.defaults.get("num_inference_steps", self.family.default_steps))
        if guidance_scale is None:
            guidance_scale = float(self.defaults.get("guidance_scale", self.family.default_guidance_scale))
        guidance_scale = float(checks.check_guidance_scale(guidance_scale))
        num_inference_steps = checks.check_steps(num_inference_steps)
        if image is not None and img2img.takes_stage_input(self.family):  # its own image=, as before
            image, options = None, {**options, "image": image}
        strength = inpaint.check_arguments(self.family, image, mask_image, strength)  # 1 with a mask
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        start = img2img.check_start(  # None without a picture; with one, it sets H and W
            self.family,
            image,
            strength,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            batch_size=batch_size,
        )
        mask = inpaint.check_mask(mask_image, start, batch_size)  # None without one
        if start is not None:
            height, width = start.height, start.width
        multiple, why = self.family.size_multiple()
        default_h, default_w = self.family.default_size()
        height = checks.check_size("height", default_h if height is None else height, multiple, why)
        width = checks.check_size("width", default_w if width is None else width, multiple, why)
        return RunSettings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            do_cfg=self.family.uses_guidance(guidance_scale, negative_prompt),
            seed=checks.check_seed(seed),
            generator_device=generator_device,
            height=height,
            width=width,
            eta=checks.check_float("eta", eta, low=0.0, meaning="DDIM's noise share: 0 deterministic"),
            decode=checks.check_flag("decode", decode),
            options=self.family.run_options(height, width, **(self._option_defaults() | options)),
            restart=checks.check_flag("restart", restart),
            attention_maps=checks.check_flag("attention_maps", attention_maps),
            guider=run_guider(guider, guidance_rescale)
            or run_guider(self.defaults.get("guider") or self.family.default_guider()),
            strength=None if start is None else start.strength,
            entry_step=None if start is None else start.entry_step,
            inpaint=None if mask is None else inpaint.kind(self.family),
            **self._context(),
        )

    def invert(
        self,
        image: img2img.PictureInput,
        prompt: str | list[str],
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        **run: Any,
    ) -> Trace:
        """DDIM inversion (``diffexplain.inversion``): the trace of DDIM run backwards from ``image``'s latents
        (``DDIMInverseScheduler``), whose ``final_latents`` x_T start a DDIM run that draws the picture again:
        ``inversion.reconstruct(explainer, trace)``, or ``run(prompt, latents=trace.final_latents)`` with DDIM.
        SD3 and Flux invert by flow reversal (``diffexplain.flow_inversion``): Euler from σ = 0 up to 1,
        reconstructed by flow-matching Euler."""
        return inversion.invert(
            self, image, prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **run
        )

    def check_run(self, prompt: str | list[str], **kwargs: Any) -> RunSettings:
        """The settings that ``run(prompt, **kwargs)`` would run with, checked (``keep=`` too), without
        running anything or making a trace: a cascade checks its later stages before the first runs."""
        unused = {"generator", "latents", "hooks", "progress", "stage_input"}
        keep, _ = kwargs.pop("keep", None), kwargs.pop("store_dtype", None)
        resolve_keep(keep, self.hook_points())
        return self.run_settings(prompt, **{k: v for k, v in kwargs.items() if k not in unused})

    def start_fork(
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
        attention_maps: bool | None = None,
        guider: Guider | None = None,
        other_weights: bool = False,
    ) -> Job:
        """``fork``, as a :class:`~diffexplain.jobs.Job` (see ``start_run``): checked now, run as it advances."""
        k = checks.check_fork_step(step, len(trace.steps))
        if trace.steps[k].restart is None:
            raise ValueError(f"step {k} of this trace has no restart state, so it cannot be forked")
        source = trace.run_settings
        if source.family != self.family.name:
            family = source.family
            raise ValueError(
                f"this trace was made by a {FAMILIES[family].label if family in FAMILIES else family} model; "
                f"this Explainer holds a {self.family.label} model: fork it with an Explainer of its family"
            )
        if not checks.check_flag("other_weights", other_weights):
            self._check_same_weights(trace)
        if prompt is not None:
            checks.check_prompt(prompt)
        w = source.guidance_scale if guidance_scale is None else checks.check_guidance_scale(guidance_scale)
        settings_negative = source.negative_prompt if negative_prompt is None else negative_prompt
        settings = source.replace(
            prompt=source.prompt if prompt is None else prompt,
            negative_prompt=settings_negative,
            guidance_scale=float(w),
            do_cfg=self.family.uses_guidance(float(w), settings_negative),
            options=self.family.run_options(source.height, source.width, **source.options),
            attention_maps=(
                source.attention_maps
                if attention_maps is None
                else checks.check_flag("attention_maps", attention_maps)
            ),
            guider=source.guider if guider is None else run_guider(guider, 0.0),
            model=self._model_record(),  # the model that runs now
            threads=(  # the trace's count, so that the fork rounds as its run did
                check_threads(source.threads, "trace.settings['threads']")
                if source.threads is not None and self.device.type == "cpu"
                else self.threads
            ),
        )  # attention: the source's, until the loop records this fork's own
        self._warn_prompt(
            prompt, negative_prompt, settings.options
        )  # the new ones only: None where unchanged
        forked = self._new_trace(settings, None, trace.store_dtype)
        forked.kept = trace.kept
        forked.forked_from = k
        forked.steps = list(trace.steps[:k])
        forked.replacements = [r for r in trace.replacements if r.step is None or r.step < k]
        forked.run_tensors = {name: x for name, x in trace.run_tensors.items() if name != "decode.image"}
        resume = Resume(trace, k, prompt is not None, negative_prompt is not None, latents)
        steps = self._loop(
            forked,
            self._hooks(hooks),
            resume=resume,
            progress=self.progress if progress is None else progress,
        )
        return Job(steps, forked)

    fork = finishing(
        start_fork,
        """Re-run only loop steps ``step``..N−1 of ``trace`` with the given changes; steps before are kept.

        ``step`` is a loop step index, 0..N−1; a negative one counts from the end, as in Python
        (−1 forks at the last step), and the fork records the step it took in ``forked_from``.

        With no change (and no hooks) the fork reproduces the original bit for bit. The original run's
        hooks are not re-applied: pass them again in ``hooks=`` to keep them. ``attention_maps`` is the
        original run's unless given. The fork runs on the trace's CPU thread count (``trace.settings
        ["threads"]``), so that it rounds as the run did. A trace made with other weights (its
        ``fingerprint()`` differs from this model's) is refused unless ``other_weights=True``.
        ``guider`` changes the guidance method from ``step`` on (a stateful one, APG, keeps the run's state
        where the run used the same method, else starts afresh). ``fork(...)`` is ``start_fork(...).finish()``.
        """,
    )

    @torch.no_grad()
    def _loop(self, trace: Trace, hooks: list[Hook], **kwargs: Any) -> Generator[int, None, Trace]:
        """The loop of one job, on its trace's CPU thread count (``diffexplain.threads``)."""
        with cpu_threads(trace.run_settings.threads if self.device.type == "cpu" else None):
            return (yield from loop_steps(Components(self.family, self.scheduler), trace, hooks, **kwargs))

    def _check_same_weights(self, trace: Trace) -> None:
        """``ValueError`` naming both fingerprints if ``trace`` was made with other weights than this model's."""
        made_with = trace.fingerprint()
        if made_with is None:  # unknown (a file saved after its weights changed): nothing to compare
            return
        same, current = same_weights(
            self.model, made_with, trace.run_settings.model.get("fingerprint_scheme")
        )
        if not same:
            raise ValueError(
                f"this trace was made with other weights (fingerprint {made_with}) than this Explainer's "
                f"{self.family.model_attr} (fingerprint {current}): its restart points would continue another "
                "model's run. Fork it with the model that made it, or pass other_weights=True to continue "
                "it with these weights anyway"
            )

    def _option_defaults(self) -> dict[str, Any]:
        """The model's defaults for its family's own run settings (e.g. the pixel cascade's ``noise_level``)."""
        return {
            k: v
            for k, v in self.defaults.items()
            if k not in ("num_inference_steps", "guidance_scale", "guider")
        }

    def _warn_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        options: dict[str, Any],
    ) -> None:
        """Warnings about a run's text before it runs (``diffexplain.prompt_warnings``)."""
        warn_prompt(self.family, self.vocabulary, prompt, negative_prompt, options)

    def __repr__(self) -> str:
        vae = None if self.vae is None else type(self.vae).__name__
        return (
            f"Explainer({self.family.model_attr}={type(self.model).__name__}, family={self.family.name}, "
            f"scheduler={type(self.scheduler).__name__}, vae={vae}, device={self.device}, dtype={self.dtype})"
        )
