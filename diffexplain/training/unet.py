"""Stage 2: train the U-Net to predict noise in the VAE's latent space.

Notation: z0 = (E(x) − μ)/σ per channel (clean latents, standardised over the pool; see
latent_norm.py), ε ~ N(0, I), t ~ U{0..T−1}, z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε (closed form, via the scheduler's ``add_noise``),
loss = w_t·‖ε_θ(z_t, t, c) − ε‖² with the min-SNR weight w_t = min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1−ᾱ_t)
(Hang et al. 2023): nearly clean steps, where ε is hard to see and matters little, count less.

The noisiest steps need the opposite. ε̂ − ε = √SNR_t·(ẑ0 − z0), so plain ε-loss weighs an error in the
clean latents by SNR_t: about 0.004 at t = 960, where sampling from pure noise decides the layout. An
optional floor β raises that weight to β (w_t = max(min(SNR_t, γ), β)/SNR_t, at most
LOW_SNR_WEIGHT_CAP), so "on the left" has to win over what the noise happens to suggest.
A share ``caption_dropout`` of captions is replaced by the empty caption, so the same network also
learns ε_θ(z_t, t, ∅), which classifier-free guidance needs.

The flow objective (``TrainConfig.objective="flow"``, rectified flow) trains the same U-Net in the other
dialect: σ = (t + u)/T with u ~ U[0, 1), z_t = (1 − σ)·z0 + σ·ε on a straight path, and the U-Net, given
the timestep t = ⌊σ·T⌋ as the flow sampler passes it, predicts the velocity v = ε − z0 with a plain
squared error ‖v_θ(z_t, t, c) − v‖² (no SNR weight: an error in v is an error in z0 scaled by 1/σ).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from diffexplain.data import ShapesDataset
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import TrainConfig, differences, scheduler_config
from diffexplain.models.store import is_model_folder, read_model_json
from diffexplain.models.text import encode_captions, load_text_encoder
from diffexplain.safetensors_file import save_readable
from diffexplain.training.attention_loss import AttentionSupervision
from diffexplain.training.checkpoint import EMA, load_checkpoint, lr_at, read_checkpoint, save_checkpoint
from diffexplain.training.latent_norm import latent_stats, standardise


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, data: ShapesDataset, n: int, *, batch: int = 128, progress: bool = True
) -> tuple[torch.Tensor, list[str]]:
    """Encode ``n`` dataset images once: posterior means [n, 4, h, w] and their captions."""
    device = next(vae.parameters()).device
    latents, captions = [], []
    for i in tqdm(range(0, n, batch), desc="encode latents", disable=not progress):
        x, caps = data.batch(range(i, min(n, i + batch)))
        latents.append(vae.encode(x.to(device)).latent_dist.mean.cpu())
        captions += caps
    return torch.cat(latents), captions


class CaptionCache:
    """MiniLM token states per caption, computed once (the dataset has a few thousand distinct captions)."""

    def __init__(self, device: str):
        self.tokenizer, self.encoder = load_text_encoder(device)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            for cap, emb in zip(missing, encode_captions(self.tokenizer, self.encoder, missing), strict=True):
                self.cache[cap] = emb
        return torch.stack([self.cache[c] for c in captions])


LOW_SNR_WEIGHT_CAP = 20.0
"""Largest loss weight of the low-SNR floor (from t ≈ 935 of 1000 on, with β = 0.2)."""


HIGH_NOISE_FROM = 880
"""First t of the noisiest steps that ``TrainConfig.high_noise_share`` draws more often: 25-step DDIM's
first three steps (t = 960, 920, 880), where sampling from pure noise chooses the layout."""


def draw_timesteps(
    batch: int, num_train_timesteps: int, high_noise_share: float, gen: torch.Generator
) -> torch.Tensor:
    """t for one batch [B]: uniform on 0..T−1, and for a share ``high_noise_share`` uniform on
    HIGH_NOISE_FROM..T−1 instead. With share 0 it draws exactly what ``torch.randint`` alone draws, so
    runs without it keep their random stream (and their checkpoints resume bit-exactly)."""
    t = torch.randint(0, num_train_timesteps, (batch,), generator=gen)
    if high_noise_share > 0:
        noisy = torch.rand(batch, generator=gen) < high_noise_share
        t_noisy = torch.randint(HIGH_NOISE_FROM, num_train_timesteps, (batch,), generator=gen)
        t = torch.where(noisy, t_noisy, t)
    return t


def flow_inputs(
    z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, num_train_timesteps: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flow objective's (z_t, target v = ε − z0, weight 1) for timesteps ``t`` [B].

    σ = (t + u)/T with u ~ U[0, 1): continuous, while the U-Net sees the integer t = ⌊σ·T⌋ the flow
    sampler (``DPMSolverMultistepScheduler`` with ``use_flow_sigmas``) passes it.
    """
    u = torch.rand(t.shape, generator=gen).to(t.device)
    sigma = ((t.float() + u) / num_train_timesteps).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    z_t = (1 - sigma) * z0 + sigma * noise
    return z_t, noise - z0, torch.ones_like(u)


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """Per-timestep ε-loss weights max(min(SNR_t, γ), β)/SNR_t, capped at :data:`LOW_SNR_WEIGHT_CAP`.

    ``gamma`` 0 turns the min-SNR part off (weight 1); ``floor`` (β) 0 turns the floor off.
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = (gamma / snr).clamp(max=1.0) if gamma > 0 else torch.ones_like(snr)
    if floor > 0:
        weights = torch.maximum(weights, (floor / snr).clamp(max=LOW_SNR_WEIGHT_CAP))
    return weights


def init_from_run(unet: UNet2DConditionModel, ema: EMA, source: Path) -> int:
    """Start ``unet`` and its EMA from the EMA weights of the run folder ``source``; returns that run's step."""
    tensors, meta = read_checkpoint(source / "unet" / "checkpoint")
    weights = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    try:
        unet.load_state_dict(weights)
    except RuntimeError as err:
        raise TrainConfigError(
            f"unet_init={str(source)!r}: its U-Net does not match this config's "
            f"(unet_blocks, unet_norm_groups, unet_pooled_text must be the same): {err}"
        ) from err
    for k in ema.shadow:
        ema.shadow[k] = weights[k].float().clone()
    return int(meta["step"])


