"""CPU threads: a run on the CPU must not spin against other busy processes.

torch's CPU kernels run on as many OpenMP threads as there are cores, and by default those threads
*spin* while they wait for each other. On a machine where something else is busy (a browser, a video
call, a second kernel), the spinning threads fight that process for the same cores and every run
slows down several times (``benchmarks/bench_threads.py``). So for the length of each ``run`` or
``fork`` on the CPU, torch uses ``min(its own thread count, free cores)`` threads, free cores being the
cores this process may use minus the other processes' load (the 1-minute load average less this
process's own recent use; at least 1); the thread count comes back
afterwards. The load average lags: a process that started a few seconds ago is not counted yet.

``OMP_WAIT_POLICY=PASSIVE`` (set before torch loads) also stops the spinning, but on an idle machine
it made a run of the default model with 2 threads about 3× slower (threads sleep and wake at every
small kernel), so diffexplain does not set it.

The knob: the environment variable ``DIFFEXPLAIN_THREADS``: ``auto`` (the default, as above), a number
(that many threads, always), or ``torch`` (leave torch's thread count alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENV = "DIFFEXPLAIN_THREADS"
"""The environment variable that chooses the policy: ``auto``, a number, or ``torch``."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


_last_sample: list[float] = []  # [wall time, this process's CPU time] at the previous call


def own_load() -> float:
    """The cores this process kept busy since the previous call (at most the last minute's worth)."""
    wall, cpu = time.monotonic(), time.process_time()
    if not _last_sample:
        _last_sample[:] = [wall, cpu]
        return 0.0
    (last_wall, last_cpu), _last_sample[:] = _last_sample, [wall, cpu]
    elapsed = wall - last_wall
    return 0.0 if elapsed <= 0 else min((cpu - last_cpu) / elapsed, float(usable_cores()))


def free_cores() -> int:
    """Usable cores minus the other processes' demand (the 1-minute load average less this process's
    own recent use, so that back-to-back runs do not count themselves), at least 1."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: no load average, assume idle
        load = 0.0
    others = max(0.0, load - own_load())
    return max(1, usable_cores() - round(others))


def chosen_threads() -> int | None:
    """The thread count for a CPU run under ``DIFFEXPLAIN_THREADS``; None: leave torch's as it is."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value == "torch":
        return None
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
def cpu_threads(device: torch.device) -> Iterator[None]:
    """For the ``with`` block, torch's CPU thread count as ``chosen_threads`` says (CPU runs only)."""
    threads = chosen_threads() if device.type == "cpu" else None
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
