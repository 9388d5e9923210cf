"""The denoising loop, for every pipeline family, and for a run and a fork alike.

Sections follow diffusers' pipelines (``StableDiffusionPipeline.__call__`` numbers them 3 prompt,
4 timesteps, 5 latents, 6 step kwargs, 7 loop); here the timesteps come first, so hooks know N.
A fork is the same function entered at step k with the trace's restart state: nothing is copied.
What differs between families (conditioning, the model call, what its output means, x̂0, latent
layout, decoding) is the family adapter's (``diffexplain.families``).

Notation (``diffexplain.names``): x_t ``latents``, ε_c ``eps_cond``, ε_u ``eps_uncond``,
w ``guidance_scale``, ε̂ = ε_u + w·(ε_c − ε_u) ``eps_guided``, x̂0 ``pred_x0``, x_{t−1} ``next_latents``.
B batch, T tokens, D text width, C latent channels, h×w latent size, H×W image size.

Each ``sites(name, x)`` call is a hook point: the hooks registered there run in order (each may
return a replacement), the result goes into ``ctx.current`` and, if kept, into the trace.

``loop_steps`` is the loop as a generator: it yields after each finished step and returns the trace,
so a caller may stop between steps (``close()``: a widget's Stop button). ``diffexplain.jobs.Job``
drives it: ``explainer.run`` is ``explainer.start_run(...).finish()``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from diffexplain.attention.capture import AttentionCapture, attention_settings
from diffexplain.attention.layers import PREFIX as ATTENTION_PREFIX
from diffexplain.checks import check_start_level
from diffexplain.families.base import Conditioning, Family, conditioning_point
from diffexplain.guidance import guide
from diffexplain.guiders.base import GuidanceStep, Guider, guider_from_json
from diffexplain.hooks import Hook, HookRunner, Replacement, StepTensors, check_replacement
from diffexplain.img2img import enter, loop_timesteps, noised_picture
from diffexplain.inpaint import blend, masked_start, with_mask_channels
from diffexplain.model_step import predict_branches, predictor_at
from diffexplain.noise_levels import model_output_from, pred_x0_from
from diffexplain.records import RestartPoint, StepRecord
from diffexplain.scheduler_outputs import through_sites
from diffexplain.scheduler_state import fresh_scheduler, restore, snapshot
from diffexplain.settings import RunSettings
from diffexplain.sites import Sites
from diffexplain.step_scalars import STEP_SCALARS, FinishedStep, read_scalars
from diffexplain.trace import Trace

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class Components:
    """The parts a loop runs with: the family adapter (model, text encoders, VAE) and the scheduler template."""

    family: Family
    scheduler: SchedulerMixin  # a template: every run uses a fresh copy


@dataclass(frozen=True)
class Resume:
    """Where and how a fork re-enters the loop: the source trace, step k, and what changed."""

    source: Trace
    step: int  # k: the first step that runs again
    prompt_changed: bool  # re-encode the cond branch
    negative_changed: bool  # re-encode the uncond branch
    latents: torch.Tensor | None  # a replacement for x_t entering step k, or None


@contextmanager
def keep_partial_trace(trace: Trace) -> Iterator[None]:
    """On Ctrl-C or an error, keep the trace of the finished steps and re-raise the original exception;
    when the caller stops the loop between steps (``GeneratorExit``), mark the trace "stopped"."""
    try:
        yield
    except GeneratorExit:
        trace.status = "stopped"
        trace.message = f"stopped after {len(trace)} finished steps (0..{len(trace) - 1})"
        raise
    except (Exception, KeyboardInterrupt) as exc:
        trace.status = "interrupted"
        trace.message = f"{type(exc).__name__} during step {len(trace)}; steps 0..{len(trace) - 1} finished"
        exc.partial_trace = trace  # type: ignore[attr-defined]
        exc.add_note(
            f"diffexplain: the partial trace ({len(trace)} finished steps) is in exc.partial_trace "
            "and explainer.last_trace"
        )
        raise


# ---- conditioning -------------------------------------------------------------------------------------
def prepare_conditioning(
    family: Family, settings: RunSettings, options: dict[str, Any], resume: Resume | None
) -> tuple[Conditioning, Conditioning | None]:
    """Each branch's conditioning: encoded for a run; for a fork the source's, re-encoded where it changed.
    ``options``: the family's run options, with a cascade stage's input tensors."""
    if resume is None:
        return family.encode(settings.prompt, settings.negative_prompt, settings.do_cfg, options)
    device = family.model.device
    saved = {b: {k: x.to(device) for k, x in c.items()} for b, c in resume.source.conditioning.items()}
    cond, uncond = saved["cond"], saved.get("uncond")
    needs_uncond = settings.do_cfg and (uncond is None or resume.negative_changed)
    if resume.prompt_changed or needs_uncond:
        new_cond, new_uncond = family.encode(
            settings.prompt, settings.negative_prompt, settings.do_cfg, options
        )
        # keys a family does not re-encode from the prompt (a previous cascade stage's image) keep the source's
        cond = {**cond, **new_cond} if resume.prompt_changed else cond
        if needs_uncond:
            uncond = {**(uncond if uncond is not None else cond), **new_uncond}  # type: ignore[union-attr]
    return cond, uncond if settings.do_cfg else None


def attention_capture(
    family: Family,
    settings: RunSettings,
    sites: Sites,
    latent_size: Sequence[int],
    resume: Resume | None = None,
) -> AttentionCapture | None:
    """The run's attention capture, or None where nothing needs it (no maps, no attention hook or keep)."""
    trace = sites.trace
    wanted = any(
        name.startswith(ATTENTION_PREFIX) and (sites.hooks.has(name) or name in trace.kept)
        for name in trace.hook_names
    )
    if not (settings.attention_maps or wanted):
        return None
    layers = family.attention_layers()
    if not layers:
        return None
    info = attention_settings(family, settings, layers, maps_first_step(resume))
    trace.run_settings = trace.run_settings.replace(attention=info)
    return AttentionCapture(
        layers,
        sites,
        batch_size=settings.batch_size,
        do_cfg=settings.do_cfg,
        latent_size=(int(latent_size[0]), int(latent_size[1])),
        maps=settings.attention_maps,
    )


