"""Cross-attention edits, prompt-to-prompt style: ready-made hooks for ``run`` and ``fork``.

Each returns a list of ``Hook`` objects on the layers' ``attn.<layer>.probs.<branch>`` points, for
``hooks=`` (combine them with ``+``). Notation: p[b, head, q, k] is a layer's attention of image
query q over text token k (rows sum to 1); the edits change p before the layer computes p·V.

- ``reweight(token, factor)``: p[..., k] ← factor · p[..., k] for the token's columns
  (prompt-to-prompt's ``AttentionReweight``; the rows are not renormalised, as there). A factor of 1
  leaves the run bit for bit unchanged; 0 removes what the token adds.
- ``replace_maps(source)``: p ← the source trace's p at the same step and layer (its kept
  probabilities where it has them, else its per-resolution map for every head); ``tokens=``
  maps this prompt's tokens to the source's (prompt-to-prompt's ``AttentionReplace``).
- ``confine(token, mask)``: p[..., q, k] ← p[..., q, k] · (mask[q] + outside · (1 − mask[q])):
  the token is read only inside the mask.

``steps=`` is a ``Hook`` step filter (an int, a range, a list or a predicate); ``layers=`` picks
layers by resolution ("16x16" or 16), by name or glob (``"up_blocks.*"``), or a list of these.
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from diffexplain.attention.layers import PREFIX, grid_of, layer_of, resolution_name
from diffexplain.attention.maps import token_indices
from diffexplain.attention.tokens import Token
from diffexplain.checks import check_float
from diffexplain.errors import user_stacklevel
from diffexplain.hooks import Hook, HookContext, StepFilter

if TYPE_CHECKING:
    from diffexplain.trace import Trace

TokenSpec = str | int | Token
LayerSpec = str | int | Iterable[str | int] | None


def _grid(x: torch.Tensor, ctx: HookContext) -> tuple[int, int]:
    """The (rows, cols) of the layer whose probabilities ``x`` [B, heads, h·w, T] are."""
    latents = ctx.current["step.latents"]  # [B, C, h, w]
    return grid_of(x.shape[2], int(latents.shape[-2]), int(latents.shape[-1]))


def _layer_test(layers: LayerSpec) -> Callable[[str, tuple[int, int]], bool]:
    """test(layer name, grid) for ``layers=``."""
    if layers is None:
        return lambda name, grid: True
    items = [layers] if isinstance(layers, str | int) else list(layers)
    if not items:
        raise ValueError("layers= is empty: give a resolution ('16x16' or 16), a layer name or glob, or None")
    wanted_res, patterns = set(), []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            wanted_res.add(resolution_name(item, item))
        elif isinstance(item, str) and "x" in item and item.replace("x", "").isdigit():
            wanted_res.add(item)
        elif isinstance(item, str):
            patterns.append(item)
        else:
            raise TypeError(f"layers= items are resolutions or layer names, not {type(item).__name__}")
    return lambda name, grid: (
        resolution_name(*grid) in wanted_res or any(fnmatch.fnmatchcase(name, p) for p in patterns)
    )


def _check_layers(layers: LayerSpec, ctx: HookContext) -> None:
    """``ValueError`` for a ``layers=`` item that names no layer or resolution this run can have."""
    if layers is None:
        return
    names = sorted({layer_of(n)[0] for n in ctx.trace.hook_names if n.startswith(PREFIX)})
    latents = ctx.current["step.latents"]
    h, w = int(latents.shape[-2]), int(latents.shape[-1])
    grids = {resolution_name(-(-h // 2**k), -(-w // 2**k)) for k in range(8)}  # every level's grid
    for item in [layers] if isinstance(layers, str | int) else list(layers):
        key = resolution_name(item, item) if isinstance(item, int) and not isinstance(item, bool) else item
        if key in grids or any(fnmatch.fnmatchcase(n, str(key)) for n in names):
            continue
        raise ValueError(
            f"layers={item!r} matches no attention layer and no resolution of this model: its layers are "
            f"{', '.join(names)}; resolutions are grids such as {', '.join(sorted(grids, key=len)[:4])}"
        )


_COLUMNS: weakref.WeakKeyDictionary[Trace, dict[tuple[str, str], list[list[int]]]] = (
    weakref.WeakKeyDictionary()
)
"""Per trace, each (token, branch)'s columns: edits run at every layer of every step, the lookup once."""


