"""Inpainting: repaint the masked region of a picture, as ``StableDiffusionInpaintPipeline`` does (SDXL:
``StableDiffusionXLInpaintPipeline``, whose default strength is 0.9999 and whose VAE encodes through
``Family.inpaint_vae_adapter``).

Two kinds, chosen by the U-Net (``RunSettings.inpaint``):

- ``"blend"``, a regular U-Net (C input channels): the loop runs as from noise (or from the noised picture,
  s < 1), and after each scheduler step the known region is put back, noised to the next step's level;
- ``"channels"``, an inpainting U-Net (2·C + 1 input channels, 9 for SD): it reads the mask and the
  masked picture's latents beside x_t at every call, and nothing is blended.

Notation (``diffexplain.names``): m the mask at latent size (``image.mask``, 1 where the model paints),
x0 the picture's latents (``image.latents``), ε the noise drawn (``image.noise``), x̃0 the latents of the
picture with the masked region blacked out (``image.masked_latents``), t_i the loop's timesteps::

    pixels m_px = binarize(mask_image)                        1 where mask_image ≥ 0.5   [B, 1, H, W]
    m           = nearest-resize(m_px) to h×w                                         [B, 1, h, w]
    x̃0          = VAE posterior sample of picture · (m_px < 0.5), · scaling_factor
    x_{t_0}     = ε · init_noise_sigma                 (s = 1: from noise, as text-to-image)
                = add_noise(x0, ε, t_0)               (s < 1: as img2img)
    draws       : x0 (blend, or s < 1), then ε, then x̃0   from the run's generator, in that order
    channels    : model input [x_t ; m ; x̃0]                                          [B, 2C + 1, h, w]
    blend       : x_{t_{i+1}} = (1 − m)·add_noise(x0, ε, t_{i+1}) + m·x_{t_{i+1}}^{scheduler}
                  (after the last step: (1 − m)·x0 + m·x_0^{scheduler})

The picture's pixels and the strength are checked by ``diffexplain.img2img`` (``check_start``); unlike
img2img, inpainting's default strength is 1, the pipeline's. The mask's tensors are the trace's restart
state (``trace.inpainting``), so forks and trace files carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffexplain.families.sd import is_inpainting_unet

if TYPE_CHECKING:
    import PIL.Image
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from diffexplain.families.base import Conditioning, Family
    from diffexplain.img2img import Start

PIPELINES = {"sd": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline"}
"""The families that inpaint, and the diffusers pipeline each mirrors bit for bit."""

DEFAULT_STRENGTHS = {"sd": 1.0, "sdxl": 0.9999}
"""Each family's default s with a mask: its inpainting pipeline's (SDXL's starts from the noised picture,
one inference step in from the top for N < 10 000)."""

MaskInput: TypeAlias = "PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor"
"""What ``run(mask_image=...)`` takes: a PIL image (any mode, read as grey), a list of them, or a float
tensor [B, 1, H, W], [1, H, W] or [H, W] in [0, 1]; white (≥ 0.5) is repainted, black kept."""

DEFAULT_STRENGTH = DEFAULT_STRENGTHS["sd"]  # StableDiffusionInpaintPipeline's default
EXPECTED = "a PIL image, a list of them, or a float tensor [B, 1, H, W], [1, H, W] or [H, W] in [0, 1]"
STATE_KEYS = {
    "blend": ("mask", "image_latents", "noise"),
    "channels": ("mask", "masked_image_latents"),
}
"""What each kind needs in ``trace.inpainting`` to run (and fork): per step, the blend or the model input."""


def kind(family: Family) -> str:
    """ "channels" for an inpainting U-Net (2·C + 1 input channels), else "blend"."""
    return "channels" if is_inpainting_unet(family.model) else "blend"


def check_arguments(family: Family, image: Any, mask_image: Any, strength: Any) -> Any:
    """The strength to check for these arguments (``mask_image`` given: 1 by default, the pipeline's);
    an error names the argument at fault: a mask without a picture, inpainting on another family, an
    inpainting U-Net without a mask."""
    unet = family.model if family.name in PIPELINES else None
    if mask_image is None:
        if unet is not None and is_inpainting_unet(unet):
            raise ValueError(
                f"mask_image=: this U-Net is an inpainting U-Net ({unet.config.in_channels} input channels: "
                "x_t, the mask and the masked picture); pass image=... and mask_image=... "
                "(white is repainted), as StableDiffusionInpaintPipeline"
            )
        return strength
    if image is None:
        raise ValueError(
            "mask_image= needs image=: the mask says which region of the picture to repaint. "
            "Pass image=... too, or leave mask_image out"
        )
    if family.name not in PIPELINES:
        raise ValueError(
            "mask_image=: inpainting is for the Stable Diffusion 1.x / 2.x and SDXL families (and the embedded "
            f"default model) so far; this Explainer holds a {family.label} model"
        )
    return DEFAULT_STRENGTHS[family.name] if strength is None else strength


def check_mask(mask_image: Any, start: Start | None, batch_size: int) -> torch.Tensor | None:
    """The mask as the pipeline's mask processor makes it (grey, binarized: 1 where ≥ 0.5) [B_m, 1, H, W];
    None without one. It must have the picture's size, and 1 or B rows."""
    if mask_image is None or start is None:
        return None
    import PIL.Image
    from diffusers.image_processor import VaeImageProcessor

    masks = mask_image if isinstance(mask_image, list) else [mask_image]
    if masks and all(isinstance(m, PIL.Image.Image) for m in masks):
        sizes = {m.size for m in masks}  # (W, H)
        if len(sizes) > 1:
            raise ValueError(f"mask_image: the masks differ in size ({sorted(sizes)}); give them one size")
        (w, h), rows = sizes.pop(), len(masks)
    elif isinstance(mask_image, torch.Tensor):
        mask_image = _mask_tensor(mask_image)
        h, w, rows = int(mask_image.shape[-2]), int(mask_image.shape[-1]), int(mask_image.shape[0])
    else:
        what = (
            "an empty list" if isinstance(mask_image, list) and not mask_image else type(mask_image).__name__
        )
        raise TypeError(f"mask_image must be {EXPECTED}; got {what}")
    if (h, w) != (start.height, start.width):
        raise ValueError(
            f"mask_image is {w}×{h} pixels (width×height) but the image is {start.width}×{start.height}: "
            "give a mask of the picture's size"
        )
    if rows not in (1, batch_size):
        raise ValueError(
            f"mask_image holds {rows} masks for {batch_size} prompts: give one, or one per prompt"
        )
    processor = VaeImageProcessor(do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    return processor.preprocess(mask_image, height=h, width=w)  # as the pipeline's mask_processor


def _mask_tensor(mask: torch.Tensor) -> torch.Tensor:
    """A mask tensor as [B, 1, H, W] (a copy: binarizing writes in place); ``ValueError`` unless it is a
    float [B, 1, H, W], [1, H, W] or [H, W] in [0, 1]."""
    if not mask.is_floating_point():
        raise ValueError(f"mask_image is a tensor of dtype {mask.dtype}; expected {EXPECTED}")
    if mask.dim() not in (2, 3, 4) or (mask.dim() > 2 and mask.shape[-3] != 1):
        raise ValueError(f"mask_image is a tensor of shape {list(mask.shape)}; expected {EXPECTED}")
    if not bool(torch.isfinite(mask).all()) or mask.min() < 0 or mask.max() > 1:
        low, high = float(mask.min()), float(mask.max())
        raise ValueError(f"mask_image holds values from {low:g} to {high:g}; expected {EXPECTED}")
    return mask.reshape(-1, 1, *mask.shape[-2:]).clone()


# ---- in the loop ------------------------------------------------------------------------------------
def masked_start(
    family: Family,
    scheduler: SchedulerMixin,
    sites: Callable[[str, torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    mask: torch.Tensor,
    how: str,
    strength: float,
    batch_size: int,
    generator: torch.Generator | None,
    timestep: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x_{t_0} and the run's inpainting state (``STATE_KEYS[how]``), as the pipeline's ``prepare_latents``
    then ``prepare_mask_latents`` draw and compute them; each tensor passes its hook point on the way."""
    model, adapter = family.model, family.inpaint_vae_adapter()
    assert adapter is not None  # check_start refuses pixel space
    device, dtype = model.device, model.dtype
    pixels = sites("image.input", pixels.to(device=device, dtype=dtype))  # [B_img, 3, H, W]
    shape = family.latent_shape(batch_size, pixels.shape[-2], pixels.shape[-1])
    x0 = None
    if how == "blend" or strength < 1.0:  # the picture's latents: the first draw
        x0 = adapter.encode_sample(pixels, generator)  # [B_img, C, h, w]
        x0 = sites("image.latents", x0.repeat(batch_size // x0.shape[0], 1, 1, 1))  # [B, C, h, w]
    noise = sites("image.noise", randn_tensor(shape, generator=generator, device=device, dtype=dtype))
    if strength == 1.0:  # from noise, as text-to-image
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(x0, noise, timestep.reshape(1).repeat(batch_size))
    latents = sites("latents.init", latents)  # [B, C, h, w]

    masked_pixels = pixels * (mask.to(pixels.device) < 0.5)  # the masked region black  [B_m, 3, H, W]
    h, w = shape[-2:]
    small = torch.nn.functional.interpolate(mask, size=(h, w)).to(device=device, dtype=dtype)
    masked = adapter.encode_sample(masked_pixels.to(device=device, dtype=dtype), generator)  # the last draw
    small = sites("image.mask", small.repeat(batch_size // small.shape[0], 1, 1, 1))  # [B, 1, h, w]
    masked = sites("image.masked_latents", masked.repeat(batch_size // masked.shape[0], 1, 1, 1))
    state = {"mask": small, "masked_image_latents": masked, "image_latents": x0, "noise": noise}
    return latents, {key: state[key] for key in STATE_KEYS[how]}  # type: ignore[misc]


def with_mask_channels(
    cond: Conditioning, uncond: Conditioning | None, state: dict[str, torch.Tensor], how: str | None
) -> tuple[Conditioning, Conditioning | None]:
    """Each branch's model conditioning with the mask and the masked picture's latents beside the prompt,
    for an inpainting U-Net (new dicts: the trace's conditioning stays the prompt's); as is otherwise."""
    if how != "channels":
        return cond, uncond
    extra = {key: state[key] for key in STATE_KEYS["channels"]}  # m [B, 1, h, w], x̃0 [B, C, h, w]
    return {**cond, **extra}, None if uncond is None else {**uncond, **extra}


def blend(
    scheduler: SchedulerMixin,
    sites: Callable[[str, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    state: dict[str, torch.Tensor],
    timesteps: torch.Tensor,
    i: int,
) -> torch.Tensor:
    """After step i's scheduler step: the known region put back, noised to t_{i+1} (x0 after the last
    step), as the pipeline blends for a regular U-Net. ``latents``: the scheduler's output [B, C, h, w]."""
    mask, known = state["mask"], state["image_latents"]  # [B, 1, h, w], [B, C, h, w]
    if i < len(timesteps) - 1:
        known = scheduler.add_noise(known, state["noise"], torch.tensor([timesteps[i + 1]]))
    known = sites("step.inpaint.known", known)  # [B, C, h, w]
    return sites("step.inpaint.blend", (1 - mask) * known + mask * latents)  # [B, C, h, w]
