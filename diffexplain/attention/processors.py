"""Attention processors that show the text attention's probabilities without changing the layer's output.

diffusers' processors call ``scaled_dot_product_attention`` (SDPA), which never exposes
p = softmax(QKᵀ/√d). The wrappers here call the processor that was set on the layer, so each layer's
output is the model's own, bit for bit, and compute p *beside* it from the same queries and keys
(read from the layer's projections as the processor calls them: forward hooks held for that one call).
p goes to the capture: hooks may read or replace it, and the maps are summed from it.

Notation (one layer, one branch)::

    Q [heads, h·w, d]   image queries      K [heads, T (+ h·w), d]   keys      V_text [heads, T, d]
    p = softmax(Q·Kᵀ/√d) restricted to the text columns       out = to_out(p·V)   (the layer's output)

When a hook replaces p by p' the output changes by what p' − p changes, and nothing else (out is
linear in p, and to_out is affine)::

    out' = out + to_out((p' − p)·V_text) − to_out(0)

so a hook that hands p back unchanged leaves the output bit for bit the model's. No forward is
patched: the capture sets these with ``Attention.set_processor`` and sets the originals back when
the run ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.explicit import explicit_cross_attention

if TYPE_CHECKING:
    from diffexplain.attention.capture import AttentionCapture

NORMS_ACROSS_HEADS = frozenset({"SanaAttnProcessor2_0"})
"""Plain processors that apply ``norm_q`` / ``norm_k`` to the projections before splitting the heads
(SANA's cross-attention; SANA 1.5's ``qk_norm="rms_norm_across_heads"``), not per head."""

PLAIN_PROCESSORS = NORMS_ACROSS_HEADS | frozenset(
    {"AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor", "AttnProcessorNPU"}
)
"""Processors that compute plain attention (no adapters or IP layers): p beside them is the layer's p."""

FLUX_PROCESSORS = frozenset({"FluxAttnProcessor", "FluxAttnProcessor2_0", "Flux2AttnProcessor"})
"""Flux's and FLUX.2's joint-attention processors (text tokens first, rotary positions on queries and keys)."""

JOINT_PROCESSORS = frozenset({"JointAttnProcessor2_0", "QwenDoubleStreamAttnProcessor2_0"}) | FLUX_PROCESSORS
"""SD3's, Flux's and Qwen-Image's joint-attention processors (Qwen-Image's: ``attention.qwen``)."""

PROCESSOR_WRAPPERS: dict[str, Any] = {}
"""A family's own joint-attention processor (by class name) → the wrapper that captures it, registered by
the family's module (Z-Image's ``ZSingleStreamAttnProcessor``: ``families.z_image_attention``)."""

SINGLE_PROCESSORS = frozenset({"Flux3AttnProcessor"})
"""FLUX.3's processor: plain attention over the joint sequence (text first) of its single blocks."""

CHUNK_ELEMENTS = 2**26
"""Joint attention's scores are computed in blocks of query rows of at most this many elements (256 MiB
in float32), so memory stays bounded at any image size."""


def check_original(layer_name: str, processor: Any, kind: str) -> None:
    """``ValueError`` unless ``processor`` computes plain attention, whose p the wrapper can compute beside it."""
    known = {"joint": JOINT_PROCESSORS | set(PROCESSOR_WRAPPERS), "single": SINGLE_PROCESSORS}.get(
        kind, PLAIN_PROCESSORS
    )
    name = type(processor).__name__
    if name.endswith("AttentionCapture") or name == "SingleStreamCapture":
        raise RuntimeError(
            f"layer {layer_name!r} is already being captured: a run started inside another run's hook?"
        )
    if name not in known:
        raise ValueError(
            f"attention maps need to read layer {layer_name!r}'s attention, but it uses {name}, "
            f"which may do more than plain attention (expected one of {', '.join(sorted(known))}). "
            "Run with attention_maps=False, or set a plain processor: model.set_attn_processor(AttnProcessor())"
        )


