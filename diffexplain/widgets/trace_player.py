"""TracePlayer: open a saved trace file and explore it with a StepExplorer (and its attention maps), no model needed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as W

from diffexplain.widgets.attention_maps import AttentionMaps
from diffexplain.widgets.base import DEFAULT_SIZE, DxWidget, button, help_box
from diffexplain.widgets.noise_lab import first_upload
from diffexplain.widgets.step_explorer import StepExplorer

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

HELP = (
    "Open a trace saved with <code>trace.save(path)</code>: type its path and press <b>Load</b>, or upload "
    "the file. No model is needed: pictures use the fast latent preview unless an explainer is given."
)


class TracePlayer(DxWidget):
    """Load a saved trace (a path, an upload, or a ``Trace``) and explore it with :class:`StepExplorer`.

    Bad files show the loader's error (``TraceFileError``) in the widget's output area.
    """

    css_class = "dx-trace-player"

    def __init__(
        self,
        path_or_trace: str | os.PathLike[str] | Trace | None = None,
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

    def load(self, path: str | os.PathLike[str]) -> Trace:
        """Load the trace file at ``path`` and show it; raises the loader's ``TraceFileError`` on a bad file."""
        from diffexplain.trace import Trace

        path = Path(str(path)).expanduser()
        if not str(path).strip() or str(path) == ".":
            raise ValueError("type the path of a trace file first")
        if not path.is_file():
            raise FileNotFoundError(f"no trace file at {str(path)!r}")
        self.say(f"loading {path.name} …")
        trace = Trace.load(path, explainer=self.explainer)
        self.show(trace)
        self.say(
            f"loaded <code>{path.name}</code>: {len(trace)} steps, prompt “{trace.settings.get('prompt')}”"
        )
        return trace

    def _on_upload(self, change: dict) -> None:
        content = first_upload(self.upload)
        if content is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "uploaded.trace"
            path.write_bytes(content)
            self.load(path)

    def show(self, trace: Trace) -> None:
        """Show an already loaded ``trace``."""
        self.trace = trace
        if self.explorer is None:
            self.explorer = StepExplorer(trace, self.explainer, size=self.size)
            self.explorer_box.children = [self.explorer]
        else:
            self.explorer.set_trace(trace)
        has_maps = (
            bool(trace.settings.get("attention", {}).get("maps"))
            and bool(trace.steps)
            and bool(trace.steps[0].attention)
        )
        if has_maps and self.attention is None:
            self.attention = AttentionMaps(trace, self.explainer, size=self.size).link(self.explorer)
            self.attention_box.children = [W.HTML("<h4>Cross-attention maps</h4>"), self.attention]
        elif has_maps and self.attention is not None:
            self.attention.set_trace(trace)
        self.attention_box.layout.display = None if has_maps else "none"
        self.clear_errors()
