"""Exceptions raised by diffexplain."""

from __future__ import annotations

import os
import sys


class TraceFileError(ValueError):
    """A trace file is corrupt, truncated, of the wrong format or version, or names something not allowed."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"cannot load trace file {self.path!r}: {problem}")


class TraceKeyError(KeyError):
    """A name that a trace does not hold: unknown, or not kept (the message says which, and what to do)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AmbiguousPartsError(TypeError):
    """The parts given to ``Explainer(**parts)`` fit more than one pipeline family (the message names the
    candidates and how to choose: ``Explainer(family=...)`` or ``Explainer.from_pipeline``)."""


class ModelFolderError(ValueError):
    """A model folder is missing a file, or a file is not what diffexplain wrote."""


class TrainConfigError(ValueError):
    """A training run that cannot start as configured: an unknown preset, or a run or model to start
    from that does not fit (the message names the field, both values, and what to do)."""


class HubUnreachableError(ConnectionError):
    """A pipeline named by its Hugging Face hub id is not in the local cache, and the hub cannot be reached
    (the message names the id and what to do: a local folder, or ``HF_HUB_OFFLINE=1`` with a filled cache)."""


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at the first frame
    outside diffexplain (the user's line, whichever of ``run``, ``start_run`` or a widget led there)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1  # the function that will call warnings.warn
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        # diffexplain's own frames, and the context-manager wrappers around them (torch.no_grad's)
        if not (path.startswith(package) or os.path.basename(path) in ("contextlib.py", "_contextlib.py")):
            break
        frame, level = frame.f_back, level + 1
    return level