@contextmanager
def projections(attn: torch.nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The outputs of ``attn``'s projection layers ``names`` (e.g. ``to_q``) as the processor calls them
    inside the ``with`` block: forward hooks that only read, removed on exit."""
    seen: dict[str, torch.Tensor] = {}

    def reader(name: str) -> Any:
        def read(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            seen[name] = output

        return read

    handles = [getattr(attn, name).register_forward_hook(reader(name)) for name in names]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in seen]
    if missing:
        raise RuntimeError(
            f"the attention processor did not call {', '.join(missing)}: fused projections? "
            "Unfuse them (model.unfuse_qkv_projections()), or run with attention_maps=False"
        )


def projection_change(projection: torch.nn.Module, change: torch.Tensor) -> torch.Tensor:
    """What an affine ``projection`` (to_out) adds for an input change: f(change) − f(0)."""
    return projection(change) - projection(torch.zeros_like(change[..., :1, :]))


def text_block(
    query: torch.Tensor, key: torch.Tensor, text: slice, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """p's image → text block: softmax over all keys of ``query``·``key``ᵀ·scale, then the ``text`` columns.

    query [B, heads, h·w, d] (image rows only), key [B, heads, L, d] → [B, heads, h·w, T]. Each row's
    normaliser, logsumexp over all L keys, comes from torch's fused CPU attention kernel where there is
    one (``row_logsumexp``): p = exp(q·k_textᵀ·scale − lse), and the [h·w, L] scores never exist.
    Elsewhere the scores are computed in blocks of query rows, so that they never exist whole either
    (SD3 at 1024²: L = 4096 + 333). ``bias``: the attention mask of the image rows as SDPA reads it,
    added to the scores, [B, 1, h·w, L] (Chroma's text mask: float 0/1, or boolean, False → −∞).
    """
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=query.dtype, device=bias.device).masked_fill(
            ~bias, float("-inf")
        )
    lse = row_logsumexp(query, key, scale, bias)  # [B, heads, h·w]
    if lse is not None:
        scores = (query @ key[:, :, text].transpose(-1, -2)) * scale  # [B, heads, h·w, T]
        if bias is not None:
            scores = scores + bias[..., text].to(scores.dtype)
        return torch.exp(scores.float() - lse.float()[..., None]).to(query.dtype)
    batch, heads, rows_total, length = *query.shape[:3], key.shape[2]
    rows = max(1, CHUNK_ELEMENTS // (batch * heads * length))
    blocks = []
    for start in range(0, rows_total, rows):
        scores = (query[:, :, start : start + rows] @ key.transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias[:, :, start : start + rows].to(scores.dtype)
        blocks.append(scores.float().softmax(dim=-1).to(query.dtype)[..., text])  # [B, heads, rows, T]
    return torch.cat(blocks, dim=2)


def row_logsumexp(
    query: torch.Tensor, key: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """logsumexp over the keys of each query row's scores (plus ``bias``, an additive mask), [B, heads,
    rows], from torch's fused CPU attention kernel (which returns it beside its output; the values it is
    given are zeros); None where that kernel is not available (another device, an older torch) or refuses
    the inputs."""
    kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if kernel is None or query.device.type != "cpu" or query.dtype not in (torch.float32, torch.bfloat16):
        return None
    try:
        values = torch.zeros_like(key)  # the kernel wants values of the keys' head size
        mask = None if bias is None else bias.to(query.dtype).expand(*query.shape[:3], key.shape[2])
        return kernel(query, key, values, 0.0, False, attn_mask=mask, scale=scale)[1]
    except RuntimeError:  # shapes or strides it does not take: the blocked softmax instead
        return None


def is_plain(attn: Any, hidden_states: torch.Tensor) -> bool:
    """A cross-attention layer whose output is to_out(p·V) alone (no norms, residual or rescale inside)."""
    return (
        hidden_states.ndim == 3
        and attn.spatial_norm is None
        and attn.group_norm is None
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
    )


def image_rows_mask(
    attention_mask: torch.Tensor | None, n_text: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A Flux-style joint mask [B, 1, T + N, T + N] (text first; Chroma's) as the image queries see it:
    (bias [B, 1, N, T + N], SDPA's reading of it; keep [B, T], the text tokens the mask lets through),
    or (None, None) without a mask. The mask may be boolean, or float as SDPA adds it (ChromaPipeline's
    0/1: a kept token's scores get +1, the others +0)."""
    if attention_mask is None:
        return None, None
    if attention_mask.dim() == 2:  # [B, T + N], as SDPA broadcasts it
        attention_mask = attention_mask[:, None, None, :]
    bias = attention_mask[:, :, n_text:, :] if attention_mask.shape[2] > 1 else attention_mask
    keep = bias[:, 0, 0, :n_text] != 0 if bias.dtype != torch.bool else bias[:, 0, 0, :n_text]
    return bias, keep


