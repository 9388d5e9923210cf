"""Single-stream text attention (FLUX.3's joint single blocks): text and image tokens concatenated into
one sequence *before* the attention layer, text first, one softmax over all of it.

The layer (``Flux3Attention`` with ``Flux3AttnProcessor``) sees only the joint sequence, [B, T + h·w, C];
the capture knows h·w from the latents, so T = L − h·w. As for SD3's and Flux's joint attention
(``processors.JointAttentionCapture``), the map is the image-query → text-key block of p, computed
beside the layer's own processor from the same projections (per-head RMS norms in float32, rotary
positions on queries and keys, as the processor forms them)::

    q, k  [B, heads, T + h·w, d]      p = softmax(q·kᵀ/√d)[:, :, T:, :T]          [B, heads, h·w, T]

A hook that replaces p by p' changes the image rows of the output by to_out((p' − p)·V_text) − to_out(0);
the text rows are left as the model computed them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.processors import projection_change, projections, text_block

if TYPE_CHECKING:
    from diffexplain.attention.capture import AttentionCapture


class SingleStreamCapture:
    """A single-stream layer as its own processor computes it, with the image → text block of p beside it."""

    def __init__(self, original: Any, layer: str, capture: AttentionCapture) -> None:
        self.original, self.layer, self.capture = original, layer, capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # [B, T + h·w, C]: text tokens, then image tokens
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        call = (attn, hidden_states, attention_mask, image_rotary_emb)
        if not self.capture.active:
            return self.original(*call)
        rows, cols = self.capture.latent_size
        n_image = rows * cols
        n_text = hidden_states.shape[1] - n_image
        if n_text <= 0:
            raise RuntimeError(
                f"attention layer {self.layer!r} saw {hidden_states.shape[1]} tokens, not the text and the "
                f"{n_image} image tokens of a {rows}×{cols} latent grid"
            )
        if attention_mask is not None:
            raise ValueError(
                f"attention maps of layer {self.layer!r}: an attention mask is not supported; "
                "run with attention_maps=False"
            )
        image = slice(n_text, n_text + n_image)
        if not self.capture.reads_probs(self.layer):
            return self._with_output(self.original(*call), image)
        with projections(attn, ("to_q", "to_k", "to_v")) as seen:
            out = self.original(*call)  # [B, L, C]: the model's own output
        dtype = seen["to_v"].dtype
        query = self._form(seen["to_q"], attn.heads, attn.norm_q, image_rotary_emb, dtype)  # [B, heads, L, d]
        key = self._form(seen["to_k"], attn.heads, attn.norm_k, image_rotary_emb, dtype)
        block = text_block(
            query[:, :, image], key, slice(0, n_text), query.shape[-1] ** -0.5
        )  # [B, heads, h·w, T]
        new_block = self.capture.probs(self.layer, block)
        if new_block is not block:  # a hook replaced p: add what p' − p changes to the image rows
            value = (
                seen["to_v"].unflatten(-1, (attn.heads, -1))[:, :n_text].transpose(1, 2)
            )  # [B, heads, T, d]
            change = (
                ((new_block - block).to(value.dtype) @ value).transpose(1, 2).flatten(2, 3)
            )  # [B, h·w, heads·d]
            out = torch.cat(
                [
                    out[:, :n_text],
                    out[:, image] + projection_change(attn.to_out[0], change),
                    out[:, image.stop :],
                ],
                dim=1,
            )
        return self._with_output(out, image)

    @staticmethod
    def _form(x: torch.Tensor, heads: int, norm: Any, rotary: Any, dtype: torch.dtype) -> torch.Tensor:
        """Queries or keys as ``Flux3AttnProcessor`` forms them: the per-head RMS norm in float32, rotary
        positions, back to the values' dtype; [B, L, heads·d] → [B, heads, L, d]."""
        x = norm(x.unflatten(-1, (heads, -1)).float())
        if rotary is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            x = apply_rotary_emb(x, rotary, sequence_dim=1)
        return x.to(dtype).transpose(1, 2)

    def _with_output(self, out: torch.Tensor, image: slice) -> torch.Tensor:
        """The layer's output with its image rows through the ``attn.L.out.*`` hooks."""
        image_out = out[:, image]  # [B, h·w, C]
        new = self.capture.output(self.layer, image_out)
        if new is image_out:
            return out
        return torch.cat([out[:, : image.start], new, out[:, image.stop :]], dim=1)
