"""Shared pieces of the widgets: a decoded-frame cache, a progress bar fed by a hook,
and callbacks whose errors land in the widget's own output area.

Widgets never call the U-Net: they ask the Explainer for traces (``start_run``, ``start_fork``) and
read them. A button's action is a generator that yields between loop steps (``DxWidget.start``): in a
kernel it advances one step per turn of the kernel's event loop, so a Stop click or a slider drag is
heard while the model runs, with no thread; called from Python (``lab.run()``) it runs to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import traceback
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from PIL import Image

from diffexplain import render
from diffexplain.hooks import Hook, HookContext, HookSpec, as_hooks
from diffexplain.jobs import drain
from diffexplain.views import (  # noqa: F401 (the widgets' names for the view helpers)
    DEFAULT_SIZE,
    blank,
    cosine,
    default_guidance,
    default_steps,
    difference_image,
    is_pixel_space,
    is_sigma_space,
    png,
    rms,
    vp_scale,
    words,
)
from diffexplain.widgets.controls import button, image_panel  # noqa: F401 (re-exported)
from diffexplain.widgets.figures import PLOTLY_MIME, LiveFigure, figure_box  # noqa: F401 (shared by every widget)
from diffexplain.widgets.inputs import InputError

if TYPE_CHECKING:
    from diffexplain.explainer import Explainer
    from diffexplain.trace import Trace

ERROR_STATUS = "<span style='color:#b00'>"  # how the status line starts when it shows an error


def help_html(html: str) -> str:
    """The markup of :func:`help_box` (to change a box's text in place)."""
    return f"<div style='font-size:0.9em;color:#444;max-width:900px'>{html}</div>"


def help_box(html: str) -> W.HTML:
    """The short help text shown at the top of a widget."""
    box = W.HTML(help_html(html))
    box.add_class("dx-help")
    return box


class Frames:
    """Pictures of latents for one widget: VAE-decoded (cached per trace, name and step) or fast previews."""

    def __init__(self, explainer: Explainer | None, size: int = DEFAULT_SIZE) -> None:
        self.explainer = explainer
        self.size = size
        self.trace_latent_rgb: list[list[float]] | None = None  # from the trace, when no explainer knows it
        self._cache: weakref.WeakKeyDictionary[Any, dict[tuple, bytes]] = weakref.WeakKeyDictionary()

    def can_decode(self, trace: Trace | None = None) -> bool:
        """Whether a VAE is available (an explainer with a VAE)."""
        return self.explainer is not None and self.explainer.vae is not None

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
        """Latents [B, C, h, w] as a picture: VAE-decoded unless ``preview`` (cached under ``(owner, key)``).

        An embedding [B, D] (the Kandinsky prior's x_t) is drawn as its grid of numbers."""
        size = size or self.size
        if latents.dim() == 2:
            return render.embedding_picture(latents, size=size)
        decode = not preview and not pixel_space and self.can_decode()
        cache = self._cache.setdefault(owner, {})
        full_key = (*key, size, "vae" if decode else "preview")
        if full_key not in cache:
            if pixel_space:
                image = render.to_pil(latents.float().clamp(-1, 1), size=size)
            elif decode:
                from diffexplain.probe import decode_latents

                image = render.to_pil(decode_latents(self.explainer, latents[:1]), size=size)
            else:
                rgb = getattr(self.explainer, "latent_rgb", None) or self.trace_latent_rgb
                image = render.latent_preview(latents, rgb, size=size)
            cache[full_key] = image
        return cache[full_key]

    def latents(
        self, owner: Any, key: tuple, latents: torch.Tensor, *, preview: bool, pixel_space: bool = False
    ) -> bytes:
        """PNG of latents [B, C, h, w]: decoded with the VAE unless ``preview`` (cached under ``(owner, key)``)."""
        return png(self.picture(owner, key, latents, preview=preview, pixel_space=pixel_space))

    def noise(self, latents: torch.Tensor) -> bytes:
        """PNG of a noise-like tensor (ε): each of the first three channels stretched to its range."""
        if latents.dim() == 2:  # an embedding-valued output (the Kandinsky prior's x̂0)
            return png(render.embedding_picture(latents, size=self.size))
        return png(render.latent_preview(latents[:, :3] if latents.shape[1] > 3 else latents, size=self.size))

    def channels(self, t: torch.Tensor, *, limit: float | None = None) -> bytes:
        """PNG of every channel side by side on one diverging scale (blue −, white 0, red +)."""
        if t.dim() == 2:  # an embedding: its grid of numbers on the same scale
            return png(render.embedding_picture(t, size=self.size, limit=limit))
        return png(render.channel_grid(t, size=self.size * 2, limit=limit))

    def final_picture(self, trace: Trace, *, preview: bool = False, size: int | None = None) -> Image.Image:
        """The trace's final picture: its decoded image, else (or with ``preview``) its final latents."""
        if trace.image is not None and trace.image.dim() == 2:  # image embeddings (the Kandinsky prior)
            return render.embedding_picture(trace.image, size=size or self.size)
        if trace.image is not None and (not preview or is_pixel_space(trace, self.explainer)):
            return render.to_pil(trace.image.float(), size=size or self.size)
        latents = trace.final_latents if trace.final_latents is not None else trace["step.next", -1]
        pixel = is_pixel_space(trace, self.explainer)
        return self.picture(trace, ("final",), latents, preview=preview, pixel_space=pixel, size=size)

    def final(self, trace: Trace, *, preview: bool = False) -> bytes:
        """PNG of the trace's final picture (see ``final_picture``)."""
        return png(self.final_picture(trace, preview=preview))

    def difference(self, a: Trace, b: Trace, *, preview: bool = False) -> bytes:
        """PNG of |a − b| between two traces' final pictures: white where equal, dark where they differ."""
        pa = np.asarray(self.final_picture(a, preview=preview), dtype=np.float32)
        pb = np.asarray(self.final_picture(b, preview=preview), dtype=np.float32)
        return png(difference_image(pa, pb))


class ProgressBar(W.IntProgress):
    """A progress bar fed by a hook on ``step.next``: shows loop step k+1 of N (forks start at k)."""

    def __init__(self) -> None:
        super().__init__(value=0, min=0, max=1, description="progress", layout=W.Layout(width="320px"))
        self.add_class("dx-progress")

    def _tick(self, x: torch.Tensor, *, ctx: HookContext) -> None:
        self.max = max(ctx.num_steps, 1)
        self.value = (ctx.step or 0) + 1

    def with_hooks(self, hooks: HookSpec = None) -> list[Hook]:
        """``hooks`` plus the progress hook (it only reads, so traces are unchanged)."""
        self.value = 0
        return [*as_hooks(hooks), Hook("step.next", self._tick)]


Work = Generator[Any, None, Any]
"""A widget action that yields between loop steps (``yield from self.run_steps(...)``)."""


def kernel_scheduler() -> Callable[[Callable[[], None]], Any] | None:
    """``call_soon`` of the event loop running in this thread (a Jupyter kernel handling a click), else
    None: outside a kernel there is nothing to hand control back to, so work runs to the end at once."""
    try:
        return asyncio.get_running_loop().call_soon
    except RuntimeError:
        return None


class DxWidget(W.VBox):
    """Base of the diffexplain widgets: an output area for errors, a status line, a progress bar and a
    Stop button (``stop_button``, shown by the widgets that run the model)."""

    css_class = "dx-widget"
    input_errors: tuple[type[Exception], ...] = (InputError,)
    """Errors about a typed value: shown on the status line only (their message says it all)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        self.output.add_class("dx-output")
        self.status = W.HTML("")
        self.status.add_class("dx-status")
        self.progress = ProgressBar()
        self.stop_button = button("■ Stop", "dx-stop", style="danger", tooltip="stop after the current step")
        self.stop_button.disabled = True
        self.stop_button.on_click(lambda _: self.stop())
        self.add_class("dx-widget")
        self.add_class(self.css_class)
        # How a button's work is stepped: None picks the kernel's event loop (or none: run to the end);
        # a test may set a function that queues the step callbacks itself.
        self.schedule: Callable[[Callable[[], None]], Any] | None = None
        self.work: Work | None = None  # the action now running, step by step
        self._stop_wanted = False
        self._deferred: dict[Callable[..., Any], tuple[tuple, dict]] = {}
        self._button_states: list[tuple[W.Button, bool]] = []
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
        with self.busy():
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

    def buttons(self) -> list[W.Button]:
        """Every button inside this widget but Stop."""
        found, todo = [], list(self.children)
        while todo:
            item = todo.pop()
            if isinstance(item, W.Button) and item is not self.stop_button:
                found.append(item)
            todo.extend(getattr(item, "children", ()))
        return found

    def _disable_buttons(self) -> list[tuple[W.Button, bool]]:
        states = [(b, b.disabled) for b in self.buttons()]
        for b, _ in states:
            b.disabled = True
        return states

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
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
