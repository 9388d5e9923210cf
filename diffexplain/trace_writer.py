"""Writing trace files: tensors collected once per storage view, JSON in the safetensors metadata, an
atomic replace (a failed save never leaves half a file). ``trace_io`` builds the JSON record."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffexplain.safetensors_file import save_readable
from diffexplain.scheduler_state import DEVICES_KEY

METADATA_KEY = "diffexplain"


class TensorRefs:
    """Collects tensors for the file, each storage view once (same object or same view: one entry)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._keys: dict[tuple[Any, ...], str] = {}
        self._storages: set[tuple[str, int]] = set()

    def ref(self, t: torch.Tensor) -> str:
        storage = t.untyped_storage()
        where = (str(t.device), storage.data_ptr())
        key = (*where, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in self._keys:
            return self._keys[key]
        whole = (
            t.is_contiguous() and t.storage_offset() == 0 and t.numel() * t.element_size() == storage.nbytes()
        )
        data = t.detach().cpu()
        if not whole or where in self._storages:
            data = data.contiguous().clone()
        self._storages.add(where)
        name = f"t{len(self.tensors)}"
        self.tensors[name] = data
        self._keys[key] = name
        return name


def _encode(value: Any, tensors: TensorRefs) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": tensors.ref(value), "device": value.device.type}
    if isinstance(value, np.ndarray):
        return {"ndarray": tensors.ref(torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, np.generic):
        return {"npscalar": str(value.dtype), "value": value.item()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, tensors) for v in value]}
    raise TypeError(f"cannot save scheduler attribute value of type {type(value).__name__}")


def encode_state(state: dict[str, Any], tensors: TensorRefs) -> dict[str, Any]:
    """A scheduler snapshot for the file; a loaded one's device map (``DEVICES_KEY``) goes back on its tensors."""
    devices = state.get(DEVICES_KEY, {})
    doc = {k: _encode(v, tensors) for k, v in state.items() if k != DEVICES_KEY}
    for attr, device in devices.items():
        _set_device(doc.get(attr), device)
    return doc


def _set_device(doc: Any, device: str) -> None:
    if isinstance(doc, dict):
        if "device" in doc:
            doc["device"] = device
        for item in doc.get("list", doc.get("tuple", [])):
            _set_device(item, device)


def write_file(path: str | Path, tensors: TensorRefs, doc: dict[str, Any]) -> None:
    """Write ``tensors`` and ``doc`` (JSON in the metadata) to ``path``, atomically."""
    # Write next to the target, then replace it: a failed save never leaves a half-written trace behind.
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # readable by others, not safetensors' 0600: a trace is for sharing
        save_readable(tensors.tensors, tmp, metadata={METADATA_KEY: json.dumps(doc)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
