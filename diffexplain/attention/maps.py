"""Reading a trace's attention maps: per step, per token, per resolution or layer, at the image size.

A trace keeps, per step and branch, m_r [B, T, rows, cols] for every resolution r (mean over heads
and over the layers there; see ``attention.capture``). Read at the image size H×W, the resolutions
are upsampled bilinearly and averaged with each layer counting once::

    M[b, k, Y, X] = Σ_r n_r · up(m_r)[b, k, Y, X] / Σ_r n_r      (n_r: layers at resolution r)

Bilinear upsampling mixes neighbours with weights that sum to 1, so M, like m, sums to 1 over k.
A word made of several tokens gets the sum of their maps (the share of attention the word gets).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from diffexplain.attention.layers import PREFIX, grid_of, resolution_name
from diffexplain.attention.tokens import Token, find_token, tokens_from_json
from diffexplain.errors import TraceKeyError

if TYPE_CHECKING:
    from diffexplain.trace import Trace

LayerFilter = str | int | Iterable[str | int] | None
"""``layers=``: None (all), a resolution ("16x16" or 16), a layer name or glob, or a list of these."""


def attention_info(trace: Trace) -> dict[str, Any]:
    """The trace's attention record (layers, resolutions, tokens); ``TraceKeyError`` if it has none."""
    info = trace.run_settings.attention
    if not info:
        raise TraceKeyError(
            "this trace has no attention record: it was made with attention_maps=False, by a model "
            "without text attention, or by a diffexplain older than the attention maps"
        )
    return info


def token_lists(trace: Trace, branch: str = "cond") -> list[list[Token]]:
    """Each prompt's tokens (``branch="uncond"``: each negative prompt's), one per text position."""
    tokens = attention_info(trace)["tokens"]
    if branch not in tokens:
        raise TraceKeyError(
            f"this trace has no {branch!r} tokens: guidance was off, so there was no uncond branch"
        )
    return tokens_from_json(tokens[branch])


def _prompts(trace: Trace, branch: str) -> list[str]:
    key = "prompt" if branch == "cond" else "negative_prompt"
    value = getattr(trace.run_settings, key) or ""
    return [value] if isinstance(value, str) else list(value)


def _branch(branch: str) -> str:
    if branch not in ("cond", "uncond"):
        raise ValueError(f"branch must be 'cond' or 'uncond', got {branch!r}")
    return branch


def _steps(trace: Trace, steps: int | Iterable[int] | None, branch: str = "cond") -> list[int]:
    """The step indices ``steps=`` picks; by default every step whose maps index this trace's tokens."""
    n = len(trace.steps)
    if n == 0:
        raise TraceKeyError("this trace has no finished steps")
    first = int((attention_info(trace).get("first_step") or {}).get(branch, 0))
    if steps is None:
        if first >= n:
            raise TraceKeyError(
                f"this trace has no {branch} maps of its own prompt (they start at step {first})"
            )
        return list(range(first, n))
    chosen = [steps] if isinstance(steps, int) else list(steps)
    if not chosen:
        raise ValueError("steps= is empty: give a step, a range or a list of steps")
    for s in chosen:
        if isinstance(s, bool) or not isinstance(s, int) or not -n <= s < n:
            raise IndexError(f"step {s!r} out of range: this trace has {n} steps (0..{n - 1})")
    chosen = [s % n for s in chosen]
    early = sorted({s for s in chosen if s < first})
    if early:
        which = "prompt" if branch == "cond" else "negative prompt"
        raise ValueError(
            f"steps {early} were copied from the trace this fork started from (it forked at step {first}) "
            f"and hold no maps of this trace's {which}: read them from that trace, or choose steps "
            f"{first}..{n - 1}"
        )
    return chosen


def _selection(trace: Trace, layers: LayerFilter) -> tuple[list[str], list[str]]:
    """(resolutions, layer names) that ``layers=`` picks; layer names need the layer's kept probabilities."""
    by_resolution: dict[str, list[str]] = attention_info(trace).get("resolutions") or {}
    if layers is None:
        return list(by_resolution), []
    items = [layers] if isinstance(layers, str | int) else list(layers)
    resolutions, names = [], []
    all_layers = [layer for group in by_resolution.values() for layer in group]
    for item in items:
        key = (
            resolution_name(item, item) if isinstance(item, int) and not isinstance(item, bool) else str(item)
        )
        if key in by_resolution:
            resolutions.append(key)
            continue
        matches = [name for name in all_layers if fnmatch.fnmatchcase(name, key)]
        if not matches:
            raise ValueError(
                f"{item!r} is neither a resolution ({', '.join(by_resolution) or 'none recorded'}) nor a "
                f"layer of this trace (e.g. {all_layers[0] if all_layers else 'none'})"
            )
        names += matches
    return resolutions, names


