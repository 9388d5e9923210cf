"""TracePlayer: open a saved trace file and explore it as the StepExplorer does (an anywidget; its attention
maps below), no model needed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import traitlets as T
from PIL import Image

from diffexplain.errors import TraceFileError
from diffexplain.widgets.attention_maps import AttentionMaps
from diffexplain.widgets.base import DEFAULT_SIZE, Frames
from diffexplain.widgets.inputs import InputError
from diffexplain.widgets.noise_work import first_upload
from diffexplain.widgets.stand_ins import Button, Text
from diffexplain.widgets.step_explorer import StepExplorer
from diffexplain.widgets.trace_view import TraceView

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


class TracePlayer(StepExplorer):
    """Load a saved trace (a path, an upload, a ``Trace`` or a ``CascadeTrace``) and explore it as the
    :class:`StepExplorer` does (with a stage chooser for a cascade's): one anywidget, scrubbed in the browser.

    The path box, Load and the upload are drawn in the browser; Load and an upload are messages to
    Python (the file's bytes as a binary buffer). In Python: ``path.value``, ``load_button.click()``,
    ``upload.value`` (ipywidgets 8's format), ``load(path)``, ``show(trace)``; ``explorer`` is the
    player itself once a trace is shown (None before). A trace with attention maps gets an
    ``AttentionMaps`` (an anywidget too, its step linked to the player's through the kernel) displayed
    below the player.

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
        TraceView.__init__(self)
        self.add_class("dx-step-explorer")  # the step view's parts are selected by it, as in the explorer
        self._setup()
        self.explainer = explainer
        self._given_explainer = explainer  # None: the saved pictures, when a file has them
        self.size = size
        self.frames: Frames = SavedFrames(explainer, size, None)
        self.trace: Trace | None = None  # type: ignore[assignment]
        self.path = Text()
        self.load_button = Button("Load")
        self.upload = Upload()
        self.view_buttons = [self.load_button]
        self.attention: AttentionMaps | None = None  # shown for traces with attention maps
        self.attention_box = Text()  # its layout.display: None while attention maps are shown
        self.attention_box.layout.display = "none"
        self.load_button.on_click(self.guard(lambda _: self.load(self.path.value)))
        self.upload.observe(self.guard(self._on_upload), names="value")
        self.path.observe(lambda _: None if self.trace is not None else self._send_trace(), names="value")
        if path_or_trace is None:
            self._send_trace()
            return
        if isinstance(path_or_trace, str | os.PathLike):
            self.path.value = str(path_or_trace)
            self.guard(self.load)(path_or_trace)
        else:
            self.guard(self.show)(path_or_trace)
        if self.trace is None:
            self._send_trace()  # nothing shown (an error): the loader alone

    @property
    def explorer(self) -> TracePlayer | None:
        """The step view: the player itself once a trace is shown (None before)."""
        return self if self.trace is not None else None

    # ---- the browser's messages ------------------------------------------------------------------
    def action_load(self, path: str) -> None:
        """The browser's Load button (the path typed beside it)."""
        self.path.value = path
        self.load(path)

    def action_upload(self, name: str, buffers: list[Any] | None = None) -> None:
        """The browser's upload: the file's bytes came as a binary buffer."""
        if not buffers:
            raise InputError(f"the upload of {name!r} came without its content")
        self._load_bytes(bytes(buffers[0]))

    def _extra_view(self) -> dict[str, Any]:
        return {"loader": {"help": HELP, "path": self.path.value}}

    def _send_trace(self) -> None:
        if self.trace is None:  # the loader alone
            self.send_view(self._extra_view(), {})
            return
        super()._send_trace()

    def _picture(self, key: str) -> bytes:
        return super()._picture(key) if self.trace is not None else b""

    # ---- loading -----------------------------------------------------------------------------------
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
        trace = Trace.load(path, explainer=self._given_explainer)
        self.show(trace)
        self.say(f"loaded <code>{path.name}</code>: {len(trace)} steps, prompt “{trace.run_settings.prompt}”")
        return trace

    def _on_upload(self, change: dict) -> None:
        content = first_upload(self.upload)
        if content is not None:
            self._load_bytes(content)

    def _load_bytes(self, content: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "uploaded.trace"
            path.write_bytes(content)
            self.load(path)

    def show(self, trace: Trace | CascadeTrace) -> None:
        """Show an already loaded ``trace`` (a cascade's: its last stage first, a stage chooser above)."""
        from diffexplain.cascade_trace import CascadeTrace

        first = trace
        if isinstance(trace, CascadeTrace):
            first = trace.stages.get(self.stage or "", trace.last)
        else:
            self.explainer = self._given_explainer  # the explainer given, else (in set_trace) the trace's
        self.frames = self._saved_frames(self.frames, first)
        self.set_trace(trace)
        if self._given_explainer is None and first.previews is not None:
            self.preview.value = False  # the saved pictures, not the blocky latent preview
        has_maps = (
            bool((first.run_settings.attention or {}).get("maps"))
            and bool(first.steps)
            and bool(first.steps[0].attention)
        )
        if has_maps and self.attention is None:
            self.attention = AttentionMaps(first, self._given_explainer, size=self.size).link(self)
        if has_maps and self.attention is not None:
            self.attention.frames = self._saved_frames(self.attention.frames, first)
            self.attention.set_trace(first)
            if self._given_explainer is None and first.previews is not None:
                self.attention.preview.value = False
        self.attention_box.layout.display = None if has_maps else "none"
        self.clear_errors()

    def _saved_frames(self, frames: Frames, trace: Trace) -> SavedFrames:
        """``frames`` as ``SavedFrames`` following ``trace`` (its cache kept)."""
        if not isinstance(frames, SavedFrames):
            saved = SavedFrames(frames.explainer, frames.size, trace)
            saved.trace_latent_rgb = frames.trace_latent_rgb
            frames = saved
        frames.trace = trace
        return frames

    def _ipython_display_(self) -> None:
        """The player, then its attention maps (a second anywidget view)."""
        from IPython.display import display

        data, metadata = self._repr_mimebundle_() or ({}, {})
        display(data, metadata=metadata, raw=True)
        if self.attention is not None and self.attention_box.layout.display is None:
            display(W.HTML("<h4>Cross-attention maps</h4>"), self.attention)


class Upload(T.HasTraits):
    """The upload's stand-in: ``value`` as ipywidgets 8's ``FileUpload`` gives it (a tuple of dicts
    with ``name`` and ``content``); setting it loads the file, as an upload from the browser does."""

    value = T.Tuple()
