"""A cross-attention layer computed explicitly, for the rare layer whose output is more than to_out(p·V).

A layer with a spatial or group norm, a residual connection inside, or a rescaled output (none of the
U-Nets' text layers has one) cannot take a change of p as a change of its output after the fact, so
it is computed here as diffusers' plain ``AttnProcessor`` does, with the softmax written out: p goes
to the capture (hooks may replace it, the maps are summed), then p·V. This equals the model's SDPA
processors to float precision, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch


def explicit_cross_attention(
    wrapper: Any,  # a CrossAttentionCapture: its layer name and capture
    attn: Any,
    hidden_states: torch.Tensor,  # [2B or B, h·w, C] (or [.., C, h, w])
    encoder_hidden_states: torch.Tensor,  # [2B or B, T, D]
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
) -> torch.Tensor:
    """The layer as ``AttnProcessor`` computes it, with p handed to ``wrapper.capture``."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = encoder_hidden_states.shape
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    query = attn.head_to_batch_dim(query)  # [2B·heads, h·w, d]
    key = attn.head_to_batch_dim(key)  # [2B·heads, T, d]
    value = attn.head_to_batch_dim(value)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)

    probs = attn.get_attention_scores(query, key, attention_mask)  # [2B·heads, h·w, T]
    shape = probs.shape
    probs = wrapper.capture.probs(wrapper.layer, probs.view(batch_size, attn.heads, *shape[1:]))
    hidden_states = torch.bmm(probs.reshape(shape), value)  # [2B·heads, h·w, d]
    hidden_states = attn.batch_to_head_dim(hidden_states)  # [2B, h·w, heads·d]

    hidden_states = attn.to_out[0](hidden_states)  # linear projection
    hidden_states = attn.to_out[1](hidden_states)  # dropout
    hidden_states = wrapper.capture.output(wrapper.layer, hidden_states)  # [2B, h·w, C]
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor
