"""The cross-attention loss of training/attention_loss.py: right words, right halves, no trace left behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffexplain.models.config import preset, unet_config
from diffexplain.models.text import load_text_encoder
from diffexplain.training.attention_loss import (
    HALVES,
    UNSUPERVISED_LAYERS,
    AttentionSupervision,
    half_masks,
    object_words,
)
from diffexplain.training.run import train

TWO = "a red circle on the left and a blue square on the right"
TWO_VERTICAL = "a green triangle at the bottom and a yellow triangle at the top on a dark background"


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_encoder("cpu")[0]


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config((16, 32, 32), 8, 8, cross_attention=(True, True, True)))


def test_half_masks_cover_each_half_of_the_grid() -> None:
    masks = half_masks(4).reshape(4, 4, 4)
    assert masks.sum(dim=(1, 2)).tolist() == [8, 8, 8, 8]
    assert masks[HALVES.index("left"), :, :2].all() and not masks[HALVES.index("left"), :, 2:].any()
    assert masks[HALVES.index("right"), :, 2:].all()
    assert masks[HALVES.index("top"), :2].all() and not masks[HALVES.index("top"), 2:].any()
    assert masks[HALVES.index("bottom"), 2:].all()


def test_object_words_point_at_each_objects_colour_and_shape(tokenizer) -> None:
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(TWO).input_ids)
    words = object_words(tokenizer, TWO)
    assert [(tokens[i], HALVES[h]) for i, h in words] == [
        ("red", "left"),
        ("circle", "left"),
        ("blue", "right"),
        ("square", "right"),
    ]
    # a shape said twice: each object gets its own occurrence
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(TWO_VERTICAL).input_ids)
    words = object_words(tokenizer, TWO_VERTICAL)
    assert [(tokens[i], HALVES[h]) for i, h in words] == [
        ("green", "bottom"),
        ("triangle", "bottom"),
        ("yellow", "top"),
        ("triangle", "top"),
    ]
    assert words[1][0] < words[3][0]


@pytest.mark.parametrize(
    "caption", ["", "a red circle on the left", "a cat and a dog", "a red circle in the centre"]
)
def test_captions_without_two_placed_objects_are_not_supervised(tokenizer, caption: str) -> None:
    assert object_words(tokenizer, caption) == []


def test_recording_changes_nothing_and_is_removed_after_the_block(tokenizer) -> None:
    unet = tiny_unet().eval()
    z, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 32, 384)
    before = {name: type(m.processor) for name, m in unet.named_modules() if name.endswith("attn2")}
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=states).sample
        with AttentionSupervision(unet, tokenizer) as supervision:
            recorded = unet(z, t, encoder_hidden_states=states).sample
            layers = {name: len(maps) for name, maps in supervision.store.items()}
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)
    assert layers and all(n == 1 for n in layers.values())
    assert not any(name.startswith(UNSUPERVISED_LAYERS) for name in layers)
    assert {name: type(m.processor) for name, m in unet.named_modules() if name.endswith("attn2")} == before


def test_loss_is_zero_for_attention_in_the_right_half_and_one_for_the_wrong_half(tokenizer) -> None:
    unet = tiny_unet()
    supervision = AttentionSupervision(unet, tokenizer)
    words = object_words(tokenizer, TWO)
    side, tokens = 8, 32
    right = torch.zeros(1, side, side, tokens)
    wrong = torch.zeros(1, side, side, tokens)
    for token, half in words:
        mask = half_masks(side)[half].reshape(side, side)
        right[0, ..., token] = mask
        wrong[0, ..., token] = 1 - mask
    supervision.store["layer"] = [right.reshape(1, side * side, tokens)]
    assert supervision.loss([TWO]).item() == pytest.approx(0.0)
    assert supervision.store["layer"] == []  # the maps of one call are used once
    supervision.store["layer"] = [wrong.reshape(1, side * side, tokens)]
    assert supervision.loss([TWO]).item() == pytest.approx(1.0)
    supervision.store["layer"] = [wrong.reshape(1, side * side, tokens)]
    assert supervision.loss([""]).item() == 0.0  # a dropped caption is not supervised


def test_a_few_steps_on_the_loss_move_the_words_to_their_halves(tokenizer) -> None:
    unet = tiny_unet(seed=1)
    encoder = load_text_encoder("cpu")[1]
    from diffexplain.models.text import encode_captions

    captions = [TWO, TWO_VERTICAL]
    with torch.no_grad():
        states = encode_captions(tokenizer, encoder, captions)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    with AttentionSupervision(unet, tokenizer) as supervision:
        for _ in range(30):
            z = torch.randn(2, 4, 8, 8, generator=gen)
            unet(z, torch.tensor([900, 900]), encoder_hidden_states=states)
            loss = supervision.loss(captions)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[0] == pytest.approx(0.25, abs=0.05)  # random queries: about half the reading in each half
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_training_with_the_loss_logs_both_terms(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        preset("tiny"), two_object_share=1.0, attention_loss_weight=0.1, high_noise_share=0.5
    )
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    entries = [
        json.loads(line) for line in (tmp_path / "run" / "unet" / "log.jsonl").read_text().splitlines()
    ]
    assert entries and all(e["loss_attention"] > 0 for e in entries)
    for e in entries:
        assert e["loss"] == pytest.approx(e["loss_eps"] + 0.1 * e["loss_attention"], rel=1e-5)
