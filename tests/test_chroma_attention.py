"""Chroma's joint attention under its text mask: the maps (masked pads left out, the block as the processor
computes it with the mask added), reweight edits, and an edited p against the attention written out."""

from __future__ import annotations

import pytest
import torch
from diffusers import ChromaPipeline
from diffusers.models.embeddings import apply_rotary_emb

from diffexplain import Explainer
from diffexplain.attention import edits
from diffexplain.attention.processors import JointAttentionCapture
from tests.conftest import PROMPT
from tests.test_attention_beside import Capture as StandIn
from tests.test_attention_beside import halve_first_token
from tests.tiny_chroma import CHROMA_MAX_SEQUENCE_LENGTH, tiny_chroma_pipeline

OPTIONS = {"max_sequence_length": CHROMA_MAX_SEQUENCE_LENGTH}


@pytest.fixture(scope="module")
def pipe() -> ChromaPipeline:
    return tiny_chroma_pipeline()


@pytest.fixture(scope="module")
def ex(pipe) -> Explainer:
    return Explainer.from_pipeline(pipe, progress=False)


class Capture(StandIn):
    """The stand-in capture, also taking the tokens a mask lets through (``keep``)."""

    def probs(self, layer: str, probs: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        self.keep = keep  # [B, T]: the tokens the mask lets through, for the maps
        return super().probs(layer, probs)


# ---- maps and edits -----------------------------------------------------------------------------------
def test_joint_attention_maps_under_the_text_mask(ex):
    layers = ex.family.attention_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [("transformer_blocks.0.attn", "joint")]
    point = "attn.transformer_blocks.0.attn.probs.cond"
    inputs = []
    handle = layers[0].module.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs), with_kwargs=True
    )
    try:
        trace = ex.run(PROMPT, num_inference_steps=2, seed=0, guidance_scale=1.0, keep=point, **OPTIONS)
    finally:
        handle.remove()
    # the block as FluxAttnProcessor computes it with Chroma's mask: SDPA adds the float 0/1 mask
    attn, given = layers[0].module, inputs[0]
    text, mask = given["encoder_hidden_states"], given["attention_mask"]  # [1, T, 32], [1, 1, T+N, T+N]
    assert mask.dtype == torch.float32 and mask.shape == (1, 1, 32, 32)
    q = torch.cat(
        [
            attn.norm_added_q(attn.add_q_proj(text).unflatten(-1, (4, 8))),
            attn.norm_q(attn.to_q(given["hidden_states"]).unflatten(-1, (4, 8))),
        ],
        dim=1,
    )
    k = torch.cat(
        [
            attn.norm_added_k(attn.add_k_proj(text).unflatten(-1, (4, 8))),
            attn.norm_k(attn.to_k(given["hidden_states"]).unflatten(-1, (4, 8))),
        ],
        dim=1,
    )
    q, k = (apply_rotary_emb(x, given["image_rotary_emb"], sequence_dim=1).transpose(1, 2) for x in (q, k))
    probs = ((q @ k.transpose(-1, -2)) / 8**0.5 + mask).softmax(-1)  # [1, heads, T + N, T + N]
    block = trace[point, 0]
    assert block.shape == (1, 4, 16, 16)
    torch.testing.assert_close(block, probs[:, :, 16:, :16], rtol=1e-5, atol=1e-6)
    kept = trace.conditioning["cond"]["mask"][0].bool()  # ▁a ▁red ▁square ▁on ▁the ▁left </s> and one pad
    assert float(block[..., ~kept].min()) > 0  # the float mask down-weights the other pads, not removes them
    # the maps leave the masked pads out: zero there, summing to 1 over the kept tokens
    maps = trace.attention_maps()
    assert maps.shape[:2] == (1, 16) and float(maps[:, ~kept].abs().max()) == 0.0
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps[:, 0]), rtol=0, atol=1e-5)
    assert trace.tokens[0].text == "▁a" and trace.attention("red").abs().max() > 0
    # with CFG both branches get maps, each under its own mask
    guided = ex.run(PROMPT, num_inference_steps=2, seed=0, negative_prompt="blue", **OPTIONS)
    assert set(guided.steps[0].attention) == {"cond@4x4", "uncond@4x4"}
    uncond = guided.steps[0].attention["uncond@4x4"]
    assert (
        float(uncond[:, 3:].abs().max()) == 0.0 and float(uncond[:, :3].sum(1).min()) > 0.99
    )  # ▁blue </s> <pad>
    # edits act on the block: a weight of 1 changes nothing, of 0 removes the word
    same = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 1.0), **OPTIONS)
    plain = ex.run(PROMPT, num_inference_steps=2, seed=0, **OPTIONS)
    assert torch.equal(same.final_latents, plain.final_latents)
    gone = ex.run(PROMPT, num_inference_steps=2, seed=0, hooks=edits.reweight("red", 0.0), **OPTIONS)
    assert not torch.equal(gone.final_latents, plain.final_latents)
    assert gone.attention("red").abs().max() == 0


