"""Saving and loading traces: one safetensors file, everything else as JSON in its metadata.

Never pickle, never ``torch.load``. Loading validates everything and raises ``TraceFileError`` for
a corrupt, truncated, wrong-format or hostile file; nothing named by the file is imported or run
(scheduler classes are looked up by exact name in ``SCHEDULER_CLASSES``, dtypes in a fixed table).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open

from diffexplain.attention.layers import with_attention_points
from diffexplain.attention.tokens import tokens_from_json
from diffexplain.errors import TraceFileError
from diffexplain.families import FAMILIES
from diffexplain.hooks import Replacement
from diffexplain.names import HookPoint, current_name
from diffexplain.noise_levels import NoiseLevel
from diffexplain.previews import Previews, from_doc, to_doc
from diffexplain.records import RestartPoint, StepRecord
from diffexplain.safetensors_file import save_readable
from diffexplain.scheduler_state import DEVICES_KEY
from diffexplain.settings import GENERATOR_DEVICES, RunSettings, SettingsError

if TYPE_CHECKING:
    from diffexplain.trace import Trace

FORMAT = "diffexplain.trace"
VERSION = 3  # 3: attention maps and hook points; 2: names per family (step.model.*), conditioning per branch
# An optional "previews" record (PNG pictures of x_t and x̂0 per step, see ``previews``) came later without
# a new version: readers that do not know it ignore it, and files without it load as before.
METADATA_KEY = "diffexplain"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the header
STORE_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
MAP_KEY = re.compile(r"(cond|uncond)@(\d+)x(\d+)")
_ATTR = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$|^_[A-Za-z0-9][A-Za-z0-9_]*$")


# ---- saving ---------------------------------------------------------------------------------------
class _Tensors:
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


def _encode(value: Any, tensors: _Tensors) -> Any:
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


def _encode_state(state: dict[str, Any], tensors: _Tensors) -> dict[str, Any]:
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


def save_trace(trace: Trace, path: str | Path, previews: Previews | None = None) -> None:
    """Write ``trace`` to ``path`` (see the module docstring for the format), with ``previews`` if given."""
    tensors = _Tensors()
    write_file(path, tensors, trace_document(trace, tensors, previews))


def write_file(path: str | Path, tensors: _Tensors, doc: dict[str, Any]) -> None:
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


def trace_document(trace: Trace, tensors: _Tensors, previews: Previews | None = None) -> dict[str, Any]:
    """One trace's JSON record, its tensors added to ``tensors`` (a cascade's file holds several)."""
    ref = tensors.ref

    def step_doc(r: StepRecord) -> dict[str, Any]:
        restart = None
        if r.restart is not None:
            restart = {
                "latents": ref(r.restart.latents),
                "generator_state": None
                if r.restart.generator_state is None
                else ref(r.restart.generator_state),
                "scheduler_state": _encode_state(r.restart.scheduler_state, tensors),
            }
        level = [r.level.a, r.level.b, r.level.alpha_bar, r.level.sigma]
        tensor_refs = {k: ref(v) for k, v in r.tensors.items()}
        doc = {
            "index": r.index,
            "timestep": r.timestep,
            "stage": r.stage,
            "level": level,
            "tensors": tensor_refs,
            "attention": {k: ref(v) for k, v in r.attention.items()},
            "restart": restart,
        }
        if r.scalars:  # additive: readers that do not know it ignore it
            doc["scalars"] = dict(r.scalars)
        return doc

    trace.fingerprint()  # hashed now, while the weights are still those the run used (else left out)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "settings": trace.run_settings.to_json(),
        "hook_points": list(trace.hook_names),
        "kept": sorted(trace.kept),
        "store_dtype": None if trace.store_dtype is None else str(trace.store_dtype).removeprefix("torch."),
        "status": trace.status,
        "message": trace.message,
        "forked_from": trace.forked_from,
        "run_tensors": {k: ref(v) for k, v in trace.run_tensors.items()},
        "conditioning": {b: {k: ref(v) for k, v in c.items()} for b, c in trace.conditioning.items()},
        "final_latents": None if trace.final_latents is None else ref(trace.final_latents),
        "steps": [step_doc(r) for r in trace.steps],
        "replacements": [[r.name, r.step, r.hook] for r in trace.replacements],
    }
    if previews is not None:
        doc["previews"] = to_doc(previews, ref)
    return doc


# ---- loading --------------------------------------------------------------------------------------
class _Reader:
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
            if not _ATTR.match(attr) or attr in ("_internal_dict", "config"):
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


def _read_header(path: str | Path) -> None:
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


def load_trace(path: str | Path, new_trace: Callable[..., Trace]) -> Trace:
    """Read and validate a trace file into ``new_trace(settings, keep=, store_dtype=, points=)`` (the
    ``Trace`` class: ``Trace.load`` passes itself, so this module needs no import of it); ``TraceFileError``
    on any problem."""
    _read_header(path)
    try:
        handle_cm = safe_open(str(path), framework="pt", device="cpu")
        handle = handle_cm.__enter__()
    except Exception as exc:
        raise TraceFileError(path, f"not a valid safetensors file: {exc}") from None
    try:
        return _load(_Reader(path, handle), handle.metadata() or {}, new_trace)
    finally:
        handle_cm.__exit__(None, None, None)


def read_metadata(r: _Reader, metadata: dict[str, str]) -> Any:
    """The file's JSON record (``TraceFileError`` where there is none, or it is not JSON)."""
    if METADATA_KEY not in metadata:
        raise r.fail("no diffexplain metadata: a safetensors file, but not a trace")
    try:
        return json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as exc:
        raise r.fail(f"the metadata is not valid JSON: {exc}") from None


