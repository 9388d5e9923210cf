"""Which device to run on, for inference and training alike."""

from __future__ import annotations

import torch


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else CUDA when present, else Apple's MPS, else the CPU."""
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
