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
SCHEME = 2
"""How ``weight_fingerprint`` hashes today, recorded beside each fingerprint a trace saves
(``settings["model"]["fingerprint_scheme"]``):

- 2: names, shapes, dtypes, 4096 sampled values and the exact integer sums of every element's bits
  (order-free, so the hash is the same on any thread count and machine);
- 1 (files saved before the scheme was recorded, from the model seam on): the same with float64 sums,
  which a different thread count may round differently;
- 0 (older files): every byte of every tensor.

A file without a scheme is compared under 1 and 0 (``same_weights``)."""

_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple, dict[int, str]]] = weakref.WeakKeyDictionary()


def version_key(module: Any) -> tuple:
    """Which tensors a module holds and how often each was changed in place (cheap: no data is read)."""
    state = module.state_dict(keep_vars=True)
    return tuple((name, id(t), t._version) for name, t in state.items())


def _bit_sums(tensor: torch.Tensor) -> torch.Tensor:
    """The sums of a tensor's elements read as integers (their bits) and of their absolute values: exact,
    so the same in any order (any thread count, any machine)."""
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    bits = tensor.contiguous().view(as_int).long()
    return torch.stack([bits.sum(), bits.abs().sum()]).cpu()


def _digest(state: dict[str, torch.Tensor], scheme: int) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        if scheme == 0:
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            continue
        flat = tensor.reshape(-1)
        if flat.numel() > _SAMPLES:
            index = torch.linspace(0, flat.numel() - 1, _SAMPLES, device=flat.device).long()
            flat = flat[index]
        if tensor.is_floating_point():  # every element counts
            if scheme == 1:
                whole = tensor.double()
                sums = torch.stack([whole.sum(), whole.abs().sum()]).cpu()
            else:
                sums = _bit_sums(tensor)
            digest.update(sums.numpy().tobytes())
        digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_fingerprint(module: Any, *, length: int = 10, scheme: int = SCHEME) -> str:
    """A short hash of a module's parameters and buffers (names, shapes, dtypes, sums and sampled values).

    Cached per module object and recomputed when any weight is replaced or changed in place (a
    ``load_state_dict``, an optimiser step, a LoRA, a hand edit), so it describes the current weights.
    Two models with the same weights get the same hash, on any machine. ``scheme``: see ``SCHEME``.
    """
    if scheme not in (0, 1, 2):
        raise ValueError(f"scheme={scheme!r}: expected 0, 1 or 2 (diffexplain.fingerprint.SCHEME)")
    key = version_key(module)
    cached = _CACHE.get(module)
    if cached is None or cached[0] != key:
        cached = (key, {})
        _CACHE[module] = cached
    if scheme not in cached[1]:
        cached[1][scheme] = _digest(module.state_dict(keep_vars=True), scheme)
    return cached[1][scheme][:length]


def same_weights(module: Any, recorded: str, scheme: int | None) -> tuple[bool, str]:
    """Whether ``module``'s weights are those a trace recorded (``recorded``, hashed under ``scheme``; None:
    a file from before schemes were recorded, tried under 1 then 0); and the module's fingerprint today."""
    current = weight_fingerprint(module, length=len(recorded))
    if scheme == SCHEME:
        return current == recorded, current
    tried = (scheme,) if scheme is not None else (1, 0)
    return any(weight_fingerprint(module, length=len(recorded), scheme=s) == recorded for s in tried), current


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
