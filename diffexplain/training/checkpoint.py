"""Training checkpoints in safetensors + JSON (never pickle), EMA weights, and a learning-rate schedule."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from diffexplain.safetensors_file import save_readable


class EMA:
    """Exponential moving average of a model's parameters: ``ema ← d·ema + (1 − d)·θ``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one step towards the model's current weights."""
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's own state dict."""
        return self.shadow


def lr_at(step: int, *, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor × base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        scalars["state"][str(pid)] = {}
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.contiguous()
            else:
                scalars["state"][str(pid)][name] = value
    return tensors, scalars


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    step: int,
    info: dict[str, Any],
) -> None:
    """Write ``path.safetensors`` (weights, EMA, optimiser) and ``path.json`` (step, config).

    Each file is replaced atomically; the weights file also carries its step in its metadata, so a reader
    that catches the two files between replacements (``diffexplain export`` mid-run) still knows it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_scalars = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    meta = {"step": step, "optimizer": opt_scalars, **info}
    tmp_weights, tmp_json = path.with_suffix(".safetensors.tmp"), path.with_suffix(".json.tmp")
    # readable by others, like the JSON, so a run folder shared with a class can be exported or resumed
    save_readable(tensors, tmp_weights, metadata={"step": str(step)})  # readers trust this step
    tmp_json.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_weights, path.with_suffix(".safetensors"))
    os.replace(tmp_json, path.with_suffix(".json"))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON that :func:`save_checkpoint` wrote, in one read of the weights file.

    ``step`` comes from the weights file's metadata where it has one (see :func:`save_checkpoint`).
    """
    with safe_open(str(path.with_suffix(".safetensors")), framework="pt") as handle:
        weights_step = (handle.metadata() or {}).get("step")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    meta = json.loads(path.with_suffix(".json").read_text())
    if weights_step is not None:
        meta["step"] = int(weights_step)
    return tensors, meta


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its JSON (with ``step``)."""
    tensors, meta = read_checkpoint(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        for k in ema.shadow:
            ema.shadow[k] = tensors[f"ema.{k}"].float()
    opt_state: dict[str, Any] = {"param_groups": meta["optimizer"]["param_groups"], "state": {}}
    for pid, scalars in meta["optimizer"]["state"].items():
        entry = dict(scalars)
        for key, value in tensors.items():
            if key.startswith(f"opt.{pid}."):
                entry[key.split(".", 2)[2]] = value
        opt_state["state"][int(pid)] = entry
    optimizer.load_state_dict(opt_state)
    return meta
