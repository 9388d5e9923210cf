"""What a trace holds in memory, and a copy of it on another device (``Trace.memory_bytes``, ``Trace.to``)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffexplain.trace import Trace


def all_tensors(trace: Trace, include_restart: bool = True) -> Iterable[torch.Tensor]:
    """Every tensor the trace holds (with the restart state: conditioning, x_t and generator states)."""
    yield from trace.run_tensors.values()
    if trace.final_latents is not None:
        yield trace.final_latents
    for record in trace.steps:
        yield from record.tensors.values()
        yield from record.attention.values()
    if include_restart:
        for branch in trace.conditioning.values():
            yield from branch.values()
        yield from trace.inpainting.values()
        for record in trace.steps:
            if record.restart is not None:
                yield record.restart.latents
                if record.restart.generator_state is not None:
                    yield record.restart.generator_state


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr() if t.device.type != "meta" else id(storage))
        seen[key] = max(seen.get(key, 0), storage.nbytes())
    return sum(seen.values())


def memory_per_step(trace: Trace) -> float:
    """Mean bytes per loop step of the per-step tensors and restart state."""
    if not trace.steps:
        return 0.0
    per_step = [t for r in trace.steps for t in (*r.tensors.values(), *r.attention.values())]
    per_step += [r.restart.latents for r in trace.steps if r.restart is not None]
    return unique_bytes(per_step) / len(trace.steps)


def human_bytes(n: float) -> str:
    """``n`` bytes for people: "812 B", "3.4 KiB", "1.20 GiB"."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def moved(trace: Trace, device: torch.device | str) -> Trace:
    """A copy of ``trace`` with every tensor on ``device`` (scheduler snapshots and generator states stay)."""
    result = copy.copy(trace)
    result._stored = OrderedDict()  # noqa: SLF001 - the copy's own store cache starts empty
    result.run_tensors = {k: v.to(device) for k, v in trace.run_tensors.items()}
    result.conditioning = {b: {k: v.to(device) for k, v in c.items()} for b, c in trace.conditioning.items()}
    result.inpainting = {k: v.to(device) for k, v in trace.inpainting.items()}
    result.final_latents = None if trace.final_latents is None else trace.final_latents.to(device)
    result.steps = [
        replace(
            r,
            tensors={k: v.to(device) for k, v in r.tensors.items()},
            attention={k: v.to(device) for k, v in r.attention.items()},
            restart=r.restart and replace(r.restart, latents=r.restart.latents.to(device)),
        )
        for r in trace.steps
    ]
    return result
