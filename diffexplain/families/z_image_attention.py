"""Z-Image's attention maps: the image-query → caption-key block of its unified single-stream layers.

``ZImageTransformer2DModel`` refines the image tokens (``noise_refiner``) and the caption tokens
(``context_refiner``) apart, then runs its main layers (``layers.<i>.attention``) over one sequence per
prompt, image tokens first::

    row r:  [ image tokens (h/2·w/2), padded to a multiple of 32 | caption tokens (L_r), padded to 32 ]

and pads the rows to one length with an attention mask. One softmax runs over all of a row's tokens
(image, caption and their pad tokens), as SD3's and Flux's joint attention: the block of image queries
over the L_r real caption keys is this family's counterpart of a cross-attention map. It is placed on
the prompt's T positions (``prompt_tokens``; zeros at the template's padding, which the transformer
never sees), so the maps index the same tokens as ``prompt.cond``.

``SingleStreamAttentionCapture`` wraps the layers' own ``ZSingleStreamAttnProcessor``: the output is the
processor's, bit for bit, and p is computed beside it from the same projections (per-head RMS norms and
RoPE as the processor applies them). A hook that replaces p changes the image tokens' output by
to_out((p' − p)·V_caption) − to_out(0), as for the other joint families (``attention.processors``).

The model call lays out its rows as the pipeline does, cond first (``ZImagePipeline``: prompt embeds +
negative prompt embeds); the capture speaks the loop's order, uncond first: ``CallLayout`` maps one to
the other. ``predict`` sets the layout of each call (``call_layout``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.processors import PROCESSOR_WRAPPERS, projection_change, projections, text_block

if TYPE_CHECKING:
    from diffexplain.attention.capture import AttentionCapture

SEQ_MULTI_OF = 32
"""Z-Image pads its image and caption sequences to a multiple of this (``transformer_z_image.SEQ_MULTI_OF``)."""


def padded(length: int) -> int:
    """``length`` rounded up to a multiple of 32, as the transformer pads a sequence."""
    return length + (-length) % SEQ_MULTI_OF


@dataclass(frozen=True)
class CallLayout:
    """Where the tokens sit in one transformer call's unified rows, and how its rows map to the loop's."""

    image_tokens: int  # h/2·w/2 real image tokens, first in every row
    positions: tuple[torch.Tensor, ...]  # per call row: the T positions of its caption tokens (mask's True)
    text_length: int  # T, the prompt's positions
    rows: int  # B, the rows of one branch
    mode: str  # "one" (cond only), "both" (cond then uncond), "cond_for_both" (a truncated step)

    def to_loop(self, x: torch.Tensor) -> torch.Tensor:
        """Call rows → the loop's rows ([uncond; cond] with guidance on)."""
        if self.mode == "both":
            return torch.cat([x[self.rows :], x[: self.rows]])
        if self.mode == "cond_for_both":  # the negative branch was not run: it reads as the cond one
            return torch.cat([x, x])
        return x

    def from_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The loop's rows → call rows (at a truncated step, the cond half)."""
        if self.mode == "both":
            return torch.cat([x[self.rows :], x[: self.rows]])
        if self.mode == "cond_for_both":
            return x[self.rows :]
        return x


_LAYOUT: ContextVar[CallLayout | None] = ContextVar("z_image_call_layout", default=None)


@contextmanager
def call_layout(layout: CallLayout) -> Iterator[None]:
    """The layout of the transformer call inside the ``with`` block (read by the capture's wrappers)."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def rotary(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """RoPE as ``ZSingleStreamAttnProcessor`` applies it: x [N, L, heads, d], freqs_cis [N, L, d/2] complex."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis.unsqueeze(2)).flatten(3).type_as(x)


class SingleStreamAttentionCapture:
    """A unified layer's ``ZSingleStreamAttnProcessor``, its output untouched, with the image → caption
    block of p beside it for the capture (module docstring)."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [N, L, C] unified rows: image tokens, then caption tokens
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,  # [N, L] bool, or None where the rows are alike
        freqs_cis: torch.Tensor | None = None,  # [N, L, d/2] complex
    ) -> torch.Tensor:
        call = (attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        layout = _LAYOUT.get()
        if not self.capture.active or layout is None:
            return self.original(*call)
        n_img = layout.image_tokens
        if not self.capture.reads_probs(self.layer):
            return self._output(self.original(*call), layout)
        with projections(attn, ("to_q", "to_k", "to_v")) as seen:
            out = self.original(*call)  # [N, L, C]: the model's own output
        query, key = self._heads(attn, seen["to_q"]), self._heads(attn, seen["to_k"])  # [N, L, heads, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            query, key = rotary(query, freqs_cis), rotary(key, freqs_cis)
        query, key = query.transpose(1, 2), key.transpose(1, 2)  # [N, heads, L, d]
        start, scale = padded(n_img), query.shape[-1] ** -0.5
        blocks = []
        for r, where in enumerate(layout.positions):
            length = int(where.numel())  # L_r real caption tokens, at start..start + L_r
            keys = key[r : r + 1, :, : start + padded(length)]  # the row's own tokens (the mask's True)
            block = text_block(query[r : r + 1, :, :n_img], keys, slice(start, start + length), scale)
            placed = block.new_zeros(*block.shape[:3], layout.text_length)  # [1, heads, h·w, T]
            placed[..., where] = block
            blocks.append(placed)
        probs = torch.cat(blocks)  # [N, heads, h·w, T]
        seen_probs = layout.to_loop(probs)
        new_probs = self.capture.probs(self.layer, seen_probs)
        if new_probs is not seen_probs:  # a hook replaced p: add what p' − p changes, row by row
            change = layout.from_loop(new_probs) - probs
            value = self._heads(attn, seen["to_v"]).transpose(1, 2)  # [N, heads, L, d]
            out = out.clone()
            for r, where in enumerate(layout.positions):
                caption = value[r, :, start : start + int(where.numel())]  # [heads, L_r, d]
                delta = change[r][..., where].to(caption.dtype) @ caption  # [heads, h·w, d]
                out[r, :n_img] += projection_change(attn.to_out[0], delta.transpose(0, 1).flatten(1))
        return self._output(out, layout)

    def _output(self, out: torch.Tensor, layout: CallLayout) -> torch.Tensor:
        """The image tokens' output through the capture's ``out`` hook points ([2B or B, h·w, C], loop rows)."""
        image = layout.to_loop(out[:, : layout.image_tokens])
        new = self.capture.output(self.layer, image)
        if new is image:
            return out
        out = out.clone()
        out[:, : layout.image_tokens] = layout.from_loop(new)
        return out

    @staticmethod
    def _heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
        """[N, L, heads·d] → [N, L, heads, d], as the processor unflattens its projections."""
        return x.unflatten(-1, (attn.heads, -1))


PROCESSOR_WRAPPERS["ZSingleStreamAttnProcessor"] = SingleStreamAttentionCapture
