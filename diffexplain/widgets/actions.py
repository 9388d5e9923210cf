"""The action machinery every diffexplain widget shares, whatever draws it (ipywidgets or an anywidget).

A widget's callbacks are wrapped by ``guard`` (errors land in the widget's output area and status line);
a button's action is a generator that yields between loop steps (``start``): in a kernel it advances one
step per turn of the kernel's event loop, so a Stop click or a slider drag is heard while the model runs,
with no thread; called from Python (``lab.run()``) it runs to the end.

:class:`Actions` needs of its widget only: ``output`` (``outputs``, ``append_stderr``), ``status``
(``value``: HTML), ``progress`` (``with_hooks``), ``stop_button`` (``disabled``) and ``buttons()`` (each
with ``disabled``). ``DxWidget`` gives them as ipywidgets controls; ``TraceView`` (an anywidget) as
Python stand-ins whose state the browser draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from diffexplain.jobs import drain
from diffexplain.widgets.inputs import InputError

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

ERROR_STATUS = "<span style='color:#b00'>"  # how the status line starts when it shows an error

Work = Generator[Any, None, Any]
"""A widget action that yields between loop steps (``yield from self.run_steps(...)``)."""


def kernel_scheduler() -> Callable[[Callable[[], None]], Any] | None:
    """``call_soon`` of the event loop running in this thread (a Jupyter kernel handling a click), else
    None: outside a kernel there is nothing to hand control back to, so work runs to the end at once."""
    try:
        return asyncio.get_running_loop().call_soon
    except RuntimeError:
        return None


class Actions:
    """Errors, status, and button actions run step by step with Stop (see the module's docstring)."""

    input_errors: tuple[type[Exception], ...] = (InputError,)
    """Errors about a typed value: shown on the status line only (their message says it all)."""

    def _init_actions(self) -> None:
        # How a button's work is stepped: None picks the kernel's event loop (or none: run to the end);
        # a test may set a function that queues the step callbacks itself.
        self.schedule: Callable[[Callable[[], None]], Any] | None = None
        self.work: Work | None = None  # the action now running, step by step
        self._stop_wanted = False
        self._deferred: dict[Callable[..., Any], tuple[tuple, dict]] = {}
        self._button_states: list[tuple[Any, bool]] = []
        self._warned: set[tuple[str, str]] = set()  # the running action's warnings, each shown once
        self._keep_outputs = False  # True while an ended action's deferred callbacks run

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a callback: any exception is shown in this widget's output area (and the status line).

        When the callback succeeds, the errors shown before it are cleared: the area shows only what
        went wrong since the last action that worked. While an action runs step by step, a callback
        (a slider drag) waits: it runs once the action ends, with the latest arguments it got, and
        leaves that action's warnings and errors in place.
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.work is not None:
                self._deferred[wrapper] = (args, kwargs)  # the latest value wins
                return None
            before, status = len(self.output.outputs), self.status.value
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.show_error(exc)
                return None
            if not self._keep_outputs:  # it worked: the errors shown before it are old news
                self._clear_old_errors(before, status)
            return result

        return wrapper

    def _clear_old_errors(self, before: int, status: str) -> None:
        """Drop the first ``before`` outputs, and the status line's error if nothing replaced it since
        (``status``, the line before the callback) and no error is left below it."""
        if before:
            self.output.outputs = self.output.outputs[before:]
        if status.startswith(ERROR_STATUS) and self.status.value == status and not self.output.outputs:
            self.status.value = ""

    def show_error(self, exc: BaseException) -> None:
        """Print ``exc`` with its traceback into the output area; a one-line summary goes to the status line.

        A bad value typed in a box (``input_errors``) goes to the status line alone: no traceback."""
        if isinstance(exc, self.input_errors):
            self.status.value = f"{ERROR_STATUS}{_escape(str(exc))}</span>"
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.output.append_stderr(text)
        self.status.value = f"{ERROR_STATUS}Error: {type(exc).__name__}: {_escape(str(exc))}</span>"

    def say(self, html: str) -> None:
        """Show a short message on the status line."""
        self.status.value = html

    # ---- work that runs the model -------------------------------------------------------------
    def run_steps(self, explainer: Explainer, prompt: str, **kwargs: Any) -> Generator[int, None, Trace]:
        """``explainer.start_run`` with this widget's progress bar (extra ``hooks=`` are kept), as work
        that yields each loop step: ``trace = yield from self.run_steps(...)``."""
        hooks = self.progress.with_hooks(kwargs.pop("hooks", None))
        return (yield from explainer.start_run(prompt, hooks=hooks, progress=False, **kwargs))

    def fork_steps(
        self, explainer: Explainer, trace: Trace, step: int, **kwargs: Any
    ) -> Generator[int, None, Trace]:
        """``explainer.start_fork`` with this widget's progress bar, as work (see ``run_steps``)."""
        hooks = self.progress.with_hooks(kwargs.pop("hooks", None))
        return (yield from explainer.start_fork(trace, step, hooks=hooks, progress=False, **kwargs))

    def finish(self, work: Work) -> Any:
        """Run ``work`` to the end now, the buttons off meanwhile (an action called from Python)."""
        with self.buttons_off():
            return drain(work)

    def start(self, make_work: Callable[[], Work]) -> None:
        """Start a button's action. In a kernel it advances one step per turn of the event loop, the
        buttons off and Stop on meanwhile; anywhere else it runs to the end at once."""
        if self.work is not None:
            self.say("busy: press Stop first")
            return
        schedule = self.schedule or kernel_scheduler()
        if schedule is None:
            self.finish(make_work())
            return
        self.work, self._stop_wanted = make_work(), False
        self._warned = set()
        self._button_states = self._disable_buttons()
        self.stop_button.disabled = False
        schedule(self._advance)

    def stop(self) -> None:
        """Stop the running action after the step now running (the Stop button)."""
        if self.work is not None:
            self._stop_wanted = True
            self.say("stopping after this step …")

    def _advance(self) -> None:
        """One step of the running action, then the next is scheduled (or the action ends)."""
        work = self.work
        if work is None:
            return
        if self._stop_wanted:
            work.close()  # the running job's trace keeps its finished steps, status "stopped"
            self._end_work()
            self.say(self._stopped_message())
            return
        error: BaseException | None = None
        finished = False
        with warnings.catch_warnings(record=True) as caught:  # a step's warnings go to this widget
            try:
                next(work)
            except StopIteration:
                finished = True
            except (Exception, KeyboardInterrupt) as exc:  # also Ctrl-C, the kernel's stop square
                error = exc
        self._show_warnings(caught)
        if error is not None:
            work.close()
            self._end_work()
            self.show_error(error)
        elif finished:
            self._end_work()
        else:
            (self.schedule or kernel_scheduler() or _call)(self._advance)

    def _show_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        """Write a step's warnings to the output area, each text once per action (the two runs of a
        lab, or the seeds of a grid, warn alike)."""
        for warning in caught:
            key = (warning.category.__name__, str(warning.message))
            if key not in self._warned:
                self._warned.add(key)
                self.output.append_stderr(f"{key[0]}: {key[1]}\n")

    def _stopped_message(self) -> str:
        explainer = getattr(self, "explainer", None)
        trace = getattr(explainer, "last_trace", None)
        where = ""
        if trace is not None and trace.status == "stopped":
            total = trace.run_settings.num_inference_steps
            where = f" after {len(trace)} of {total} steps; that partial trace is in explainer.last_trace"
        return f"stopped{where}. The pictures show the last action that finished."

    def _end_work(self) -> None:
        """The action is over: buttons back as they were, Stop off, then the deferred callbacks."""
        self.work = None
        for b, state in self._button_states:
            b.disabled = state
        self._button_states = []
        self.stop_button.disabled = True
        deferred, self._deferred = self._deferred, {}
        self._keep_outputs = True  # what they redraw belongs to the action: its warnings stay
        try:
            for callback, (args, kwargs) in deferred.items():
                callback(*args, **kwargs)
        finally:
            self._keep_outputs = False

    def buttons(self) -> list[Any]:
        """Every button of this widget but Stop (each has ``disabled``)."""
        return []

    def _disable_buttons(self) -> list[tuple[Any, bool]]:
        states = [(b, b.disabled) for b in self.buttons()]
        for b, _ in states:
            b.disabled = True
        return states

    @contextlib.contextmanager
    def buttons_off(self) -> Iterator[None]:
        """Disable the widget's buttons while it runs the model (a click then cannot queue another run);
        each button gets its own state back afterwards, also after an error."""
        states = self._disable_buttons()
        try:
            yield
        finally:
            for b, state in states:
                b.disabled = state

    def clear_errors(self) -> None:
        """Empty the output area."""
        self.output.outputs = ()


def _call(step: Callable[[], None]) -> None:
    step()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:500]
