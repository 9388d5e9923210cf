"""Guidance, counted: the same prompt over many seeds at several guidance scales, each picture checked.

One picture cannot show what guidance does; twelve seeds, counted, can. For each guidance scale w a
:class:`Column` holds the pictures of seeds ``s₀ … s₀+n−1``, the attribute checker's verdict on each
(:func:`diffexplain.data.checker.score`, ``all_right``: the right number of objects, each with the right
colour, shape and position) and a diversity measure.

Notation (``diffexplain.names``)::

    ε̂ = ε_u + w·(ε_c − ε_u)      w = 0: ε̂ = ε_u (no prompt)    w = 1: ε̂ = ε_c (guidance off)

The loop turns guidance off for w ≤ 1 (``guidance.guidance_on``): it then runs ε_c alone. A column
at w < 1 is therefore drawn with both branches computed and ``step.guidance`` replaced by
ε_u + w·(ε_c − ε_u), so w = 0 really is the unconditional draw (the empty or negative prompt).

**Diversity** is the mean pairwise pixel distance: for every pair of the column's pictures, the root
mean square of their difference with pixels in [0, 1], averaged over the pairs. 0 means every seed
drew the same picture; the larger it is, the more the seeds' pictures differ (objects moved, other
colours, a light or a dark background). On the default model a column measures about 0.25–0.5.

Verdicts need the checker to understand both the model and the prompt: the model must draw the
shapes dataset (the embedded model, or one made by ``diffexplain train``: ``explainer.vocabulary``)
and the prompt must parse as a scene (:func:`~diffexplain.data.checker.parse_caption`). Otherwise a
column holds pictures and diversity only, and :func:`checker_scene` says why.

    counts = count_seeds(explainer, "a red circle on the left and a blue square on the right",
                         scales=(0, 1, 5), seeds=12, num_inference_steps=10)
    [(c.label, c.right, c.n) for c in counts]    # [("no prompt (w = 0)", 0, 12), ...]
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffexplain.guidance import guidance_on, guide
from diffexplain.hooks import Hook, HookContext
from diffexplain.jobs import drain

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.data.scenes import Scene
    from diffexplain.explainer import Explainer
    from diffexplain.guiders.base import Guider

SWEEP_SCALES: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0)
"""The guidance scales of a w sweep (``sweep``): no prompt, guidance off, then stronger and stronger."""
DEFAULT_SEEDS = 12
MAX_BATCH_ELEMENTS = 4 * 64 * 64
"""Seeds run together in one batch up to this many latent elements: all 12 of the default model's
[4, 16, 16] latents, 4 of a 256-pixel Stable Diffusion's, one at a time at 512 pixels."""


@dataclass(frozen=True)
class Column:
    """One guidance scale over the seeds: the pictures, the checker's verdicts, and how varied they are."""

    guidance_scale: float
    seeds: tuple[int, ...]
    images: tuple[Image.Image, ...]  # one per seed, at the model's own size
    verdicts: (
        tuple[bool, ...] | None
    )  # checker's all_right per picture; None: no checker for this model/prompt
    readings: tuple[str, ...] | None  # what the checker read in each picture, e.g. "red circle left"
    diversity: float  # mean pairwise pixel distance (see the module's docstring)
    method: str | None = None  # the guidance method's label (a guider's), None: ε_u + w·Δ
    saturation: tuple[float, float] | None = None  # (share at the gamut's edge, mean chroma): ``saturation``

    @property
    def n(self) -> int:
        """How many seeds (pictures)."""
        return len(self.images)

    @property
    def right(self) -> int | None:
        """How many pictures the checker scored right (None without a checker)."""
        return None if self.verdicts is None else sum(self.verdicts)

    @property
    def share(self) -> float | None:
        """The share of pictures scored right, 0..1 (None without a checker)."""
        return None if self.verdicts is None else self.right / max(self.n, 1)

    @property
    def label(self) -> str:
        """What this column shows, in words (the guidance method's too, where one was given)."""
        label = scale_label(self.guidance_scale)
        return label if self.method is None else f"{self.method}, {label}"

    @property
    def count_text(self) -> str:
        """E.g. "9 of 12 right" (or "12 pictures" without a checker)."""
        return f"{self.n} pictures" if self.right is None else f"{self.right} of {self.n} right"


def scale_label(guidance_scale: float) -> str:
    """How a column at w is named: "no prompt (w = 0)", "prompt, guidance off (w = 1)", "guidance w = 5"."""
    w = float(guidance_scale)
    if w == 0:
        return "no prompt (w = 0)"
    if w == 1:
        return "prompt, guidance off (w = 1)"
    return f"guidance on (w = {w:g})" if w > 1 else f"w = {w:g}"


