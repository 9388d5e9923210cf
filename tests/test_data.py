"""The procedural dataset: deterministic by seed, grammatical captions, clear errors."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from diffexplain.data import Scene, SceneObject, ShapesDataset, caption, held_out, render_scene, sample_scene
from diffexplain.data.scenes import one_object_scenes


def test_same_seed_gives_identical_items():
    a, b = ShapesDataset(seed=5), ShapesDataset(seed=5)
    for i in (0, 1, 17, 999, 99_999):
        assert a[i].caption == b[i].caption
        assert a[i].scene == b[i].scene
        np.testing.assert_array_equal(a[i].pixels, b[i].pixels)


def test_item_does_not_depend_on_access_order():
    ds = ShapesDataset(seed=2)
    late_first = ds[40].pixels
    for i in range(40):
        ds[i]
    np.testing.assert_array_equal(ds[40].pixels, late_first)


def test_different_seeds_differ():
    a, b = ShapesDataset(seed=0), ShapesDataset(seed=1)
    captions_a = [a[i].caption for i in range(20)]
    captions_b = [b[i].caption for i in range(20)]
    assert captions_a != captions_b
    assert not all(np.array_equal(a[i].pixels, b[i].pixels) for i in range(20))


def test_held_out_is_deterministic_and_not_a_training_seed():
    a, b = held_out(8), held_out(8)
    assert len(a) == 8
    assert [a[i].caption for i in range(8)] == [b[i].caption for i in range(8)]
    train = ShapesDataset(seed=0)
    assert [a[i].caption for i in range(8)] != [train[i].caption for i in range(8)]


def test_pixels_shape_range_and_batch():
    ds = ShapesDataset(seed=0, size=32)
    item = ds[3]
    assert item.pixels.shape == (3, 32, 32)
    assert item.pixels.dtype == np.float32
    assert item.pixels.min() >= -1.0 and item.pixels.max() <= 1.0
    pixels, captions = ds.batch(range(4))
    assert tuple(pixels.shape) == (4, 3, 32, 32)
    assert captions == [ds[i].caption for i in range(4)]
    first = next(ds.batches(2, start=ds.length - 1))[1]
    assert first == [ds[-1].caption, ds[0].caption]  # wraps around


def test_negative_index_is_the_same_item():
    ds = ShapesDataset(seed=0, length=10)
    assert ds[-1].caption == ds[9].caption


def test_caption_grammar():
    orange = Scene((SceneObject("orange", "circle", "left", "large"),), "dark", say_size=(False,))
    assert caption(orange) == "an orange circle on the left"
    large = Scene((SceneObject("orange", "square", "top", "large"),), "dark", say_size=(True,))
    assert caption(large) == "a large orange square at the top"
    pair = Scene(
        (SceneObject("red", "triangle", "left"), SceneObject("blue", "circle", "right")),
        "light",
        say_size=(False, False),
        say_background=True,
    )
    assert caption(pair) == "a red triangle on the left and a blue circle on the right on a light background"


def test_every_caption_uses_the_right_article():
    ds = ShapesDataset(seed=3)
    for i in range(300):
        words = ds[i].caption.split()
        for article, following in zip(words, words[1:], strict=False):
            if article in ("a", "an"):
                assert article == ("an" if following[0] in "aeiou" else "a"), ds[i].caption


def test_share_of_two_object_scenes():
    assert all(len(ShapesDataset(seed=0, two_object_share=0.0)[i].scene.objects) == 1 for i in range(50))
    assert all(len(ShapesDataset(seed=0, two_object_share=1.0)[i].scene.objects) == 2 for i in range(50))
    counts = Counter(len(ShapesDataset(seed=0)[i].scene.objects) for i in range(400))
    assert 0.3 < counts[2] / 400 < 0.5


def test_two_object_scenes_use_a_pair_layout_and_two_colours():
    rng = random.Random(0)
    for _ in range(100):
        scene = sample_scene(rng, two_object_share=1.0)
        a, b = scene.objects
        assert {a.position, b.position} in ({"left", "right"}, {"top", "bottom"})
        assert a.colour != b.colour
        assert a.size is None and b.size is None


def test_one_object_scenes_cover_every_combination():
    scenes = one_object_scenes()
    assert len(scenes) == 90
    assert len({(s.objects[0].colour, s.objects[0].shape, s.objects[0].position) for s in scenes}) == 90


def test_render_is_deterministic_by_seed():
    scene = one_object_scenes()[7]
    assert np.array_equal(np.asarray(render_scene(scene, seed=3)), np.asarray(render_scene(scene, seed=3)))
    assert not np.array_equal(
        np.asarray(render_scene(scene, seed=3)), np.asarray(render_scene(scene, seed=4))
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 0}, "length"),
        ({"size": 30}, "size"),
        ({"size": 12}, "size"),
        ({"two_object_share": 1.5}, "two_object_share"),
        ({"two_object_share": -0.1}, "two_object_share"),
    ],
)
def test_bad_dataset_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    ds = ShapesDataset(length=5)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SceneObject("pink", "circle", "left"), "colour 'pink'"),
        (lambda: SceneObject("red", "star", "left"), "shape 'star'"),
        (lambda: SceneObject("red", "circle", "middle"), "position 'middle'"),
        (lambda: SceneObject("red", "circle", "left", "huge"), "size 'huge'"),
        (lambda: Scene((SceneObject("red", "circle", "left"),), "white"), "background 'white'"),
        (lambda: Scene((), "light"), "one or two objects"),
        (lambda: Scene((SceneObject("red", "circle", "left"),) * 3, "light"), "one or two objects"),
    ],
)
def test_bad_scenes(make, message):
    with pytest.raises(ValueError, match=message):
        make()
