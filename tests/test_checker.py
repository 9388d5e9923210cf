"""The attribute checker reads every dataset image right and fails wrong pictures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from diffexplain.data import Scene, SceneObject, ShapesDataset, caption, render_scene
from diffexplain.data.checker import (
    KNOWN_WORDS,
    as_rgb,
    classify_shape,
    detect_objects,
    parse_caption,
    score,
    summarise,
)
from diffexplain.data.render import object_rgb
from diffexplain.data.scenes import one_object_scenes


def _kind(scene: Scene) -> tuple[int, str | None, str]:
    return len(scene.objects), scene.objects[0].size, scene.background


@pytest.mark.parametrize(("seed", "size", "n"), [(0, 64, 700), (1_000_003, 64, 300), (4, 32, 200)])
def test_every_dataset_image_is_scored_right(seed, size, n):
    ds = ShapesDataset(seed=seed, size=size)
    kinds: Counter = Counter()
    wrong = []
    for i in range(n):
        item = ds[i]
        kinds[_kind(item.scene)] += 1
        result = score(item.pixels, item.caption)
        if not result.all_right:
            wrong.append((i, item.caption, [(d.colour, d.shape, d.position) for d in result.detected]))
    assert not wrong, wrong
    if n >= 300:  # one- and two-object, small, large and unstated sizes, light and dark
        expected = {(c, s, b) for c, s in ((1, "small"), (1, "large"), (2, None)) for b in ("light", "dark")}
        assert expected <= set(kinds)


def test_every_combination_is_scored_right():
    for k, scene in enumerate(one_object_scenes()):
        for size, bg in (("small", "dark"), ("large", "light")):
            obj = SceneObject(
                scene.objects[0].colour, scene.objects[0].shape, scene.objects[0].position, size
            )
            variant = Scene((obj,), bg)
            assert score(render_scene(variant, seed=k), variant).all_right, caption(variant)


def test_detected_attributes_and_measurements():
    scene = Scene((SceneObject("orange", "square", "left", "large"),), "dark")
    (obj,) = detect_objects(render_scene(scene, seed=1))
    assert (obj.colour, obj.shape, obj.position) == ("orange", "square", "left")
    assert abs(obj.hue - 30) < 6
    assert abs(obj.centroid[0] - 0.25) < 0.05 and abs(obj.centroid[1] - 0.5) < 0.05
    assert 0.1 < obj.area < 0.2  # (2 × 0.19)² ≈ 0.14
    assert obj.measurements["fill_ratio"] == pytest.approx(1.0, abs=0.02)
    assert obj.measurements["hue_margin"] > 10


def test_all_input_formats_agree():
    scene = Scene(
        (SceneObject("green", "triangle", "top"), SceneObject("purple", "circle", "bottom")), "light"
    )
    pil = render_scene(scene, seed=2)
    uint8 = np.asarray(pil)
    chw = uint8.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    inputs = [pil, uint8, chw, torch.from_numpy(chw), uint8.astype(np.float32) / 255]
    results = [[(d.colour, d.shape, d.position) for d in detect_objects(x)] for x in inputs]
    assert all(r == results[0] for r in results)
    assert sorted(results[0]) == [("green", "triangle", "top"), ("purple", "circle", "bottom")]


def test_blurry_noisy_images_are_still_read():
    ds = ShapesDataset(seed=9)
    rng = np.random.default_rng(0)
    for i in range(60):
        rgb = ndimage.gaussian_filter(as_rgb(ds[i].pixels), (1.0, 1.0, 0))
        rgb = np.clip(rgb + rng.normal(0, 0.04, rgb.shape) + [0.03, 0, -0.03], 0, 1).astype(np.float32)
        assert score(rgb, ds[i].scene).all_right, ds[i].caption


def test_wrong_colour_is_scored_wrong():
    drawn = Scene((SceneObject("blue", "circle", "centre", "large"),), "light")
    asked = Scene((SceneObject("green", "circle", "centre", "large"),), "light")
    result = score(render_scene(drawn), asked)
    assert not result.colour and result.shape and result.position and result.count_right
    assert not result.all_right


def test_wrong_shape_and_position_are_scored_wrong():
    result = score(
        render_scene(Scene((SceneObject("red", "square", "top", "small"),), "dark")),
        "a red triangle at the bottom",
    )
    assert result.colour and not result.shape and not result.position and not result.all_right


def test_empty_image_has_no_objects():
    grey = Image.new("RGB", (64, 64), (200, 200, 200))
    assert detect_objects(grey) == []
    result = score(grey, "a red circle on the left")
    assert not result.count_right and not result.all_right
    assert result.objects[0].found is None
    assert not (result.colour or result.shape or result.position)


def test_missing_object_is_wrong():
    one = render_scene(Scene((SceneObject("red", "circle", "left"),), "light"))
    result = score(one, "a red circle on the left and a blue square on the right")
    assert len(result.detected) == 1 and not result.count_right and not result.all_right
    assert result.objects[0].all_right  # the drawn object still matches its own description
    assert result.objects[1].found is None and not result.objects[1].all_right


def test_extra_object_is_wrong():
    two = render_scene(
        Scene((SceneObject("red", "circle", "left"), SceneObject("blue", "square", "right")), "dark")
    )
    result = score(two, "a blue square on the right")
    assert len(result.detected) == 2 and not result.count_right and not result.all_right
    assert result.objects[0].all_right  # matched to the object on the right


def test_swapped_pair_is_wrong():
    two = render_scene(
        Scene((SceneObject("red", "circle", "left"), SceneObject("blue", "square", "right")), "dark")
    )
    assert score(two, "a red circle on the left and a blue square on the right").all_right
    swapped = score(two, "a blue square on the left and a red circle on the right")
    assert swapped.position and not swapped.colour and not swapped.shape and not swapped.all_right


def test_specks_are_ignored():
    arr = np.asarray(
        render_scene(Scene((SceneObject("yellow", "circle", "centre", "small"),), "dark"))
    ).copy()
    arr[2:4, 2:4] = object_rgb("red")
    arr[60, 30] = object_rgb("blue")
    assert [d.colour for d in detect_objects(arr)] == ["yellow"]


def test_touching_objects_are_split_when_two_are_expected():
    arr = np.full((64, 64, 3), 40, np.uint8)
    arr[22:42, 6:26] = arr[22:42, 38:58] = object_rgb("green")
    arr[31:33, 26:38] = object_rgb("green")  # a thin bridge joins the two squares
    assert len(detect_objects(arr)) == 1
    split = detect_objects(arr, n_objects=2)
    assert sorted(d.position for d in split) == ["left", "right"]
    assert score(arr, "a green square on the left and a green square on the right").all_right


def test_classify_shape_thresholds():
    assert classify_shape(1.0) == "square"
    assert classify_shape(np.pi / 4) == "circle"
    assert classify_shape(0.5) == "triangle"
    assert classify_shape(0.75, skew=-0.55) == "triangle"  # a small, pixelated triangle


def test_caption_round_trip():
    ds = ShapesDataset(seed=6)
    for i in range(400):
        scene = ds[i].scene
        parsed = parse_caption(caption(scene))
        assert caption(parsed) == caption(scene)
        assert [(o.colour, o.shape, o.position) for o in parsed.objects] == [
            (o.colour, o.shape, o.position) for o in scene.objects
        ]
        if scene.say_background:
            assert parsed.background == scene.background


def test_parse_caption_fields():
    scene = parse_caption("  A small Red triangle at the top on a dark background ")
    assert scene.objects == (SceneObject("red", "triangle", "top", "small"),)
    assert scene.background == "dark" and scene.say_background and scene.say_size == (True,)


def test_unknown_word_is_named_with_the_known_words():
    with pytest.raises(ValueError, match="unknown word 'pink'") as info:
        parse_caption("a pink circle on the left")
    assert all(word in str(info.value) for word in ("red", "circle", "left", "small", "dark"))
    assert "pink" not in KNOWN_WORDS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty caption"),
        ("red circle on the left", "expected an article"),
        ("a red on the left", "expected a shape"),
        ("a circle on the left", "expected a colour"),
        ("a red circle", "expected a position"),
        ("a red circle on the top", "expected a position"),
        ("a red circle on the left and", "expected an article"),
        (" and ".join(["a red circle on the left"] * 3), "one or two objects"),
    ],
)
def test_malformed_captions(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_bad_inputs():
    with pytest.raises(TypeError):
        detect_objects([[0, 0, 0]])
    with pytest.raises(ValueError, match="RGB"):
        detect_objects(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detect_objects(np.zeros((3, 8, 8), np.uint8))


def test_summarise():
    good = render_scene(Scene((SceneObject("blue", "circle", "left"),), "light"))
    scores = [score(good, "a blue circle on the left"), score(good, "a red circle on the left")]
    summary = summarise(scores)
    assert summary == {"n": 2, "colour": 0.5, "shape": 1.0, "position": 1.0, "count": 1.0, "all_right": 0.5}
    assert summarise([]) == {"n": 0}
