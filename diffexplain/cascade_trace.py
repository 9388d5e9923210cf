"""CascadeTrace: the traces of a cascade's stages, by name, saved together in one safetensors file.

The file is ``trace_io``'s format several times over: one JSON record per stage (each as a single
trace's, previews included) in the metadata, all tensors in one safetensors body, plus what passed
between the stages. Never pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from diffexplain.cascade_hooks import INPUT_POINT
from diffexplain.errors import TraceKeyError
from diffexplain.hooks import Replacement
from diffexplain.names import current_name, unknown_name_message
from diffexplain.trace import Trace
from diffexplain.trace_io import trace_document, trace_from_document
from diffexplain.trace_reader import open_file
from diffexplain.trace_writer import TensorRefs, write_file

if TYPE_CHECKING:
    from PIL import Image

    from diffexplain.cascade import Cascade

FORMAT = "diffexplain.cascade"
VERSION = 1


def is_cascade_file(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file holding a cascade trace (False for anything else)."""
    import json

    from diffexplain.trace_writer import METADATA_KEY

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            doc = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception:  # noqa: BLE001 - not readable as a cascade: the single-trace loader says why
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


class CascadeTrace:
    """Each stage's ``Trace`` (``.stages``, in run order), what passed between them (``.inputs``) and
    the cascade's settings (prompt, seed). ``trace["II.step.pred_x0", 3]`` reads a stage's trace."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.stages: dict[str, Trace] = {}
        self.inputs: dict[str, torch.Tensor] = {}  # stage -> what it received (picture or embeddings)
        self.replacements: list[Replacement] = []  # "<stage>.input" hooks that replaced what passed
        self.cascade: Cascade | None = None  # the cascade that made it (None for a loaded file)

    @property
    def names(self) -> tuple[str, ...]:
        """The stage names, in run order."""
        return tuple(self.stages)

    @property
    def last(self) -> Trace:
        """The last stage's trace."""
        return self.stages[self.names[-1]]

    @property
    def images(self) -> list[Image.Image]:
        """The final pictures (the last stage's), as PIL images."""
        return self.last.images

    def stage(self, name: str) -> Trace:
        """One stage's trace; ``KeyError`` naming the stages."""
        if name not in self.stages:
            raise KeyError(f"no stage {name!r}; this cascade trace has {', '.join(self.names)}")
        return self.stages[name]

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        """``trace["II.step.latents", k]``, ``trace["I.prompt.cond"]``, ``trace["II.input"]``.

        Errors name the point as given here (``'II.step.model.uncond'``), not as the stage's trace does."""
        name, step = key if isinstance(key, tuple) else (key, None)
        stage, _, point = name.partition(".")
        trace = self.stage(stage)
        if point == INPUT_POINT:
            if step is not None:
                raise TraceKeyError(f"{name!r} is run-level (once per run, no steps): use trace[{name!r}]")
            if stage not in self.inputs:
                raise TraceKeyError(f"{name!r}: stage {stage} received nothing from a previous stage")
            return self.inputs[stage]
        points = {p.name: p for p in trace.hook_points}
        if current_name(point, warn=False) not in points:
            valid = [f"{stage}.{INPUT_POINT}"] if stage in self.inputs else []
            valid += [f"{stage}.{p}" for p in points]
            raise TraceKeyError(unknown_name_message(f"name in stage {stage}", name, valid))
        if step is not None and not points[current_name(point, warn=False)].per_step:
            raise TraceKeyError(f"{name!r} is a run-level name with no steps; use trace[{name!r}]")
        try:
            return trace[point] if step is None else trace[point, step]
        except TraceKeyError as exc:  # not kept, or not computed: the stage's own words, its name in front
            raise TraceKeyError(f"{name!r} (stage {stage}'s {point!r}): {exc}") from None

    def fork(self, stage: str, step: int, **changes: Any) -> CascadeTrace:
        """``cascade.fork(self, stage, step, ...)`` with the cascade that made this trace."""
        if self.cascade is None:
            raise ValueError(
                "this cascade trace has no Cascade attached (loaded from a file?): use cascade.fork(trace, ...)"
            )
        return self.cascade.fork(self, stage, step, **changes)

    # ---- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, previews: bool | None = None) -> None:
        """Write every stage's trace to one file (``Trace.save``'s format per stage; ``previews`` as there)."""
        if previews not in (None, True, False):
            raise ValueError(f"previews={previews!r}: expected True, False or None")
        tensors = TensorRefs()
        docs = {}
        for name, trace in self.stages.items():
            made = trace.ensure_previews(required=bool(previews)) if previews is not False else None
            docs[name] = trace_document(trace, tensors, made)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "settings": self.settings,
            "stages": docs,
            "order": list(self.stages),
            "inputs": {name: tensors.ref(x) for name, x in self.inputs.items()},
            "replacements": [[r.name, r.step, r.hook] for r in self.replacements],
        }
        write_file(path, tensors, doc)

    def to_html(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write one self-contained HTML page of this cascade: a button per stage over each stage's page
        (``Trace.to_html``'s: step slider, play button, the StepExplorer's panels and timeline). Open it in
        any browser, no Python, no server. One stage alone: ``trace.stage("II").to_html(path)``."""
        from diffexplain.cascade_page import write_cascade_page

        return write_cascade_page(self, path, title=title)

    @classmethod
    def load(cls, path: str | Path, *, cascade: Cascade | None = None) -> CascadeTrace:
        """Read a file written by ``save``; pass ``cascade`` to fork it. Raises ``TraceFileError``."""
        with open_file(path) as (r, doc):
            if r.get(doc, "format", str, "file") != FORMAT:
                hint = " (a single trace: Trace.load)" if doc.get("format") == "diffexplain.trace" else ""
                raise r.fail(f"format is {doc['format']!r}, expected {FORMAT!r}{hint}")
            if r.get(doc, "version", int, "file") != VERSION:
                raise r.fail(
                    f"cascade format version {doc['version']} is not supported (this reads {VERSION})"
                )
            trace = cls(r.get(doc, "settings", dict, "file"))
            stages = r.get(doc, "stages", dict, "file")
            order = r.get(doc, "order", list, "file")
            if sorted(order) != sorted(stages) or not all(isinstance(n, str) for n in order):
                raise r.fail("'order' should list the stage names of 'stages'")
            for name in order:
                trace.stages[name] = trace_from_document(r, stages[name], Trace)
            for name, ref in r.get(doc, "inputs", dict, "file").items():
                if name not in stages:
                    raise r.fail(f"inputs names an unknown stage {name!r}")
                trace.inputs[name] = r.tensor(ref, f"inputs.{name}")
            for rep in r.get(doc, "replacements", list, "file"):
                if not (
                    isinstance(rep, list) and len(rep) == 3 and all(isinstance(x, str | None) for x in rep)
                ):
                    raise r.fail("replacements should be [hook point, null, hook name] lists")
                trace.replacements.append(Replacement(rep[0], rep[1], rep[2]))
        if cascade is not None:
            trace.cascade = cascade
            for name, stage in trace.stages.items():
                stage.explainer = cascade.stages.get(name)
        return trace

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {len(t)} steps" for n, t in self.stages.items())
        return (
            f"CascadeTrace(prompt={self.settings.get('prompt')!r}, seed={self.settings.get('seed')}, {inner})"
        )
