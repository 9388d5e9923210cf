"""The hook-point table, the name lookups and the notation used everywhere in diffexplain.

Notation (one scheme in code, docs and widgets)::

    x_t        latents            the noisy sample entering step t          [B, C, h, w]
    x_T        latents.init       the starting Gaussian noise (times the scheduler's init_noise_sigma)
    ε_c        eps_cond           the denoiser's output with the prompt     [B, C, h, w]
    ε_u        eps_uncond         its output with the negative/empty prompt
    Δ          delta              ε_c − ε_u, what the text adds
    w          guidance_scale     classifier-free guidance scale (w ≤ 1: guidance off, one model call)
    ε̂          eps_guided         ε_u + w·(ε_c − ε_u)
    x̂0         pred_x0            the model's current guess of the clean sample
    ᾱ_t        alpha_bar          cumulative signal fraction; x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
    σ_t        sigma              noise level in the "variance exploding" view, σ² = (1−ᾱ)/ᾱ
    x_{t−1}    next_latents       the scheduler's output, the latents of the next step
    s          strength           img2img: the share of the schedule run from a noised picture (0, 1]
    m          mask               inpainting: 1 where the model paints, 0 where the picture stays

"ε" names the model output whatever it predicts: noise ε, v (v-prediction) or a flow velocity
v = ε − x0 (SD3, Flux); each family's adapter derives x̂0 from it accordingly.

Step numbers are never part of a name: filter hooks by step with ``steps=``. The table below is the
loop's own; each model family adds its points (``Explainer.hook_points()`` lists them all).
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HookPoint:
    """One named place in the loop where a hook may read or replace a tensor.

    Declaring a point is one entry: the loop's in ``HOOK_POINTS`` (then one ``sites(name, x)`` call where
    the loop has the tensor), a family's in its ``extra_points``. A *derived* point says how to compute
    its tensor from the step's earlier ones (``derive``, reading ``ctx.current``) and after which point
    (``after``): the loop then calls it there by itself, with no code of its own. The docs table
    (docs/hook-points.md) and the trace files follow from the declarations.
    """

    name: str
    tensor: str  # what the tensor is, in words
    shape: str  # its shape, in the notation above
    per_step: bool  # True: called once per model evaluation; False: once per run
    cfg_only: bool = False  # True: only computed with guidance on (the unconditional branch)
    heavy: bool = False  # True: large; not kept unless asked for by name in keep=
    derive: Callable[[Mapping[str, Any]], Any] | None = None  # a derived point's tensor, from ctx.current
    after: str | None = None  # a derived point is called right after this point


HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint("prompt.cond", "text token embeddings of the prompt", "[B, T, D]", False),
    HookPoint(
        "prompt.uncond", "text token embeddings of the negative (or empty) prompt", "[B, T, D]", False, True
    ),
    HookPoint("latents.init", "x_T, the starting noise, scaled by init_noise_sigma", "[B, C, h, w]", False),
    HookPoint("step.latents", "x_t, the latents entering the step", "[B, C, h, w]", True),
    HookPoint("step.prompt.cond", "prompt embeddings fed to the model at this step", "[B, T, D]", True),
    HookPoint(
        "step.prompt.uncond",
        "negative-prompt embeddings fed to the model at this step",
        "[B, T, D]",
        True,
        True,
    ),
    HookPoint("step.model.cond", "ε_c, the model output with the prompt", "[B, C, h, w]", True),
    HookPoint(
        "step.model.uncond",
        "ε_u, the model output without the prompt (CFG on only)",
        "[B, C, h, w]",
        True,
        True,
    ),
    HookPoint("step.guidance", "ε̂ = ε_u + w·(ε_c − ε_u), the guided model output", "[B, C, h, w]", True),
    HookPoint("step.pred_x0", "x̂0, the current guess of the clean sample", "[B, C, h, w]", True),
    HookPoint("step.next", "x_{t−1}, the scheduler's output for the next step", "[B, C, h, w]", True),
    HookPoint(
        "decode.image",
        "the decoded image in [-1, 1] (the VAE's output, or x_0 in pixel space)",
        "[B, 3, H, W]",
        False,
    ),
)
"""Every hook point of the loop itself, in the order the loop reaches them (families add theirs)."""

HOOK_NAMES: tuple[str, ...] = tuple(p.name for p in HOOK_POINTS)
"""The names of the loop's hook points."""

RENAMED: dict[str, str] = {
    "step.unet.cond": "step.model.cond",
    "step.unet.uncond": "step.model.uncond",
}
"""Old names that still work (with a ``DeprecationWarning``): old → new."""


_DECLARED: dict[str, HookPoint] = {}
"""Hook points that model families add to the loop's, declared once by each family's class
(``Family.__init_subclass__`` calls ``declare_points``): what a ``Hook`` may name before it meets a model."""


def declare_points(points: Iterable[HookPoint]) -> None:
    """Declare a family's own hook points (names the loop does not have); a name declared twice keeps its first."""
    for point in points:
        if point.name not in HOOK_NAMES:
            _DECLARED.setdefault(point.name, point)


