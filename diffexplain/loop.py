"""The denoising loop, in numbered sections that mirror ``StableDiffusionPipeline.__call__``.

Notation (``diffexplain.names``): x_t ``latents``, ε_c ``eps_cond``, ε_u ``eps_uncond``,
w ``guidance_scale``, ε̂ = ε_u + w·(ε_c − ε_u) ``eps_guided``, x̂0 ``pred_x0``, x_{t−1} ``next_latents``.
B batch, T tokens, D text width, C latent channels, h×w latent size, H×W image size.

Each ``sites(name, x)`` call is a hook point: the hooks registered there run in order (each may
return a replacement), the result goes into ``ctx.current`` and, if kept, into the trace.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from diffexplain.hooks import HookContext, HookRunner, Replacement
from diffexplain.noise_levels import model_output_from, noise_level, pred_x0_from
from diffexplain.scheduler_state import fresh_scheduler, snapshot
from diffexplain.trace import RestartPoint, StepRecord, Trace

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from diffexplain.explainer import Explainer


# ---- helpers mirroring StableDiffusionPipeline ------------------------------------------------------
def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str | list[str],
    device: torch.device,
    do_cfg: bool,
    negative_prompt: str | list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings (cond [B, T, D], uncond [B, T, D] or None), as ``StableDiffusionPipeline.encode_prompt``."""
    batch_size = 1 if isinstance(prompt, str) else len(prompt)
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    def embed(text: str | list[str], max_length: int) -> torch.Tensor:
        tokens = tokenizer(
            text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.to(device) if use_mask else None
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    prompt_embeds = embed(prompt, tokenizer.model_max_length)
    dtype = text_encoder.dtype
    prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)  # [B, T, D]
    if not do_cfg:
        return prompt_embeds, None
    if negative_prompt is None or negative_prompt == "":
        uncond_tokens = [""] * batch_size
    elif isinstance(negative_prompt, str):
        uncond_tokens = [negative_prompt] * batch_size
    elif len(negative_prompt) != batch_size:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {batch_size}")
    else:
        uncond_tokens = list(negative_prompt)
    negative_prompt_embeds = embed(uncond_tokens, prompt_embeds.shape[1]).to(dtype=dtype, device=device)
    return prompt_embeds, negative_prompt_embeds  # [B, T, D] each


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Fourier embedding of w − 1 for guidance-distilled U-Nets (``time_cond_proj_dim``), as diffusers."""
    w = w * 1000.0
    half_dim = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=dtype) * -emb)
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def timestep_cond_for(
    unet: Any, guidance_scale: float, batch_size: int, latents: torch.Tensor
) -> torch.Tensor | None:
    """The U-Net's ``timestep_cond`` (only when ``unet.config.time_cond_proj_dim`` is set)."""
    dim = getattr(unet.config, "time_cond_proj_dim", None)
    if dim is None:
        return None
    w = torch.tensor(guidance_scale - 1).repeat(batch_size)
    return guidance_scale_embedding(w, dim, torch.float32).to(device=latents.device, dtype=latents.dtype)