def maps_first_step(resume: Resume | None) -> dict[str, int]:
    """Per branch, the first step whose maps index this run's tokens: 0 for a run; for a fork, k where
    it changed that branch's prompt (or the source kept no such maps), else the source's own."""
    if resume is None:
        return {"cond": 0, "uncond": 0}
    source = resume.source.run_settings.attention or {}
    before = source.get("first_step") or {}
    first = {}
    for branch, changed in (("cond", resume.prompt_changed), ("uncond", resume.negative_changed)):
        had_maps = bool(source.get("maps")) and branch in (source.get("tokens") or {})
        first[branch] = resume.step if changed or not had_maps else int(before.get(branch, 0))
    return first


def _generator(
    settings: RunSettings, state: torch.Tensor | None, device: torch.device
) -> torch.Generator | None:
    """The random generator as it was entering the fork's step (None where the scheduler draws no noise)."""
    if state is None:
        return None
    kind = settings.generator_device
    generator = torch.Generator(device=device if kind == device.type else kind)
    generator.set_state(state)
    return generator


# ---- the loop -----------------------------------------------------------------------------------------
def loop_steps(
    components: Components,
    trace: Trace,
    hooks: Sequence[Hook],
    *,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    stage_input: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    resume: Resume | None = None,
    progress: bool = True,
) -> Generator[int, None, Trace]:
    """One run (``resume=None``: steps 0..N−1 from ``latents`` or fresh noise) or one fork (steps k..N−1),
    with the settings ``trace.run_settings``. ``stage_input``: what a cascade stage receives (the previous
    stage's picture or image embeddings), from which the family draws x_T and its conditioning. ``image``:
    the picture a run starts from (``diffexplain.img2img``), in [-1, 1]  [B_img, 3, H, W]; ``mask``: the
    region of it to repaint (``diffexplain.inpaint``), 1 where the model paints  [B_m, 1, H, W].

    Yields each loop step's index once it is finished (recorded in ``trace.steps``); returns the trace.
    """
    family = components.family
    device = family.model.device
    settings = trace.run_settings
    with keep_partial_trace(trace):
        # 1. timesteps: a fresh scheduler (runs never leak state into each other), or the one entering step k
        if resume is None:
            scheduler = fresh_scheduler(components.scheduler)
            family.set_timesteps(scheduler, settings.num_inference_steps, settings.height, settings.width)
            first = scheduler.timesteps[0]  # from noise (not a picture, not an inversion's ascending t):
            if settings.entry_step is None and first >= scheduler.timesteps[-1]:  # warn where it breaks
                check_start_level(
                    family.noise_level(scheduler, first), float(first), len(scheduler.timesteps)
                )
            enter(scheduler, settings)  # from a picture: the loop enters at step t_start (img2img)
            start = 0
        else:
            restart = resume.source.steps[resume.step].restart
            info = settings.scheduler
            scheduler = restore(info["class"], info["config"], restart.scheduler_state, device)
            generator = _generator(settings, restart.generator_state, device)
            start = resume.step
        guider = guider_from_json(settings.guider)  # a fresh one per run: its state is this run's alone
        if guider is not None and guider.checks_scheduler:
            guider.check_scheduler(scheduler, settings.eta)
        if guider is not None and resume is not None:
            guider.load_state(resume.source.steps[resume.step].restart.guider_state or {})
        # all the family's timesteps, or from t_start·order on (img2img)
        timesteps = loop_timesteps(scheduler, settings, family.loop_timesteps(scheduler))
        runner = HookRunner(hooks, num_steps=len(timesteps), names=trace.hook_names)
        sites = Sites(trace, runner, settings.guidance_scale, family.init_noise_sigma(scheduler))

        # 2. conditioning: named tensors per branch (cond, and uncond with guidance on)   e.g. embeds [B, T, D]
        options = dict(settings.options)
        if (
            stage_input is not None
        ):  # a cascade stage: x_T and the input's tensors, drawn in the pipeline's order
            latents, tensors = family.stage_inputs(
                stage_input, settings.batch_size, settings.height, settings.width, generator, settings.options
            )
            options.update(tensors)  # the run's tensors, not its (JSON) settings
        cond, uncond = prepare_conditioning(family, settings, options, resume)
        for key in cond:  # in hook-point order: prompt.cond, prompt.uncond, prompt.pooled.cond, ...
            given = cond[key], None if uncond is None else uncond[key]
            cond[key] = sites(conditioning_point(key, "cond"), cond[key])
            if uncond is not None:
                uncond[key] = sites(conditioning_point(key, "uncond"), uncond[key])
            replaced = (cond[key] is not given[0], uncond is not None and uncond[key] is not given[1])
            family.conditioning_hooked(key, cond, uncond, replaced)  # FLUX.2: embeds follow its layers
        trace.conditioning = {"cond": cond, **({"uncond": uncond} if uncond is not None else {})}

        # 3. latents: x_T = noise · init_noise_sigma, or x_t entering step k (or its replacement)  [B, C, h, w]
        if resume is None and mask is not None:  # inpainting: x_T or x_{t_s}, then the mask's tensors
            latents, trace.inpainting = masked_start(
                family, scheduler, sites, image, mask, settings.inpaint, settings.strength,
                settings.batch_size, generator, timesteps[0],
            )  # fmt: skip
        elif resume is None and image is not None:  # from a picture: x_{t_s} = add_noise(x0, ε, t_s)
            latents = noised_picture(
                family, scheduler, sites, image, settings.batch_size, generator, timesteps[0]
            )
        elif resume is None:
            rows = cond["embeds"].shape[0]  # B; the Kandinsky prior adds its negative prompt's B rows
            shape = family.latent_shape(rows, settings.height, settings.width)
            latents = sites("latents.init", family.prepare_latents(scheduler, shape, generator, latents))
        else:
            latents = resume.source.steps[start].restart.latents.to(device)
            trace.inpainting = {k: x.to(device) for k, x in resume.source.inpainting.items()}
            if resume.latents is not None:
                where = dict(point="step.latents", step=start, hook="fork(latents=...)")
                latents = check_replacement(resume.latents, latents, **where)
                trace.replacements.append(Replacement("step.latents", start, "fork(latents=...)"))

        # an inpainting U-Net reads the mask and the masked picture's latents beside x_t at every call
        cond, uncond = with_mask_channels(cond, uncond, trace.inpainting, settings.inpaint)

        # 3b. attention capture: the text-attention layers' hook points and maps, for this run only
        capture = attention_capture(family, settings, sites, latents.shape[-2:], resume)

        # 4. extra step kwargs (eta, generator) and the model's per-run kwargs (a distilled model's w)
        step_kwargs = family.step_kwargs(scheduler, generator, settings.eta)
        model_kwargs = family.model_kwargs(settings.guidance_scale, latents) | family.guider_kwargs(
            settings.guider
        )

        # 5. the denoising loop (the layers' own attention processors come back when it ends)
        with capture.installed() if capture is not None else nullcontext():
            latents = yield from denoise(
                family, scheduler, sites, trace, settings, cond, uncond, latents, start,
                step_kwargs, model_kwargs, generator, settings.restart, progress, capture, guider,
            )  # fmt: skip

        # 6. decode
        trace.final_latents = latents  # [B, C, h, w], full precision
        if settings.decode:
            sites("decode.image", family.decode(latents))  # [B, 3, H, W]
        trace.status, trace.message = "complete", None
    return trace


