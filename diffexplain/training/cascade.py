"""Train the embedded pixel cascade: stage I (16×16 pixels from text), stage II (64×64 beside stage I).

Notation (per stage; x0 a dataset picture in [-1, 1] at the stage's size, c the MiniLM token states)::

    x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε                                     the closed-form forward process
    stage I:   [ε̂ ; v] = U_I(x_t, t, c)
    stage II:  x_up = add_noise(up(down(x0)), ε', n),  n ~ U{0..sr_noise_max − 1}   (IF's noise augmentation)
               [ε̂ ; v] = U_II(cat[x_t, x_up], t, c, class_labels=n)
    loss = min(SNR_t, γ)/SNR_t·‖ε̂ − ε‖² + λ·KL bits (variance_loss.py)
    stage II, phase 2 (whole pictures): ‖v̂ − v‖², v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0, with sr_prediction="v_prediction"

down is area averaging to ``base_size``; up is bilinear with corners aligned, exactly as
``IFSuperResolution.stage_inputs`` upscales at sampling time. The two stages never see each other's
output while training, so they can train at the same time (``--stage I`` and ``--stage II`` in two
processes), each resumable from its own checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from diffexplain.data import ShapesDataset
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import unet_config
from diffexplain.training.cascade_config import CASCADE_FIXED_FIELDS, STAGES, CascadeTrainConfig
from diffexplain.training.checkpoint import EMA, load_checkpoint, lr_at, save_checkpoint
from diffexplain.training.variance_loss import PosteriorTerms, noisy_step_weights, snr_weights

IF_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "variance_type": "learned_range",
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.95,
    "sample_max_value": 1.5,
    "clip_sample": True,
    "clip_sample_range": 1.0,
}
"""DDPM as DeepFloyd IF's stages use it: cosine schedule, learned variance, dynamic thresholding."""

IF_NOISING_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}
"""The schedule that noises stage II's upscaled picture to ``noise_level`` (IF's ``image_noising_scheduler``)."""


def stage_unet_config(cfg: CascadeTrainConfig, stage: str) -> dict[str, Any]:
    """``UNet2DConditionModel`` config of stage ``stage``: ε and a learned variance out (6 channels).

    Stage II reads 6 channels (x_t beside the upscaled picture) and the noise level as ``class_labels``
    (``class_embed_type="timestep"``, as IF's stage II)."""
    if stage == "I":
        config = unet_config(cfg.base_blocks, cfg.base_size, 8, True, cfg.base_cross_attention)
        return config | {"in_channels": 3, "out_channels": 6}
    config = unet_config(cfg.sr_blocks, cfg.image_size, 8, True, cfg.sr_cross_attention)
    return config | {"in_channels": 6, "out_channels": 6, "class_embed_type": "timestep"}


def warm_start(unet: UNet2DConditionModel, source: str) -> int:
    """Copy every weight of the model folder ``source``'s U-Net whose name and shape match; returns how many.

    The shipped latent U-Net has stage I's shape except its first and last convolutions (4 latent
    channels there, 3 pixel channels in and 6 out here): those start fresh."""
    from diffexplain.models.default import model_folder
    from diffexplain.models.store import load_model_parts

    found = load_model_parts(model_folder(source))["unet"].state_dict()
    own = unet.state_dict()
    same = {k: v.float() for k, v in found.items() if k in own and own[k].shape == v.shape}
    if len(same) < len(own) // 2:
        raise TrainConfigError(
            f"base_init={source!r}: only {len(same)} of {len(own)} U-Net weights fit stage I; "
            "expected the shipped default model's U-Net (or base_init='' to start from scratch)"
        )
    unet.load_state_dict(same, strict=False)
    return len(same)


