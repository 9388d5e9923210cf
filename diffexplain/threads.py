"""CPU threads: one count per explainer, so that the same run gives the same bits whatever the load.

A different thread count splits torch's reductions differently, so it rounds differently: the same
seed on 1 and on 2 threads differs by ~1e-6. diffexplain therefore decides an explainer's thread count
once, at its first CPU run (or when you set ``explainer.threads``), records it in every trace
(``trace.settings["threads"]``), and runs every fork of a trace on its trace's count, whatever the
machine's load or ``DIFFEXPLAIN_THREADS`` says by then. Same machine, same thread count: same bits.

How the count is decided, by the environment variable ``DIFFEXPLAIN_THREADS``:

- ``auto`` (the default): ``min(torch's thread count, free cores)``, free cores being the cores this
  process may use less the machine's 1-minute load average (at least 1), read once;
- a whole number: that many threads;
- ``torch``: torch's own thread count at that moment.

Busy machines: torch's OpenMP threads *spin* while they wait for each other, and on cores that another
process keeps busy the spinning steals the time the other threads need. ``diffexplain`` shortens that
spin (``GOMP_SPINCOUNT``, see ``OPENMP_SPIN``) when it is imported before torch, which keeps a run on a
fully loaded machine within about 2× of its idle time (``benchmarks/bench_threads.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "DIFFEXPLAIN_THREADS"
"""The environment variable that chooses the policy: ``auto``, a number, or ``torch``."""

OPENMP_SPIN = "GOMP_SPINCOUNT"
SPIN_COUNT = "10000"
"""GNU OpenMP's busy-wait length before a waiting thread sleeps (libgomp's default: 300000). Set when
diffexplain is imported before torch and the variable is unset; libgomp reads it once, as it loads."""


def shorten_openmp_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` (unless set) if torch is not loaded yet; True if it takes effect."""
    if "torch" in sys.modules or OPENMP_SPIN in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ[OPENMP_SPIN] = SPIN_COUNT
    return True


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores less the machine's demand (the 1-minute load average), at least 1."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: no load average, assume idle
        load = 0.0
    return max(1, usable_cores() - round(load))


def check_threads(value: object, where: str = "threads") -> int:
    """A thread count: a whole number ≥ 1, else a ``ValueError`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} = {value!r}: expected a whole number of threads ≥ 1")
    return value


def decide_threads() -> int:
    """The thread count for an explainer's CPU runs, as ``DIFFEXPLAIN_THREADS`` says, decided now."""
    import torch

    value = os.environ.get(ENV, "auto").strip().lower()
    if value == "torch":
        return torch.get_num_threads()
    if value in ("", "auto"):
        return min(torch.get_num_threads(), free_cores())
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{ENV}={value!r}: expected 'auto', 'torch' or a whole number of threads ≥ 1")
    return threads


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """For the ``with`` block, torch's CPU thread count is ``threads`` (None: left as it is)."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
