"""The procedural captioned dataset: deterministic by seed, generated on the fly, nothing downloaded."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffexplain.data.render import render_scene, to_array
from diffexplain.data.scenes import Scene, caption, sample_scene

HELD_OUT_SEED = 1_000_003  # the split used for evaluation; training uses other seeds


@dataclass(frozen=True)
class Example:
    """One dataset item: the scene, its caption and its image in [-1, 1], shape [3, H, W]."""

    scene: Scene
    caption: str
    pixels: np.ndarray


class ShapesDataset:
    """Coloured shapes on plain backgrounds with English captions.

    Item ``i`` depends only on ``(seed, i)``, so two datasets with the same seed are identical and
    any item can be regenerated on its own. ``two_object_share`` sets how many scenes hold two objects.
    """

    def __init__(
        self, *, seed: int = 0, length: int = 100_000, size: int = 64, two_object_share: float = 0.4
    ):
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        if size < 16 or size % 4:
            raise ValueError(f"size must be a multiple of 4 and at least 16, got {size}")
        if not 0.0 <= two_object_share <= 1.0:
            raise ValueError(f"two_object_share must be in [0, 1], got {two_object_share}")
        self.seed, self.length, self.size, self.two_object_share = seed, length, size, two_object_share

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Example:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        index %= self.length
        rng = random.Random(f"{self.seed}:{index}")
        scene = sample_scene(rng, two_object_share=self.two_object_share)
        image = render_scene(scene, size=self.size, seed=rng.randrange(2**31))
        return Example(scene, caption(scene), to_array(image))

    def batch(self, indices: list[int] | range) -> tuple[torch.Tensor, list[str]]:
        """Pixels [N, 3, H, W] in [-1, 1] and captions for ``indices``."""
        items = [self[i] for i in indices]
        return torch.from_numpy(np.stack([it.pixels for it in items])), [it.caption for it in items]

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Consecutive batches from ``start``, wrapping around at the end."""
        pos = start
        while True:
            yield self.batch([(pos + k) % self.length for k in range(batch_size)])
            pos += batch_size


def held_out(n: int = 256, *, size: int = 64) -> ShapesDataset:
    """The held-out evaluation split (a seed no training run uses)."""
    return ShapesDataset(seed=HELD_OUT_SEED, length=n, size=size)
