"""Attention processors that compute the text attention once, explicitly, so its probabilities show.

diffusers' default processors call ``scaled_dot_product_attention``, which never exposes
p = softmax(QKᵀ/√d). These wrap the processor that was set on a layer and compute the layer as
diffusers' plain ``AttnProcessor`` (cross-attention) or ``JointAttnProcessor2_0`` (SD3) does, with
the softmax written out: p goes to the capture (hooks may replace it, the maps are summed), then
p·V. Nothing is computed twice, and no forward is patched: the capture sets these with
``Attention.set_processor`` and sets the originals back when the run ends.

Bit-level note: the explicit softmax is the same mathematics as SDPA but not the same rounding, so a
run with maps equals a pipeline whose cross-attention layers use ``AttnProcessor`` bit for bit, and
a pipeline with SDPA to float precision (``run(attention_maps=False)`` leaves the model untouched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffexplain.attention.capture import AttentionCapture

PLAIN_PROCESSORS = frozenset(
    {"AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor", "AttnProcessorNPU"}
)
"""Processors that compute plain attention: the explicit computation is the same layer."""

FLUX_PROCESSORS = frozenset({"FluxAttnProcessor", "FluxAttnProcessor2_0"})
"""Flux's joint-attention processors (text tokens first, rotary positions on queries and keys)."""

JOINT_PROCESSORS = frozenset({"JointAttnProcessor2_0"}) | FLUX_PROCESSORS
"""SD3's and Flux's joint-attention processors."""

CHUNK_ELEMENTS = 2**26
"""Joint attention's scores are computed in blocks of query rows of at most this many elements (256 MiB
in float32), so memory stays bounded at any image size."""


def check_original(layer_name: str, processor: Any, kind: str) -> None:
    """``ValueError`` unless ``processor`` computes what the explicit one does (no adapters or IP layers)."""
    known = JOINT_PROCESSORS if kind == "joint" else PLAIN_PROCESSORS
    name = type(processor).__name__
    if name in ("CrossAttentionCapture", "JointAttentionCapture"):
        raise RuntimeError(
            f"layer {layer_name!r} is already being captured: a run started inside another run's hook?"
        )
    if name not in known:
        raise ValueError(
            f"attention maps need to compute layer {layer_name!r} explicitly, but it uses {name}, "
            f"which may do more than plain attention (expected one of {', '.join(sorted(known))}). "
            "Run with attention_maps=False, or set a plain processor: model.set_attn_processor(AttnProcessor())"
        )


