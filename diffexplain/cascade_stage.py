"""One stage of a cascade run on its own, on an input given by hand (``Cascade.run_stage``).

A later stage is conditioned on what the stage before it made. ``run_stage`` takes that input as the
stage's diffusers pipeline takes it, and runs the stage exactly as a full cascade run would (same seed,
same generator, same draws), so the stage II of a cascade run and ``run_stage("II", ..., image=stage I's
picture)`` are equal bit for bit:

- a stage conditioned on a picture (DeepFloyd IF stage II, ``IFSuperResolutionPipeline``): ``image=``, a
  [B, 3, h, w] tensor in [-1, 1] or a PIL image (or a list of B of them);
- a stage that draws from image embeddings (Kandinsky 2.2's decoder, ``KandinskyV22Pipeline``):
  ``image_embeds=`` and ``negative_image_embeds=``, [B, D] each (or lists of [1, D] tensors). An image
  variation (the CLIP embedding of a picture of one's own) or an interpolation between two embeddings
  goes in here.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from diffexplain import checks
from diffexplain.cascade_hooks import INPUT_POINT, StageHooks, split_hooks
from diffexplain.jobs import Job

if TYPE_CHECKING:
    from diffexplain.cascade import Cascade
    from diffexplain.explainer import Explainer
    from diffexplain.families.base import Family

PICTURE = (
    "a [B, {c}, h, w] tensor in [-1, 1] (e.g. stage I's trace.final_latents, or a cascade trace's "
    "trace['{stage}.input']) or a PIL image (or a list of B of them), as IFSuperResolutionPipeline takes"
)
EMBEDDINGS = (
    "a [B, {d}] tensor (image_embeds and negative_image_embeds alike, as KandinskyV22Pipeline takes them: "
    "e.g. KandinskyV22PriorPipeline's outputs, or a cascade trace's trace['{stage}.input'][0] and [1])"
)


def start_stage(
    cascade: Cascade,
    stage: str,
    prompt: str | list[str],
    *,
    image: Any = None,
    image_embeds: Any = None,
    negative_image_embeds: Any = None,
    negative_prompt: str | list[str] = "",
    seed: int | None = None,
    hooks: StageHooks = None,
    progress: bool | None = None,
    settings: dict[str, Any],
) -> Job:
    """``Cascade.run_stage`` as a ``Job`` (one loop step per ``advance()``); everything checked now."""
    if stage not in cascade.stages:
        raise ValueError(f"stage={stage!r}: expected one of {', '.join(cascade.names)}")
    explainer = cascade.stages[stage]
    checks.check_prompt(prompt)
    for key, why in (
        ("generator", "the stage's generator is seeded with seed=, as in a cascade run"),
        ("latents", "x_T is drawn from seed=, as in a cascade run"),
    ):
        if key in settings:
            raise TypeError(f"run_stage({stage!r}, ...) takes no {key}=: {why}")
    seed = secrets.randbits(63) if seed is None else checks.check_seed(seed)
    loop_hooks, input_hooks = split_hooks(hooks, cascade.point_names())
    others = [n for n in cascade.names if n != stage and (loop_hooks[n] or input_hooks[n])]
    if others:
        raise ValueError(
            f"hooks= holds hooks of stage {', '.join(others)}: run_stage({stage!r}, ...) runs stage "
            f"{stage} alone; name its hooks '{stage}.<point>'"
        )
    if input_hooks[stage]:
        raise ValueError(
            f"hook '{stage}.{INPUT_POINT}': run_stage takes stage {stage}'s input as an argument, so nothing "
            "passes between stages to hook: change the input before passing it"
        )
    batch = 1 if isinstance(prompt, str) else len(prompt)
    received = stage_input(
        stage, explainer.family, batch, image=image, image_embeds=image_embeds, negative=negative_image_embeds
    )
    progress = cascade.progress if progress is None else progress
    common = dict(negative_prompt=negative_prompt, hooks=loop_hooks[stage], progress=progress)
    if received is None:  # a stage that starts from the prompt alone: as the first stage of a run
        return explainer.start_run(prompt, seed=seed, **common, **settings)
    return start_on_input(explainer, received, prompt, seed, common, settings)


def start_on_input(
    explainer: Explainer,
    received: torch.Tensor,
    prompt: str | list[str],
    seed: int,
    common: dict[str, Any],
    settings: dict[str, Any],
) -> Job:
    """A stage's run on what it receives (``received``: a picture, or the embeddings [2, B, D]), in a cascade
    or alone: ``start_run`` with ``stage_input``, so that x_T and the family's conditioning are drawn from
    the generator seeded with ``seed``, in the pipeline's order, as the loop starts.
    ``common``: the cascade's ``negative_prompt``, ``hooks`` and ``progress``."""
    return explainer.start_run(prompt, seed=seed, stage_input=received, **common, **settings)