def _columns(ctx: HookContext, token: TokenSpec, branch: str) -> list[list[int]]:
    """The columns of ``token`` per prompt of the running trace (looked up once per trace)."""
    per_trace = _COLUMNS.setdefault(ctx.trace, {})
    key = (repr(token), branch)
    if key not in per_trace:
        per_trace[key] = token_indices(ctx.trace, token, branch)
    return per_trace[key]


def _edit_hooks(
    edit: Callable[[torch.Tensor, HookContext, str, tuple[int, int]], torch.Tensor | None],
    *,
    steps: StepFilter,
    layers: LayerSpec,
    branch: str,
    label: str,
) -> list[Hook]:
    if branch not in ("cond", "uncond"):
        raise ValueError(f"branch must be 'cond' or 'uncond', got {branch!r}")
    test = _layer_test(layers)
    checked: list[bool] = []

    def hook(x: torch.Tensor, *, ctx: HookContext) -> torch.Tensor | None:  # x: [B, heads, h·w, T]
        if not checked:
            _check_layers(layers, ctx)
            checked.append(True)
        layer = layer_of(ctx.name)[0]
        grid = _grid(x, ctx)
        if not test(layer, grid):
            return None
        return edit(x, ctx, layer, grid)

    hook.__qualname__ = label
    return [Hook(f"{PREFIX}*.probs.{branch}", hook, steps=steps)]


def reweight(
    token: TokenSpec,
    factor: float,
    *,
    steps: StepFilter = None,
    layers: LayerSpec = None,
    branch: str = "cond",
) -> list[Hook]:
    """Scale the attention every image pixel gives ``token`` (a word: all its tokens) by ``factor``."""
    factor = check_float("factor", factor, meaning="the attention to the token is multiplied by it")

    def edit(x: torch.Tensor, ctx: HookContext, layer: str, grid: tuple[int, int]) -> torch.Tensor:
        scale = torch.ones(x.shape[0], x.shape[-1], dtype=x.dtype, device=x.device)  # [B, T]
        for b, columns in enumerate(_columns(ctx, token, branch)):
            scale[b, columns] = float(factor)
        return x * scale[:, None, None, :]

    return _edit_hooks(
        edit, steps=steps, layers=layers, branch=branch, label=f"reweight({token!r}, {factor})"
    )


