"""Turn a training folder's checkpoints into a model folder (``diffexplain export``).

Works on a finished run or mid-run (the latest checkpoints), so a model can be looked at while it trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from diffexplain.data import ShapesDataset
from diffexplain.models.config import TrainConfig, flow_scheduler_config, scheduler_config, vae_config
from diffexplain.models.store import save_model
from diffexplain.training.checkpoint import read_checkpoint
from diffexplain.training.latent_norm import fold_into_vae
from diffexplain.training.vae import vae_from_model

DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 5.0}
FLOW_DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 3.0}
"""The flow model's: it needs less guidance (docs/model-card.md#the-flow-model, measured by bench_model.py)."""


def _checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.json; run `diffexplain train` first")
    return read_checkpoint(path)


def load_trained_vae(out: Path, cfg: TrainConfig) -> tuple[AutoencoderKL, dict[str, Any]]:
    """The VAE of a run: the decoder fine-tune's checkpoint if there is one, else stage 1's, else
    ``cfg.vae_init``'s as it was."""
    if cfg.vae_init:
        vae, info = vae_from_model(cfg.vae_init, cfg)
    else:
        vae, info = AutoencoderKL(**vae_config(tuple(cfg.vae_blocks)) | {"sample_size": cfg.image_size}), None
    for stage in ("vae_decoder", "vae"):
        if (out / stage / "checkpoint.json").is_file():
            tensors, meta = _checkpoint(out / stage / "checkpoint")
            vae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            return vae.eval(), {"stage": stage, "step": meta["step"]} | (
                {"from": info["from"]} if info else {}
            )
    if info is None:
        raise FileNotFoundError(f"no VAE checkpoint under {out}")
    return vae.eval(), info


@torch.no_grad()
def fit_latent_rgb(
    vae: AutoencoderKL, scaling_factor: float, cfg: TrainConfig, n: int = 256
) -> list[list[float]]:
    """Least-squares map [C, 3] from scaled latents to the image averaged over each latent pixel (for previews)."""
    pixels, _ = ShapesDataset(seed=cfg.seed + 3, size=cfg.image_size).batch(range(n))
    latents = vae.encode(pixels).latent_dist.mode() * scaling_factor  # [n, C, h, w]
    target = torch.nn.functional.adaptive_avg_pool2d(pixels, latents.shape[-2:])  # [n, 3, h, w]
    a = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    b = target.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(a, b).solution.tolist()


def debiased_ema(
    ema: dict[str, torch.Tensor], *, decay: float, updates: int, init: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Remove the initial weights' share from an EMA that started at θ0.

    After n updates ema = dⁿ·θ0 + (1 − d)·Σ d^(n−i)·θ_i, so (ema − dⁿ·θ0) / (1 − dⁿ) is the average of
    the trained weights alone (Adam-style bias correction). θ0 is regenerated from the run's seed.
    """
    w = decay**updates
    return {k: ((v.float() - w * init[k].float()) / (1 - w)).to(v.dtype) for k, v in ema.items()}


def model_scheduler(objective: str) -> dict[str, object]:
    """The sampler a model folder names: DDIM on the training schedule for ε, flow-sigma Euler for flow."""
    if objective == "flow":
        return {"class": "DPMSolverMultistepScheduler", "config": flow_scheduler_config()}
    return {"class": "DDIMScheduler", "config": scheduler_config()}


def export_model(out: str | Path, target: str | Path, *, recipe: dict[str, Any] | None = None) -> Path:
    """Write ``target`` from the run in ``out``: EMA U-Net weights, the VAE, configs and the recipe."""
    out = Path(out)
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    vae, vae_info = load_trained_vae(out, cfg)
    tensors, meta = _checkpoint(out / "unet" / "checkpoint")
    scaling_factor = float(meta["scaling_factor"])
    if "latent_mean" in meta:  # per-channel standardisation, folded into the VAE (scaling_factor 1)
        fold_into_vae(vae, torch.tensor(meta["latent_mean"]), torch.tensor(meta["latent_std"]))
        scaling_factor = 1.0
    ucfg = cfg.unet_config(cfg.latent_size)
    torch.manual_seed(cfg.seed)  # exactly as train_unet builds it, so this is θ0
    unet = UNet2DConditionModel(**ucfg)
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if cfg.unet_init:  # the average started at trained weights, which belong in it
        unet.load_state_dict(ema)
    else:
        unet.load_state_dict(
            debiased_ema(ema, decay=cfg.ema_decay, updates=meta["step"], init=unet.state_dict())
        )
    recipe = dict(recipe or {})
    recipe.update(
        {
            "config": cfg.to_dict(),
            "unet_step": meta["step"],
            "unet_steps_planned": cfg.unet_steps,
            "vae": vae_info,
        }
    )
    folder = save_model(
        target,
        unet=unet,
        vae=vae,
        unet_config=ucfg,
        vae_config=vae_config(tuple(cfg.vae_blocks))
        | {"sample_size": cfg.image_size, "scaling_factor": scaling_factor},
        scheduler=model_scheduler(cfg.objective),
        recipe=recipe,
    )
    model_json = folder / "model.json"
    info = json.loads(model_json.read_text())
    info["name"] = f"diffexplain-shapes-{cfg.image_size}" + ("-flow" if cfg.objective == "flow" else "")
    info["defaults"] = FLOW_DEFAULTS if cfg.objective == "flow" else DEFAULTS
    info["latent_rgb"] = fit_latent_rgb(vae, scaling_factor, cfg)
    model_json.write_text(json.dumps(info, indent=1))
    return folder