def checker_scene(explainer: Explainer, prompt: str) -> tuple[Scene | None, str]:
    """The scene the checker scores pictures against, or None and one line saying why there is none."""
    from diffexplain.data.checker import parse_caption
    from diffexplain.data.vocab import caption_words

    if getattr(explainer, "vocabulary", None) != caption_words():
        return None, (
            "no verdicts: the attribute checker reads the shapes dataset's pictures, and this model "
            "was not trained on them (only the embedded model or one made by `diffexplain train`)"
        )
    try:
        return parse_caption(prompt), ""
    except ValueError as err:
        return None, f"no verdicts: the checker cannot read this prompt as a scene ({err})"


def saturation(images: Sequence[Image.Image | np.ndarray]) -> tuple[float, float]:
    """How saturated the pictures are, over their coloured pixels (chroma = max − min of the channels in
    [0, 1], at least 0.5): the share at the gamut's edge (a channel ≤ 1/255 or ≥ 254/255) and the mean
    chroma. (0, 0) where no pixel is coloured."""
    pixels = np.stack([np.asarray(im, dtype=np.float32)[..., :3] for im in images]) / 255.0
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    coloured = chroma >= 0.5
    if not coloured.any():
        return 0.0, 0.0
    edge = ((pixels <= 1 / 255) | (pixels >= 254 / 255)).any(axis=-1) & coloured
    return float(edge.sum() / coloured.sum()), float(chroma[coloured].mean())


def diversity(images: Sequence[Image.Image | np.ndarray]) -> float:
    """Mean pairwise pixel distance: RMS of each pair's difference (pixels in [0, 1]), averaged over pairs."""
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    if len(arrays) < 2:
        return 0.0
    pairs = itertools.combinations(arrays, 2)
    return float(np.mean([math.sqrt(float(np.mean((a - b) ** 2))) for a, b in pairs]))


def reading(found: Sequence) -> str:
    """The checker's detected objects in words: "red circle left + blue square right" (or "nothing")."""
    return " + ".join(f"{o.colour} {o.shape} {o.position}" for o in found) or "nothing"


