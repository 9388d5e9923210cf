"""The denoiser's text-attention layers, found from its modules, and their hook points.

A U-Net (SD 1.x/2.x, SDXL, the default model) reads the prompt in cross-attention layers (the
``attn2`` of each transformer block): image queries, text keys. SD3's MMDiT reads it in joint
attention (each block's ``attn``): image and text tokens attend to each other in one softmax, and
the image-query → text-key block of its probabilities is the counterpart of a cross-attention map.

Hook points, per layer L (its module path, e.g. ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``)::

    attn.L.probs.cond     p = softmax(QKᵀ/√d) of image queries over the prompt's tokens   [B, heads, h·w, T]
    attn.L.probs.uncond   the same for the negative (or empty) prompt (guidance on only)
    attn.L.out.cond       the layer's output (before the block adds its residual)          [B, h·w, C]
    attn.L.out.uncond

They are heavy: kept only when ``keep=`` asks for them, and computed only when a hook or ``keep=``
needs them. The per-step maps every trace keeps (``Trace.attention``) are their cheap summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from diffexplain.names import HookPoint

PREFIX = "attn."
"""Every attention hook point's name starts with this."""


@dataclass(frozen=True)
class AttentionLayer:
    """One layer where the image reads the prompt."""

    name: str  # the module's path in the denoiser
    module: torch.nn.Module  # a diffusers ``Attention``
    kind: str  # "cross" (image queries, text keys), "joint" (SD3: one softmax over image and text) or
    # "single" (FLUX.3: text and image concatenated before the layer, text first)


def find_attention_layers(model: torch.nn.Module, kind: str = "cross") -> tuple[AttentionLayer, ...]:
    """Every layer of ``model`` where the image reads the text, in module order.

    ``kind="cross"``: the ``Attention`` modules with a ``cross_attention_dim`` (U-Nets);
    ``kind="joint"``: those with added text projections (``add_k_proj``: SD3's joint attention, and
    Flux's double-stream blocks, ``FluxAttention``, and FLUX.2's, ``Flux2Attention``; their single-stream
    blocks are not text layers here).
    """
    from diffusers.models.attention_processor import Attention

    classes: tuple[type, ...] = (Attention,)
    if kind == "joint":  # Flux's and FLUX.2's attention are classes of their own
        from diffusers.models.transformers.transformer_flux import FluxAttention
        from diffusers.models.transformers.transformer_flux2 import Flux2Attention

        classes += (FluxAttention, Flux2Attention)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        if kind == "cross" and module.is_cross_attention and getattr(module, "add_k_proj", None) is None:
            layers.append(AttentionLayer(name, module, "cross"))
        elif kind == "joint" and getattr(module, "add_k_proj", None) is not None:
            layers.append(AttentionLayer(name, module, "joint"))
    return tuple(layers)


def attention_points(layers: Iterable[AttentionLayer | tuple[str, str]]) -> tuple[HookPoint, ...]:
    """The four hook points of each layer (see the module docstring), all heavy.

    ``layers``: ``AttentionLayer`` objects, or (name, kind) pairs (as a trace file records them).
    """
    points = []
    for item in layers:
        name, kind = (item.name, item.kind) if isinstance(item, AttentionLayer) else item
        what = "joint attention's image-query → text-key block" if kind != "cross" else "attention"
        points += [
            HookPoint(
                f"{PREFIX}{name}.probs.cond",
                f"{what} probabilities of image queries over the prompt's tokens, softmax(QKᵀ/√d)",
                "[B, heads, h·w, T]",
                True,
                heavy=True,
            ),
            HookPoint(
                f"{PREFIX}{name}.probs.uncond",
                f"{what} probabilities over the negative (or empty) prompt's tokens",
                "[B, heads, h·w, T]",
                True,
                cfg_only=True,
                heavy=True,
            ),
            HookPoint(
                f"{PREFIX}{name}.out.cond",
                "the layer's output for the image tokens, with the prompt",
                "[B, h·w, C]",
                True,
                heavy=True,
            ),
            HookPoint(
                f"{PREFIX}{name}.out.uncond",
                "the layer's output for the image tokens, without the prompt",
                "[B, h·w, C]",
                True,
                cfg_only=True,
                heavy=True,
            ),
        ]
    return tuple(points)


def layer_of(point: str) -> tuple[str, str, str]:
    """(layer, "probs" | "out", branch) of an attention hook point's name."""
    body = point.removeprefix(PREFIX)
    layer, what, branch = body.rsplit(".", 2)
    return layer, what, branch


def grid_of(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) of a layer whose queries are ``tokens`` image tokens, for an h×w input.

    Each level of a U-Net halves the sides (rounding up, as a stride-2 convolution with padding 1),
    and a transformer's patches divide them; the factor is found from the token count.
    """
    for level in range(0, 8):
        factor = 2**level
        rows, cols = math.ceil(height / factor), math.ceil(width / factor)
        if rows * cols == tokens:
            return rows, cols
    side = math.isqrt(tokens)
    if side * side == tokens:
        return side, side
    raise ValueError(f"cannot place {tokens} image tokens on a grid for a {height}×{width} input")


def resolution_name(rows: int, cols: int) -> str:
    """ "16x16": how resolutions are named in maps and choosers."""
    return f"{rows}x{cols}"


def is_attention_point(name: str) -> bool:
    """Whether ``name`` (or a glob) is in the attention namespace."""
    return name.startswith(PREFIX)


def describe_layers(layers: tuple[AttentionLayer, ...]) -> list[dict[str, Any]]:
    """JSON-ready: each layer's name, kind and heads (for trace files)."""
    return [{"name": layer.name, "kind": layer.kind, "heads": int(layer.module.heads)} for layer in layers]


def with_attention_points(
    points: tuple[HookPoint, ...], layers: Iterable[AttentionLayer | tuple[str, str]]
) -> tuple[HookPoint, ...]:
    """``points`` with the layers' attention points where a step reaches them: inside the model call."""
    extra = attention_points(layers)
    if not extra:
        return points
    names = [p.name for p in points]
    at = names.index("step.model.cond") if "step.model.cond" in names else len(points)
    return points[:at] + extra + points[at:]