def check_resume(out: Path, cfg: CascadeTrainConfig) -> None:
    """Refuse to resume a run folder whose fixed fields differ from ``cfg`` (names them)."""
    saved_file = out / "config.json"
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text())
    mine = cfg.to_dict()
    differ = [
        f"{k}: {saved.get(k)!r} there, {mine[k]!r} here"
        for k in CASCADE_FIXED_FIELDS
        if saved.get(k) != mine[k]
    ]
    if differ:
        raise TrainConfigError(
            f"{out} holds a run with another config ({'; '.join(differ)}); use another --out folder"
        )


def training_pictures(
    data: ShapesDataset, cfg: CascadeTrainConfig, stage: str, step: int, batch: int
) -> tuple[torch.Tensor, list[str]]:
    """The pictures and captions of step ``step``: consecutive dataset items (the same after a resume)."""
    pictures, captions = data.batch(range(step * batch, (step + 1) * batch))
    if stage == "I":
        pictures = F.interpolate(pictures, (cfg.base_size, cfg.base_size), mode="area")
    return pictures, captions


def crops_at(cfg: CascadeTrainConfig, step: int) -> int:
    """The crop size stage II trains on at ``step`` (0: whole pictures)."""
    return cfg.sr_crop if not cfg.sr_crop_steps or step < cfg.sr_crop_steps else 0


def prediction_at(cfg: CascadeTrainConfig, stage: str, step: int) -> str:
    """What stage ``stage`` predicts at training step ``step``: "epsilon", or "v_prediction" (stage II's
    phase 2 with ``sr_prediction="v_prediction"``): the ``prediction_type`` its scheduler must have."""
    if stage == "I" or crops_at(cfg, step):
        return "epsilon"
    return cfg.sr_prediction