def _layer_map(trace: Trace, layer: str, step: int, branch: str) -> torch.Tensor:
    """One layer's map at one step, [B, T, rows, cols], from its kept probabilities."""
    point = f"{PREFIX}{layer}.probs.{branch}"
    record = trace.steps[step]
    if point not in record.tensors:
        raise TraceKeyError(
            f"per-layer maps need the layer's probabilities: run with keep=['*', {point!r}] "
            f"(or 'attn.*.probs.{branch}' for every layer); this trace keeps the maps per resolution"
        )
    probs = record.tensors[point].float().mean(dim=1)  # [B, h·w, T]
    rows, cols = grid_of(probs.shape[1], *_latent_size(trace, step))
    kinds = {layer["name"]: layer["kind"] for layer in attention_info(trace).get("layers", [])}
    if kinds.get(layer) in (
        "joint",
        "single",
    ):  # joint attention's image → text block: renormalise over the text
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return probs.transpose(1, 2).reshape(probs.shape[0], -1, rows, cols)


def _latent_size(trace: Trace, step: int) -> tuple[int, int]:
    """(h, w) of x_t in this trace (each layer's grid is found from it)."""
    record = trace.steps[step]
    for latents in (
        record.tensors.get("step.latents"),
        record.restart and record.restart.latents,
        trace.final_latents,
    ):
        if latents is not None:
            return int(latents.shape[-2]), int(latents.shape[-1])
    raise TraceKeyError("this trace keeps no latents to place a layer's probabilities on a grid")


def attention_maps(
    trace: Trace,
    *,
    steps: int | Iterable[int] | None = None,
    layers: LayerFilter = None,
    branch: str = "cond",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Every token's map, [B, T, H, W] (``size`` or the image's), averaged over ``steps`` and ``layers``."""
    branch = _branch(branch)
    chosen = _steps(trace, steps, branch)
    resolutions, names = _selection(trace, layers)
    by_resolution = attention_info(trace).get("resolutions") or {}
    height, width = size or (trace.run_settings.height, trace.run_settings.width)
    total, weight = None, 0
    for step in chosen:
        record = trace.steps[step]
        parts: list[tuple[torch.Tensor, int]] = []
        for resolution in resolutions:
            key = f"{branch}@{resolution}"
            if key not in record.attention:
                raise TraceKeyError(_missing(trace, branch, step))
            parts.append((record.attention[key], len(by_resolution[resolution])))
        parts += [(_layer_map(trace, name, step, branch), 1) for name in names]
        if not parts:
            raise TraceKeyError(_missing(trace, branch, step))
        for maps, count in parts:
            up = F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False)
            total = up * count if total is None else total + up * count
            weight += count
    assert total is not None
    return total / weight


def _missing(trace: Trace, branch: str, step: int) -> str:
    if trace.forked_from is not None and step < trace.forked_from:
        return (
            f"step {step} was copied from the trace this fork started from (at step {trace.forked_from}), "
            f"which kept no {branch} maps there: choose steps {trace.forked_from}..{len(trace) - 1}"
        )
    if branch == "uncond" and not trace.run_settings.do_cfg:
        return "there are no uncond maps: guidance was off (guidance_scale ≤ 1), so that branch never ran"
    if not attention_info(trace).get("maps", True):
        return "this trace was made with attention_maps=False: it keeps no maps"
    return f"step {step} has no {branch} attention maps (an interrupted run, or a fork that changed guidance)"


def token_indices(trace: Trace, which: str | int | Token, branch: str) -> list[list[int]]:
    """Per prompt of the batch, the positions of ``which`` (a word, a token index or a Token)."""
    lists = token_lists(trace, branch)
    prompts = _prompts(trace, branch) if branch == "cond" else [""] * len(lists)
    found = []
    for b, tokens in enumerate(lists):
        try:
            found.append(find_token(tokens, which, prompt=prompts[b] if b < len(prompts) else ""))
        except ValueError as err:
            where = f" (prompt {b} of the batch)" if len(lists) > 1 else ""
            raise ValueError(f"{err}{where}") from None
    return found


def attention(
    trace: Trace,
    which: str | int | Token,
    *,
    steps: int | Iterable[int] | None = None,
    layers: LayerFilter = None,
    branch: str = "cond",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Where the image reads ``which``: [B, H, W], summed over its tokens, averaged over steps and layers."""
    indices = token_indices(trace, which, _branch(branch))
    maps = attention_maps(trace, steps=steps, layers=layers, branch=branch, size=size)  # [B, T, H, W]
    return torch.stack([maps[b, idx].sum(0) for b, idx in enumerate(indices)])


def first_step(trace: Trace, branch: str = "cond") -> int:
    """The first step whose maps index this trace's tokens (0, or k for a fork that changed the prompt)."""
    return int((attention_info(trace).get("first_step") or {}).get(_branch(branch), 0))


def resolutions(trace: Trace) -> dict[str, list[str]]:
    """Resolution → the layers whose maps it averages ("16x16" → [...])."""
    return dict(attention_info(trace).get("resolutions") or {})


def per_step(
    trace: Trace, which: str | int | Token, *, layers: LayerFilter = None, branch: str = "cond"
) -> Sequence[torch.Tensor]:
    """``attention(which)`` at every step, [S, B, H, W]: how the reading settles over the steps."""
    return torch.stack(
        [attention(trace, which, steps=i, layers=layers, branch=branch) for i in range(len(trace))]
    )