class CrossAttentionCapture:
    """A U-Net cross-attention layer as its own processor computes it, with p beside it for the capture."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [2B or B, h·w, C]
        encoder_hidden_states: torch.Tensor | None = None,  # [2B or B, T, D] the prompt's token states
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        call = (attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args)
        if temb is None and not args:  # as it was called: SANA's processor takes no temb
            call = call[:4]
        if encoder_hidden_states is None or not self.capture.active:  # self-attention, or another run's call
            return self.original(*call, **kwargs)
        if not is_plain(attn, hidden_states):  # rare (no U-Net text layer is): the layer computed explicitly
            return explicit_cross_attention(
                self, attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        if not self.capture.reads_probs(self.layer):
            return self.capture.output(self.layer, self.original(*call, **kwargs))
        with projections(attn, ("to_q", "to_k")) as seen:
            out = self.original(*call, **kwargs)  # [2B, h·w, C]: the model's own output
        query, key = seen["to_q"], seen["to_k"]  # [2B, h·w, heads·d], [2B, T, heads·d]
        across = type(self.original).__name__ in NORMS_ACROSS_HEADS  # SANA: norms before the heads split
        if across and getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if across and getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        query = attn.head_to_batch_dim(query)  # [2B·heads, h·w, d]
        key = attn.head_to_batch_dim(key)  # [2B·heads, T, d]
        if not across and getattr(attn, "norm_q", None) is not None:  # per-head norms, as AttnProcessor2_0
            query = attn.norm_q(query)
        if not across and getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        batch_size, tokens = encoder_hidden_states.shape[:2]
        mask = attn.prepare_attention_mask(attention_mask, tokens, batch_size)
        probs = attn.get_attention_scores(query, key, mask)  # [2B·heads, h·w, T]
        seen_probs = probs.view(batch_size, attn.heads, *probs.shape[1:])
        new_probs = self.capture.probs(self.layer, seen_probs)
        if new_probs is not seen_probs:  # a hook replaced p: add what p' − p changes
            text = encoder_hidden_states
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            value = attn.head_to_batch_dim(attn.to_v(text))  # [2B·heads, T, d]
            change = torch.bmm((new_probs - seen_probs).reshape(probs.shape).to(value.dtype), value)
            out = out + projection_change(attn.to_out[0], attn.batch_to_head_dim(change))
        return self.capture.output(self.layer, out)  # [2B, h·w, C]


class JointAttentionCapture:
    """SD3's and Flux's joint attention as their own processors compute it, with the image → text block
    of p beside it for the capture."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture
        self.flux = type(original).__name__ in FLUX_PROCESSORS

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [2B or B, h·w, C] image tokens (Flux: packed, h·w/4)
        encoder_hidden_states: torch.Tensor | None = None,  # [2B or B, T, C] text tokens
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        call = (attn, hidden_states, encoder_hidden_states, attention_mask, *args)
        if encoder_hidden_states is None or not self.capture.active:
            return self.original(*call, **kwargs)
        if not self.capture.reads_probs(self.layer):
            image_out, text_out = self.original(*call, **kwargs)
            return self.capture.output(self.layer, image_out), text_out
        if attention_mask is not None and not self.flux:
            raise ValueError(
                f"attention maps of layer {self.layer!r}: an attention mask is not supported; "
                "run with attention_maps=False"
            )
        with projections(attn, ("to_q", "to_k", "add_k_proj")) as seen:
            image_out, text_out = self.original(*call, **kwargs)  # the model's own outputs
        rotary = (args[0] if args else kwargs.get("image_rotary_emb")) if self.flux else None
        query, key, text = self._queries_keys(attn, seen, rotary)
        bias, keep = image_rows_mask(attention_mask, text.stop)  # Chroma's text mask, else None
        block = text_block(query, key, text, query.shape[-1] ** -0.5, bias)  # [2B, heads, h·w, T]
        new_block = (  # keep: the tokens a mask lets through, for the maps (only with a mask)
            self.capture.probs(self.layer, block)
            if keep is None
            else self.capture.probs(self.layer, block, keep)
        )
        if new_block is not block:  # a hook replaced p: add what p' − p changes
            value = self._heads(attn, attn.add_v_proj(encoder_hidden_states))  # [2B, heads, T, d]
            change = (new_block - block).to(value.dtype) @ value  # [2B, heads, h·w, d]
            change = change.transpose(1, 2).flatten(2, 3)  # [2B, h·w, heads·d]
            image_out = image_out + projection_change(attn.to_out[0], change)
        return self.capture.output(self.layer, image_out), text_out  # [2B, h·w, C], [2B, T, C]

    @staticmethod
    def _heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads·d] → [B, heads, L, d]."""
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

    def _queries_keys(
        self, attn: Any, seen: dict[str, torch.Tensor], rotary: Any
    ) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """The image queries [B, heads, h·w, d], all keys [B, heads, L, d] as the processor forms them
        (per-head norms, and Flux's rotary positions), and where the text keys sit among them."""
        query = self._heads(attn, seen["to_q"])  # [B, heads, h·w, d]
        image_key, text_key = self._heads(attn, seen["to_k"]), self._heads(attn, seen["add_k_proj"])
        query = query if attn.norm_q is None else attn.norm_q(query)  # per-head norms over d
        image_key = image_key if attn.norm_k is None else attn.norm_k(image_key)
        text_key = text_key if attn.norm_added_k is None else attn.norm_added_k(text_key)
        n_text = text_key.shape[2]
        if not self.flux:  # SD3: image tokens first
            return query, torch.cat([image_key, text_key], dim=2), slice(query.shape[2], None)
        key = torch.cat([text_key, image_key], dim=2)  # Flux: text tokens first
        if rotary is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            cos, sin = rotary
            key = apply_rotary_emb(key, rotary, sequence_dim=2)
            query = apply_rotary_emb(query, (cos[n_text:], sin[n_text:]), sequence_dim=2)
        return query, key, slice(0, n_text)
