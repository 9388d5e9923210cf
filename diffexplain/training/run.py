"""``diffexplain train``: both stages, resumable, then an exported model folder that ``load_model`` reads."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from diffexplain.models.config import TrainConfig, preset
from diffexplain.training.export import export_model
from diffexplain.training.unet import train_unet
from diffexplain.training.vae import finetune_decoder, train_vae


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else CUDA when present, else Apple's MPS, else the CPU."""
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def train(
    config: TrainConfig | str = "default",
    out: str | Path = "runs/default",
    *,
    device: str | None = None,
    export_to: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Train the VAE, (optionally) sharpen its decoder, then train the U-Net in its latent space; export.

    ``config`` is a :class:`TrainConfig` or a preset name ("default", "classroom", "tiny").
    Checkpoints go to ``out`` (safetensors + JSON); running the same call again resumes.
    Returns the exported folder (``export_to``, default ``out/model``).
    """
    cfg = preset(config) if isinstance(config, str) else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    device = pick_device(device)
    started = time.time()
    vae = train_vae(cfg, out, device=device, progress=progress)
    if cfg.decoder_steps:  # the encoder stays fixed, so the U-Net's latents do not depend on this stage
        vae = finetune_decoder(vae, cfg, out, steps=cfg.decoder_steps, device=device, progress=progress)
    train_unet(cfg, out, vae, device=device, progress=progress)
    recipe = {
        "preset": cfg.name,
        "command": command
        or " ".join(shlex.quote(a) for a in ["diffexplain", "train", "--preset", cfg.name]),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_time_s": round(time.time() - started, 1),
    }
    target = Path(export_to) if export_to else out / "model"
    export_model(out, target, recipe=recipe)
    return target


def main_argv() -> str:
    """The command line that started this process, for the recipe."""
    return " ".join(shlex.quote(a) for a in sys.argv)
