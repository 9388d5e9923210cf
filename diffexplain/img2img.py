"""Start from a picture (SDEdit): the loop entered part-way, as the family's img2img pipeline enters it
(``PIPELINES``: ``StableDiffusionImg2ImgPipeline``, its SDXL, SD3 and Flux counterparts).

Notation (``diffexplain.names``): N ``num_inference_steps``, s ``strength``, x0 the picture's latents
(``image.latents``), ε the noise drawn (``image.noise``), t_s the first timestep the loop runs::

    t_start   = Family.entry_step(N, s)              inference steps skipped (settings.entry_step):
              = N − min(⌊N·s⌋, N)                    SD, SDXL
              = ⌊max(N − min(N·s, N), 0)⌋            flow matching (SD3, Flux), in floating point
    timesteps = scheduler.timesteps[t_start·order:]  (order 2 for Heun; set_begin_index(t_start·order))
    x0        = (VAE posterior sample − shift) · scaling_factor   the first draw from the run's generator
                (SDXL: (sample − latents_mean) · scaling_factor / latents_std where its VAE sets them)
    ε         ~ N(0, I)  [B, C, h, w]               the second draw
    x_{t_s}   = Family.add_noise(x0, ε, t_s)        = √ᾱ·x0 + √(1−ᾱ)·ε (σ-space schedulers: x0 + σ·ε;
                                                     flow matching: (1 − σ)·x0 + σ·ε, ``scale_noise``)

``x_{t_s}`` is ``latents.init``: unlike a run from noise it is not scaled by ``init_noise_sigma``. s = 1
runs every step, from the picture noised to the first timestep; a small s changes the picture little.
Flux's latents are drawn and noised unpacked [B, C, h, w]; its transformer call packs them (exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain import checks

if TYPE_CHECKING:
    import PIL.Image
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from diffexplain.families.base import Family
    from diffexplain.settings import RunSettings

PIPELINES = {
    "sd": "StableDiffusionImg2ImgPipeline",
    "sdxl": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Img2ImgPipeline",
    "flux": "FluxImg2ImgPipeline",
    "chroma": "ChromaImg2ImgPipeline",
}
"""The families that start from a picture, and the diffusers pipeline each mirrors bit for bit."""

DEFAULT_STRENGTHS = {"sd": 0.8, "sdxl": 0.3, "sd3": 0.6, "flux": 0.6, "chroma": 0.9}
"""Each family's default s: its img2img pipeline's ``strength`` default."""

PictureInput: TypeAlias = "PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor"
"""What ``run(image=...)`` takes: a PIL image (RGB), a list of them, or a float tensor [B, 3, H, W] / [3, H, W] in [0, 1]."""

DEFAULT_STRENGTH = DEFAULT_STRENGTHS["sd"]  # StableDiffusionImg2ImgPipeline's default
EXPECTED = "a PIL image (mode RGB), a list of them, or a float tensor [B, 3, H, W] or [3, H, W] in [0, 1]"


@dataclass(frozen=True)
class Start:
    """A checked picture to start from: its pixels as the VAE reads them, and where the loop enters."""

    pixels: torch.Tensor  # the picture in [-1, 1], as VaeImageProcessor.preprocess makes it  [B_img, 3, H, W]
    strength: float  # s
    entry_step: int  # t_start, the inference steps skipped

    @property
    def height(self) -> int:
        """H, the picture's height in pixels."""
        return int(self.pixels.shape[-2])

    @property
    def width(self) -> int:
        """W, the picture's width in pixels."""
        return int(self.pixels.shape[-1])


def takes_stage_input(family: Family) -> bool:
    """Whether ``family`` is a later cascade stage (``stage_inputs``): there ``image=`` is the cascade's input,
    which the family's ``run_options`` refuses on its own, naming ``diffexplain.Cascade``."""
    return hasattr(family, "stage_inputs")


def check_start(
    family: Family,
    image: Any,
    strength: Any,
    *,
    height: int | None,
    width: int | None,
    num_inference_steps: int,
    batch_size: int,
) -> Start | None:
    """The checked start of a run from ``image`` (None without one); an error names the argument at fault."""
    if image is None:
        if strength is not None:
            raise ValueError(
                f"strength={strength!r} needs image=: strength says how much of the schedule runs from a "
                "noised picture. Pass image=... (img2img), or leave strength out to start from noise"
            )
        return None
    if family.name not in PIPELINES:
        raise ValueError(
            "image=: starting from a picture (img2img) is for the Stable Diffusion 1.x / 2.x, SDXL, SD3, Flux "
            f"and Chroma families (and the embedded default model) so far; this Explainer holds a {family.label} model"
        )
    if family.vae is None:
        raise ValueError("image=: starting from a picture needs a VAE; this model works in pixel space")
    s = checks.check_float(
        "strength",
        DEFAULT_STRENGTHS[family.name] if strength is None else strength,
        0.0,
        1.0,
        meaning="the share of the schedule that runs; 0 excluded",
    )
    if s == 0.0:
        raise ValueError("strength must be in (0, 1] (the share of the schedule that runs), got 0.0")
    entry = family.entry_step(num_inference_steps, s)  # t_start, as the pipeline's get_timesteps
    if entry >= num_inference_steps:
        raise ValueError(
            f"strength={s:g} with num_inference_steps={num_inference_steps} runs no step: "
            f"raise strength to at least {1 / num_inference_steps:g} or take more steps"
        )
    pixels = picture_pixels(image, family.vae_scale_factor, family.size_multiple())
    rows = pixels.shape[0]
    if rows not in (1, batch_size):
        raise ValueError(
            f"image holds {rows} pictures for {batch_size} prompts: give one picture, or one per prompt"
        )
    for name, given, size in (("height", height, pixels.shape[-2]), ("width", width, pixels.shape[-1])):
        if given is not None and given != size:
            raise ValueError(
                f"{name}={given!r} differs from the image's {name} ({size}): the picture sets the size. "
                f"Leave {name} out, or resize the picture to the size you want"
            )
    return Start(pixels, s, entry)


