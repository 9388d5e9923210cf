"""Train the GAN (``diffexplain train --preset gan``): a two-player game, resumable, then an exported folder.

Notation (non-saturating GAN loss, Goodfellow et al., 2014)::

    x            real pictures of the shapes dataset (one object each), [B, 3, S, S] in [-1, 1]
    x_fake       G(z), z ~ N(0, I)
    loss_d       softplus(−D(x)) + softplus(D(x_fake))    = −log σ(D(x)) − log(1 − σ(D(x_fake)))
    loss_g       softplus(−D(x_fake))                     = −log σ(D(x_fake))

Each iteration takes one discriminator step, then one generator step. Unlike diffusion's regression
loss, neither number has to fall: each player's loss is measured against the other's current skill.

A run folder holds ``config.json``, ``checkpoint/{generator,discriminator}.{safetensors,json}`` (weights,
Adam state, the generator's EMA), ``log.jsonl`` (losses every ``log_every`` iterations),
``progress.safetensors`` (the generator's pictures of fixed z at every checkpoint, uint8) and, at the end, ``model/``
(what :func:`~diffexplain.models.gan.load_gan` reads).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from diffexplain.data import ShapesDataset
from diffexplain.devices import pick_device
from diffexplain.errors import TrainConfigError
from diffexplain.models.config import differences
from diffexplain.models.gan import GAN, Discriminator, GANArch, Generator, save_gan
from diffexplain.safetensors_file import save_readable
from diffexplain.training.checkpoint import EMA, load_checkpoint, save_checkpoint
from diffexplain.training.gan_config import GAN_FIXED_FIELDS, GANTrainConfig, gan_preset

PROGRESS_SEED = 12_345  # the fixed z of the progress snapshots
LogCallback = Callable[[dict[str, Any]], None]


def arch_of(cfg: GANTrainConfig) -> GANArch:
    """The networks' shapes for ``cfg``."""
    return GANArch(image_size=cfg.image_size, z_dim=cfg.z_dim, width=cfg.width)


def check_gan_resume(out: Path, cfg: GANTrainConfig) -> None:
    """Refuse to resume ``out``'s checkpoints with a config that builds other networks or data."""
    saved = out / "config.json"
    if not saved.is_file() or not (out / "checkpoint" / "generator.json").is_file():
        return
    theirs = json.loads(saved.read_text())
    differ = differences(theirs, cfg.to_dict(), GAN_FIXED_FIELDS, mine_label="now")
    if differ:
        raise TrainConfigError(
            f"{out} holds GAN checkpoints of another config ({'; '.join(differ)}); "
            "resume it with the config it was started with, or train into a new --out folder"
        )


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The entries of a run's ``log.jsonl`` (iteration, loss_d, loss_g, d_real, d_fake, time_s)."""
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_progress(out: str | Path) -> dict[int, torch.Tensor]:
    """Pictures of fixed z at each checkpoint: {iteration: uint8 [K, 3, S, S]}, in iteration order."""
    path = Path(out) / "progress.safetensors"
    if not path.is_file():
        return {}
    tensors = load_file(str(path))
    return {int(k.split("_")[1]): tensors[k] for k in sorted(tensors, key=lambda k: int(k.split("_")[1]))}