IMAGE_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "image.input",
        "the picture (img2img) in [-1, 1], as the VAE reads it (B = 1: one for every prompt)",
        "[B, 3, H, W]",
        False,
    ),
    HookPoint(
        "image.latents",
        "x0 of the picture: a draw from the VAE's posterior, shifted and scaled as the family's VAE",
        "[B, C, h, w]",
        False,
    ),
    HookPoint(
        "image.noise", "ε, the noise that noises the picture to the first timestep", "[B, C, h, w]", False
    ),
)
"""The points of a run that starts from a picture (``run(image=...)``), in the order it reaches them, just
before ``latents.init`` (there: the noised picture); a run from noise has none (``with_image_points``)."""

declare_points(IMAGE_POINTS)


INPAINT_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "image.mask",
        "m, the mask at latent size: 1 where the model paints, 0 where the picture stays (inpainting)",
        "[B, 1, h, w]",
        False,
    ),
    HookPoint(
        "image.masked_latents",
        "the latents of the picture with its masked region blacked out (an inpainting U-Net's input)",
        "[B, C, h, w]",
        False,
    ),
)
"""The run-level points of an inpainting run (``run(image=..., mask_image=...)``), right after
``latents.init``, where the pipeline prepares them."""

BLEND_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "step.inpaint.known",
        "the picture's latents noised to the next step's level (x0 itself after the last step)",
        "[B, C, h, w]",
        True,
    ),
    HookPoint(
        "step.inpaint.blend",
        "(1 − m)·known + m·x_{t−1}: the scheduler's output with the known region put back",
        "[B, C, h, w]",
        True,
    ),
)
"""The per-step points of inpainting with a regular U-Net (``inpaint="blend"``), right after ``step.next``:
the blend is the latents of the next step."""

declare_points((*INPAINT_POINTS, *BLEND_POINTS))


def with_image_points(
    points: tuple[HookPoint, ...], strength: float | None, inpaint: str | None = None
) -> tuple[HookPoint, ...]:
    """``points`` with ``IMAGE_POINTS`` before ``latents.init`` for a run from a picture (``strength`` set);
    inpainting (``inpaint`` set) adds ``INPAINT_POINTS`` after it, and ``BLEND_POINTS`` after ``step.next``
    with a regular U-Net (``inpaint="blend"``)."""
    if strength is None:
        return points
    names = [p.name for p in points]
    at = names.index("latents.init") if "latents.init" in names else 0
    points = (*points[:at], *IMAGE_POINTS, *points[at:])
    if inpaint is not None:  # after latents.init
        at += len(IMAGE_POINTS) + ("latents.init" in names)
        points = (*points[:at], *INPAINT_POINTS, *points[at:])
    if inpaint == "blend":
        at = [p.name for p in points].index("step.next") + 1
        points = (*points[:at], *BLEND_POINTS, *points[at:])
    return points


def all_hook_names() -> tuple[str, ...]:
    """The loop's hook names, then every declared family's own."""
    return HOOK_NAMES + tuple(_DECLARED)


def current_name(name: str, *, warn: bool = True) -> str:
    """``name`` with a deprecated prefix renamed (``step.unet.cond`` → ``step.model.cond``), warning once per call."""
    for old_prefix, new_prefix in (("step.unet.", "step.model."),):
        if name.startswith(old_prefix):
            new = new_prefix + name.removeprefix(old_prefix)
            if warn:
                warnings.warn(
                    f"hook point {name!r} was renamed {new!r} (the model may be a transformer); use {new!r}",
                    DeprecationWarning,
                    stacklevel=3,
                )
            return new
    return name


def unknown_name_message(what: str, name: str, valid: Iterable[str]) -> str:
    """ "unknown hook point 'x'. Did you mean 'y'? Valid names: ..." (the one close-match message)."""
    valid = tuple(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid names: {', '.join(valid)}."


def resolve_names(pattern: str, names: Iterable[str] = HOOK_NAMES) -> tuple[str, ...]:
    """Names in ``names`` matching an exact name or a glob pattern; ``ValueError`` with close names if none.

    Deprecated names (``step.unet.*``) resolve to their new names with a ``DeprecationWarning``.
    """
    names = tuple(names)
    pattern = current_name(pattern)
    if pattern in names:
        return (pattern,)
    matches = tuple(n for n in names if fnmatch.fnmatchcase(n, pattern))
    if matches:
        return matches
    raise ValueError(unknown_name_message("hook point", pattern, names))


def hook_point(name: str, points: Iterable[HookPoint] = HOOK_POINTS) -> HookPoint:
    """The hook point called ``name`` among ``points`` (default: the loop's); ``ValueError`` if unknown."""
    points = tuple(points)
    name = current_name(name)
    for point in points:
        if point.name == name:
            return point
    raise ValueError(unknown_name_message("hook point", name, (p.name for p in points)))


def markdown_table(points: Iterable[HookPoint]) -> str:
    """The hook-point table of docs/hook-points.md, made from the declarations
    (``python scripts/docs_tables.py`` writes it there; a docs test checks that it is current)."""
    rows = ["| name | tensor | shape | called |", "|---|---|---|---|"]
    for p in points:
        called = "every step" if p.per_step else "once per run"
        rows.append(f"| `{p.name}` | {p.tensor} | {p.shape} | {called} |")
    return "\n".join(rows)