def sr_inputs(
    x0: torch.Tensor, cfg: CascadeTrainConfig, noising: DDPMScheduler, gen: torch.Generator, crop: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage II's target x0 [B, 3, S, S], its noised upscaled picture x_up and noise levels n [B]; cropped to
    ``crop`` (the same window in both; 0: whole pictures)."""
    size = x0.shape[-1]
    low = F.interpolate(x0, (cfg.base_size, cfg.base_size), mode="area")
    upscaled = F.interpolate(low, (size, size), mode="bilinear", align_corners=True)
    levels = torch.randint(0, cfg.sr_noise_max, (x0.shape[0],), generator=gen)
    x_up = noising.add_noise(upscaled, torch.randn(upscaled.shape, generator=gen), levels)
    if not crop or crop == size:
        return x0, x_up, levels
    corners = torch.randint(0, size - crop + 1, (x0.shape[0], 2), generator=gen).tolist()
    x0 = torch.stack([x[:, i : i + crop, j : j + crop] for x, (i, j) in zip(x0, corners, strict=True)])
    x_up = torch.stack([x[:, i : i + crop, j : j + crop] for x, (i, j) in zip(x_up, corners, strict=True)])
    return x0, x_up, levels


def train_stage(
    cfg: CascadeTrainConfig, out: Path, stage: str, *, device: str = "cpu", progress: bool = True
) -> Path:
    """Train (or resume) one stage into ``out/stage_<stage>``; returns its checkpoint path (no suffix)."""
    from diffexplain.families.deepfloyd_if import IF_MAX_LENGTH
    from diffexplain.training.unet import CaptionCache

    if stage not in STAGES:
        raise TrainConfigError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    folder = out / f"stage_{stage}"
    folder.mkdir(parents=True, exist_ok=True)
    steps, batch, base_lr = (
        (cfg.base_steps, cfg.base_batch, cfg.base_lr)
        if stage == "I"
        else (cfg.sr_steps, cfg.sr_batch, cfg.sr_lr)
    )
    data = ShapesDataset(
        seed=cfg.seed + (11 if stage == "I" else 12),
        size=cfg.image_size,
        two_object_share=cfg.two_object_share,
        length=10_000_000,
    )
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(**stage_unet_config(cfg, stage)).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=base_lr, weight_decay=0.01)
    ckpt = folder / "checkpoint"
    start = 0
    if ckpt.with_suffix(".json").exists():
        ema = EMA(unet, cfg.ema_decay)
        start = load_checkpoint(ckpt, model=unet, optimizer=opt, ema=ema)["step"]
    else:
        if stage == "I" and cfg.base_init:
            copied = warm_start(unet, cfg.base_init)
            if progress:
                tqdm.write(f"stage I starts from {cfg.base_init!r}'s U-Net ({copied} weights copied)")
        ema = EMA(unet, cfg.ema_decay)
    noise_scheduler = DDPMScheduler(**IF_SCHEDULER)
    noising = DDPMScheduler(**IF_NOISING_SCHEDULER)
    posterior = PosteriorTerms(noise_scheduler.alphas_cumprod)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    weights = snr_weights(noise_scheduler.alphas_cumprod, cfg.min_snr_gamma).to(device)
    noisy_weights = weights * noisy_step_weights(noise_scheduler.alphas_cumprod, cfg.sr_noisy_weight_cap).to(
        device
    )
    text = CaptionCache(device)
    text.tokenizer.model_max_length = IF_MAX_LENGTH  # IF's 77 positions, as IFPipeline.encode_prompt pads
    empty = text([""])[0]
    log = (folder / "log.jsonl").open("a")
    bar = tqdm(range(start, steps), desc=f"stage {stage}", disable=not progress, initial=start, total=steps)
    t0, running = time.time(), None
    for step in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 2 + STAGES.index(stage))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base=base_lr, warmup=cfg.warmup, total=steps)
        x0, captions = training_pictures(data, cfg, stage, step, batch)
        kwargs: dict[str, Any] = {}
        step_weights = weights
        predicts_v = prediction_at(cfg, stage, step) == "v_prediction"
        if stage == "II":
            crop = crops_at(cfg, step)
            x0, x_up, levels = sr_inputs(x0, cfg, noising, gen, crop)
            kwargs["class_labels"] = levels.to(device)
            step_weights = weights if crop else noisy_weights  # whole pictures: the noisy steps weigh more
        x0 = x0.to(device)
        cond = text(captions)
        drop = torch.rand(batch, generator=gen) < cfg.caption_dropout
        cond[drop.to(device)] = empty
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen).to(device)
        x_t = noise_scheduler.add_noise(x0, noise, t)
        model_input = x_t if stage == "I" else torch.cat([x_t, x_up.to(device)], dim=1)
        prediction, var_out = unet(model_input, t, encoder_hidden_states=cond, **kwargs).sample.split(
            3, dim=1
        )
        if predicts_v:  # v = √ᾱ·ε − √(1−ᾱ)·x0, so ε̂ = √(1−ᾱ)·x_t + √ᾱ·v̂ (for the bound)
            target = noise_scheduler.get_velocity(x0, noise, t)
            root_abar = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
            eps_pred = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * x_t + root_abar * prediction
        else:
            target, eps_pred = noise, prediction
        loss_eps = (step_weights[t] * (prediction - target).pow(2).mean(dim=(1, 2, 3))).mean()
        loss_vlb = posterior.vlb_bits(eps_pred, var_out, x0, x_t, t).mean()
        loss = loss_eps + cfg.vlb_weight * loss_vlb
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet)
        running = loss_eps.item() if running is None else 0.98 * running + 0.02 * loss_eps.item()
        bar.set_postfix(eps=f"{running:.4f}", vlb=f"{loss_vlb.item():.3f}")
        last = step + 1 == steps
        if (step + 1) % cfg.log_every == 0 or last:
            entry = {
                "step": step + 1,
                "loss_eps": loss_eps.item(),  # the ε-loss, or the v-loss where the stage predicts v
                "prediction": prediction_at(cfg, stage, step),
                "loss_vlb": loss_vlb.item(),
                "loss_eps_avg": running,
                "time_s": round(time.time() - t0, 2),
            }
            log.write(json.dumps(entry) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            save_checkpoint(
                ckpt, model=unet, optimizer=opt, ema=ema, step=step + 1, info={"config": cfg.to_dict()}
            )
    log.close()
    return ckpt
