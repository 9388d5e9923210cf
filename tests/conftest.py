"""Shared fixtures: tiny seeded Stable Diffusion parts (session-scoped) and Explainers over them."""

from __future__ import annotations

import pytest
import torch

from diffexplain import Explainer
from tests.tiny_parts import tiny_parts

PROMPT = "a red square on the left"


@pytest.fixture(scope="session")
def parts() -> dict:
    """Epsilon-prediction tiny parts with a VAE (shared: never modify them in a test)."""
    return tiny_parts("epsilon")


@pytest.fixture(scope="session")
def parts_v() -> dict:
    """v-prediction tiny parts with a VAE."""
    return tiny_parts("v_prediction")


@pytest.fixture(scope="session")
def pixel_parts() -> dict:
    """Pixel-space tiny parts: no VAE, a 3-channel U-Net."""
    return tiny_parts("epsilon", pixel_space=True)


@pytest.fixture
def explainer(parts: dict) -> Explainer:
    """A fresh Explainer over the shared epsilon parts, DDIM (one loop step per inference step), no progress bar."""
    return Explainer(**parts, progress=False).set_scheduler("ddim")


@pytest.fixture
def explainer_v(parts_v: dict) -> Explainer:
    """A fresh Explainer over the shared v-prediction parts, DDIM."""
    return Explainer(**parts_v, progress=False).set_scheduler("ddim")


# The models are tiny: one thread avoids thread start-up and contention costs on a shared machine.
torch.set_num_threads(1)
