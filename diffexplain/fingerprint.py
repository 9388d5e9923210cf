"""Weight fingerprints: a short hash that tells two models' weights apart, computed only when asked.

A run records only the weights' version key (which tensors, and torch's in-place version counters:
no copy, no hash). The hash itself is made when a trace is saved or a widget asks whether a trace was
made by the same weights, and only if the weights are still those the run used.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

_SAMPLES = 4096  # elements hashed per tensor, evenly spaced, besides its sums
_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def version_key(module: Any) -> tuple:
    """Which tensors a module holds and how often each was changed in place (cheap: no data is read)."""
    state = module.state_dict(keep_vars=True)
    return tuple((name, id(t), t._version) for name, t in state.items())


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.reshape(-1)
        if flat.numel() > _SAMPLES:
            index = torch.linspace(0, flat.numel() - 1, _SAMPLES, device=flat.device).long()
            flat = flat[index]
        if tensor.is_floating_point():
            whole = tensor.double()
            sums = torch.stack([whole.sum(), whole.abs().sum()]).cpu()  # every element counts
            digest.update(sums.numpy().tobytes())
        digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_fingerprint(module: Any, *, length: int = 10) -> str:
    """A short hash of a module's parameters and buffers (names, shapes, dtypes, sums and sampled values).

    Cached per module object and recomputed when any weight is replaced or changed in place (a
    ``load_state_dict``, an optimiser step, a LoRA, a hand edit), so it describes the current weights.
    Two models with the same weights get the same hash.
    """
    key = version_key(module)
    cached = _CACHE.get(module)
    if cached is None or cached[0] != key:
        cached = (key, _digest(module.state_dict(keep_vars=True)))
        _CACHE[module] = cached
    return cached[1][:length]


class LazyFingerprint:
    """The fingerprint of the weights a run used, hashed on first request (None once they have changed)."""

    def __init__(self, module: Any) -> None:
        self._module = weakref.ref(module)
        self._key = version_key(module)
        self._value: str | None = None

    def get(self) -> str | None:
        """The hash, or None when the module is gone or its weights changed since the run."""
        if self._value is None:
            module = self._module()
            if module is None or version_key(module) != self._key:
                return None
            self._value = weight_fingerprint(module)
        return self._value
