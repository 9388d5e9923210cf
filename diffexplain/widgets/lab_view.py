"""``LabView``: the base of the anywidget labs (NoiseLab, PromptSwap, ForwardProcess) on ``TraceView``.

A lab has controls (prompt, seed, step k, strength, a rectangle...) that the browser draws, pictures
Python computes (sent once per run or fork, ``send_view``), and buttons that need the model. Here:

- ``bind(name, control)``: a Python stand-in (``diffexplain.widgets.stand_ins`` or below) mirrored in the
  ``_controls`` trait, both ways: ``lab.strength.value = 2`` shows in the browser, and a move in the
  browser reaches the stand-in once the control settles (its observers then run, as a slider's did);
- each button message ``{"action": "click", "name": ..., "controls": {...}}`` first takes the browser's
  control values, then clicks the named button (``self.named_buttons``): its action runs with the busy
  state, Stop and errors of ``Actions``.

The browser side is ``diffexplain/web/lab_view.js`` (helpers) followed by the view's own module
(:func:`lab_bundle`).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import traitlets as T

from diffexplain.web import bundle
from diffexplain.widgets.inputs import parse_seed
from diffexplain.widgets.stand_ins import Button, Layout
from diffexplain.widgets.trace_view import TraceView

LAB_HELPERS = "lab_view.js"


def lab_bundle(view: str) -> str:
    """One ES module: the shared ``trace_view.js``, the labs' helpers ``lab_view.js``, then ``view``."""
    own = resources.files("diffexplain.web").joinpath(view).read_text(encoding="utf-8")
    return bundle(LAB_HELPERS) + "\n" + own


class SeedText(T.HasTraits):
    """The seed box's stand-in: ``value`` (text; an int is taken), ``description``, ``seed`` (checked)."""

    value = T.Union([T.Unicode(), T.Int()], default_value="0")

    def __init__(self, seed: int = 0, *, description: str = "seed") -> None:
        super().__init__(value=str(seed))
        self.description = description
        self.layout = Layout()

    @T.validate("value")
    def _as_text(self, proposal: dict) -> str:
        value = proposal["value"]
        return value if isinstance(value, str) else str(int(value))

    @property
    def seed(self) -> int:
        """The seed typed in the box (``InputError`` naming the box for anything else)."""
        return parse_seed(self.value, self.description)


class FloatControl(T.HasTraits):
    """A float slider or box: ``value`` within ``min`` .. ``max`` (``step`` for the browser)."""

    value = T.Float(0.0)
    min = T.Float(0.0)
    max = T.Float(1.0)

    def __init__(self, value: float, *, min: float, max: float, step: float = 0.1) -> None:  # noqa: A002
        super().__init__()
        self.min, self.max, self.step = min, max, step
        self.value = value

    @T.validate("value")
    def _clip(self, proposal: dict) -> float:
        return max(self.min, min(self.max, float(proposal["value"])))


class RangeControl(T.HasTraits):
    """A range slider: ``value`` = (low, high) within ``min`` .. ``max``."""

    value = T.Tuple(T.Int(), T.Int(), default_value=(0, 0))

    def __init__(self, value: tuple[int, int], *, min: int = 0, max: int = 100) -> None:  # noqa: A002
        super().__init__()
        self.min, self.max = min, max
        self.value = value

    @T.validate("value")
    def _order(self, proposal: dict) -> tuple[int, int]:
        low, high = (max(self.min, min(self.max, int(v))) for v in proposal["value"])
        return (min(low, high), max(low, high))


class Upload(T.HasTraits):
    """The upload's stand-in: ``value`` as ipywidgets 8's ``FileUpload`` gives it (a tuple of dicts with
    ``name`` and ``content``); the browser's upload sets it (the file's bytes came as a binary buffer)."""

    value = T.Tuple()


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class LabView(TraceView):
    """Base of the anywidget labs: controls mirrored in ``_controls``, buttons clicked by name."""

    _controls = T.Dict().tag(sync=True)  # {name: value} of every bound control, both ways

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.can_stop = True
        self.bound: dict[str, Any] = {}
        self.named_buttons: dict[str, Button] = {}
        self._applying = False
        self.observe(self._on_controls, names="_controls")

    # ---- controls --------------------------------------------------------------------------------
    def bind(self, name: str, control: Any) -> Any:
        """Mirror ``control.value`` in ``_controls[name]`` (both ways); returns ``control``."""
        self.bound[name] = control
        control.observe(lambda _: self._push(), names="value")
        self._push()
        return control

    def _push(self) -> None:
        if not self._applying:
            self._controls = {name: _json(c.value) for name, c in self.bound.items()}

    def _on_controls(self, change: dict) -> None:
        if not self._applying:
            self.guard(self.apply_controls)(change["new"])

    def apply_controls(self, values: dict[str, Any]) -> None:
        """Set the bound controls to the browser's ``values`` (their observers run, as a slider's did)."""
        self._applying = True
        try:
            for name, value in values.items():
                control = self.bound.get(name)
                if control is None:
                    continue
                value = tuple(value) if isinstance(control.value, tuple) else value
                if control.value != value:
                    control.value = value
        finally:
            self._applying = False
            self._push()

    # ---- buttons ---------------------------------------------------------------------------------
    def name_buttons(self, **buttons: Button) -> None:
        """The view's buttons by the name the browser sends (all off while an action runs)."""
        self.named_buttons.update(buttons)
        self.view_buttons = list(self.named_buttons.values())

    def _on_message(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        if isinstance(content, dict) and isinstance(content.get("controls"), dict):
            content = dict(content)
            self.guard(self.apply_controls)(content.pop("controls"))
        super()._on_message(widget, content, buffers)

    def action_upload(self, name: str, buffers: list[Any] | None = None) -> None:
        """The browser's upload (an image): ``upload.value`` gets the file's bytes."""
        if not buffers:
            raise ValueError(f"the upload of {name!r} came without its content")
        self.upload.value = ({"name": name, "content": bytes(buffers[0])},)

    def action_click(self, name: str) -> None:
        """A button of the browser: click the Python button ``name``."""
        button = self.named_buttons.get(name)
        if button is None:
            raise ValueError(f"no button {name!r}: expected one of {', '.join(self.named_buttons)}")
        if not button.disabled:
            button.click()