def check_model_unet(source: str, cfg: TrainConfig) -> None:
    """Refuse a model folder whose U-Net config is not the one ``cfg`` trains (names the fields)."""
    from diffexplain.models.default import model_folder

    found = read_model_json(model_folder(source))["unet_config"]
    mine = json.loads(json.dumps(cfg.unet_config(cfg.latent_size)))  # tuples as JSON lists
    differ = differences(found, mine)
    if differ:
        raise TrainConfigError(
            f"unet_init={source!r}: its U-Net does not match this config's: " + "; ".join(differ)
        )


def init_from_model(unet: UNet2DConditionModel, ema: EMA, source: str) -> None:
    """Start ``unet`` and its EMA from the U-Net of the model folder ``source`` ("default": the shipped one).

    :func:`~diffexplain.training.run.train` has checked it with :func:`check_model_unet`.
    """
    from diffexplain.models.default import model_folder
    from diffexplain.models.store import load_model_parts

    weights = {k: v.float() for k, v in load_model_parts(model_folder(source))["unet"].state_dict().items()}
    unet.load_state_dict(weights)
    for k in ema.shadow:
        ema.shadow[k] = weights[k].clone()


def train_unet(
    cfg: TrainConfig, out: Path, vae: AutoencoderKL, *, device: str = "cpu", progress: bool = True
) -> tuple[UNet2DConditionModel, EMA, float]:
    """Train (or resume) the U-Net stage into ``out/unet``; returns the model, its EMA and the latent scale."""
    stage = out / "unet"
    stage.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(seed=cfg.seed + 1, size=cfg.image_size, two_object_share=cfg.two_object_share)
    pool_file = stage / "latent_pool.safetensors"
    if not pool_file.exists() and (stage / "latent_pool.pt.safetensors").exists():  # older runs' name
        pool_file = stage / "latent_pool.pt.safetensors"
    if pool_file.exists():
        from safetensors.torch import load_file

        pool = load_file(str(pool_file))["latents"]
        captions = json.loads((stage / "latent_pool.json").read_text())
    else:
        pool, captions = encode_pool(vae, data, cfg.latent_pool, progress=progress)
        save_readable({"latents": pool.contiguous()}, pool_file)
        (stage / "latent_pool.json").write_text(json.dumps(captions))
    latent_mean, latent_std = latent_stats(pool)  # [C] each; export folds them into the VAE
    pool = standardise(pool, latent_mean, latent_std)  # zero mean, unit variance per channel
    scaling_factor = 1.0

    torch.manual_seed(cfg.seed)
    sample_size = pool.shape[-1]
    unet = UNet2DConditionModel(**cfg.unet_config(sample_size)).to(device)
    ema = EMA(unet, cfg.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    noise_scheduler = DDPMScheduler(**scheduler_config())
    snr_weight = min_snr_weights(noise_scheduler.alphas_cumprod, cfg.min_snr_gamma, cfg.low_snr_floor)  # [T]
    snr_weight = snr_weight.to(device)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    ckpt = stage / "checkpoint"
    start = 0
    if ckpt.with_suffix(".json").exists():
        start = load_checkpoint(ckpt, model=unet, optimizer=opt, ema=ema)["step"]
    elif cfg.unet_init and is_model_folder(cfg.unet_init):
        init_from_model(unet, ema, cfg.unet_init)
        if progress:
            tqdm.write(f"U-Net starts from the model {cfg.unet_init}")
    elif cfg.unet_init:
        init_step = init_from_run(unet, ema, Path(cfg.unet_init))
        if progress:
            tqdm.write(f"U-Net starts from {cfg.unet_init} (its EMA weights after {init_step} steps)")
    text = CaptionCache(device)
    empty = text([""])[0]
    log = (stage / "log.jsonl").open("a")
    bar = tqdm(
        range(start, cfg.unet_steps), desc="U-Net", disable=not progress, initial=start, total=cfg.unet_steps
    )
    t0, running = time.time(), None
    # The cross-attention loss records the supervised layers' attention inside this block only.
    attend = AttentionSupervision(unet, text.tokenizer) if cfg.attention_loss_weight > 0 else nullcontext()
    with attend as supervision:
        for step in bar:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # same batch after a resume
            for group in opt.param_groups:
                group["lr"] = lr_at(step, base=cfg.unet_lr, warmup=cfg.unet_warmup, total=cfg.unet_steps)
            idx = torch.randint(0, len(pool), (cfg.unet_batch,), generator=gen)
            z0 = pool[idx].to(device)
            cond = text([captions[i] for i in idx.tolist()])
            drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
            cond[drop.to(device)] = empty
            noise = torch.randn(z0.shape, generator=gen).to(device)
            t = draw_timesteps(cfg.unet_batch, num_train_timesteps, cfg.high_noise_share, gen).to(device)
            if cfg.objective == "flow":
                z_t, target, weight = flow_inputs(z0, noise, t, num_train_timesteps, gen)
            else:
                z_t, target, weight = noise_scheduler.add_noise(z0, noise, t), noise, snr_weight[t]
            prediction = unet(z_t, t, encoder_hidden_states=cond).sample  # ε̂ or v̂ [B, C, h, w]
            per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))  # [B]
            loss = loss_eps = (weight * per_sample).mean()
            if supervision is not None:
                seen = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
                loss_attn = supervision.loss(seen)
                loss = loss_eps + cfg.attention_loss_weight * loss_attn
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.update(unet)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
            last = step + 1 == cfg.unet_steps
            if (step + 1) % cfg.log_every == 0 or last:
                entry = {
                    "step": step + 1,
                    "loss": loss.item(),
                    "loss_avg": running,
                    "time_s": time.time() - t0,
                }
                if supervision is not None:
                    entry |= {"loss_eps": loss_eps.item(), "loss_attention": loss_attn.item()}
                log.write(json.dumps(entry) + "\n")
                log.flush()
            if (step + 1) % cfg.checkpoint_every == 0 or last:
                info = {
                    "config": cfg.to_dict(),
                    "scaling_factor": scaling_factor,
                    "latent_mean": latent_mean.tolist(),
                    "latent_std": latent_std.tolist(),
                }
                save_checkpoint(ckpt, model=unet, optimizer=opt, ema=ema, step=step + 1, info=info)
    return unet.eval(), ema, scaling_factor