def _save_progress(out: Path, iteration: int, generator: Generator, z: torch.Tensor) -> None:
    snapshots = {f"iter_{k:06d}": v for k, v in read_progress(out).items() if k < iteration}
    was_training = generator.training
    with torch.no_grad():
        pictures = generator.eval()(z)  # [K, 3, S, S]
    generator.train(was_training)
    snapshots[f"iter_{iteration:06d}"] = ((pictures.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    tmp = out / "progress.safetensors.tmp"
    save_readable(snapshots, tmp)
    os.replace(tmp, out / "progress.safetensors")


def train_gan(
    config: GANTrainConfig | str = "gan",
    out: str | Path = "runs/gan",
    *,
    device: str | None = None,
    export_to: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    on_log: LogCallback | None = None,
) -> Path:
    """Train (or resume) a GAN on the shapes dataset's one-object pictures; export it; return the folder.

    ``config`` is a :class:`GANTrainConfig` or a GAN preset name ("gan", "gan-classroom", "gan-tiny").
    Checkpoints go to ``out`` every ``checkpoint_every`` iterations; the same call again resumes from the
    last one (and a larger ``iterations`` continues a finished run). ``on_log`` is called with each log
    entry (a dict) as it is written, e.g. to plot the losses live. The exported folder (``export_to``,
    default ``out/model``) holds the generator in fp16 and ``gan.json`` with the recipe.
    """
    cfg = gan_preset(config) if isinstance(config, str) else config
    out = Path(out)
    check_gan_resume(out, cfg)
    device = pick_device(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    torch.manual_seed(cfg.seed)
    arch = arch_of(cfg)
    generator, discriminator = Generator(arch).to(device), Discriminator(arch).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    ema = EMA(generator, cfg.ema_decay)
    ckpt_g, ckpt_d = out / "checkpoint" / "generator", out / "checkpoint" / "discriminator"
    start, train_time = 0, 0.0
    if ckpt_g.with_suffix(".json").is_file():
        meta_d = load_checkpoint(ckpt_d, model=discriminator, optimizer=opt_d, ema=None)
        meta_g = load_checkpoint(ckpt_g, model=generator, optimizer=opt_g, ema=ema)
        if meta_d["step"] != meta_g["step"]:
            raise TrainConfigError(
                f"{out / 'checkpoint'}: generator at iteration {meta_g['step']}, discriminator at "
                f"{meta_d['step']}; the run was cut while saving: train into a new --out folder"
            )
        start, train_time = meta_g["step"], meta_g.get("train_time_s", 0.0)
    data = ShapesDataset(seed=cfg.seed, size=cfg.image_size, two_object_share=0.0, length=10**9)
    batches = data.batches(cfg.batch, start=start * cfg.batch)  # the same pictures after a resume
    z_fixed = torch.randn(
        cfg.progress_samples, cfg.z_dim, generator=torch.Generator().manual_seed(PROGRESS_SEED)
    )
    z_fixed = z_fixed.to(device)
    if start == 0:
        _save_progress(out, 0, generator, z_fixed)

    log = (out / "log.jsonl").open("a")
    bar = tqdm(
        range(start, cfg.iterations), desc="GAN", disable=not progress, initial=start, total=cfg.iterations
    )
    t0 = time.time()
    last_entry: dict[str, Any] = {}
    generator.train()
    discriminator.train()
    for it in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)  # same noise after a resume
        real = next(batches)[0].to(device)  # [B, 3, S, S]
        z = torch.randn(cfg.batch, cfg.z_dim, generator=gen).to(device)
        fake = generator(z)  # [B, 3, S, S]
        # discriminator step: real → 1, generated → 0
        d_real, d_fake = discriminator(real), discriminator(fake.detach())  # [B] logits
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator step: make D call the generated pictures real
        loss_g = F.softplus(-discriminator(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(generator)
        bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
        iteration, last = it + 1, it + 1 == cfg.iterations
        if iteration % cfg.log_every == 0 or last:
            last_entry = {
                "iteration": iteration,
                "loss_d": loss_d.item(),
                "loss_g": loss_g.item(),
                "d_real": torch.sigmoid(d_real).mean().item(),  # D's mean belief that real pictures are real
                "d_fake": torch.sigmoid(d_fake).mean().item(),  # … and that generated ones are
                "time_s": round(train_time + time.time() - t0, 2),
            }
            log.write(json.dumps(last_entry) + "\n")
            log.flush()
            if on_log is not None:
                on_log(last_entry)
        if iteration % cfg.checkpoint_every == 0 or last:
            info = {"config": cfg.to_dict(), "train_time_s": train_time + time.time() - t0}
            save_checkpoint(ckpt_d, model=discriminator, optimizer=opt_d, ema=None, step=iteration, info=info)
            save_checkpoint(ckpt_g, model=generator, optimizer=opt_g, ema=ema, step=iteration, info=info)
            _save_progress(out, iteration, generator, z_fixed)  # the generator as it plays now, not its EMA
    log.close()
    total_time = train_time + time.time() - t0
    if not last_entry:  # nothing left to train (a finished run called again): read the last entry back
        entries = read_log(out)
        last_entry = entries[-1] if entries else {}
    return export_gan(out, export_to, command=command, device=device, total_time=total_time, last=last_entry)


def export_gan(
    out: str | Path,
    export_to: str | Path | None = None,
    *,
    command: str | None = None,
    device: str = "cpu",
    total_time: float | None = None,
    last: dict[str, Any] | None = None,
    ema: bool = False,
) -> Path:
    """Write the run's generator (fp16) and its recipe to ``export_to`` (default ``out/model``).

    The generator's own weights, as the discriminator last saw them, by default. ``ema=True`` writes the
    moving average of its weights instead; with BatchNorm that average needs statistics of its own
    (its averaged running statistics drew faint, near-identical pictures at 2200 iterations of the
    shipped run: 33 % clean single objects of 300, against 85 % for the generator itself).
    """
    out = Path(out)
    ckpt_g = out / "checkpoint" / "generator"
    if not ckpt_g.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"no GAN checkpoint at {ckpt_g}.json; run `diffexplain train --preset gan` first"
        )
    cfg = GANTrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    generator = Generator(arch_of(cfg))
    average = EMA(generator, cfg.ema_decay)
    meta = load_checkpoint(
        ckpt_g, model=generator, optimizer=torch.optim.Adam(generator.parameters()), ema=average
    )
    if ema:
        generator.load_state_dict(average.state_dict())
    recipe = {
        "preset": cfg.name,
        "command": command
        or " ".join(shlex.quote(a) for a in ["diffexplain", "train", "--preset", cfg.name]),
        "config": cfg.to_dict(),
        "iterations": meta["step"],
        "seed": cfg.seed,
        "weights": "EMA of the generator's weights and BatchNorm statistics"
        if ema
        else "the generator's own",
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_time_s": round(total_time if total_time is not None else meta.get("train_time_s", 0.0), 1),
        "final_losses": {k: last[k] for k in ("loss_d", "loss_g", "d_real", "d_fake") if k in last}
        if last
        else {},
    }
    return save_gan(Path(export_to) if export_to else out / "model", generator, recipe=recipe)


def gan_from_run(out: str | Path, *, ema: bool = False) -> GAN:
    """The generator of a run's latest checkpoint as a :class:`GAN`, also mid-run (``ema=True``: its EMA)."""
    out = Path(out)
    cfg = GANTrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    generator = Generator(arch_of(cfg))
    average = EMA(generator, cfg.ema_decay)
    meta = load_checkpoint(
        out / "checkpoint" / "generator",
        model=generator,
        optimizer=torch.optim.Adam(generator.parameters()),
        ema=average,
    )
    if ema:
        generator.load_state_dict(average.state_dict())
    return GAN(generator, recipe={"iterations": meta["step"], "config": cfg.to_dict()})
