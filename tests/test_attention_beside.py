"""p beside the layer: the wrappers keep each text layer's own output and compute p from its q and k.

Each wrapper is called here on one real attention layer of a tiny model with a small stand-in for the
run's capture (it hands p to a function and counts the calls). The oracle is the layer computed with
p written out: a hook that hands p back leaves the output bit for bit the layer's own, and a hook that
changes p changes the output exactly as computing the layer with the changed p does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from diffexplain.attention.explicit import explicit_cross_attention
from diffexplain.attention.processors import CrossAttentionCapture, JointAttentionCapture
from tests.tiny_families import tiny_flux_pipeline, tiny_sd3_pipeline


class Capture:
    """The part of ``AttentionCapture`` a wrapper calls: p goes through ``edit``; outputs pass."""

    def __init__(self, edit: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.edit, self.active, self.seen = edit, True, []

    def reads_probs(self, layer: str) -> bool:
        return True

    def probs(self, layer: str, probs: torch.Tensor) -> torch.Tensor:
        self.seen.append(probs)
        return self.edit(probs)

    def output(self, layer: str, out: torch.Tensor) -> torch.Tensor:
        return out


def halve_first_token(p: torch.Tensor) -> torch.Tensor:
    p = p.clone()
    p[..., 1] = p[..., 1] * 0.5
    return p


EDITS = {"unchanged": lambda p: p, "a copy": lambda p: p.clone(), "first token halved": halve_first_token}


def cross_layer(parts: dict) -> torch.nn.Module:
    return next(
        m for m in parts["unet"].modules() if type(m).__name__ == "Attention" and m.is_cross_attention
    )


@pytest.mark.parametrize("edit", list(EDITS))
def test_cross_attention_keeps_the_layer_and_adds_the_change_of_p(parts, edit):
    layer = cross_layer(parts)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, layer.query_dim, generator=generator)  # [2B, h·w, C]
    text = torch.randn(2, 5, layer.cross_attention_dim, generator=generator)  # [2B, T, D]
    own = layer.processor(layer, hidden, text)
    capture = Capture(EDITS[edit])
    wrapped = CrossAttentionCapture(layer.processor, "L", capture)(layer, hidden, text)
    explicit = explicit_cross_attention(
        CrossAttentionCapture(None, "L", Capture(EDITS[edit])), layer, hidden, text, None, None
    )
    p = capture.seen[0]
    assert p.shape == (2, layer.heads, 16, 5) and torch.allclose(p.sum(-1), torch.ones(()))
    if edit == "first token halved":
        torch.testing.assert_close(wrapped, explicit, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(wrapped, own, atol=1e-4)
    else:
        assert torch.equal(wrapped, own)  # the layer's own output, bit for bit


def joint_explicit(attn, hidden, text, edit, rotary=None, *, text_first=False) -> torch.Tensor:
    """SD3's (image first) or Flux's (text first) joint attention with p written out, image block edited."""

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # [B, heads, L, d]

    def normed(norm, x):
        return x if norm is None else norm(x)

    image = [heads(attn.to_q(hidden)), heads(attn.to_k(hidden)), heads(attn.to_v(hidden))]
    words = [heads(attn.add_q_proj(text)), heads(attn.add_k_proj(text)), heads(attn.add_v_proj(text))]
    image[0], image[1] = normed(attn.norm_q, image[0]), normed(attn.norm_k, image[1])
    words[0], words[1] = normed(attn.norm_added_q, words[0]), normed(attn.norm_added_k, words[1])
    q, k, v = (torch.cat([w, i] if text_first else [i, w], dim=2) for i, w in zip(image, words, strict=True))
    if rotary is not None:
        q, k = apply_rotary_emb(q, rotary, sequence_dim=2), apply_rotary_emb(k, rotary, sequence_dim=2)
    p = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
    n_image, n_text = hidden.shape[1], text.shape[1]
    rows, cols = (
        (slice(n_text, None), slice(0, n_text)) if text_first else (slice(0, n_image), slice(n_image, None))
    )
    p[:, :, rows, cols] = edit(p[:, :, rows, cols])
    out = (p @ v).transpose(1, 2).flatten(2, 3)[:, rows]
    return attn.to_out[0](out)


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_attention_keeps_the_layer_and_adds_the_change_of_p(family, edit):
    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline()
    model = pipe.transformer
    layer = next(m for m in model.modules() if getattr(m, "add_k_proj", None) is not None)
    generator = torch.Generator().manual_seed(1)
    dim = layer.to_q.in_features
    hidden = torch.randn(2, 16, dim, generator=generator)  # [2B, h·w, C]
    text = torch.randn(2, 6, layer.add_k_proj.in_features, generator=generator)  # [2B, T, C]
    args: tuple = ()
    rotary = None
    if family == "flux":
        ids = torch.cat(
            [
                torch.zeros(6, 3),
                torch.stack(
                    torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
                ).reshape(16, 3),
            ]
        )
        rotary = model.pos_embed(ids)
        args = (None, rotary)
    own_image, own_text = layer.processor(layer, hidden, text, *args)
    capture = Capture(EDITS[edit])
    image, words = JointAttentionCapture(layer.processor, "L", capture)(layer, hidden, text, *args)
    assert torch.equal(words, own_text)
    p = capture.seen[0]
    assert p.shape == (2, layer.heads, 16, 6)
    if edit == "first token halved":
        expected = joint_explicit(layer, hidden, text, EDITS[edit], rotary, text_first=family == "flux")
        torch.testing.assert_close(image, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(image, own_image, atol=1e-4)
    else:
        assert torch.equal(image, own_image)  # the layer's own output, bit for bit
    reference = joint_explicit(layer, hidden, text, lambda block: block, rotary, text_first=family == "flux")
    torch.testing.assert_close(own_image, reference, rtol=1e-4, atol=1e-5)  # the oracle is the layer