def _load(r: _Reader, metadata: dict[str, str], new_trace: Callable[..., Trace]) -> Trace:
    return trace_from_document(r, read_metadata(r, metadata), new_trace)


def trace_from_document(r: _Reader, doc: Any, new_trace: Callable[..., Trace]) -> Trace:
    """One trace from its JSON record (``trace_document``'s), validated; ``TraceFileError`` naming the file."""
    if r.get(doc, "format", str, "file") != FORMAT:
        raise r.fail(f"format is {doc['format']!r}, expected {FORMAT!r}")
    version = r.get(doc, "version", int, "file")
    if version not in (1, 2, VERSION):
        raise r.fail(
            f"format version {version} is not supported (this diffexplain reads versions 1 to {VERSION})"
        )
    try:  # the one check of a run's settings (diffexplain.settings)
        run_settings = RunSettings.from_json(r.get(doc, "settings", dict, "file"))
    except SettingsError as exc:
        raise r.fail(str(exc)) from None
    settings = run_settings.to_json()
    points = _hook_points(r, doc, settings, version)
    names = tuple(p.name for p in points)
    step_names = tuple(p.name for p in points if p.per_step)
    run_names = tuple(p.name for p in points if not p.per_step)

    def renamed(mapping: dict[str, Any]) -> dict[str, Any]:  # version 1 files: step.unet.* → step.model.*
        return (
            {current_name(k, warn=False): v for k, v in mapping.items()}
            if isinstance(mapping, dict)
            else mapping
        )

    kept = [
        current_name(k, warn=False) if isinstance(k, str) else k for k in r.get(doc, "kept", list, "file")
    ]
    if not all(isinstance(k, str) and k in names for k in kept):
        raise r.fail("'kept' lists names that are not hook points of this trace")
    store_dtype = doc.get("store_dtype")
    if store_dtype is not None and store_dtype not in STORE_DTYPES:
        raise r.fail(f"store_dtype {store_dtype!r} is not one of {', '.join(STORE_DTYPES)}")

    trace = new_trace(
        run_settings,
        keep=kept,
        store_dtype=None if store_dtype is None else STORE_DTYPES[store_dtype],
        points=points,
    )
    status = r.get(doc, "status", str, "file")
    if status not in ("complete", "interrupted", "running", "stopped"):  # stopped: a Job's stop()
        raise r.fail(f"unknown status {status!r}")
    trace.status, trace.message = status, doc.get("message")
    forked = doc.get("forked_from")
    if forked is not None and (not isinstance(forked, int) or isinstance(forked, bool)):
        raise r.fail("forked_from should be an int or null")
    trace.forked_from = forked
    trace.run_tensors = r.names(renamed(r.get(doc, "run_tensors", dict, "file")), run_names, "run_tensors")
    trace.conditioning = _conditioning(r, doc, settings, version)
    final = doc.get("final_latents")
    trace.final_latents = None if final is None else r.tensor(final, "final_latents")
    for i, step in enumerate(r.get(doc, "steps", list, "file")):
        if isinstance(step, dict) and isinstance(step.get("tensors"), dict):
            step = {**step, "tensors": renamed(step["tensors"])}
        trace.steps.append(_load_step(r, step, f"steps[{i}]", step_names))
    for i, rep in enumerate(r.get(doc, "replacements", list, "file")):
        if isinstance(rep, list) and rep and isinstance(rep[0], str):
            rep = [current_name(rep[0], warn=False), *rep[1:]]
        ok = isinstance(rep, list) and len(rep) == 3 and rep[0] in names and isinstance(rep[2], str)
        if not ok or not (rep[1] is None or (isinstance(rep[1], int) and not isinstance(rep[1], bool))):
            raise r.fail(f"replacements[{i}] is not [hook point, step or null, hook name]")
        trace.replacements.append(Replacement(rep[0], rep[1], rep[2]))
    if doc.get("previews") is not None:  # optional: files from before previews, or saved with previews=False
        try:
            trace.previews = from_doc(doc["previews"], len(trace.steps), r.tensor)
        except TraceFileError:
            raise
        except ValueError as exc:
            raise r.fail(str(exc)) from None
    return trace


