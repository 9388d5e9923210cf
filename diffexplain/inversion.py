"""DDIM inversion: DDIM run backwards, from a picture's latents x0 up to x_T, so that a plain DDIM run
from that x_T draws the picture again (Song et al., DDIM, eq. 13 as an ODE; Mokady et al., Null-text
inversion, section 3). The backward update is diffusers' ``DDIMInverseScheduler``, as
``StableDiffusionDiffEditPipeline.invert`` and ``StableDiffusionPix2PixZeroPipeline.invert`` use it; the
loop that runs it is the package's own (``loop.loop_steps``), so the backward run is an ordinary trace:
hook points, x̂0 per step, forks.

Notation (``diffexplain.names``): N steps, r = T_train / N, t_0 < t_1 < … < t_{N−1} the inverse timesteps
(the DDIM run's, reversed), ε̂ the guided model output, ᾱ_{t} with ᾱ_{t<0} = 1 (``set_alpha_to_one``)
or ᾱ_0::

    inversion step j:  x_{t_j − r}  →  x_{t_j}
        ε̂   = ε_θ(x_{t_j − r}, t_j)            the model at the level it goes to: the approximation
        x̂0  = (x_{t_j − r} − √(1 − ᾱ_{t_j − r})·ε̂) / √ᾱ_{t_j − r}        (v-prediction: its own x̂0, ε̂)
        x_{t_j} = √ᾱ_{t_j}·x̂0 + √(1 − ᾱ_{t_j})·ε̂
    reconstruction:    a DDIM run (η = 0) from x_T = x_{t_{N−1}}, the same prompt, steps and w
    error e_i          = ‖x^{rec} after step i − x^{inv} at that level‖ / ‖x^{inv} at that level‖
                         (e_{N−1}: the reconstructed x0 against the picture's x0)

x0 is the VAE posterior's mean · scaling_factor (deterministic). Guidance off (w = 1) inverts best; with
w > 1 the two directions drift apart (what null-text inversion corrects).

Flow-matching families (SD3, Flux) invert by flow reversal instead (``diffexplain.flow_inversion``): Euler
on the reversed σ schedule, from σ = 0 to 1, and reconstruction by flow-matching Euler; the rest (x0, the
trace, e_i) is as above.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.families.sd3 import FlowMatching
from diffexplain.img2img import PictureInput, picture_pixels
from diffexplain.scheduler_state import effective_config, names_for, scheduler_by_name

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

FAMILIES = ("sd", "sd3", "flux")
"""The families that invert: SD's (a U-Net predicting ε or v on DDPM's ᾱ schedule: DDIM inversion) and the
flow-matching ones (flow reversal), each with a VAE."""

INVERSE_SCHEDULERS = ("DDIMInverseScheduler", "FlowMatchEulerInverseScheduler")
"""The scheduler classes of an inversion's trace (``reconstruct`` takes those traces)."""

ERROR_SCALAR = "reconstruction_error"
"""The per-step number a reconstruction trace records (``record.scalars``): e_i above."""


@dataclass(frozen=True)
class Reconstruction:
    """A DDIM run from an inversion's x_T, and how far each of its steps is from the inversion's path."""

    trace: Trace  # the forward DDIM run; each step's scalars hold ERROR_SCALAR
    errors: tuple[float, ...]  # e_i, one per step; the last is the reconstructed x0's

    @property
    def final_error(self) -> float:
        """‖x0^{rec} − x0‖ / ‖x0‖: the reconstructed latents against the picture's."""
        return self.errors[-1]


def inverse_scheduler(explainer: Explainer) -> Any:
    """``DDIMInverseScheduler`` on the config of the explainer's DDIM (its betas, spacing, offset and
    prediction type, from the scheduler it was made with); for flow matching, flow reversal's
    ``FlowMatchEulerInverseScheduler``."""
    from diffusers import DDIMInverseScheduler

    if isinstance(explainer.family, FlowMatching):
        from diffexplain import flow_inversion  # diffusers' flow-matching Euler imports scipy: on use

        return flow_inversion.inverse_scheduler(explainer)

    base = explainer._base_scheduler_config  # noqa: SLF001 - what set_scheduler("ddim") builds on
    ddim = scheduler_by_name("ddim", base, names_for(base, explainer.family.scheduler_names))
    takes = inspect.signature(DDIMInverseScheduler.__init__).parameters  # not DDIM's thresholding
    return DDIMInverseScheduler.from_config(
        {k: v for k, v in effective_config(ddim.config).items() if k in takes}
    )


