"""A run or fork that its caller advances one loop step at a time, and may stop between steps.

``explainer.run(...)`` is ``explainer.start_run(...).finish()``. A widget instead advances the job
one step per turn of the kernel's event loop, so that a Stop click or a slider drag is heard while
the model runs (``diffexplain.widgets.base.DxWidget.start``); nothing runs in another thread.

    job = explainer.start_run("a red circle on the left", seed=0)
    for step in job:          # each finished loop step's index
        if step == 9:
            job.stop()        # the trace keeps steps 0..9, status "stopped"
    job.trace                 # the trace, finished or partial (also explainer.last_trace)

A job is also a generator's worth of work for ``yield from``: ``trace = yield from job`` inside a
generator yields the steps and returns the finished trace.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from diffexplain.trace import Trace

Result = TypeVar("Result")
Params = ParamSpec("Params")
Owner = TypeVar("Owner")


def drain(work: Generator[object, None, Result]) -> Result:
    """Run a generator of steps (a job, a cascade's stages, a widget's action) to its end; returns its
    return value."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value


class Job:
    """One run or fork, not yet run to the end: ``advance()`` one step, ``finish()``, or ``stop()``."""

    def __init__(self, steps: Generator[int, None, Trace], trace: Trace) -> None:
        self._steps = steps
        self.trace = trace  # filled step by step: trace.steps grows as the job advances
        self.done = False  # finished, stopped or failed: nothing more will run
        self.result: Trace | None = None  # the finished trace, once the last step ran
        self.step: int | None = None  # the last finished loop step's index

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` ended the job before its last step."""
        return self.trace.status == "stopped"

    def advance(self) -> bool:
        """Run the next loop step (the first call also runs the set-up: text encoding, noise).

        Returns True while more steps remain, False once the job is done (then ``result`` holds the
        finished trace). An exception in a step ends the job and propagates, the partial trace kept.
        """
        if self.done:
            return False
        try:
            self.step = next(self._steps)
        except StopIteration as finished:
            self.done, self.result = True, finished.value
            return False
        except BaseException:
            self.done = True
            raise
        return True

    def finish(self) -> Trace:
        """Run every remaining step; returns the finished trace."""
        while self.advance():
            pass
        if self.result is None:
            raise RuntimeError(f"this job did not finish: {self.trace.message or self.trace.status}")
        return self.result

    def stop(self) -> Trace:
        """End the job between steps: the trace keeps the finished steps and gets status "stopped"."""
        if not self.done:
            self.done = True
            self._steps.close()
        return self.trace

    def __iter__(self) -> Generator[int, None, Trace]:
        """The remaining steps' indices; as a generator, ``yield from job`` returns the finished trace.

        Closing that generator (a caller that stops between steps) stops the job.
        """
        try:
            while self.advance():
                yield self.step  # type: ignore[misc]
        finally:
            self.stop()
        return self.finish()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"Job({len(self.trace.steps)} steps recorded, {state}, trace status {self.trace.status!r})"


def finishing(
    start: Callable[Concatenate[Owner, Params], Job], doc: str
) -> Callable[Concatenate[Owner, Params], Trace]:
    """The method that runs ``start``'s job to its end (``run`` from ``start_run``): one signature,
    written once, on ``start``; ``doc`` is the new method's docstring."""

    @functools.wraps(start)
    def finished(self: Owner, *args: Params.args, **kwargs: Params.kwargs) -> Trace:
        return start(self, *args, **kwargs).finish()

    finished.__name__ = start.__name__.removeprefix("start_")
    finished.__qualname__ = start.__qualname__.replace(".start_", ".")
    finished.__doc__ = doc
    finished.__annotations__ = {**start.__annotations__, "return": "Trace"}
    finished.__signature__ = inspect.signature(start).replace(return_annotation="Trace")  # type: ignore[attr-defined]
    return finished


def draining(
    start: Callable[Concatenate[Owner, Params], Generator[object, None, Result]], doc: str, returns: str
) -> Callable[Concatenate[Owner, Params], Result]:
    """The method that runs ``start``'s generator to its end (``Cascade.run`` from ``run_steps``): one
    signature, written once, on ``start``; ``doc`` is the new method's docstring, ``returns`` its return
    type's name."""

    @functools.wraps(start)
    def drained(self: Owner, *args: Params.args, **kwargs: Params.kwargs) -> Result:
        return drain(start(self, *args, **kwargs))

    drained.__name__ = start.__name__.removesuffix("_steps")
    drained.__qualname__ = start.__qualname__.removesuffix("_steps")
    drained.__doc__ = doc
    drained.__annotations__ = {**start.__annotations__, "return": returns}
    drained.__signature__ = inspect.signature(start).replace(return_annotation=returns)  # type: ignore[attr-defined]
    return drained