def extra_step_kwargs(
    scheduler: SchedulerMixin, generator: torch.Generator | None, eta: float
) -> dict[str, Any]:
    """``eta`` and ``generator`` for ``scheduler.step``, where its signature accepts them."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


# ---- hook sites ---------------------------------------------------------------------------------------
class Sites:
    """Calls the hooks at each hook point and collects this step's tensors (``ctx.current``)."""

    def __init__(
        self, trace: Trace, hooks: HookRunner, guidance_scale: float, init_noise_sigma: float
    ) -> None:
        self.trace, self.hooks = trace, hooks
        self.guidance_scale, self.init_noise_sigma = guidance_scale, init_noise_sigma
        self.step: int | None = None
        self.timestep: float | None = None
        self.current: dict[str, torch.Tensor] = {}
        self.pending: list[Replacement] = []  # this step's replacement records, committed when it finishes

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run the hooks at ``name`` on ``x`` and return the (possibly replaced) tensor."""
        if self.hooks.has(name):
            record = self.pending.append if self.step is not None else self.trace.replacements.append
            x = self.hooks.apply(name, x, self.step, self._ctx, record)
        self.current[name] = x
        if self.step is None and name in self.trace.kept:
            self.trace.run_tensors[name] = self.trace.store(x)
        return x

    def _ctx(self, name: str) -> HookContext:
        return HookContext(
            name=name,
            step=self.step,
            timestep=self.timestep,
            num_steps=self.hooks.num_steps,
            guidance_scale=self.guidance_scale,
            init_noise_sigma=self.init_noise_sigma,
            current=MappingProxyType(self.current),
            trace=self.trace,
        )

    def begin_step(self, step: int, timestep: float) -> None:
        """Start collecting a new step."""
        self.step, self.timestep = step, timestep
        self.current, self.pending = {}, []

    def end_step(self) -> None:
        """Leave step mode (for run-level points after the loop)."""
        self.step, self.timestep, self.current = None, None, {}


@dataclass
class LoopInputs:
    """Everything the denoising loop (section 5) needs, whether it starts at step 0 or resumes at step k."""

    scheduler: SchedulerMixin  # set up for the run (timesteps set), or restored for a fork
    timesteps: torch.Tensor  # scheduler.timesteps: one entry per model evaluation
    start: int  # first loop step to run
    latents: torch.Tensor  # x_t entering step `start`                 [B, C, h, w]
    prompt_cond: torch.Tensor  # [B, T, D]
    prompt_uncond: torch.Tensor | None  # [B, T, D], None when guidance is off
    guidance_scale: float
    generator: torch.Generator | None
    step_kwargs: dict[str, Any]  # eta / generator for scheduler.step
    timestep_cond: torch.Tensor | None  # for guidance-distilled U-Nets


def denoise(unet: Any, inputs: LoopInputs, sites: Sites, trace: Trace, progress: bool) -> torch.Tensor:
    """5. The denoising loop from ``inputs.start``: one U-Net call per step (two branches batched with CFG on)."""
    scheduler, w = inputs.scheduler, inputs.guidance_scale
    do_cfg = inputs.prompt_uncond is not None
    latents = inputs.latents
    embeds_key: tuple[torch.Tensor, ...] = ()
    encoder_hidden_states = inputs.prompt_cond
    stage_of: Callable[[], str | None] = (
        (lambda: "first_order" if scheduler.state_in_first_order else "second_order")
        if hasattr(scheduler, "state_in_first_order")
        else (lambda: None)
    )
    with tqdm(total=len(inputs.timesteps) - inputs.start, disable=not progress, desc="denoising") as bar:
        for i in range(inputs.start, len(inputs.timesteps)):
            t = inputs.timesteps[i]
            # 5.1 restart point, then x_t and the prompt embeddings enter the step
            generator = inputs.generator
            restart = RestartPoint(latents, snapshot(scheduler), generator.get_state() if generator else None)
            stage = stage_of()
            sites.begin_step(i, float(t))
            latents = sites("step.latents", latents)  # [B, C, h, w]
            prompt_cond = sites("step.prompt.cond", inputs.prompt_cond)  # [B, T, D]
            if do_cfg:
                prompt_uncond = sites("step.prompt.uncond", inputs.prompt_uncond)  # [B, T, D]
                if not embeds_key or embeds_key[0] is not prompt_uncond or embeds_key[1] is not prompt_cond:
                    embeds_key = (prompt_uncond, prompt_cond)
                    encoder_hidden_states = torch.cat([prompt_uncond, prompt_cond])  # [2B, T, D]
            else:
                encoder_hidden_states = prompt_cond  # [B, T, D]

            # 5.2 U-Net: ε_u and ε_c in one batched call with guidance on, ε_c alone with it off
            latent_model_input = torch.cat([latents] * 2) if do_cfg else latents  # [2B or B, C, h, w]
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            noise_pred = unet(
                latent_model_input,
                t,
                encoder_hidden_states=encoder_hidden_states,
                timestep_cond=inputs.timestep_cond,
                return_dict=False,
            )[0]
            if do_cfg:
                eps_uncond, eps_cond = noise_pred.chunk(2)  # [B, C, h, w] each
                eps_cond = sites("step.unet.cond", eps_cond)
                eps_uncond = sites("step.unet.uncond", eps_uncond)
                eps_guided = eps_uncond + w * (eps_cond - eps_uncond)  # [B, C, h, w]
            else:
                eps_cond = sites("step.unet.cond", noise_pred)
                eps_guided = eps_cond
            eps_guided = sites("step.guidance", eps_guided)  # [B, C, h, w]

            # 5.3 x̂0 = a·x_t + b·ε̂, from the scheduler's own noise level at this step
            level = noise_level(scheduler, t)
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
            out = scheduler.step(eps_guided, t, latents, **inputs.step_kwargs, return_dict=True)
            scheduler_x0 = getattr(out, "pred_original_sample", None)
            if scheduler_x0 is not None and not x0_replaced:
                sites.current["step.pred_x0"] = scheduler_x0  # the scheduler's own x̂0 where it returns one
            next_latents = sites("step.next", out.prev_sample)  # [B, C, h, w]

            # 5.5 the step is finished: record it
            record = StepRecord(i, float(t), stage, level, trace.keep_tensors(sites.current), restart)
            trace.steps.append(record)
            trace.replacements.extend(sites.pending)
            latents = next_latents
            bar.update()
    sites.end_step()
    return latents


def decode(explainer: Explainer, latents: torch.Tensor) -> torch.Tensor:
    """6. Latents → image [B, 3, H, W] in [-1, 1]; in pixel space (no VAE) the image is the latents."""
    vae = explainer.vae
    if vae is None:
        return latents
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    return vae.decode(z.to(vae.dtype), return_dict=False)[0]


def prepare_latents(
    scheduler: SchedulerMixin,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
    latents: torch.Tensor | None,
) -> torch.Tensor:
    """x_T: Gaussian noise (or the given latents) times ``scheduler.init_noise_sigma``, as diffusers."""
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        latents = latents.to(device)
    return latents * scheduler.init_noise_sigma


def generate(
    explainer: Explainer,
    trace: Trace,
    hooks: HookRunner,
    *,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None,
    num_inference_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    latents: torch.Tensor | None,
    eta: float,
    generator: torch.Generator | None,
    decode_image: bool,
    progress: bool,
) -> Trace:
    """One full run, sections 1–6 as in ``StableDiffusionPipeline.__call__`` (timesteps first, so hooks know N)."""
    unet, device = explainer.unet, explainer.device
    do_cfg = guidance_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
    batch_size = 1 if isinstance(prompt, str) else len(prompt)

    # 1. timesteps, on a fresh scheduler so runs never leak state into each other
    scheduler = fresh_scheduler(explainer.scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)  # as diffusers' retrieve_timesteps does
    timesteps = scheduler.timesteps
    hooks.num_steps = len(timesteps)
    sites = Sites(trace, hooks, guidance_scale, float(scheduler.init_noise_sigma))

    # 2. encode prompt: cond and (guidance on) uncond embeddings                       [B, T, D] each
    prompt_cond, prompt_uncond = encode_prompt(
        explainer.tokenizer, explainer.text_encoder, prompt, device, do_cfg, negative_prompt
    )
    prompt_cond = sites("prompt.cond", prompt_cond.to(unet.dtype))  # the U-Net's dtype (a no-op when equal)
    if prompt_uncond is not None:
        prompt_uncond = sites("prompt.uncond", prompt_uncond.to(unet.dtype))
    trace.prompt_embeds = {"cond": prompt_cond, **({"uncond": prompt_uncond} if do_cfg else {})}

    # 3. latents: x_T = noise · init_noise_sigma, in the U-Net's dtype                  [B, C, h, w]
    scale = explainer.vae_scale_factor
    shape = (batch_size, unet.config.in_channels, int(height) // scale, int(width) // scale)
    latents = prepare_latents(scheduler, shape, unet.dtype, device, generator, latents)
    latents = sites("latents.init", latents)

    # 4. extra step kwargs (eta, generator) and, for guidance-distilled U-Nets, timestep_cond
    inputs = LoopInputs(
        scheduler=scheduler,
        timesteps=timesteps,
        start=0,
        latents=latents,
        prompt_cond=prompt_cond,
        prompt_uncond=prompt_uncond,
        guidance_scale=guidance_scale,
        generator=generator,
        step_kwargs=extra_step_kwargs(scheduler, generator, eta),
        timestep_cond=timestep_cond_for(unet, guidance_scale, batch_size, latents),
    )

    # 5. denoising loop, then 6. decode
    latents = denoise(unet, inputs, sites, trace, progress)
    return finish(explainer, trace, sites, latents, decode_image)


def finish(
    explainer: Explainer, trace: Trace, sites: Sites, latents: torch.Tensor, decode_image: bool
) -> Trace:
    """6. Keep the final latents, decode them to an image ("decode.image"), mark the trace complete."""
    trace.final_latents = latents  # [B, C, h, w], full precision
    if decode_image:
        sites("decode.image", decode(explainer, latents))  # [B, 3, H, W]
    trace.status, trace.message = "complete", None
    return trace