def stage_input(
    stage: str, family: Family, batch: int, *, image: Any, image_embeds: Any, negative: Any
) -> torch.Tensor | None:
    """What stage ``stage`` receives, as a cascade passes it: a picture [B, C, h, w], or the embeddings
    [2, B, D] (``[image_embeds, negative_image_embeds]``); None for a stage that takes no input."""
    label = f"stage {stage!r} ({family.label})"
    given = [
        f"{k}="
        for k, v in (("image", image), ("image_embeds", image_embeds), ("negative_image_embeds", negative))
        if v is not None
    ]
    if not hasattr(family, "stage_inputs"):
        if given:
            raise TypeError(
                f"{label} takes no previous stage's output, so no {', '.join(given)}: it starts from the "
                "prompt alone"
            )
        return None
    if hasattr(family, "check_previous"):  # draws from image embeddings, not a picture (Kandinsky)
        if image is not None:
            raise TypeError(
                f"{label} draws from image embeddings, not a picture: pass image_embeds= and "
                f"negative_image_embeds=, {EMBEDDINGS.format(d=family.embedding_dim, stage=stage)}, "
                "instead of image="
            )
        return embeddings_input(label, stage, batch, image_embeds, negative, int(family.embedding_dim))
    if image_embeds is not None or negative is not None:
        raise TypeError(
            f"{label} is conditioned on a picture, not on image embeddings: pass image=, "
            f"{PICTURE.format(c=family.image_channels(), stage=stage)}, instead of "
            f"{' and '.join(g for g in given if g != 'image=')}"
        )
    return picture_input(label, stage, batch, image, family.image_channels())


def picture_input(label: str, stage: str, batch: int, image: Any, channels: int) -> torch.Tensor:
    """``image=`` as a tensor [B, C, h, w] in [-1, 1]; PIL images converted as IFSuperResolutionPipeline does."""
    expected = PICTURE.format(c=channels, stage=stage)
    if image is None:
        raise TypeError(f"{label} is conditioned on the previous stage's picture: pass image=, {expected}")
    if isinstance(image, Image.Image):
        image = [image]
    if isinstance(image, list | tuple) and image and all(isinstance(p, Image.Image) for p in image):
        sizes = sorted({p.size for p in image})
        if len(sizes) > 1:
            raise ValueError(f"image=: the PIL images should all be of one size; got {sizes} (width, height)")
        arrays = [np.asarray(p.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for p in image]
        image = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image=: expected {expected}; got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"image=: expected {expected}; got a tensor of shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image=: expected a floating-point tensor in [-1, 1]; got {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image= holds non-finite values (NaN or inf): expected a picture in [-1, 1]")
    if image.shape[0] != batch:
        raise ValueError(
            f"image= holds {image.shape[0]} picture(s) but the prompt {batch}: one picture per prompt"
        )
    return image


def embeddings_input(
    label: str, stage: str, batch: int, image_embeds: Any, negative: Any, dim: int
) -> torch.Tensor:
    """``image_embeds=`` and ``negative_image_embeds=`` as [2, B, D]; lists concatenated as the pipeline does."""
    expected = EMBEDDINGS.format(d=dim, stage=stage)
    missing = [
        k for k, v in (("image_embeds", image_embeds), ("negative_image_embeds", negative)) if v is None
    ]
    if missing:
        raise TypeError(f"{label} draws from image embeddings: pass {' and '.join(missing)}=, {expected}")
    pair = []
    for name, value in (("image_embeds", image_embeds), ("negative_image_embeds", negative)):
        if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            value = torch.cat(list(value), dim=0)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}=: expected {expected}; got {type(value).__name__}")
        if value.ndim != 2 or value.shape[1] != dim:
            raise ValueError(f"{name}=: expected {expected}; got a tensor of shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name}=: expected a floating-point tensor; got {value.dtype}")
        if value.shape[0] != batch:
            raise ValueError(
                f"{name}= holds {value.shape[0]} embedding(s) but the prompt {batch}: one per prompt (the "
                "decoder reads no text; the prompt labels the run)"
            )
        pair.append(value)
    embeds, negative = pair
    return torch.stack([embeds, negative.to(device=embeds.device, dtype=embeds.dtype)])