def invert(
    explainer: Explainer,
    image: PictureInput,
    prompt: str | list[str],
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    **run: Any,
) -> Trace:
    """The trace of DDIM run backwards from ``image``'s latents: ``latents.init`` is x0, step j takes
    x_{t_j − r} to x_{t_j}, and ``final_latents`` is x_T, the start of a DDIM run that draws the picture
    again (``reconstruct``). ``run``: more of ``Explainer.run``'s arguments (hooks, keep, negative_prompt...)."""
    family = explainer.family
    if family.name not in FAMILIES or family.vae_adapter() is None:
        raise ValueError(
            "invert: inversion is for the Stable Diffusion 1.x / 2.x family (DDIM; and the embedded default "
            f"model), SD3 and Flux (flow reversal), with a VAE; this Explainer holds a {family.label} model"
        )
    flow = isinstance(family, FlowMatching)
    prediction = explainer.scheduler.config.get("prediction_type")
    if not flow and prediction == "flow_prediction":
        raise ValueError(
            "invert: this U-Net predicts a flow velocity on flow sigmas (the embedded flow model): DDIM "
            "inversion needs ε or v, and flow reversal is for SD3 and Flux so far; invert with "
            "load_default() (the same parts in the ε dialect)"
        )
    if not flow and prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"invert: DDIM inversion needs a model that predicts ε or v, not {prediction!r}")
    pixels = picture_pixels(image, family.vae_scale_factor, family.size_multiple())  # [B_img, 3, H, W]
    model, adapter = family.model, family.vae_adapter()
    with torch.no_grad():  # x0 = the posterior's mean · scaling_factor  [B_img, C, h, w]
        x0 = adapter.encode(pixels.to(device=model.device, dtype=model.dtype)).to(model.dtype)
    rows = 1 if isinstance(prompt, str) else len(prompt)
    if x0.shape[0] not in (1, rows):
        raise ValueError(
            f"image holds {x0.shape[0]} pictures for {rows} prompts: give one, or one per prompt"
        )
    backward = copy.copy(explainer).set_scheduler(inverse_scheduler(explainer))  # the explainer unchanged
    trace = backward.run(
        prompt,
        latents=x0.repeat(rows // x0.shape[0], 1, 1, 1),  # x0 · init_noise_sigma (1)  [B, C, h, w]
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=pixels.shape[-2],
        width=pixels.shape[-1],
        seed=run.pop("seed", 0),  # DDIM inverted draws nothing: the seed is for the record
        decode=run.pop("decode", False),
        **run,
    )
    explainer.last_trace = trace
    return trace


def reconstruct(explainer: Explainer, inversion: Trace, **run: Any) -> Reconstruction:
    """A DDIM run (η = 0) from ``inversion``'s x_T with its prompt, steps and guidance, and e_i per step
    (recorded in each step's scalars as ``ERROR_SCALAR``); a flow reversal's runs flow-matching Euler.
    ``run``: more of ``Explainer.run``'s arguments; the family's own run settings are the inversion's."""
    from diffusers import DDIMScheduler

    settings = inversion.run_settings
    kind = settings.scheduler.get("class")
    if kind not in INVERSE_SCHEDULERS or inversion.final_latents is None:
        raise ValueError("reconstruct: pass the finished trace of explainer.invert(...)")
    config = settings.scheduler["config"]
    if kind == "FlowMatchEulerInverseScheduler":
        from diffexplain import flow_inversion

        scheduler = flow_inversion.forward_scheduler(config)
    else:
        scheduler = DDIMScheduler.from_config(effective_config(config))
    forward = copy.copy(explainer).set_scheduler(scheduler)
    run = {**settings.options, **run}  # e.g. max_sequence_length, as inverted
    trace = forward.run(
        settings.prompt,
        negative_prompt=settings.negative_prompt,
        latents=inversion.final_latents,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        height=settings.height,
        width=settings.width,
        seed=run.pop("seed", 0),
        **run,
    )
    explainer.last_trace = trace
    n = len(inversion.steps)
    if any(r.restart is None for r in (*inversion.steps, *trace.steps)):
        raise ValueError("reconstruct: both runs need their restart points (restart=True) to be compared")
    errors = []
    for i, record in enumerate(trace.steps):  # after step i: the level inversion step N − 1 − i started at
        after = trace.final_latents if i == len(trace) - 1 else trace.steps[i + 1].restart.latents
        path = inversion.steps[n - 1 - i].restart.latents
        error = float((after - path).norm() / path.norm())
        record.scalars[ERROR_SCALAR] = error
        errors.append(error)
    return Reconstruction(trace, tuple(errors))
