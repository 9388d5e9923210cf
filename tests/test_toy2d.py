"""The 2-D toy of both dialects: both objectives learn the colour clusters in seconds, and the flow
model's paths are straighter than the ε model's (the reason few steps work for flow models)."""

from __future__ import annotations

import pytest
import torch

from diffexplain import toy2d


@pytest.fixture(scope="module")
def models() -> dict[str, toy2d.ToyModel]:
    return {objective: toy2d.train(objective, steps=1500, seed=0) for objective in toy2d.OBJECTIVES}


def test_both_dialects_learn_the_clusters(models):
    labels = torch.arange(len(toy2d.COLOURS)).repeat(10)
    for objective, model in models.items():
        assert model.losses[-1] < model.losses[0], objective
        path, guesses = toy2d.sample_paths(model, labels, num_steps=25)
        assert path.shape == (26, len(labels), 2) and guesses.shape == (25, len(labels), 2)
        right = (toy2d.nearest_colour(path[-1]) == labels).float().mean()
        assert right >= 0.95, (objective, float(right))


def test_flow_paths_are_straighter_than_epsilon_paths(models):
    labels = torch.arange(len(toy2d.COLOURS)).repeat(10)
    for steps in (4, 25):
        bends = {
            objective: float(
                toy2d.straightness(toy2d.sample_paths(model, labels, num_steps=steps)[0]).median()
            )
            for objective, model in models.items()
        }
        assert bends["flow"] < bends["epsilon"], (steps, bends)
        assert bends["flow"] < 1.05, bends  # nearly a straight line from noise to the cluster


def test_the_same_noise_gives_the_same_paths_and_a_wrong_objective_is_named(models):
    labels = torch.tensor([0, 4])
    a, _ = toy2d.sample_paths(models["flow"], labels, num_steps=5, seed=3)
    b, _ = toy2d.sample_paths(models["flow"], labels, num_steps=5, seed=3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="objective='score': expected one of"):
        toy2d.train("score", steps=1)