def _hook_points(
    r: _Reader, doc: dict[str, Any], settings: dict[str, Any], version: int
) -> tuple[HookPoint, ...]:
    """The hook points the trace was made with: its family's, checked against the names the file records."""
    model = settings.get("model")
    family_name = model.get("family", "sd") if isinstance(model, dict) else "sd"
    if family_name not in FAMILIES:
        raise r.fail(f"settings.model.family {family_name!r} is not one of {', '.join(FAMILIES)}")
    points = FAMILIES[family_name].hook_points()
    if version == 1:  # written before the names were recorded: Stable Diffusion's, with step.unet.*
        return points
    recorded = r.get(doc, "hook_points", list, "file")
    _attention_layers(r, settings)  # checks the record where there is one
    kind = FAMILIES[family_name].attention_kind
    layers = [  # the model's own layer names, in the order the file lists their points
        (name, kind)
        for name in dict.fromkeys(
            n.removeprefix("attn.").rsplit(".", 2)[0]
            for n in recorded
            if isinstance(n, str) and n.startswith("attn.")
        )
    ]
    points = with_attention_points(points, layers)
    known = [p.name for p in points]
    if recorded != known:
        extra = [n for n in recorded if n not in known]
        if extra or recorded != [n for n in known if n in recorded]:
            missing = [n for n in known if n not in recorded]
            raise r.fail(
                f"the trace was made with hook points that differ from this diffexplain's for {family_name!r}: "
                f"unknown {extra or 'none'}, missing {missing or 'none'}"
                + ("" if extra or missing else " (the same names in another order)")
            )
        # a file from before some points were declared: the trace has the points it was made with
        points = tuple(p for p in points if p.name in recorded)
    return points


def _attention_layers(r: _Reader, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, kind) of each attention layer the trace records (none for a run without attention)."""
    info = settings.get("attention")
    if info is None:
        return []
    layers = info.get("layers") if isinstance(info, dict) else None
    ok = isinstance(layers, list) and all(
        isinstance(x, dict) and isinstance(x.get("name"), str) and x.get("kind") in ("cross", "joint")
        for x in layers
    )
    tokens = info.get("tokens")
    if not ok or not isinstance(tokens, dict) or "cond" not in tokens:
        raise r.fail("settings.attention should hold 'layers' ({name, kind} each) and 'tokens' per branch")
    try:
        for branch_tokens in tokens.values():
            tokens_from_json(branch_tokens)
    except (TypeError, ValueError) as exc:
        raise r.fail(f"settings.attention.tokens cannot be read: {exc}") from None
    return [(x["name"], x["kind"]) for x in layers]


def _attention_maps(r: _Reader, doc: Any, where: str) -> dict[str, torch.Tensor]:
    """A step's maps, "cond@16x16" → [B, T, 16, 16]; absent in files written before version 3."""
    refs = doc.get("attention", {}) if isinstance(doc, dict) else {}
    if not isinstance(refs, dict):
        raise r.fail(f"{where}.attention should be a JSON object")
    maps = {}
    for key, ref in refs.items():
        match = MAP_KEY.fullmatch(key) if isinstance(key, str) else None
        tensor = r.tensor(ref, f"{where}.attention[{key!r}]")
        if match is None or tensor.dim() != 4 or list(tensor.shape[2:]) != [int(match[2]), int(match[3])]:
            raise r.fail(f"{where}.attention[{key!r}] is not a 'branch@RxC' map of shape [B, T, R, C]")
        maps[key] = tensor
    return maps


