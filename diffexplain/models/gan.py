"""A small DCGAN beside the diffusion model: one generator pass turns noise into a picture.

Notation::

    z ~ N(0, I)            latent noise, [B, z_dim]
    x = G(z)               a picture in [-1, 1], [B, 3, S, S] (S = image_size, 32 for the shipped weights)
    D(x)                   the discriminator's logit: > 0 "real", < 0 "generated", [B]

Both are DCGAN-style (Radford et al., 2015): the generator grows a 4×4 feature map by stride-2
transposed convolutions (BatchNorm + ReLU) to the picture (tanh); the discriminator mirrors it with
stride-2 convolutions and LeakyReLU, with spectral normalisation in place of BatchNorm (it keeps the
two-player game from running away on a small machine).

:func:`load_gan` returns the shipped weights (``gan_weights/``, trained by ``diffexplain train
--preset gan``) as a :class:`GAN`; ``GAN.sample(n, seed=...)`` draws PIL images.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from diffexplain.safetensors_file import save_readable

GAN_WEIGHTS_DIR = Path(__file__).parent / "gan_weights"
GAN_FORMAT = "diffexplain-gan"
GAN_FORMAT_VERSION = 1
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GANArch:
    """The shapes of a generator and discriminator pair."""

    image_size: int = 32  # pixels per side: 4·2^k, one up/down-sampling block per doubling from 4×4
    z_dim: int = 64  # length of the noise vector z
    width: int = 32  # channels at full resolution; each halving of the resolution doubles them

    def __post_init__(self) -> None:
        levels = math.log2(self.image_size / 4) if self.image_size >= 8 else -1
        if levels < 1 or levels != int(levels):
            raise ValueError(f"image_size must be 4·2^k with k ≥ 1 (8, 16, 32, 64, …), got {self.image_size}")
        if self.z_dim < 1 or self.width < 1:
            raise ValueError(
                f"z_dim and width must be at least 1, got z_dim={self.z_dim}, width={self.width}"
            )

    @property
    def levels(self) -> int:
        """Stride-2 blocks between 4×4 and the picture."""
        return int(math.log2(self.image_size // 4))

    def channels(self) -> list[int]:
        """Channels from the 4×4 map up to the last block before the picture, e.g. [256, 128, 64, 32]."""
        return [self.width * 2 ** (self.levels - 1 - i) for i in range(self.levels)]

    def to_dict(self) -> dict[str, int]:
        """A JSON-safe dict of the fields."""
        return asdict(self)


class Generator(nn.Module):
    """z [B, z_dim] → picture [B, 3, S, S] in [-1, 1], in one pass."""

    def __init__(self, arch: GANArch):
        super().__init__()
        self.arch = arch
        chans = arch.channels()
        self.project = nn.Sequential(  # z → 4×4 feature map
            nn.ConvTranspose2d(arch.z_dim, chans[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(True),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):  # each block doubles the side
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Pictures [B, 3, S, S] in [-1, 1] for noise ``z`` [B, z_dim]."""
        h = self.project(z[:, :, None, None])  # [B, C0, 4, 4]
        h = self.blocks(h)  # [B, C_last, S/2, S/2]
        return self.to_rgb(h)  # [B, 3, S, S]


class Discriminator(nn.Module):
    """Picture [B, 3, S, S] → logit [B] (> 0: judged real)."""

    def __init__(self, arch: GANArch):
        super().__init__()
        self.arch = arch
        sn = nn.utils.parametrizations.spectral_norm
        chans = arch.channels()[::-1]  # e.g. [32, 64, 128, 256]
        layers: list[nn.Module] = [sn(nn.Conv2d(3, chans[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        layers.append(sn(nn.Conv2d(chans[-1], 1, 4, 1, 0)))  # 4×4 → 1×1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per picture of ``x`` [B, 3, S, S]: > 0 means judged real."""
        return self.net(x).flatten()  # [B]


def check_n(n: Any) -> int:
    """``n`` as a count of pictures: a whole number of at least 1."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be a whole number of pictures, got {n!r} ({type(n).__name__})")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return int(n)


def check_seed(seed: Any) -> int:
    """``seed`` as a torch generator seed: a whole number in 0..2**63-1."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be a whole number in 0..{MAX_SEED}, got {seed!r} ({type(seed).__name__})")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    return int(seed)


def to_pil(pictures: torch.Tensor) -> list[Image.Image]:
    """Pictures [B, 3, H, W] in [-1, 1] as PIL RGB images."""
    arr = ((pictures.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


class GAN:
    """A trained generator with its recipe: ``sample`` draws pictures, ``generator`` is the torch module."""

    def __init__(
        self,
        generator: Generator,
        *,
        recipe: dict[str, Any] | None = None,
        measured: dict[str, Any] | None = None,
    ):
        self.generator = generator.eval()
        self.recipe = dict(recipe or {})  # how it was trained (gan.json's "recipe")
        self.measured = dict(measured or {})  # benchmarks/bench_gan.py's figures (gan.json's "measured")

    @property
    def arch(self) -> GANArch:
        """The generator's shapes."""
        return self.generator.arch

    def noise(self, n: int, *, seed: int = 0) -> torch.Tensor:
        """The z [n, z_dim] that :meth:`sample` uses for ``seed``: picture i depends on (seed, i) only."""
        n, seed = check_n(n), check_seed(seed)
        gen = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(n, self.arch.z_dim, generator=gen)

    @torch.no_grad()
    def sample_tensor(self, n: int, *, seed: int = 0, batch: int = 256) -> torch.Tensor:
        """``n`` pictures [n, 3, S, S] in [-1, 1] (the generator in eval mode: no batch statistics)."""
        z = self.noise(n, seed=seed)
        param = next(self.generator.parameters())
        out = [self.generator(chunk.to(param.device, param.dtype)).float().cpu() for chunk in z.split(batch)]
        return torch.cat(out)

    def sample(self, n: int, *, seed: int = 0) -> list[Image.Image]:
        """``n`` pictures as PIL images, the same for the same ``seed``."""
        return to_pil(self.sample_tensor(n, seed=seed))


def save_gan(folder: str | Path, generator: Generator, *, recipe: dict[str, Any]) -> Path:
    """Write ``generator.safetensors`` (fp16) and ``gan.json`` (architecture + recipe) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in generator.state_dict().items()}
    save_readable(state, folder / "generator.safetensors")
    meta = {
        "format": GAN_FORMAT,
        "version": GAN_FORMAT_VERSION,
        "arch": generator.arch.to_dict(),
        "recipe": recipe,
    }
    (folder / "gan.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_gan(folder: str | Path | None = None, *, device: str | torch.device = "cpu") -> GAN:
    """The GAN in ``folder`` (default: the shipped weights), offline, in well under a second.

    The weights are stored in fp16 and computed in fp32.
    """
    folder = GAN_WEIGHTS_DIR if folder is None else Path(folder)
    meta_path, weights = folder / "gan.json", folder / "generator.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{folder}: expected gan.json and generator.safetensors (written by `diffexplain train --preset gan`)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != GAN_FORMAT or meta.get("version") != GAN_FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: not a {GAN_FORMAT} description of version {GAN_FORMAT_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    generator = Generator(GANArch(**meta["arch"]))
    state = load_file(str(weights))
    generator.load_state_dict({k: v.float() for k, v in state.items()})
    return GAN(generator.to(device), recipe=meta.get("recipe", {}), measured=meta.get("measured", {}))
