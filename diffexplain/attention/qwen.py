"""Qwen-Image's double-stream joint attention as its own processor computes it, with the image → text block
of p beside it (``QwenDoubleStreamAttnProcessor2_0``, diffusers' transformer_qwenimage.py).

Per block the processor projects both streams, normalises q and k per head, applies Qwen's rotary positions
(image frequencies on image tokens, text frequencies on text tokens, complex form), concatenates text first
and runs one masked softmax over all T + h·w keys: the text mask (``encoder_hidden_states_mask``, 1 for a
token of the prompt, 0 for a batch's padding) with every image key allowed. Notation, one branch::

    Q [B, heads, h·w, d]  image queries       K [B, heads, T + h·w, d]  text keys, then image keys
    p = softmax(Q·Kᵀ/√d, masked keys −∞)[..., :T]                       [B, heads, h·w, T]

so a padded position gets p = 0 exactly, and the maps renormalised over the text sum to 1 over the prompt's
own tokens. The layer's output is the processor's own, bit for bit; a hook's p' changes it by
to_out((p' − p)·V_text) as for the other joint families (``attention.processors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.processors import (
    CHUNK_ELEMENTS,
    PROCESSOR_WRAPPERS,
    projection_change,
    projections,
    text_block,
)

if TYPE_CHECKING:
    from diffexplain.attention.capture import AttentionCapture

QWEN_PROCESSORS = frozenset({"QwenDoubleStreamAttnProcessor2_0"})
"""Qwen-Image's joint-attention processor (text tokens first, a text mask, complex rotary positions)."""


def masked_text_block(
    query: torch.Tensor, key: torch.Tensor, text: slice, scale: float, key_mask: torch.Tensor
) -> torch.Tensor:
    """p's image → text block with masked keys: softmax over the allowed keys, then the ``text`` columns.

    query [B, heads, rows, d], key [B, heads, L, d], key_mask [B, L] (True: allowed) → [B, heads, rows, T],
    computed in blocks of query rows so that the [rows, L] scores never exist whole."""
    batch, heads, rows_total, length = *query.shape[:3], key.shape[2]
    blocked = ~key_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
    rows = max(1, CHUNK_ELEMENTS // (batch * heads * length))
    blocks = []
    for start in range(0, rows_total, rows):
        scores = (query[:, :, start : start + rows] @ key.transpose(-1, -2)).float() * scale
        scores = scores.masked_fill(blocked, float("-inf"))
        blocks.append(scores.softmax(dim=-1).to(query.dtype)[..., text])
    return torch.cat(blocks, dim=2)


class QwenAttentionCapture:
    """A Qwen-Image block's joint attention as its own processor computes it, with p beside it."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [B, h·w/4, C] the packed image tokens
        encoder_hidden_states: torch.Tensor | None = None,  # [B, T, C] the text tokens
        encoder_hidden_states_mask: torch.Tensor | None = None,  # [B, T] bool, or None (no padding)
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,  # (image frequencies, text frequencies)
    ) -> Any:
        kwargs = dict(
            encoder_hidden_states=encoder_hidden_states,
            encoder_hidden_states_mask=encoder_hidden_states_mask,
            attention_mask=attention_mask,
            image_rotary_emb=image_rotary_emb,
        )
        if encoder_hidden_states is None or not self.capture.active:
            return self.original(attn, hidden_states, **kwargs)
        if not self.capture.reads_probs(self.layer):
            image_out, text_out = self.original(attn, hidden_states, **kwargs)
            return self.capture.output(self.layer, image_out), text_out
        with projections(attn, ("to_q", "to_k", "add_k_proj")) as seen:
            image_out, text_out = self.original(attn, hidden_states, **kwargs)  # the model's own outputs
        query, key = self._queries_keys(attn, seen, image_rotary_emb)
        n_text, scale = encoder_hidden_states.shape[1], query.shape[-1] ** -0.5
        if encoder_hidden_states_mask is None:
            block = text_block(query, key, slice(0, n_text), scale)  # [B, heads, h·w, T]
        else:
            image_keys = torch.ones(query.shape[0], query.shape[2], dtype=torch.bool, device=query.device)
            key_mask = torch.cat([encoder_hidden_states_mask.bool(), image_keys], dim=1)  # [B, T + h·w]
            block = masked_text_block(query, key, slice(0, n_text), scale, key_mask)
        new_block = self.capture.probs(self.layer, block)
        if new_block is not block:  # a hook replaced p: add what p' − p changes
            value = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
            change = (new_block - block).to(value.dtype) @ value  # [B, heads, h·w, d]
            change = change.transpose(1, 2).flatten(2, 3)  # [B, h·w, heads·d]
            image_out = image_out + projection_change(attn.to_out[0], change)
        return self.capture.output(self.layer, image_out), text_out  # [B, h·w, C], [B, T, C]

    @staticmethod
    def _queries_keys(
        attn: Any, seen: dict[str, torch.Tensor], rotary: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image queries [B, heads, h·w, d] and all keys [B, heads, T + h·w, d] (text first), as the
        processor forms them: per-head norms, then Qwen's rotary positions."""
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        head_dim = attn.inner_dim // attn.heads
        query = seen["to_q"].unflatten(-1, (-1, head_dim))  # [B, h·w, heads, d]
        image_key = seen["to_k"].unflatten(-1, (-1, head_dim))
        text_key = seen["add_k_proj"].unflatten(-1, (-1, head_dim))  # [B, T, heads, d]
        query = query if attn.norm_q is None else attn.norm_q(query)
        image_key = image_key if attn.norm_k is None else attn.norm_k(image_key)
        text_key = text_key if attn.norm_added_k is None else attn.norm_added_k(text_key)
        if rotary is not None:
            image_freqs, text_freqs = rotary
            query = apply_rotary_emb_qwen(query, image_freqs, use_real=False)
            image_key = apply_rotary_emb_qwen(image_key, image_freqs, use_real=False)
            text_key = apply_rotary_emb_qwen(text_key, text_freqs, use_real=False)
        key = torch.cat([text_key, image_key], dim=1)  # [B, T + h·w, heads, d]
        return query.transpose(1, 2), key.transpose(1, 2)


PROCESSOR_WRAPPERS.update(dict.fromkeys(QWEN_PROCESSORS, QwenAttentionCapture))