def _conditioning(r: _Reader, doc: dict[str, Any], settings: dict[str, Any], version: int) -> dict[str, Any]:
    """Each branch's conditioning tensors; version 1 files hold the token embeddings only."""
    if version == 1:
        embeds = r.names(r.get(doc, "prompt_embeds", dict, "file"), ("cond", "uncond"), "prompt_embeds")
        return {branch: {"embeds": x} for branch, x in embeds.items()}
    family = FAMILIES[settings.get("model", {}).get("family", "sd")]
    found = r.get(doc, "conditioning", dict, "file")
    conditioning = {}
    for branch, tensors in found.items():
        if branch not in ("cond", "uncond"):
            raise r.fail(f"conditioning holds an unknown branch {branch!r} (expected cond, uncond)")
        conditioning[branch] = r.names(tensors, family.conditioning_keys, f"conditioning.{branch}")
    if "cond" not in conditioning:
        raise r.fail("conditioning has no 'cond' branch")
    return conditioning


def _load_step(r: _Reader, doc: Any, where: str, step_names: tuple[str, ...]) -> StepRecord:
    index = r.get(doc, "index", int, where)
    timestep = float(r.get(doc, "timestep", (int, float), where))
    stage = doc.get("stage") if isinstance(doc, dict) else None
    if stage not in (None, "first_order", "second_order"):
        raise r.fail(f"{where}.stage {stage!r} is not valid")
    level = r.get(doc, "level", list, where)
    if len(level) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in level):
        raise r.fail(f"{where}.level should be 4 numbers [a, b, alpha_bar, sigma]")
    tensors = r.names(r.get(doc, "tensors", dict, where), step_names, f"{where}.tensors")
    restart = None
    restart_doc = doc.get("restart")
    if restart_doc is not None:
        gen_ref = r.get(restart_doc, "generator_state", (str, type(None)), f"{where}.restart")
        generator_state = None if gen_ref is None else r.tensor(gen_ref, f"{where}.restart.generator_state")
        if generator_state is not None and (
            generator_state.dtype != torch.uint8 or generator_state.dim() != 1
        ):
            raise r.fail(f"{where}.restart.generator_state should be a 1-D uint8 tensor")
        restart = RestartPoint(
            latents=r.tensor(
                r.get(restart_doc, "latents", str, f"{where}.restart"), f"{where}.restart.latents"
            ),
            scheduler_state=r.scheduler_state(
                r.get(restart_doc, "scheduler_state", dict, f"{where}.restart"),
                f"{where}.restart.scheduler_state",
            ),
            generator_state=generator_state,
        )
    maps = _attention_maps(r, doc, where)
    scalars = _scalars(r, doc, where)
    return StepRecord(index, timestep, stage, NoiseLevel(*map(float, level)), tensors, restart, maps, scalars)


def _scalars(r: _Reader, doc: dict[str, Any], where: str) -> dict[str, float]:
    """A step's declared numbers (``diffexplain.step_scalars``), name → number; absent in older files.
    Names this version does not declare (a newer file's) are read too: they are plain numbers."""
    found = doc.get("scalars", {})
    ok = isinstance(found, dict) and all(
        isinstance(k, str) and _ATTR.match(k) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in found.items()
    )
    if not ok:
        raise r.fail(f"{where}.scalars should map names to numbers")
    return {k: float(v) for k, v in found.items()}