def denoise(
    family: Family,
    scheduler: SchedulerMixin,
    sites: Sites,
    trace: Trace,
    settings: RunSettings,
    cond: Conditioning,
    uncond: Conditioning | None,
    latents: torch.Tensor,
    start: int,
    step_kwargs: dict[str, Any],
    model_kwargs: dict[str, Any],
    generator: torch.Generator | None,
    make_restart: bool,
    progress: bool,
    capture: AttentionCapture | None = None,
    guider: Guider | None = None,
) -> Generator[int, None, torch.Tensor]:
    """5. Steps ``start``..N−1: one model call per step (both branches batched with guidance on);
    yields each step's index when it is recorded, returns x_0's latents."""
    timesteps = loop_timesteps(scheduler, settings, family.loop_timesteps(scheduler))
    w, do_cfg = settings.guidance_scale, uncond is not None
    n_steps = settings.inference_steps_run  # N, less the steps a run from a picture skips
    second_order = hasattr(scheduler, "state_in_first_order")
    with tqdm(total=len(timesteps) - start, disable=not progress, desc="denoising") as bar:
        for i in range(start, len(timesteps)):
            t = timesteps[i]
            # 5.1 restart point, then x_t and the token embeddings enter the step
            restart = None
            if make_restart:
                generator_state = generator.get_state() if generator is not None else None
                guider_state = guider.state() if guider is not None and guider.stateful else None
                restart = RestartPoint(latents, snapshot(scheduler), generator_state, guider_state)
            stage = (
                ("first_order" if scheduler.state_in_first_order else "second_order")
                if second_order
                else None
            )
            sites.begin_step(i, float(t))
            latents = sites("step.latents", latents)  # [B, C, h, w]
            step_cond = {**cond, "embeds": sites("step.prompt.cond", cond["embeds"])}  # embeds [B, T, D]
            step_uncond = None
            if do_cfg:
                step_uncond = {**uncond, "embeds": sites("step.prompt.uncond", uncond["embeds"])}

            # 5.2 the model: ε_u and ε_c in one batched call with guidance on, ε_c alone with it off; a
            #     diffusers guider's branches one call each, as a modular pipeline makes them, within its hooks
            around = capture.model_call() if capture is not None else None
            separate = do_cfg and guider is not None and guider.separate_branches
            if separate:
                guider.begin(i, n_steps, float(t), w)
            per_call = (lambda: guider.bracket(family.model)) if separate else None
            eps_cond, eps_uncond, extra = predict_branches(
                family, scheduler, latents, t, step_cond, step_uncond, model_kwargs, around, separate, per_call
            )  # [B, C, h, w] each; extra: e.g. a learned variance (unguided)  # fmt: skip
            if do_cfg:
                eps_cond = sites("step.model.cond", eps_cond)
                eps_uncond = sites("step.model.uncond", eps_uncond)
                if guider is None:
                    eps_guided = guide(eps_cond, eps_uncond, w)  # [B, C, h, w]
                else:  # a guidance method: its intermediates are hook points (step.guider.*)
                    if guider.needs_perturbed():  # PAG, SLG, SEG: the cond branch again, the model perturbed
                        perturbed = guider.perturbed(family, scheduler, latents, t, step_cond, model_kwargs)
                        guider.perturbed_prediction = sites("step.guider.perturbed", perturbed)
                    elsewhere = predictor_at(family, scheduler, step_cond, step_uncond, model_kwargs)
                    where = GuidanceStep(i, n_steps, float(t), sites, latents, scheduler, elsewhere)
                    eps_guided = guider(eps_cond, eps_uncond, w, where)
            else:
                eps_guided = sites("step.model.cond", eps_cond)
            eps_guided = sites("step.guidance", eps_guided)  # [B, C, h, w]

            # 5.3 x̂0 = a·x_t + b·ε̂, from the family's reading of the output at this step's noise level
            level = family.noise_level(scheduler, t)
            pred_x0 = pred_x0_from(latents, eps_guided, level)  # [B, C, h, w]
            hooked_x0 = sites("step.pred_x0", pred_x0)
            x0_replaced = hooked_x0 is not pred_x0
            if x0_replaced:  # move the scheduler toward the new x̂0: ε̂ = (x̂0 − a·x_t) / b
                if level.b == 0.0:
                    raise ValueError(
                        f"cannot convert a replaced x̂0 back to a model output at step {i} (b = 0)"
                    )
                eps_guided = model_output_from(hooked_x0, latents, level).to(eps_guided.dtype)
                sites.current["step.guidance"] = eps_guided
                sites.pending.append(
                    Replacement("step.guidance", i, "(converted from replaced step.pred_x0)")
                )

            # 5.4 scheduler step: x_t → x_{t−1}
            scheduler_input = family.scheduler_input(scheduler, eps_guided, extra)  # ε̂ (and the extra part)
            at_step = family.step_kwargs_at(scheduler, i)  # e.g. UnCLIP's prev_timestep
            if guider is not None and guider.sampler_stage:  # CFG++: guidance in the update itself
                active = do_cfg and guider.active(i, n_steps)
                out = guider.sampler_step(
                    scheduler, t, latents, eps_guided, eps_uncond if do_cfg else None, active
                )
            else:
                out = scheduler.step(scheduler_input, t, latents, **step_kwargs, **at_step, return_dict=True)
            scheduler_x0 = getattr(out, "pred_original_sample", None)
            if scheduler_x0 is not None and not x0_replaced:
                sites.current["step.pred_x0"] = scheduler_x0  # the scheduler's own x̂0 where it returns one
            next_latents = through_sites(sites, scheduler, out, out.prev_sample)  # LCM: step.denoised
            next_latents = sites("step.next", next_latents)  # [B, C, h, w]
            if settings.inpaint == "blend":  # inpainting, a regular U-Net: the known region put back
                next_latents = blend(scheduler, sites, next_latents, trace.inpainting, timesteps, i)

            # 5.5 the step is finished: record it, with its attention maps  "cond@16x16": [B, T, 16, 16]
            maps = {} if capture is None else trace.keep_maps(capture.finish_step())
            finished = FinishedStep(i, float(t), level, scheduler, StepTensors(sites.current))
            scalars = read_scalars(STEP_SCALARS + family.step_scalars, finished)  # e.g. the scheduler's σ
            trace.steps.append(
                StepRecord(
                    i, float(t), stage, level, trace.keep_tensors(sites.current), restart, maps, scalars
                )
            )
            if capture is not None and i == start:
                recorded, resolutions = trace.run_settings, capture.layers_by_resolution()
                trace.run_settings = recorded.replace(
                    attention={**recorded.attention, "resolutions": resolutions}
                )
            trace.replacements.extend(sites.pending)
            latents = next_latents
            bar.update()
            yield i  # the caller may stop here, between steps (closing the generator)
    sites.end_step()
    return latents