@pytest.mark.parametrize("kind", ["float", "bool"])
@torch.no_grad()
def test_an_edit_of_p_under_the_mask_changes_the_output_by_its_change(pipe, kind):
    """The wrapper keeps the layer's own output and, where p's text block is edited, adds the change of
    p·V: checked against the joint attention written out with the mask added to the scores."""
    model = pipe.transformer
    layer = model.transformer_blocks[0].attn
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, layer.to_q.in_features, generator=generator)  # [B, N, C]
    text = torch.randn(2, 6, layer.add_k_proj.in_features, generator=generator)  # [B, T, C]
    keep = torch.tensor([[1.0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    joint = torch.cat([keep, torch.ones(2, 16)], dim=1)
    mask = joint[:, None, None, :] * joint[:, None, :, None]  # [B, 1, T + N, T + N], as Chroma's blocks
    mask = mask.bool() if kind == "bool" else mask
    grid = torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    rotary = model.pos_embed(torch.cat([torch.zeros(6, 3), torch.stack(grid, -1).reshape(16, 3)]))
    own, _ = layer.processor(layer, hidden, text, mask, rotary)
    capture = Capture(halve_first_token)
    edited, _ = JointAttentionCapture(layer.processor, "L", capture)(layer, hidden, text, mask, rotary)
    same, _ = JointAttentionCapture(layer.processor, "L", Capture(lambda p: p))(
        layer, hidden, text, mask, rotary
    )
    assert torch.equal(same, own)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (layer.heads, -1)).transpose(1, 2)

    q = torch.cat(
        [layer.norm_added_q(heads(layer.add_q_proj(text))), layer.norm_q(heads(layer.to_q(hidden)))], 2
    )
    k = torch.cat(
        [layer.norm_added_k(heads(layer.add_k_proj(text))), layer.norm_k(heads(layer.to_k(hidden)))], 2
    )
    v = torch.cat([heads(layer.add_v_proj(text)), heads(layer.to_v(hidden))], 2)
    q, k = apply_rotary_emb(q, rotary, sequence_dim=2), apply_rotary_emb(k, rotary, sequence_dim=2)
    bias = mask if kind == "float" else torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    p = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias).softmax(-1)  # [B, heads, L, L]
    torch.testing.assert_close(capture.seen[0], p[:, :, 6:, :6], rtol=1e-5, atol=1e-6)
    assert torch.equal(capture.keep, keep.bool())
    if kind == "bool":
        assert float(capture.seen[0][0, :, :, 3:].abs().max()) == 0.0  # a boolean mask removes the pads
    p[:, :, 6:, :6] = halve_first_token(p[:, :, 6:, :6])
    expected = layer.to_out[0]((p @ v).transpose(1, 2).flatten(2, 3)[:, 6:])
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(edited, own, atol=1e-4)