def confine(
    token: TokenSpec,
    mask: torch.Tensor,
    *,
    outside: float = 0.0,
    steps: StepFilter = None,
    layers: LayerSpec = None,
    branch: str = "cond",
) -> list[Hook]:
    """Let ``token`` be read only where ``mask`` [H, W] (any size, values in [0, 1]) is 1; ``outside`` elsewhere."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        given = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a 2-D tensor [H, W] with values in [0, 1], got {given}")
    outside = check_float(
        "outside", outside, 0.0, 1.0, meaning="how much of the token is read outside the mask"
    )
    mask = mask.detach().float()
    if mask.numel() == 0 or mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (1: the token may be read there)")

    def edit(x: torch.Tensor, ctx: HookContext, layer: str, grid: tuple[int, int]) -> torch.Tensor:
        small = F.interpolate(mask[None, None], size=grid, mode="area")[0, 0].reshape(-1)  # [h·w]
        keep = (small + outside * (1 - small)).to(x.device, x.dtype)
        scale = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)  # [B, h·w, T]
        for b, columns in enumerate(_columns(ctx, token, branch)):
            scale[b][:, columns] = keep[:, None]
        return x * scale[:, None]

    return _edit_hooks(edit, steps=steps, layers=layers, branch=branch, label=f"confine({token!r})")


def replace_maps(
    source: Trace,
    *,
    tokens: Mapping[TokenSpec, TokenSpec] | None = None,
    steps: StepFilter = None,
    layers: LayerSpec = None,
    branch: str = "cond",
) -> list[Hook]:
    """Use ``source``'s attention instead of this run's: every column, or only the ``tokens`` mapped.

    ``tokens`` maps this prompt's tokens (words or indices) to the source's, e.g. ``{"blue": "red"}``;
    without it every column is replaced (the prompts must have the same number of tokens, as any two
    prompts of one text encoder do). The source must have as many steps. Its kept probabilities
    (run it with ``keep=["*", "attn.*.probs.cond"]``) are used exactly; without them its per-resolution
    maps stand in for every head and layer, an approximation (a ``UserWarning`` says so).
    """
    from diffexplain.trace import Trace

    if not isinstance(source, Trace):
        raise TypeError(f"source must be a Trace, got {type(source).__name__}")
    source.token_lists(branch)  # raises now if the source has no attention record
    warned: list[bool] = []  # the lossy fallback is said once per edit, not once per layer and step

    def edit(x: torch.Tensor, ctx: HookContext, layer: str, grid: tuple[int, int]) -> torch.Tensor:
        step = ctx.step
        assert step is not None
        if len(source.steps) != ctx.num_steps:
            raise ValueError(
                f"replace_maps: the source trace has {len(source.steps)} steps, this run {ctx.num_steps}"
            )
        theirs = _source_probs(source, layer, grid, step, branch, x, warned)  # [B, heads, h·w, T_source]
        if tokens is None:
            if theirs.shape[-1] != x.shape[-1]:
                raise ValueError(
                    f"replace_maps: the source has {theirs.shape[-1]} tokens, this run {x.shape[-1]}; "
                    "pass tokens= to map them"
                )
            return theirs
        new = x.clone()
        for mine, their in tokens.items():
            ours, src_all = _columns(ctx, mine, branch), token_indices(source, their, branch)
            for b in range(x.shape[0]):
                dst, src = ours[b], src_all[min(b, len(src_all) - 1)]
                if len(src) == len(dst):
                    new[b, :, :, dst] = theirs[b, :, :, src]
                elif len(src) == 1:  # one source token read by each of several tokens
                    new[b, :, :, dst] = theirs[b, :, :, src * len(dst)]
                elif len(dst) == 1:  # several source tokens into one: their total
                    new[b, :, :, dst[0]] = theirs[b, :, :, src].sum(-1)
                else:
                    raise ValueError(
                        f"replace_maps: {mine!r} has {len(dst)} tokens and {their!r} {len(src)}: "
                        "map them token by token (indices)"
                    )
        return new

    return _edit_hooks(edit, steps=steps, layers=layers, branch=branch, label="replace_maps")


def _source_probs(
    source: Trace,
    layer: str,
    grid: tuple[int, int],
    step: int,
    branch: str,
    like: torch.Tensor,
    warned: list[bool],
) -> torch.Tensor:
    """The source's probabilities of ``layer`` at ``step``, shaped and typed like ``like`` [B, heads, h·w, T]."""
    record = source.steps[step]
    point = f"{PREFIX}{layer}.probs.{branch}"
    if point in record.tensors:
        theirs = record.tensors[point]
    else:
        key = f"{branch}@{resolution_name(*grid)}"
        if key not in record.attention:
            raise ValueError(
                f"replace_maps: the source trace has no {branch} maps at {resolution_name(*grid)} "
                f"for step {step} (was it made with attention_maps=False?)"
            )
        if not warned:
            warned.append(True)
            warnings.warn(
                f"replace_maps: the source trace keeps no per-layer probabilities ({point!r}), so its "
                "per-resolution maps (averaged over heads and layers) stand in for every head: an "
                "approximation that changes the picture even for the same prompt. For exact maps run the "
                f"source with keep=['*', 'attn.*.probs.{branch}']",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        maps = record.attention[key]  # [B, T, rows, cols]
        theirs = maps.flatten(2).transpose(1, 2)[:, None].expand(-1, like.shape[1], -1, -1)
        kinds = {x["name"]: x["kind"] for x in (source.run_settings.attention or {}).get("layers", [])}
        if kinds.get(layer) in (
            "joint",
            "single",
        ):  # the maps sum to 1 over the text; this block to the text's share
            theirs = theirs.to(like.dtype) * like.sum(dim=-1, keepdim=True)
    if theirs.shape[0] != like.shape[0]:
        if theirs.shape[0] != 1:
            raise ValueError(
                f"replace_maps: the source has a batch of {theirs.shape[0]}, this run {like.shape[0]}"
            )
        theirs = theirs.expand(like.shape[0], *theirs.shape[1:])
    if theirs.shape[1] != like.shape[1] or theirs.shape[2] != like.shape[2]:
        raise ValueError(
            f"replace_maps: the source's {layer} has shape {tuple(theirs.shape)}, this run {tuple(like.shape)}"
        )
    return theirs.to(like.device, like.dtype).contiguous()