def picture_pixels(image: Any, scale_factor: int, multiple: tuple[int, str]) -> torch.Tensor:
    """``image`` checked, then preprocessed as the img2img pipeline preprocesses it (``VaeImageProcessor``):
    [B, 3, H, W] in [-1, 1]. Its sides must be multiples of ``multiple`` (the pipeline would crop them)."""
    import PIL.Image
    from diffusers.image_processor import VaeImageProcessor

    images = image if isinstance(image, list) else [image]
    if images and all(isinstance(i, PIL.Image.Image) for i in images):
        modes = sorted({i.mode for i in images} - {"RGB"})
        if modes:
            raise ValueError(
                f"image is a PIL image of mode {modes[0]!r}; expected mode 'RGB': pass image.convert('RGB')"
            )
        sizes = {i.size for i in images}  # (W, H)
        if len(sizes) > 1:
            raise ValueError(f"image: the pictures differ in size ({sorted(sizes)}); give them one size")
        (w, h), rows = sizes.pop(), len(images)
    elif isinstance(image, torch.Tensor):
        h, w, rows = _tensor_size(image)
    else:
        kind = "an empty list" if isinstance(image, list) and not image else type(image).__name__
        raise TypeError(f"image must be {EXPECTED}; got {kind}")
    factor, why = multiple
    if h % factor or w % factor:
        raise ValueError(
            f"image is {w}×{h} pixels (width×height): both sides must be multiples of {factor} ({why}); "
            f"crop or resize it, e.g. to {max(w - w % factor, factor)}×{max(h - h % factor, factor)}"
        )
    pixels = VaeImageProcessor(vae_scale_factor=scale_factor).preprocess(image)
    assert pixels.shape[0] == rows and tuple(pixels.shape[-2:]) == (h, w)  # no resize: the sides fit
    return pixels


def _tensor_size(image: torch.Tensor) -> tuple[int, int, int]:
    """(H, W, B) of a picture tensor; ``ValueError`` unless it is a float [B, 3, H, W] or [3, H, W] in [0, 1]."""
    if not image.is_floating_point():
        raise ValueError(f"image is a tensor of dtype {image.dtype}; expected {EXPECTED}")
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image is a tensor of shape {list(image.shape)}; expected {EXPECTED}")
    if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 1:
        low, high = float(image.min()), float(image.max())
        raise ValueError(
            f"image holds values from {low:g} to {high:g}; expected {EXPECTED} "
            "(a picture in [-1, 1]: pass (image + 1) / 2)"
        )
    return int(image.shape[-2]), int(image.shape[-1]), 1 if image.dim() == 3 else int(image.shape[0])


# ---- in the loop ------------------------------------------------------------------------------------
def loop_timesteps(
    scheduler: SchedulerMixin, settings: RunSettings, timesteps: torch.Tensor | None = None
) -> torch.Tensor:
    """The timesteps the loop runs: all of ``timesteps`` (the family's ``loop_timesteps``; default the
    scheduler's), or, from a picture, those from t_start·order on (the pipeline's ``get_timesteps``). Loop
    step i runs ``loop_timesteps(...)[i]``."""
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    if settings.entry_step is None:
        return timesteps
    return timesteps[settings.entry_step * scheduler.order :]


def enter(scheduler: SchedulerMixin, settings: RunSettings) -> None:
    """Tell a fresh scheduler where a run from a picture enters (``set_begin_index``, where it has one)."""
    if settings.entry_step is not None and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(settings.entry_step * scheduler.order)


def noised_picture(
    family: Family,
    scheduler: SchedulerMixin,
    sites: Callable[[str, torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    timestep: torch.Tensor,
) -> torch.Tensor:
    """x_{t_s}: the picture encoded, repeated to B rows, noised to ``timestep``, as the pipeline's
    ``prepare_latents``; each tensor passes its hook point (``sites``) on the way."""
    model = family.model
    adapter = family.vae_adapter()
    assert adapter is not None  # check_start refuses pixel space
    pixels = sites("image.input", pixels.to(device=model.device, dtype=model.dtype))  # [B_img, 3, H, W]
    x0 = adapter.encode_sample(pixels, generator)  # [B_img, C, h, w]: the first draw
    x0 = torch.cat([x0] * (batch_size // x0.shape[0]), dim=0)  # one picture for every prompt
    x0 = sites("image.latents", x0)  # [B, C, h, w]
    noise = sites(
        "image.noise", randn_tensor(x0.shape, generator=generator, device=model.device, dtype=model.dtype)
    )
    latents = family.add_noise(scheduler, x0, noise, timestep.reshape(1).repeat(batch_size))  # [B, C, h, w]
    return sites("latents.init", latents)
