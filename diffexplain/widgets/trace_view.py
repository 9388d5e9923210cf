"""``TraceView``: the base of the anywidget views, which draw a trace in the browser and scrub it there.

Python keeps the model, the runs and the state; the browser runs the shared module
``diffexplain/web/trace_view.js`` (the same code the one-file HTML page inlines). Each trace's pictures
go to the browser ONCE, as one binary buffer (the ``_frames`` trait: PNGs end to end, ``_index`` says
where each is; ipywidgets sends ``bytes`` as a binary buffer of the comm message, not base64 in JSON).
Scrubbing, playing and hovering then need no kernel: the step reaches Python (``step``) once the
scrubbing settles (``STEP_SYNC_MS`` in the module), never once per key press.

Actions that need the model are messages from the browser, ``{"action": NAME, ...}``, handled by the
method ``action_NAME(**rest)`` inside ``guard`` (errors to the output area and status line, as in every
widget); long ones are ``self.start(make_work)`` with the busy state and Stop of
:class:`~diffexplain.widgets.actions.Actions`. ``{"action": "stop"}`` is Stop.

How to port a view onto it (StepExplorer is the worked example, ``step_explorer.py``):

1. Subclass ``TraceView``; set ``css_class``; keep the old constructor's signature.
2. Build what the browser shows with :mod:`diffexplain.web.view_data` (JSON-ready, no pictures) and the
   pictures as PNG bytes keyed ``"k/key"`` (per step) or ``"key"``; call ``self.send_view(data, pictures)``
   once per trace (and when a Python-side choice changes them: the fast preview, the stage).
3. Draw it in ``trace_view.js``: ``mountTraceView`` draws the step view; a view with other panels adds its
   own ``mountXxx`` to the module (the HTML page can then inline it too) and picks it from ``_view.kind``.
4. Keep the Python attributes code and tests use as stand-ins (``diffexplain.widgets.stand_ins``):
   ``slider`` linked to ``step``, ``images[key].value`` read from the pictures sent, texts as ``Text``,
   buttons as ``Button`` (``click()`` still works), and figures built only when Python asks for them.
5. Each control that needs Python sends ``model.send({action: ...})`` in the module; handle it in
   ``action_<name>``; register the view's buttons in ``self.view_buttons`` so a running action disables them.
"""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets as T

from diffexplain.web import trace_view_path
from diffexplain.widgets.actions import Actions
from diffexplain.widgets.stand_ins import Button, Output, Progress, Text


def pack_pictures(pictures: dict[str, bytes | None]) -> tuple[bytes, dict[str, list[int]]]:
    """PNGs end to end in one buffer, and where each is: ``{key: [offset, length]}`` (None: left out)."""
    chunks, index, offset = [], {}, 0
    for key, data in pictures.items():
        if data is None:
            continue
        chunks.append(data)
        index[key] = [offset, len(data)]
        offset += len(data)
    return b"".join(chunks), index


class TraceView(Actions, anywidget.AnyWidget):
    """Base of the anywidget views (see the module's docstring for how to port a view onto it)."""

    _esm = trace_view_path()
    css_class = "dx-widget"

    _view = T.Dict().tag(sync=True)  # what the view shows but the pictures (diffexplain.web.view_data)
    _frames = T.Bytes(b"").tag(sync=True)  # every picture of the trace, PNGs end to end: sent once
    _index = T.Dict().tag(sync=True)  # {"k/key" or "key": [offset, length]} into _frames
    _version = T.Int(0).tag(sync=True)  # bumped after each new view: the browser redraws once
    step = T.Int(0).tag(sync=True)  # the step shown (the browser sets it once scrubbing settles)
    status_html = T.Unicode("").tag(sync=True)
    error_text = T.Unicode("").tag(sync=True)
    busy = T.Bool(False).tag(sync=True)
    can_stop = T.Bool(False).tag(sync=True)  # True for views that run the model: Stop and progress shown
    progress_value = T.Int(0).tag(sync=True)
    progress_max = T.Int(1).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("dx-widget")
        self.add_class(self.css_class)
        self.output = Output()
        self.status = Text()
        self.progress = Progress()
        self.stop_button = Button("■ Stop", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.view_buttons: list[Button] = []  # disabled while an action runs
        T.link((self.status, "value"), (self, "status_html"))
        T.link((self.progress, "value"), (self, "progress_value"))
        T.link((self.progress, "max"), (self, "progress_max"))
        self.output.observe(lambda _: setattr(self, "error_text", self.output.text()), names="outputs")
        self.stop_button.observe(lambda c: setattr(self, "busy", not c["new"]), names="disabled")
        self._init_actions()
        self.on_msg(self._on_message)

    def send_view(self, data: dict[str, Any], pictures: dict[str, bytes | None]) -> None:
        """Send a new view: ``data`` (JSON) and its ``pictures`` (PNG bytes) in one message; the browser
        redraws once."""
        frames, index = pack_pictures(pictures)
        with self.hold_sync():
            self._view, self._frames, self._index = data, frames, index
            self._version += 1

    def _on_message(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        if not isinstance(content, dict) or "action" not in content:
            return
        args = {k: v for k, v in content.items() if k != "action"}
        if content["action"] == "stop":
            self.stop()
            return
        handler = getattr(self, f"action_{content['action']}", None)
        if handler is None:
            self.show_error(ValueError(f"unknown action {content['action']!r} from the browser"))
            return
        if buffers:
            args["buffers"] = buffers
        self.guard(handler)(**args)

    def buttons(self) -> list[Button]:
        """The view's buttons (``view_buttons``): off while an action runs."""
        return list(self.view_buttons)

    def clear_errors(self) -> None:
        """Empty the output area."""
        self.output.outputs = ()
