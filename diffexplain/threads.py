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

Busy machines: torch's OpenMP threads wait for each other at every parallel region, and on cores that
another process keeps busy a waiting thread loses whole time slices. ``auto`` counts the busy cores at
the first run, which keeps a run on a fully loaded 2-core machine within 1.4× of its idle time; two
threads there (an explainer whose count was decided while the machine was idle) are 4.5× slower, and
OpenMP's wait policies do not fix that (``OMP_WAIT_POLICY=PASSIVE`` 3.8×, ``GOMP_SPINCOUNT=10000``
4.8×: ``benchmarks/bench_threads.py``). Set ``explainer.threads = 1`` to run faster on a machine that
became busy, knowing that its runs then round as 1-thread runs do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "DIFFEXPLAIN_THREADS"
"""The environment variable that chooses the policy: ``auto``, a number, or ``torch``."""


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
