"""TracePlayer: open a saved trace file and explore it with a StepExplorer (and its attention maps), no model needed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W
from PIL import Image

from diffexplain.errors import TraceFileError
from diffexplain.widgets.attention_maps import AttentionMaps
from diffexplain.widgets.base import DEFAULT_SIZE, DxWidget, Frames, button, help_box
from diffexplain.widgets.inputs import InputError
from diffexplain.widgets.noise_lab import first_upload
from diffexplain.widgets.step_explorer import StepExplorer

if TYPE_CHECKING:
    import torch

    from diffexplain.cascade_trace import CascadeTrace
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = (
    "Open a trace saved with <code>trace.save(path)</code>: type its path and press <b>Load</b>, or upload "
    "the file. No model is needed: x_t and x̂0 are the decoded pictures saved in the file (files saved "
    "without them use the fast latent preview), or are decoded again when an explainer is given. "
    "A cascade's file (<code>cascade_trace.save(path)</code>) has a <b>stage</b> chooser."
)
# Which stored preview a widget's picture key names: StepExplorer's ("x_t", k), ("x̂0", k), AttentionMaps' ("x0", k)
PREVIEW_KINDS = {"x_t": "latents", "x̂0": "pred_x0", "x0": "pred_x0"}


class SavedFrames(Frames):
    """Frames that show a trace's saved previews (``trace.previews``) where there is no VAE to decode.

    With previews, the widgets' "fast latent preview" box is free again: unticked shows the saved
    decoded pictures, ticked the linear latent preview. With a VAE (an explainer) it decodes as usual.
    """

    def __init__(self, explainer: Explainer | None, size: int, trace: Trace) -> None:
        super().__init__(explainer, size)
        self.trace = trace

    def _has_vae(self) -> bool:
        return super().can_decode()

    def can_decode(self, trace: Trace | None = None) -> bool:
        """A VAE, or saved previews of the trace shown."""
        return self._has_vae() or getattr(trace or self.trace, "previews", None) is not None

    def picture(
        self,
        owner: Any,
        key: tuple,
        latents: torch.Tensor,
        *,
        preview: bool,
        pixel_space: bool = False,
        size: int | None = None,
    ) -> Image.Image:
        """A saved preview for ``key`` when there is no VAE and ``preview`` is off, else ``Frames.picture``."""
        if not preview and not pixel_space and not self._has_vae():
            saved = getattr(owner, "previews", None)
            kind = PREVIEW_KINDS.get(key[0]) if key else None
            image = None
            if saved is not None and kind is not None and len(key) > 1 and isinstance(key[1], int):
                image = saved.image(kind, key[1])
            if image is not None:
                size = size or self.size
                return image.resize(
                    (size, round(size * image.height / image.width)), Image.Resampling.NEAREST
                )
            preview = True  # nothing saved for this picture: the fast latent preview
        return super().picture(owner, key, latents, preview=preview, pixel_space=pixel_space, size=size)


class TracePlayer(DxWidget):
    """Load a saved trace (a path, an upload, a ``Trace`` or a ``CascadeTrace``) and explore it with
    :class:`StepExplorer` (with a stage chooser for a cascade's).

    A path that names no file, or a file that is no trace (the loader's ``TraceFileError``), is told on
    the status line, without a traceback.
    """

    css_class = "dx-trace-player"
    input_errors = (InputError, TraceFileError)

    def __init__(
        self,
        path_or_trace: str | os.PathLike[str] | Trace | CascadeTrace | None = None,
        *,
        explainer: Explainer | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__()
        self.explainer = explainer
        self.size = size
        self.path = W.Text(value="", placeholder="path/to/run.trace", description="trace file")
        self.path.layout.width = "480px"
        self.path.add_class("dx-trace-path")
        self.load_button = button("Load", "dx-load-button", style="primary")
        self.upload = W.FileUpload(accept="", multiple=False, description="upload")
        self.upload.add_class("dx-trace-upload")
        self.explorer_box = W.VBox()
        self.explorer: StepExplorer | None = None
        self.attention_box = W.VBox()
        self.attention: AttentionMaps | None = None  # shown for traces with attention maps
        self.trace: Trace | None = None
        self.cascade_trace: CascadeTrace | None = None  # a cascade's file: self.trace is its shown stage

        self.load_button.on_click(self.guard(lambda _: self.load(self.path.value)))
        self.upload.observe(self.guard(self._on_upload), names="value")
        self.children = [
            help_box(HELP),
            W.HBox([self.path, self.load_button, self.upload]),
            self.status,
            self.output,
            self.explorer_box,
            self.attention_box,
        ]
        if path_or_trace is None:
            return
        if isinstance(path_or_trace, str | os.PathLike):
            self.path.value = str(path_or_trace)
            self.guard(self.load)(path_or_trace)
        else:
            self.guard(self.show)(path_or_trace)

    def load(self, path: str | os.PathLike[str]) -> Trace | CascadeTrace:
        """Load the trace file at ``path`` and show it. Raises ``InputError`` for an empty path or one that
        names no file, and the loader's ``TraceFileError`` for a file that is no trace."""
        from diffexplain.cascade_trace import CascadeTrace, is_cascade_file
        from diffexplain.trace import Trace

        path = Path(str(path)).expanduser()
        if not str(path).strip() or str(path) == ".":
            raise InputError("the trace file box is empty: type the path of a file saved with trace.save")
        if not path.is_file():
            what = "a folder" if path.is_dir() else "no file"
            raise InputError(
                f"the trace file box holds {str(path)!r}: that is {what}; type a trace file's path"
            )
        self.say(f"loading {path.name} …")
        if is_cascade_file(path):
            cascade = CascadeTrace.load(path)
            self.show(cascade)
            steps = " + ".join(f"{len(t)}" for t in cascade.stages.values())
            self.say(
                f"loaded <code>{path.name}</code>: stages {', '.join(cascade.names)} ({steps} steps), "
                f"prompt “{cascade.settings.get('prompt')}”"
            )
            return cascade
        trace = Trace.load(path, explainer=self.explainer)
        self.show(trace)
        self.say(f"loaded <code>{path.name}</code>: {len(trace)} steps, prompt “{trace.run_settings.prompt}”")
        return trace

    def _on_upload(self, change: dict) -> None:
        content = first_upload(self.upload)
        if content is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "uploaded.trace"
            path.write_bytes(content)
            self.load(path)

    def _frames(self, frames: Frames, trace: Trace) -> SavedFrames:
        """``frames`` as ``SavedFrames`` following ``trace`` (its cache kept)."""
        if not isinstance(frames, SavedFrames):
            saved = SavedFrames(frames.explainer, frames.size, trace)
            saved.trace_latent_rgb = frames.trace_latent_rgb
            frames = saved
        frames.trace = trace
        return frames

    def show(self, trace: Trace | CascadeTrace) -> None:
        """Show an already loaded ``trace`` (a cascade's: its last stage first, a stage chooser above)."""
        from diffexplain.cascade_trace import CascadeTrace

        shown = trace
        self.cascade_trace = trace if isinstance(trace, CascadeTrace) else None
        if self.cascade_trace is not None:
            stage = self.explorer.stage if self.explorer is not None else None
            trace = self.cascade_trace.stages.get(stage or "", self.cascade_trace.last)
        self.trace = trace
        if self.explorer is None:
            self.explorer = StepExplorer(trace, self.explainer, size=self.size)
            self.explorer_box.children = [self.explorer]
        self.explorer.frames = self._frames(self.explorer.frames, trace)
        self.explorer.set_trace(shown)
        if self.explainer is None and trace.previews is not None:
            self.explorer.preview.value = False  # the saved pictures, not the blocky latent preview
        has_maps = (
            bool((trace.run_settings.attention or {}).get("maps"))
            and bool(trace.steps)
            and bool(trace.steps[0].attention)
        )
        if has_maps and self.attention is None:
            self.attention = AttentionMaps(trace, self.explainer, size=self.size).link(self.explorer)
            self.attention_box.children = [W.HTML("<h4>Cross-attention maps</h4>"), self.attention]
        if has_maps and self.attention is not None:
            self.attention.frames = self._frames(self.attention.frames, trace)
            self.attention.set_trace(trace)
            if self.explainer is None and trace.previews is not None:
                self.attention.preview.value = False
        self.attention_box.layout.display = None if has_maps else "none"
        self.clear_errors()
