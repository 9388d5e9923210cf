"""``diffexplain train``: both stages, resumable, then an exported model folder that ``load_model`` reads."""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import shutil
import time
from pathlib import Path

import torch

from diffexplain.devices import pick_device
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import PRESETS_NEEDING_INIT, TrainConfig, differences, preset
from diffexplain.models.store import is_model_folder
from diffexplain.training.export import export_model
from diffexplain.training.init_weights import check_init_weights, init_weights, pin_init_weights
from diffexplain.training.unet import check_model_unet, train_unet
from diffexplain.training.vae import finetune_decoder, train_vae, vae_from_model


def train(
    config: TrainConfig | str = "default",
    out: str | Path = "runs/default",
    *,
    device: str | None = None,
    export_to: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    unet_init: str | Path | None = None,
) -> Path:
    """Train the VAE, (optionally) sharpen its decoder, then train the U-Net in its latent space; export.

    ``config`` is a :class:`TrainConfig` or a preset name (a key of ``PRESETS``).
    Checkpoints go to ``out`` (safetensors + JSON); running the same call again resumes.
    ``unet_init`` starts the U-Net from trained weights; the presets in ``PRESETS_NEEDING_INIT`` need it.
    It is either a run folder (its EMA U-Net, VAE, decoder fine-tune and latents are reused, see
    :func:`copy_first_stages`) or a model folder ("default": the shipped model; its U-Net and VAE are
    used, and the latents are encoded with that VAE).
    Returns the exported folder (``export_to``, default ``out/model``).
    """
    cfg = preset(config) if isinstance(config, str) else config
    if unet_init is not None:
        cfg = dataclasses.replace(cfg, unet_init=str(unet_init))
    from_model = bool(cfg.unet_init) and is_model_folder(cfg.unet_init)
    if from_model:  # its VAE comes with it
        if cfg.vae_init and cfg.vae_init != cfg.unet_init:
            raise TrainConfigError(
                f"unet_init={cfg.unet_init!r} is a model folder, so its VAE is used; "
                f"vae_init={cfg.vae_init!r} names another one (leave vae_init empty)"
            )
        cfg = dataclasses.replace(cfg, vae_init=cfg.unet_init)
    if cfg.name in PRESETS_NEEDING_INIT and not cfg.unet_init:
        raise TrainConfigError(
            f"preset {cfg.name!r} continues a trained model: give the model or run folder to start from "
            "(--unet-init FOLDER, or unet_init=...; 'default' is the shipped model)"
        )
    out = Path(out)
    check_resume(out, cfg)
    start_weights = init_weights(cfg)
    check_init_weights(out, cfg, start_weights)  # a resume: the model folders it started from are unchanged
    device = pick_device(device)
    started = time.time()
    # What this run starts from is checked (and copied) before anything is written.
    if from_model:
        check_model_unet(cfg.unet_init, cfg)
    elif cfg.unet_init:
        copy_first_stages(Path(cfg.unet_init), out, cfg)
    vae = vae_from_model(cfg.vae_init, cfg)[0].to(device) if cfg.vae_init else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    pin_init_weights(out, start_weights)
    if vae is None:
        vae = train_vae(cfg, out, device=device, progress=progress)
    if cfg.decoder_steps:  # the encoder stays fixed, so the latents do not change
        vae = finetune_decoder(vae, cfg, out, steps=cfg.decoder_steps, device=device, progress=progress)
    train_unet(cfg, out, vae, device=device, progress=progress)
    recipe = {
        "preset": cfg.name,
        "command": command
        or " ".join(
            shlex.quote(a)
            for a in ["diffexplain", "train", "--preset", cfg.name]
            + (["--unet-init", cfg.unet_init] if cfg.unet_init else [])
        ),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_time_s": round(time.time() - started, 1),
    }
    target = Path(export_to) if export_to else out / "model"
    export_model(out, target, recipe=recipe)
    return target


# Fields that must match for a run to reuse another run's VAE and latent pool (the decoder fine-tune
# may differ: it leaves the encoder, so the latents, as they are).
_SHARED_FIELDS = (
    "seed",
    "image_size",
    "two_object_share",
    "vae_blocks",
    "vae_steps",
    "vae_batch",
    "vae_lr",
    "vae_kl_weight",
    "latent_pool",
    "vae_init",
)


# Fields a run folder's checkpoints depend on: a resume must keep them (step counts may grow or shrink).
_FIXED_FIELDS = _SHARED_FIELDS + (
    "unet_blocks",
    "unet_norm_groups",
    "unet_pooled_text",
    "unet_cross_attention",
    "unet_init",
    "objective",
)


def check_resume(out: Path, cfg: TrainConfig) -> None:
    """Refuse to resume the checkpoints in ``out`` with a config that built other models or data."""
    saved = out / "config.json"
    if not saved.is_file() or not any(out.glob("*/checkpoint.json")):
        return
    theirs = TrainConfig.from_dict(json.loads(saved.read_text())).to_dict()
    mine = json.loads(json.dumps(cfg.to_dict()))
    differ = differences(theirs, mine, _FIXED_FIELDS, mine_label="now")
    if differ:
        raise TrainConfigError(
            f"{out} holds checkpoints of another config ({'; '.join(differ)}); "
            "resume it with the config it was started with, or train into a new --out folder"
        )


def copy_first_stages(source: Path, out: Path, cfg: TrainConfig) -> None:
    """Copy ``source``'s VAE, decoder fine-tune and latent pool into ``out`` (once), for ``unet_init``.

    The U-Net it starts from learned that VAE's latent space, so the new run must keep it.
    """
    if not (source / "config.json").exists() or not (source / "unet" / "checkpoint.json").exists():
        raise FileNotFoundError(
            f"unet_init={str(source)!r} is not a finished-U-Net run folder (config.json and "
            "unet/checkpoint.json: the --out folder of an earlier `diffexplain train`) nor a model folder "
            "(model.json; 'default' is the shipped model)"
        )
    theirs = TrainConfig.from_dict(json.loads((source / "config.json").read_text())).to_dict()
    mine = json.loads(json.dumps(cfg.to_dict()))  # tuples as JSON lists, like the saved config
    differ = differences(theirs, mine, _SHARED_FIELDS)
    if differ:
        raise TrainConfigError(
            f"unet_init={str(source)!r} was trained on another VAE or data: " + "; ".join(differ)
        )
    for stage in ("vae", "vae_decoder"):
        if (source / stage).exists() and not (out / stage).exists():
            shutil.copytree(source / stage, out / stage)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    for pool in (source / "unet").glob("latent_pool*"):
        if not (out / "unet" / pool.name).exists():
            shutil.copy2(pool, out / "unet" / pool.name)
