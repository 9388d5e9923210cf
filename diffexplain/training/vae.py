"""Stage 1: train the VAE (diffusers ``AutoencoderKL``) on dataset images.

Loss = MSE(x, x̃) + ½·L1(x, x̃) + kl_weight · KL(q(z|x) ‖ N(0, I)) / (pixel values), x in [-1, 1].
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from diffexplain.data import ShapesDataset, held_out
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import TrainConfig, differences, vae_config
from diffexplain.training.checkpoint import load_checkpoint, lr_at, save_checkpoint


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 64) -> float:
    """Mean reconstruction PSNR in dB (images in [0, 1]) using the posterior mean, as inference does."""
    device = next(vae.parameters()).device
    scores = []
    for i in range(0, len(pixels), batch):
        x = pixels[i : i + batch].to(device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)
        scores.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    return torch.cat(scores).mean().item()


def train_vae(cfg: TrainConfig, out: Path, *, device: str = "cpu", progress: bool = True) -> AutoencoderKL:
    """Train (or resume) the VAE stage into ``out/vae``; returns the trained model."""
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_config(tuple(cfg.vae_blocks)) | {"sample_size": cfg.image_size}).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt = out / "vae" / "checkpoint"
    start = 0
    if ckpt.with_suffix(".json").exists():
        start = load_checkpoint(ckpt, model=vae, optimizer=opt, ema=None)["step"]
    data = ShapesDataset(seed=cfg.seed, size=cfg.image_size, two_object_share=cfg.two_object_share)
    val_pixels, _ = held_out(64, size=cfg.image_size).batch(range(64))
    (out / "vae").mkdir(parents=True, exist_ok=True)
    log = (out / "vae" / "log.jsonl").open("a")
    batches = data.batches(cfg.vae_batch, start=start * cfg.vae_batch)
    bar = tqdm(
        range(start, cfg.vae_steps), desc="VAE", disable=not progress, initial=start, total=cfg.vae_steps
    )
    t0 = time.time()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base=cfg.vae_lr, warmup=50, total=cfg.vae_steps)
        x, _ = next(batches)
        x = x.to(device)
        posterior = vae.encode(x).latent_dist
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # the same noise after a resume
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        recon = vae.decode(z).sample
        rec = (recon - x).pow(2).mean() + 0.5 * (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()  # per pixel value, as rec is
        loss = rec + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        psnr_batch = 10 * math.log10(4 / max((recon.detach() - x).pow(2).mean().item(), 1e-10))
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr_batch:.1f}dB")
        last = step + 1 == cfg.vae_steps
        if (step + 1) % cfg.log_every == 0 or last:
            entry = {
                "step": step + 1,
                "loss": loss.item(),
                "kl": kl.item(),
                "psnr_train": psnr_batch,
                "time_s": time.time() - t0,
            }
            if (step + 1) % cfg.checkpoint_every == 0 or last:
                entry["psnr_val"] = vae_psnr(vae.eval(), val_pixels)
                vae.train()
            log.write(json.dumps(entry) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            save_checkpoint(
                ckpt, model=vae, optimizer=opt, ema=None, step=step + 1, info={"config": cfg.to_dict()}
            )
    return vae.eval()


def finetune_decoder(
    vae: AutoencoderKL,
    cfg: TrainConfig,
    out: Path,
    *,
    steps: int,
    lr: float = 3e-4,
    device: str = "cpu",
    progress: bool = True,
) -> AutoencoderKL:
    """Sharpen the decoder alone on posterior means (the encoder, and so every latent, stays fixed).

    Safe after the U-Net is trained: the latent space it learned does not move. Resumes from
    ``out/vae_decoder/checkpoint``.
    """
    vae = vae.to(device).train()
    vae.requires_grad_(True)  # a loaded model folder's VAE comes frozen
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ckpt = out / "vae_decoder" / "checkpoint"
    (out / "vae_decoder").mkdir(parents=True, exist_ok=True)
    start = 0
    if ckpt.with_suffix(".json").exists():
        start = load_checkpoint(ckpt, model=vae, optimizer=opt, ema=None)["step"]
    data = ShapesDataset(seed=cfg.seed + 2, size=cfg.image_size, two_object_share=cfg.two_object_share)
    val_pixels, _ = held_out(64, size=cfg.image_size).batch(range(64))
    log = (out / "vae_decoder" / "log.jsonl").open("a")
    batches = data.batches(cfg.vae_batch, start=start * cfg.vae_batch)
    bar = tqdm(range(start, steps), desc="VAE decoder", disable=not progress, initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base=lr, warmup=20, total=steps)
        x, _ = next(batches)
        x = x.to(device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        recon = vae.decode(z).sample
        loss = (recon - x).pow(2).mean() + 0.5 * (recon - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        last = step + 1 == steps
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            entry = {"step": step + 1, "loss": loss.item(), "psnr_val": vae_psnr(vae.eval(), val_pixels)}
            vae.train()
            log.write(json.dumps(entry) + "\n")
            log.flush()
            save_checkpoint(
                ckpt, model=vae, optimizer=opt, ema=None, step=step + 1, info={"config": cfg.to_dict()}
            )
    return vae.eval()


def vae_from_model(source: str, cfg: TrainConfig) -> tuple[AutoencoderKL, dict[str, Any]]:
    """The VAE of the model folder ``source`` ("default": the shipped model), for ``cfg.vae_init``.

    Its latents are already standardised (see latent_norm.py); the U-Net stage measures them again
    and the export folds the (nearly identity) correction in, exactly.
    """
    from diffexplain.models.default import model_folder
    from diffexplain.models.store import load_model_parts, read_model_json

    folder = model_folder(source)
    found = read_model_json(folder)["vae_config"]
    wanted = vae_config(tuple(cfg.vae_blocks)) | {"sample_size": cfg.image_size}
    differ = differences(found, wanted, ("block_out_channels", "latent_channels", "sample_size"))
    if differ:
        raise TrainConfigError(f"vae_init={source!r}: its VAE does not fit this config: " + "; ".join(differ))
    vae = load_model_parts(folder)["vae"]
    return vae, {"stage": "vae_init", "from": source}
