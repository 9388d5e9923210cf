"""Training-time supervision of cross-attention: each object's words are read in the object's half.

In a two-object caption ("a red circle on the left and a blue square on the right") the dataset knows
which half of the picture each object is in. Plain ε-loss leaves the U-Net free to read "red" on either
side and let the starting noise choose (see ``benchmarks/bench_attention.py``). This loss asks every
supervised cross-attention layer to read each object's colour and shape words in that object's half,
at every noise level, so the layer's queries have to learn where they are.

Notation (per supervised layer, heads averaged, padding tokens included in the softmax):
    p[b, q, k]   attention probability of query pixel q (on the layer's h×w grid) for caption token k
    a[q]         = p[b, q, k] / Σ_q' p[b, q', k]: where on the grid word k is read (sums to 1)
    m            = Σ_{q in the object's half} a[q]: the share of that reading in the right half
    loss         = mean over (layer, word) of (1 − m)²   (0 when every word is read only in its half)

It is a training loss only: the U-Net stays a plain diffusers ``UNet2DConditionModel`` and the recording
processors are removed when the ``with`` block ends. This follows TokenCompose (Wang et al., CVPR 2024),
which supervises Stable Diffusion's cross-attention with object masks; here the masks are the halves the
caption names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import PreTrainedTokenizerBase

from diffexplain.data.checker import parse_caption

UNSUPERVISED_LAYERS: tuple[str, ...] = ("down_blocks.0.",)
"""Cross-attention layers left free. The first down block sees only a few latent pixels around each
query (about ±3 of 16), so at high noise its queries cannot know which half they are in."""

HALVES = ("left", "right", "top", "bottom")


def half_masks(side: int) -> torch.Tensor:
    """[4, side·side] masks of the left, right, top and bottom halves of a side×side grid (row-major)."""
    masks = torch.zeros(4, side, side)
    half = side // 2
    masks[0, :, :half] = 1
    masks[1, :, half:] = 1
    masks[2, :half, :] = 1
    masks[3, half:, :] = 1
    return masks.reshape(4, side * side)


def object_words(tokenizer: PreTrainedTokenizerBase, caption: str) -> list[tuple[int, int]]:
    """(token index, half index into HALVES) of each object's colour and shape word, for two objects.

    One-object captions, the empty caption and captions outside the dataset's grammar give [].
    """
    if " and " not in caption:
        return []
    try:
        scene = parse_caption(caption)
    except ValueError:
        return []
    if len(scene.objects) != 2 or any(o.position not in HALVES for o in scene.objects):
        return []
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption).input_ids)
    seen: dict[str, int] = {}
    words = []
    for obj in scene.objects:
        for word in (obj.colour, obj.shape):
            hits = [i for i, t in enumerate(tokens) if t == word]
            if len(hits) <= seen.get(word, 0):  # not a single word-piece: leave the caption out
                return []
            words.append((hits[seen.get(word, 0)], HALVES.index(obj.position)))
            seen[word] = seen.get(word, 0) + 1
    return words


class RecordingProcessor:
    """diffusers' plain attention, computed step by step so the probabilities can be kept (with grad)."""

    def __init__(self, store: list[torch.Tensor]):
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,  # [B, C, h, w] or [B, h·w, C]
        encoder_hidden_states: torch.Tensor | None = None,  # [B, T, 384] caption token states
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # [B·heads, h·w, d]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.head_to_batch_dim(attn.to_k(context))  # [B·heads, T, d]
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)  # [B·heads, h·w, T]
        self.store.append(probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(1))  # [B, h·w, T]
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class AttentionSupervision:
    """Records the supervised layers' attention during one U-Net call and scores it (see module doc).

    Use as ``with AttentionSupervision(unet, tokenizer) as supervision:``; inside, after each U-Net
    call, ``supervision.loss(captions)`` returns the loss of that call (a scalar tensor) and forgets the
    recorded maps. The U-Net's own processors come back when the block ends.
    """

    unet: UNet2DConditionModel
    tokenizer: PreTrainedTokenizerBase
    skip: tuple[str, ...] = UNSUPERVISED_LAYERS  # name prefixes of the layers left free
    store: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    _words: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _saved: dict[str, object] = field(default_factory=dict)

    def __enter__(self) -> AttentionSupervision:
        for name, module in self.unet.named_modules():
            if name.endswith("attn2") and not name.startswith(self.skip):
                self._saved[name] = module.processor
                self.store[name] = []
                module.set_processor(RecordingProcessor(self.store[name]))
        if not self._saved:
            raise ValueError("the U-Net has no cross-attention layer to supervise")
        return self

    def __exit__(self, *exc) -> None:
        modules = dict(self.unet.named_modules())
        for name, processor in self._saved.items():
            modules[name].set_processor(processor)
        self._saved.clear()
        self.store.clear()

    def words(self, caption: str) -> list[tuple[int, int]]:
        if caption not in self._words:
            self._words[caption] = object_words(self.tokenizer, caption)
        return self._words[caption]

    def loss(self, captions: list[str]) -> torch.Tensor:
        """Mean (1 − m)² over supervised layers and the two-object captions' words; 0 if there are none.

        ``captions`` are those the U-Net saw, in batch order ("" where the caption was dropped).
        """
        per_layer = self.layer_losses(captions)
        if not per_layer:
            return torch.zeros(())
        return torch.stack(list(per_layer.values())).mean()

    def layer_losses(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Mean (1 − m)² per supervised layer ({} if no caption has two placed objects); forgets the maps."""
        return {name: (1 - own).pow(2).mean() for name, own in self.own_shares(captions).items()}

    def own_shares(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """m of every supervised word per layer ([N] each; 0.5: read alike in both halves); forgets the maps."""
        rows, tokens, halves = [], [], []
        for b, caption in enumerate(captions):
            for token, half in self.words(caption):
                rows.append(b)
                tokens.append(token)
                halves.append(half)
        recorded = {name: list(maps) for name, maps in self.store.items() if maps}
        for maps in self.store.values():
            maps.clear()
        if not rows:
            return {}
        rows_t, tokens_t, halves_t = (torch.tensor(v) for v in (rows, tokens, halves))
        shares = {}
        for name, maps in recorded.items():
            per_call = []
            for probs in maps:  # one [B, h·w, T] per U-Net call since the last loss
                side = int(probs.shape[1] ** 0.5)
                reading = probs[rows_t.to(probs.device), :, tokens_t.to(probs.device)]  # [N, h·w]
                reading = reading / reading.sum(-1, keepdim=True).clamp_min(1e-12)
                masks = half_masks(side).to(probs.device)[halves_t.to(probs.device)]  # [N, h·w]
                per_call.append((reading * masks).sum(-1))  # [N]: share read in the object's own half
            shares[name] = torch.cat(per_call)
        return shares