class CrossAttentionCapture:
    """Cross-attention as diffusers' ``AttnProcessor``, with p handed to the capture."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [2B or B, h·w, C] (or [.., C, h, w])
        encoder_hidden_states: torch.Tensor | None = None,  # [2B or B, T, D] the prompt's token states
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or not self.capture.active:  # self-attention, or another run's call
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
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
        if getattr(attn, "norm_q", None) is not None:  # per-head norms over d, as AttnProcessor2_0
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        probs = attn.get_attention_scores(query, key, attention_mask)  # [2B·heads, h·w, T]
        shape = probs.shape
        probs = self.capture.probs(self.layer, probs.view(batch_size, attn.heads, *shape[1:]))
        hidden_states = torch.bmm(probs.reshape(shape), value)  # [2B·heads, h·w, d]
        hidden_states = attn.batch_to_head_dim(hidden_states)  # [2B, h·w, heads·d]

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        hidden_states = self.capture.output(self.layer, hidden_states)  # [2B, h·w, C]
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class JointAttentionCapture:
    """SD3's joint attention as ``JointAttnProcessor2_0``, with the image → text block of p captured."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [2B or B, h·w, C] image tokens
        encoder_hidden_states: torch.Tensor | None = None,  # [2B or B, T, C] text tokens
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None or not self.capture.active:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        if type(self.original).__name__ in FLUX_PROCESSORS:
            rotary = args[0] if args else kwargs.get("image_rotary_emb")
            return flux_joint_attention(
                self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary
            )
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [2B, heads, L, d]

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_query = heads(attn.add_q_proj(encoder_hidden_states))
        text_key = heads(attn.add_k_proj(encoder_hidden_states))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_query = attn.norm_added_q(text_query)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
        query = torch.cat([query, text_query], dim=2)  # [2B, heads, h·w + T, d]
        key = torch.cat([key, text_key], dim=2)
        value = torch.cat([value, text_value], dim=2)

        # p = softmax(QKᵀ/√d) over image and text keys, computed once, in blocks of query rows so that
        # the [L, L] matrix never exists whole (SD3 at 1024²: L = 4096 + 333). out = p·V.
        n_image, length = residual.shape[1], query.shape[2]
        out = torch.empty_like(query)  # [2B, heads, L, d]
        rows = max(1, CHUNK_ELEMENTS // (batch_size * attn.heads * length))
        blocks = []
        for start in range(0, length, rows):
            scores = (query[:, :, start : start + rows] @ key.transpose(-1, -2)) * attn.scale
            probs = scores.float().softmax(dim=-1).to(query.dtype)  # [2B, heads, rows, L]
            out[:, :, start : start + rows] = probs @ value
            if start < n_image:  # image queries → text keys, copied out of the chunk
                blocks.append(probs[:, :, : n_image - start, n_image:].clone())
        block = torch.cat(blocks, dim=2)  # [2B, heads, h·w, T]
        new_block = self.capture.probs(self.layer, block)
        if new_block is not block:  # out is linear in p: add what the changed text columns change
            change = (new_block - block) @ value[:, :, n_image:]  # [2B, heads, h·w, d]
            out[:, :, :n_image] = out[:, :, :n_image] + change
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states, encoder_hidden_states = hidden_states[:, :n_image], hidden_states[:, n_image:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout
        hidden_states = self.capture.output(self.layer, hidden_states)  # [2B, h·w, C]
        return hidden_states, encoder_hidden_states


def flux_joint_attention(
    wrapper: JointAttentionCapture,
    attn: Any,
    hidden_states: torch.Tensor,  # [2B or B, h·w/4, C] packed image tokens
    encoder_hidden_states: torch.Tensor,  # [2B or B, T, C] text tokens
    attention_mask: torch.Tensor | None,
    image_rotary_emb: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's double-stream joint attention as ``FluxAttnProcessor``, with the image → text block of p
    captured. Unlike SD3, the text tokens come first, and queries and keys get rotary positions."""
    from diffusers.models.embeddings import apply_rotary_emb

    if attention_mask is not None:
        raise ValueError(
            f"attention maps of layer {wrapper.layer!r}: an attention mask is not supported; "
            "run with attention_maps=False"
        )
    if getattr(attn, "fused_projections", False):
        raise ValueError(
            f"attention maps of layer {wrapper.layer!r} need unfused projections: "
            "call transformer.unfuse_qkv_projections(), or run with attention_maps=False"
        )
    batch_size, n_text = hidden_states.shape[0], encoder_hidden_states.shape[1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, attn.head_dim))  # [2B, L, heads, d]

    query = attn.norm_q(heads(attn.to_q(hidden_states)))
    key = attn.norm_k(heads(attn.to_k(hidden_states)))
    value = heads(attn.to_v(hidden_states))
    text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
    text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
    text_value = heads(attn.add_v_proj(encoder_hidden_states))
    query = torch.cat([text_query, query], dim=1)  # [2B, T + h·w/4, heads, d]
    key = torch.cat([text_key, key], dim=1)
    value = torch.cat([text_value, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # [2B, heads, L, d]

    # p = softmax(QKᵀ/√d) in blocks of query rows (as SD3's); out = p·V
    length, scale = query.shape[2], attn.head_dim**-0.5
    out = torch.empty_like(query)
    rows = max(1, CHUNK_ELEMENTS // (batch_size * query.shape[1] * length))
    blocks = []
    for start in range(0, length, rows):
        scores = (query[:, :, start : start + rows] @ key.transpose(-1, -2)) * scale
        probs = scores.float().softmax(dim=-1).to(query.dtype)  # [2B, heads, rows, L]
        out[:, :, start : start + rows] = probs @ value
        if start + probs.shape[2] > n_text:  # image queries → text keys, copied out of the chunk
            blocks.append(probs[:, :, max(n_text - start, 0) :, :n_text].clone())
    block = torch.cat(blocks, dim=2)  # [2B, heads, h·w/4, T]
    new_block = wrapper.capture.probs(wrapper.layer, block)
    if new_block is not block:  # out is linear in p: add what the changed text columns change
        out[:, :, n_text:] = out[:, :, n_text:] + (new_block - block) @ value[:, :, :n_text]
    hidden_states = out.transpose(1, 2).flatten(2, 3).to(query.dtype)  # [2B, L, heads·d]
    encoder_hidden_states, hidden_states = hidden_states[:, :n_text], hidden_states[:, n_text:]
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))  # projection, dropout
    hidden_states = wrapper.capture.output(wrapper.layer, hidden_states)  # [2B, h·w/4, C]
    return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
