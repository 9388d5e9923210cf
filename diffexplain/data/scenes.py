"""Scenes (what is in a picture) and their captions, sampled deterministically from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from diffexplain.data.vocab import (
    BACKGROUNDS,
    COLOURS,
    PAIR_LAYOUTS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
)


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape: its colour, shape, position and size words."""

    colour: str
    shape: str
    position: str
    size: str | None = None  # None: the "pair" size used in two-object scenes

    def __post_init__(self) -> None:
        _check("colour", self.colour, COLOURS)
        _check("shape", self.shape, SHAPES)
        _check("position", self.position, POSITIONS)
        if self.size is not None:
            _check("size", self.size, SIZES)


@dataclass(frozen=True)
class Scene:
    """A picture's content: one or two objects on a plain background."""

    objects: tuple[SceneObject, ...]
    background: str
    # Which words the caption states; unstated attributes were sampled freely.
    say_size: tuple[bool, ...] = field(default=())
    say_background: bool = False

    def __post_init__(self) -> None:
        _check("background", self.background, BACKGROUNDS)
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene holds one or two objects, got {len(self.objects)}")


def _check(kind: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")


def sample_scene(rng: random.Random, *, two_object_share: float = 0.4) -> Scene:
    """Draw a random scene: one object (with a size) or two objects in a left/right or top/bottom layout."""
    background = rng.choice(list(BACKGROUNDS))
    say_background = rng.random() < 0.5
    if rng.random() >= two_object_share:
        obj = SceneObject(
            colour=rng.choice(list(COLOURS)),
            shape=rng.choice(SHAPES),
            position=rng.choice(list(POSITIONS)),
            size=rng.choice(list(SIZES)),
        )
        return Scene((obj,), background, say_size=(rng.random() < 0.5,), say_background=say_background)
    first_pos, second_pos = rng.choice(PAIR_LAYOUTS)
    if rng.random() < 0.5:
        first_pos, second_pos = second_pos, first_pos
    colour_a, colour_b = rng.sample(list(COLOURS), 2)
    objs = (
        SceneObject(colour_a, rng.choice(SHAPES), first_pos),
        SceneObject(colour_b, rng.choice(SHAPES), second_pos),
    )
    return Scene(objs, background, say_size=(False, False), say_background=say_background)


def _object_phrase(obj: SceneObject, say_size: bool) -> str:
    words = f"{obj.size} {obj.colour}" if (say_size and obj.size) else obj.colour
    article = "an" if words[0] in "aeiou" else "a"
    return f"{article} {words} {obj.shape} {POSITION_PHRASES[obj.position]}"


def caption(scene: Scene) -> str:
    """The scene in plain English, e.g. 'a small blue triangle at the top on a dark background'."""
    say_size = scene.say_size or (False,) * len(scene.objects)
    parts = [_object_phrase(o, s) for o, s in zip(scene.objects, say_size, strict=True)]
    text = " and ".join(parts)
    if scene.say_background:
        text += f" on a {scene.background} background"
    return text


def one_object_scenes() -> list[Scene]:
    """Every (colour, shape, position) combination once, as stated one-object scenes (90 scenes)."""
    return [
        Scene((SceneObject(c, s, p, "large"),), "light", say_size=(False,))
        for c in COLOURS
        for s in SHAPES
        for p in POSITIONS
    ]
