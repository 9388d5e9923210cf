"""Forks: restart a traced run at loop step k, optionally with changes, re-running only steps k..N−1.

Each step of a trace keeps its restart point: the latents entering the step, a snapshot of the
scheduler's mutable state and the random generator's state. A fork rebuilds the scheduler from
its class and config, restores that snapshot and the generator, copies steps 0..k−1, and runs on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from diffexplain.hooks import HookRunner, Replacement, check_replacement
from diffexplain.loop import LoopInputs, Sites, denoise, extra_step_kwargs, finish, timestep_cond_for
from diffexplain.scheduler_state import restore
from diffexplain.trace import Trace

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer


def fork(trace: Trace, step: int, explainer: Explainer | None = None, **changes: Any) -> Trace:
    """Fork ``trace`` at ``step`` with ``explainer`` (default: the one that made the trace, if attached).

    ``changes`` are those of ``Explainer.fork``: hooks, guidance_scale, prompt, negative_prompt,
    latents, progress. A trace loaded from a file needs ``explainer=``.
    """
    explainer = explainer or trace.explainer
    if explainer is None:
        raise ValueError(
            "this trace has no Explainer attached (was it loaded from a file?): "
            "pass explainer=..., e.g. fork(trace, step, explainer=my_explainer)"
        )
    return explainer.fork(trace, step, **changes)


def _generator(
    settings: dict[str, Any], state: torch.Tensor | None, device: torch.device
) -> torch.Generator | None:
    if state is None:
        return None
    kind = settings.get("generator_device", "cpu")
    generator = torch.Generator(device=device if kind == device.type else kind)
    generator.set_state(state)
    return generator


def resume(
    explainer: Explainer,
    source: Trace,
    step: int,
    hooks: HookRunner,
    *,
    guidance_scale: float | None,
    prompt: str | list[str] | None,
    negative_prompt: str | list[str] | None,
    latents: torch.Tensor | None,
    progress: bool,
) -> Trace:
    """Build the fork's trace and run steps ``step``..N−1 (see ``Explainer.fork``)."""
    from diffexplain.explainer import keep_partial_trace

    n = len(source.steps)
    if not -n <= step < n:
        raise IndexError(f"cannot fork at step {step}: the trace has {n} finished steps (0..{n - 1})")
    k = step % n
    restart = source.steps[k].restart
    if restart is None:
        raise ValueError(f"step {k} of this trace has no restart state, so it cannot be forked")
    device, unet = explainer.device, explainer.unet

    settings = dict(source.settings)
    for key, value in (
        ("guidance_scale", guidance_scale),
        ("prompt", prompt),
        ("negative_prompt", negative_prompt),
    ):
        if value is not None:
            settings[key] = float(value) if key == "guidance_scale" else value
    w = settings["guidance_scale"]
    do_cfg = w > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
    settings["do_cfg"] = do_cfg

    trace = Trace(settings, keep=source.kept, store_dtype=source.store_dtype)
    trace.explainer, trace.forked_from = explainer, k
    trace.steps = list(source.steps[:k])
    trace.replacements = [r for r in source.replacements if r.step is None or r.step < k]
    trace.run_tensors = {name: x for name, x in source.run_tensors.items() if name != "decode.image"}
    explainer.last_trace = trace

    with keep_partial_trace(explainer, trace):
        # 1. the scheduler, restored to its state entering step k
        info = settings["scheduler"]
        scheduler = restore(info["class"], info["config"], restart.scheduler_state, device)
        hooks.num_steps = len(scheduler.timesteps)
        sites = Sites(trace, hooks, w, float(scheduler.init_noise_sigma))

        # 2. prompt embeddings: the original ones, or re-encoded where the prompt changed   [B, T, D]
        prompt_cond = source.prompt_embeds["cond"].to(device)
        prompt_uncond = source.prompt_embeds.get("uncond")
        prompt_uncond = None if prompt_uncond is None else prompt_uncond.to(device)
        if prompt is not None or negative_prompt is not None or (do_cfg and prompt_uncond is None):
            cond, uncond = explainer.encode_prompt(
                settings["prompt"], settings["negative_prompt"], guidance=do_cfg
            )
            prompt_cond = cond if prompt is not None else prompt_cond
            if negative_prompt is not None or prompt_uncond is None:
                prompt_uncond = uncond
        if not do_cfg:
            prompt_uncond = None
        prompt_cond = prompt_cond.to(unet.dtype)  # as in a run: embeddings in the U-Net's dtype
        prompt_uncond = None if prompt_uncond is None else prompt_uncond.to(unet.dtype)
        prompt_cond = sites("prompt.cond", prompt_cond)
        if prompt_uncond is not None:
            prompt_uncond = sites("prompt.uncond", prompt_uncond)
        trace.prompt_embeds = {"cond": prompt_cond, **({"uncond": prompt_uncond} if do_cfg else {})}

        # 3. latents entering step k, or their replacement                               [B, C, h, w]
        x = restart.latents.to(device)
        if latents is not None:
            x = check_replacement(latents, x, point="step.latents", step=k, hook="fork(latents=...)")
            trace.replacements.append(Replacement("step.latents", k, "fork(latents=...)"))

        # 4. the random generator as it was entering step k, and the step kwargs
        generator = _generator(settings, restart.generator_state, device)
        inputs = LoopInputs(
            scheduler=scheduler,
            timesteps=scheduler.timesteps,
            start=k,
            latents=x,
            prompt_cond=prompt_cond,
            prompt_uncond=prompt_uncond,
            guidance_scale=w,
            generator=generator,
            step_kwargs=extra_step_kwargs(scheduler, generator, settings["eta"]),
            timestep_cond=timestep_cond_for(unet, w, x.shape[0], x),
        )

        # 5. the loop from step k, and 6. decode
        final = denoise(unet, inputs, sites, trace, progress)
        return finish(explainer, trace, sites, final, settings.get("decode", True))
