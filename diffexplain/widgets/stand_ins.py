"""Python stand-ins for the controls an anywidget view draws in the browser.

An anywidget view (``diffexplain.widgets.trace_view.TraceView``) draws its slider, buttons and texts in
JavaScript; Python keeps what code and tests used to read and set on the ipywidgets controls
(``explorer.slider.value = 3``, ``lab.status.value``, ``button.click()``, ``box.layout.display``), as
traitlets objects: ``traitlets.link`` / ``ipywidgets.link`` work on them, and the view syncs the
ones the browser needs through its own traits. None of them is a widget: nothing opens a comm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import traitlets as T


class Layout:
    """The part of ``ipywidgets.Layout`` code reads here: ``display`` (None shown, ``"none"`` hidden)."""

    def __init__(self) -> None:
        self.display: str | None = None


class Text(T.HasTraits):
    """A text (HTML) the view shows: ``value``."""

    value = T.Unicode("")

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value=value, **kwargs)
        self.layout = Layout()


class Shown:
    """A value computed when read (the picture or text at the step shown): ``value``."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read
        self.layout = Layout()

    @property
    def value(self) -> Any:
        """The value now (read when asked)."""
        return self._read()


class IntControl(T.HasTraits):
    """A slider or play control: ``value`` within ``min`` .. ``max``."""

    value = T.Int(0)
    min = T.Int(0)
    max = T.Int(0)

    @T.validate("value")
    def _clip(self, proposal: dict) -> int:
        return max(self.min, min(self.max, int(proposal["value"])))


class Checkbox(T.HasTraits):
    """A tick box: ``value``, ``disabled``, ``layout.display``."""

    value = T.Bool(False)
    disabled = T.Bool(False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = Layout()


class Chooser(T.HasTraits):
    """A choice among ``options`` ((label, value) pairs): ``value``, ``layout.display``."""

    value = T.Any(None, allow_none=True)
    options = T.List()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = Layout()


class Button(T.HasTraits):
    """A button: ``description``, ``disabled``, ``on_click(fn)`` and ``click()`` (as ipywidgets')."""

    description = T.Unicode("")
    disabled = T.Bool(False)

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        super().__init__(description=description, **kwargs)
        self._handlers: list[Callable[[Button], Any]] = []

    def on_click(self, fn: Callable[[Button], Any]) -> None:
        """Call ``fn(button)`` on each click."""
        self._handlers.append(fn)

    def click(self) -> None:
        """Click it: what the browser's button does."""
        for fn in self._handlers:
            fn(self)


class Output(T.HasTraits):
    """The output area: ``outputs`` (stream dicts as ``ipywidgets.Output`` keeps them), ``append_stderr``."""

    outputs = T.Tuple()

    def append_stderr(self, text: str) -> None:
        """Add ``text`` as a stderr stream output."""
        self.outputs = (*self.outputs, {"output_type": "stream", "name": "stderr", "text": text})

    def text(self) -> str:
        """All the text of the outputs."""
        return "".join(o.get("text", "") for o in self.outputs)


class Progress(T.HasTraits):
    """The progress of a run, fed by a hook on ``step.next``: loop step k+1 of N (forks start at k)."""

    value = T.Int(0)
    max = T.Int(1)

    def with_hooks(self, hooks: Any = None) -> list:
        """``hooks`` plus the progress hook (it only reads, so traces are unchanged)."""
        from diffexplain.hooks import Hook, as_hooks

        self.value = 0
        return [*as_hooks(hooks), Hook("step.next", self._tick)]

    def _tick(self, x: Any, *, ctx: Any) -> None:
        self.max = max(ctx.num_steps, 1)
        self.value = (ctx.step or 0) + 1
