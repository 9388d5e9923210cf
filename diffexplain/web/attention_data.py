"""The attention maps of a trace as the browser's AttentionMaps view gets them: one binary buffer.

Every token's map at every step (and averaged over all steps), for each layer choice and branch, at most
``MAP_SIDE`` pixels a side, 8 bits each, scaled by its own peak; and a JSON index saying where each
[T, h, w] block is, with each map's peak and mean (its share of the picture's attention, the bar chart).
No ipywidgets, no plotly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffexplain.attention import maps as reading

if TYPE_CHECKING:
    from diffexplain.trace import Trace

MAP_SIDE = 32
"""The maps the browser gets: at most this many pixels a side (it draws them smoothed to the picture)."""


def map_size(trace: Trace, side: int = MAP_SIDE) -> tuple[int, int]:
    """(h, w) of the maps sent: the picture's aspect, at most ``side`` pixels a side."""
    height, width = trace.run_settings.height, trace.run_settings.width
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def pack_maps(
    trace: Trace, layers: Sequence[str | None], branches: Sequence[str], side: int = MAP_SIDE
) -> tuple[bytes, dict[str, Any]]:
    """The maps of ``trace`` for each of ``layers`` (None: every layer; a resolution or a layer name, as
    ``Trace.attention`` takes them) and ``branches``, end to end as uint8; and the index:
    ``{"h", "w", "blocks": {"branch|layer|step": {"offset", "peak": [T], "mean": [T]}}}`` (layer "all" for
    None; step "all": averaged over every step). Steps before a branch's first step with maps (a fork that
    changed the prompt) are left out."""
    h, w = map_size(trace, side)
    chunks, blocks, offset = [], {}, 0
    for branch in branches:
        steps: list[int | None] = [*range(reading.first_step(trace, branch), len(trace)), None]
        for layer in layers:
            for step in steps:
                maps = reading.attention_maps(trace, steps=step, layers=layer, branch=branch, size=(h, w))
                maps = maps[0].float()  # [T, h, w]: the first prompt of the batch
                peaks = maps.amax(dim=(-1, -2))
                scaled = maps / peaks.clamp_min(1e-8)[:, None, None] * 255
                data = scaled.round().clamp(0, 255).to(torch.uint8).cpu().numpy().tobytes()
                key = f"{branch}|{'all' if layer is None else layer}|{'all' if step is None else step}"
                blocks[key] = {
                    "offset": offset,
                    "peak": np.round(peaks.cpu().numpy(), 5).tolist(),
                    "mean": np.round(maps.mean(dim=(-1, -2)).cpu().numpy(), 5).tolist(),
                }
                chunks.append(data)
                offset += len(data)
    return b"".join(chunks), {"h": h, "w": w, "blocks": blocks}