def seed_list(seeds: int | Sequence[int], first: int = 0) -> tuple[int, ...]:
    """``seeds`` as a tuple: a count n means ``first … first+n−1``; a list is taken as it is."""
    if isinstance(seeds, bool | str | bytes) or not isinstance(seeds, int | Sequence):
        raise TypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    out = tuple(range(first, first + seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if not out:
        raise ValueError(f"seeds must name at least one seed, got {seeds!r}")
    return out


def default_batch_size(explainer: Explainer) -> int:
    """How many seeds run together by default: as many latents as :data:`MAX_BATCH_ELEMENTS` holds."""
    family = explainer.family
    return max(1, MAX_BATCH_ELEMENTS // math.prod(family.latent_shape(1, *family.default_size())))


def _mix_hook(guidance_scale: float) -> Hook:
    """ε̂ = ε_u + w·(ε_c − ε_u) at every step, for w < 1 (the loop itself would use ε_c there)."""

    def mix(eps_guided: torch.Tensor, *, ctx: HookContext) -> torch.Tensor:  # [B, C, h, w]
        return guide(ctx.current["step.model.cond"], ctx.current["step.model.uncond"], guidance_scale)

    return Hook("step.guidance", mix)


def _noise(explainer: Explainer, seed: int, height: int, width: int) -> torch.Tensor:
    """x_T of one seed [1, C, h, w], as ``explainer.run(seed=...)`` draws it (before init_noise_sigma)."""
    from diffusers.utils.torch_utils import randn_tensor

    family, model = explainer.family, explainer.family.model
    shape = family.latent_shape(1, height, width)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)


def column_steps(
    explainer: Explainer,
    prompt: str,
    guidance_scale: float,
    seeds: Sequence[int],
    *,
    num_inference_steps: int | None = None,
    negative_prompt: str = "",
    scene: Scene | None = None,
    batch_size: int | None = None,
    on_step: Callable[[], None] | None = None,
    guider: Guider | None = None,
) -> Generator[int, None, Column]:
    """One column, as work that yields each finished loop step (``col = yield from column_steps(...)``).

    The seeds run in batches of ``batch_size`` (default: as many as :data:`MAX_BATCH_ELEMENTS`
    allows), each picture starting from its own seed's noise x_T, so seed s gives the picture of
    ``explainer.run(prompt, seed=s)`` (to float rounding; with a stochastic scheduler the per-step
    noise is shared by the batch). ``on_step`` is called after every loop step (a progress bar).
    ``guider``: a guidance method (``diffexplain.guiders``) in place of ε_u + w·Δ, for w > 1.
    """
    from diffexplain import checks
    from diffexplain.data.checker import detect_objects, score

    w = checks.check_guidance_scale(guidance_scale)
    height, width = explainer.family.default_size()
    hooks: list[Hook] = []
    run_scale = w
    if guider is not None and w <= 1:
        raise ValueError(f"guider={guider!r} needs guidance on (guidance_scale > 1); got {w:g}")
    if w < 1:  # the loop would run ε_c alone: compute both branches and mix them ourselves
        if not guidance_on(2.0, distilled=explainer.family.guidance_distilled()):
            raise ValueError(
                f"guidance_scale={w:g}: this model is guidance-distilled (it takes w as an input and has "
                "no unconditional branch), so w < 1 cannot be drawn"
            )
        hooks, run_scale = [_mix_hook(w)], 2.0  # any w > 1 turns both branches on; the hook sets ε̂
    batch_size = batch_size or default_batch_size(explainer)
    images: list[Image.Image] = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        noise = torch.cat([_noise(explainer, s, height, width) for s in chunk])  # [b, C, h, w]
        with warnings.catch_warnings():
            if start:  # words the model never saw: said once per column, not once per batch
                warnings.simplefilter("ignore", UserWarning)
            job = explainer.start_run(
                [prompt] * len(chunk),
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=run_scale,
                seed=chunk[0],
                latents=noise,
                hooks=hooks,
                keep=["decode.image"],
                progress=False,
                restart=False,
                attention_maps=False,
                guider=guider,
            )
        for step in job:
            if on_step is not None:
                on_step()
            yield step
        images.extend(job.trace.images)
    verdicts = readings = None
    if scene is not None:
        found = [detect_objects(im, n_objects=len(scene.objects)) for im in images]
        verdicts = tuple(score(im, scene, detected=f).all_right for im, f in zip(images, found, strict=True))
        readings = tuple(reading(f) for f in found)
    method = None if guider is None else getattr(guider, "label", type(guider).__name__)
    return Column(
        w, tuple(seeds), tuple(images), verdicts, readings, diversity(images), method, saturation(images)
    )


def count_seeds(
    explainer: Explainer,
    prompt: str,
    *,
    scales: Sequence[float] = (0.0, 1.0, 5.0),
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    num_inference_steps: int | None = None,
    negative_prompt: str = "",
    batch_size: int | None = None,
    guider: Guider | None = None,
) -> list[Column]:
    """One :class:`Column` per guidance scale in ``scales``, each over the same ``seeds`` (a count n
    means seeds 0 … n−1), scored by the attribute checker where it can read the model and the prompt.

    ``num_inference_steps`` defaults to the model's own. ``guider``: a guidance method for the columns at
    w > 1 (``diffexplain.guiders``). ``sweep`` is the same over :data:`SWEEP_SCALES`.
    """
    from diffexplain import checks

    # every scale is checked before the first column runs
    scales = [checks.check_guidance_scale(w, f"scales[{i}]") for i, w in enumerate(scales)]
    seed_tuple = seed_list(seeds)
    scene, _ = checker_scene(explainer, prompt)
    return [
        drain(
            column_steps(
                explainer,
                prompt,
                w,
                seed_tuple,
                num_inference_steps=num_inference_steps,
                negative_prompt=negative_prompt,
                scene=scene,
                batch_size=batch_size,
                guider=guider if w > 1 else None,
            )
        )
        for w in scales
    ]


def sweep(explainer: Explainer, prompt: str, **kwargs) -> list[Column]:
    """``count_seeds`` over :data:`SWEEP_SCALES` (w = 0, 1, 2, 3, 5, 7.5, 10): right share and diversity vs w."""
    return count_seeds(explainer, prompt, scales=SWEEP_SCALES, **kwargs)


def table(columns: Sequence[Column]) -> str:
    """A plain-text table of the columns: w, right count, share and diversity, one line each."""
    lines = [f"{'':32} {'right':>10} {'share':>6} {'diversity':>9}"]
    for c in columns:
        right = "—" if c.right is None else f"{c.right} of {c.n}"
        share = "—" if c.share is None else f"{c.share:.2f}"
        lines.append(f"{c.label:32} {right:>10} {share:>6} {c.diversity:9.3f}")
    return "\n".join(lines)


def loop_step_count(explainer: Explainer, num_inference_steps: int | None = None) -> int:
    """How many loop steps one run of ``num_inference_steps`` makes (PNDM makes one more): for progress bars."""
    from diffexplain.scheduler_state import fresh_scheduler

    steps = num_inference_steps or int(
        explainer.defaults.get("num_inference_steps", explainer.family.default_steps)
    )
    scheduler = fresh_scheduler(explainer.scheduler)
    explainer.family.set_timesteps(scheduler, steps, *explainer.family.default_size())
    return len(scheduler.timesteps)
