"""Saving and loading traces: one safetensors file, everything else as JSON in its metadata.

This module reads and writes the JSON record of a trace; ``trace_writer`` collects the tensors and
writes the file, ``trace_reader`` opens and validates it.

Never pickle, never ``torch.load``. Loading validates everything and raises ``TraceFileError`` for
a corrupt, truncated, wrong-format or hostile file; nothing named by the file is imported or run
(scheduler classes are looked up by exact name in ``SCHEDULER_CLASSES``, dtypes in a fixed table).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffexplain.attention.layers import with_attention_points
from diffexplain.attention.tokens import tokens_from_json
from diffexplain.errors import TraceFileError
from diffexplain.families import FAMILIES
from diffexplain.guiders.base import with_guider_points
from diffexplain.hooks import Replacement
from diffexplain.inpaint import STATE_KEYS
from diffexplain.names import HookPoint, current_name, with_image_points
from diffexplain.noise_levels import NoiseLevel
from diffexplain.previews import Previews, from_doc, to_doc
from diffexplain.records import RestartPoint, StepRecord
from diffexplain.scheduler_outputs import with_scheduler_points
from diffexplain.settings import RunSettings, SettingsError
from diffexplain.trace_reader import ATTRIBUTE, Reader, open_file
from diffexplain.trace_writer import TensorRefs, encode_state, write_file

if TYPE_CHECKING:
    from diffexplain.trace import Trace

FORMAT = "diffexplain.trace"
VERSION = 3  # 3: attention maps and hook points; 2: names per family (step.model.*), conditioning per branch
# An optional "previews" record (PNG pictures of x_t and x̂0 per step, see ``previews``) came later without
# a new version: readers that do not know it ignore it, and files without it load as before.
STORE_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
MAP_KEY = re.compile(r"(cond|uncond)@(\d+)x(\d+)")


# ---- saving ---------------------------------------------------------------------------------------
def save_trace(trace: Trace, path: str | Path, previews: Previews | None = None) -> None:
    """Write ``trace`` to ``path`` (see the module docstring for the format), with ``previews`` if given."""
    tensors = TensorRefs()
    write_file(path, tensors, trace_document(trace, tensors, previews))


def trace_document(trace: Trace, tensors: TensorRefs, previews: Previews | None = None) -> dict[str, Any]:
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
                "scheduler_state": encode_state(r.restart.scheduler_state, tensors),
            }
            if r.restart.guider_state:  # additive: a stateful guider's state (APG's momentum)
                restart["guider_state"] = {k: ref(v) for k, v in r.restart.guider_state.items()}
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
    if trace.inpainting:  # additive: an inpainting run's mask tensors (diffexplain.inpaint)
        doc["inpainting"] = {k: ref(v) for k, v in trace.inpainting.items()}
    if previews is not None:
        doc["previews"] = to_doc(previews, ref)
    return doc


# ---- loading --------------------------------------------------------------------------------------
def load_trace(path: str | Path, new_trace: Callable[..., Trace]) -> Trace:
    """Read and validate a trace file into ``new_trace(settings, keep=, store_dtype=, points=)`` (the
    ``Trace`` class: ``Trace.load`` passes itself, so this module needs no import of it); ``TraceFileError``
    on any problem."""
    with open_file(path) as (reader, doc):
        return trace_from_document(reader, doc, new_trace)


def trace_from_document(r: Reader, doc: Any, new_trace: Callable[..., Trace]) -> Trace:
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
    trace.inpainting = _inpainting(r, doc, settings)
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
    r: Reader, doc: dict[str, Any], settings: dict[str, Any], version: int
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
    points = with_guider_points(with_attention_points(points, layers), settings.get("guider"))
    points = with_image_points(points, settings.get("strength"), settings.get("inpaint"))  # image.*
    points = with_scheduler_points(points, (settings.get("scheduler") or {}).get("class"))
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


def _attention_layers(r: Reader, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, kind) of each attention layer the trace records (none for a run without attention)."""
    info = settings.get("attention")
    if info is None:
        return []
    layers = info.get("layers") if isinstance(info, dict) else None
    ok = isinstance(layers, list) and all(
        isinstance(x, dict)
        and isinstance(x.get("name"), str)
        and x.get("kind") in ("cross", "joint", "single")
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


def _attention_maps(r: Reader, doc: Any, where: str) -> dict[str, torch.Tensor]:
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


def _conditioning(r: Reader, doc: dict[str, Any], settings: dict[str, Any], version: int) -> dict[str, Any]:
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


def _inpainting(r: Reader, doc: dict[str, Any], settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """An inpainting run's tensors (``STATE_KEYS`` of its kind), which its forks need; {} for other runs."""
    how = settings.get("inpaint")
    needed = STATE_KEYS.get(how, ())
    found = r.names(doc.get("inpainting", {}), needed, "inpainting")
    if set(found) != set(needed) and (found or doc.get("steps")):  # none: stopped before its first step
        raise r.fail(f"inpainting should hold {', '.join(needed)} (settings.inpaint is {how!r})")
    return found


def _load_step(r: Reader, doc: Any, where: str, step_names: tuple[str, ...]) -> StepRecord:
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
            guider_state=_guider_state(r, restart_doc.get("guider_state"), f"{where}.restart.guider_state"),
        )
    maps = _attention_maps(r, doc, where)
    scalars = _scalars(r, doc, where)
    return StepRecord(index, timestep, stage, NoiseLevel(*map(float, level)), tensors, restart, maps, scalars)


def _scalars(r: Reader, doc: dict[str, Any], where: str) -> dict[str, float]:
    """A step's declared numbers (``diffexplain.step_scalars``), name → number; absent in older files.
    Names this version does not declare (a newer file's) are read too: they are plain numbers."""
    found = doc.get("scalars", {})
    ok = isinstance(found, dict) and all(
        isinstance(k, str) and ATTRIBUTE.match(k) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in found.items()
    )
    if not ok:
        raise r.fail(f"{where}.scalars should map names to numbers")
    return {k: float(v) for k, v in found.items()}


def _guider_state(r: Reader, doc: Any, where: str) -> dict[str, torch.Tensor] | None:
    """A stateful guider's state at a restart point, name → tensor; absent for stateless guiders and older files."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and ATTRIBUTE.match(k) for k in doc):
        raise r.fail(f"{where} should map state names to tensors")
    return {k: r.tensor(ref, f"{where}.{k}") for k, ref in doc.items()}
