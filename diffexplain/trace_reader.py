"""Reading trace files safely: every problem becomes a ``TraceFileError`` naming the file; nothing the
file names is imported or run (scheduler values are plain data, devices from a fixed list).
``trace_io`` reads the JSON record with it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from diffexplain.errors import TraceFileError
from diffexplain.scheduler_state import DEVICES_KEY
from diffexplain.settings import GENERATOR_DEVICES
from diffexplain.trace_writer import METADATA_KEY

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the header
ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$|^_[A-Za-z0-9][A-Za-z0-9_]*$")  # a scheduler attribute name


class Reader:
    """Validating reader: every problem becomes a ``TraceFileError`` naming the file."""

    def __init__(self, path: str | Path, handle: Any) -> None:
        self.path, self.handle = path, handle
        self.keys = set(handle.keys())
        self.cache: dict[str, torch.Tensor] = {}

    def fail(self, problem: str) -> TraceFileError:
        return TraceFileError(self.path, problem)

    def get(self, doc: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(doc, dict):
            raise self.fail(f"{where} should be a JSON object")
        if key not in doc:
            raise self.fail(f"missing key {key!r} in {where}")
        value = doc[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise self.fail(f"{where}.{key} has the wrong type ({type(value).__name__})")
        return value

    def tensor(self, name: Any, where: str) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.keys:
            raise self.fail(f"{where} refers to a tensor {name!r} that the file does not hold")
        if name not in self.cache:
            try:
                self.cache[name] = self.handle.get_tensor(name)
            except Exception as exc:  # safetensors errors on bad offsets or dtypes
                raise self.fail(f"tensor {name!r} cannot be read: {exc}") from None
        return self.cache[name]

    def names(self, doc: Any, allowed: tuple[str, ...], where: str) -> dict[str, torch.Tensor]:
        if not isinstance(doc, dict):
            raise self.fail(f"{where} should be a JSON object")
        for name in doc:
            if name not in allowed:
                raise self.fail(f"{where} holds an unknown name {name!r}")
        return {name: self.tensor(ref, f"{where}[{name!r}]") for name, ref in doc.items()}

    def value(self, doc: Any, where: str, depth: int = 0) -> Any:
        if doc is None or isinstance(doc, bool | int | float | str):
            return doc
        if depth > 4 or not isinstance(doc, dict) or len(doc) not in (1, 2):
            raise self.fail(f"{where} is not a valid scheduler value")
        if "tensor" in doc:
            return self.tensor(doc["tensor"], where)
        if "ndarray" in doc:
            return self.tensor(doc["ndarray"], where).numpy().copy()
        if "npscalar" in doc:
            dtype = doc["npscalar"]
            if dtype not in ("float32", "float64", "int32", "int64", "bool") or "value" not in doc:
                raise self.fail(f"{where} has an unsupported numpy scalar type {dtype!r}")
            return np.dtype(dtype).type(doc["value"])
        for kind in ("list", "tuple"):
            if kind in doc and isinstance(doc[kind], list):
                items = [self.value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(doc[kind])]
                return items if kind == "list" else tuple(items)
        raise self.fail(f"{where} is not a valid scheduler value")

    def scheduler_state(self, doc: Any, where: str) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise self.fail(f"{where} should be a JSON object")
        state: dict[str, Any] = {}
        devices: dict[str, str] = {}
        for attr, value in doc.items():
            if not ATTRIBUTE.match(attr) or attr in ("_internal_dict", "config"):
                raise self.fail(f"{where} names a forbidden attribute {attr!r}")
            state[attr] = self.value(value, f"{where}.{attr}")
            device = _device_of(value)
            if device is not None:
                if device not in GENERATOR_DEVICES:
                    raise self.fail(f"{where}.{attr} names an unknown device {device!r}")
                devices[attr] = device
        state[DEVICES_KEY] = devices
        return state


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _device_of(value: Any) -> str | None:
    if isinstance(value, dict):
        if isinstance(value.get("device"), str):
            return value["device"]
        for kind in ("list", "tuple"):
            for item in value.get(kind, []) if isinstance(value.get(kind), list) else []:
                found = _device_of(item)
                if found is not None:
                    return found
    return None


def read_header(path: str | Path) -> None:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise TraceFileError(path, f"cannot read the file: {exc}") from None
    if len(head) < 8:
        raise TraceFileError(
            path, f"the file is {size} bytes: too short to be a safetensors trace (truncated?)"
        )
    header_len = int.from_bytes(head, "little")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise TraceFileError(
            path, f"the header declares {header_len} bytes but the file has {size}: truncated or not a trace"
        )


def read_metadata(r: Reader, metadata: dict[str, str]) -> Any:
    """The file's JSON record (``TraceFileError`` where there is none, or it is not JSON)."""
    if METADATA_KEY not in metadata:
        raise r.fail("no diffexplain metadata: a safetensors file, but not a trace")
    try:
        return json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as exc:
        raise r.fail(f"the metadata is not valid JSON: {exc}") from None


@contextmanager
def open_file(path: str | Path) -> Iterator[tuple[Reader, Any]]:
    """The file's validating ``Reader`` and its JSON record (``TraceFileError`` where either is missing
    or broken), the file open for the ``with`` block: the one way trace and cascade files are opened."""
    read_header(path)
    try:
        handle_cm = safe_open(str(path), framework="pt", device="cpu")
        handle = handle_cm.__enter__()
    except Exception as exc:  # safetensors' own errors: not a valid file
        raise TraceFileError(path, f"not a valid safetensors file: {exc}") from None
    try:
        reader = Reader(path, handle)
        yield reader, read_metadata(reader, handle.metadata() or {})
    finally:
        handle_cm.__exit__(None, None, None)
